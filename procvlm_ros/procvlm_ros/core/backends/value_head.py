"""
ProcVLM's scalar value head: attention pooling + MLP over the final hidden states.

Architecture, state-dict key names and semantics follow the official ``evqa/model.py`` at
commit 5a8c6b2d (``AttentionPooling`` lines 30-53, ``pooler`` line 119, ``value_head``
lines 123-133, ``_predict_progress_values`` lines 489-543, rewrite in ``_infer_chunk``), see
``procvlm-reference.md`` section 3. The sidecar holds exactly 14 tensors::

    pooler.score.0.{weight,bias}   Linear(H, H/4)
    pooler.score.2.{weight,bias}   Linear(H/4, 1)
    value_head.0.{weight,bias}     Linear(H, 4H)
    value_head.2.{weight,bias}     LayerNorm(4H)
    value_head.4.{weight,bias}     Linear(4H, H)
    value_head.6.{weight,bias}     LayerNorm(H)
    value_head.8.{weight,bias}     Linear(H, 1)

torch is imported inside functions only; the text helpers at the top need no torch.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
import re
from typing import Any

from procvlm_ros.core.errors import BackendUnavailableError

# The gate is the literal, case-sensitive substring (official; bug 10.8: an upper-case tag is
# parsed later but never rewritten).
PROGRESS_GATE = '<progress>'
_HEAD_TAG = re.compile(r'<progress>(.*?)</progress>')
# Official lookup order (model.py _PROCVLM_HEAD_CANDIDATES).
HEAD_SIDECAR_CANDIDATES = ('procvlm_extra/procvlm_head.pt', 'procvlm_head.pt', 'procvlm_head.bin')
HEAD_PREFIXES = ('pooler.', 'value_head.')
CALIBRATIONS = ('official', 'trained')
# Training fits sigmoid(1.2 * z - 0.1); official inference returns sigmoid(z) (bug 10.1).
TRAINED_SCALE = 1.2
TRAINED_SHIFT = -0.1


def should_run_value_head(text: str) -> bool:
    """Return True when the decoded text contains the literal lowercase ``<progress>``."""
    return PROGRESS_GATE in text


def rewrite_progress(text: str, percent: float, *, count: int = 0) -> str:
    """
    Replace ``<progress>...</progress>`` tags with the head's value, formatted ``%.2f%``.

    The official code calls ``pattern.sub`` without a count, so **every** lowercase tag is
    rewritten (``count=0``); the parser reads the first one either way. ``count=1`` rewrites
    only the first tag.

    :param text: Decoded model output.
    :param percent: Head output in percent (unrounded).
    :param count: Maximum number of tags to rewrite; 0 rewrites all (official).
    :returns: The rewritten text (unchanged when it has no lowercase tag).
    """
    replacement = f'<progress>{percent:.2f}%</progress>'
    return _HEAD_TAG.sub(lambda _m: replacement, text, count=count)


def percent_from_logit(z: float, calibration: str = 'official') -> float:
    """
    Map the head's logit ``z`` to a percentage (pure-Python reference of the torch path).

    :param z: Raw head output.
    :param calibration: ``official`` = ``sigmoid(z) * 100`` (what the official inference
        returns); ``trained`` = ``sigmoid(1.2 * z - 0.1) * 100`` (the mapping used in training).
    :returns: Percentage in [0, 100].
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f'calibration must be one of {CALIBRATIONS}, got {calibration!r}')
    x = TRAINED_SCALE * z + TRAINED_SHIFT if calibration == 'trained' else z
    if x >= 0:
        return 100.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return 100.0 * e / (1.0 + e)


def percent_tensor(z: Any, calibration: str = 'official') -> Any:
    """Torch version of :func:`percent_from_logit`, computed in ``z``'s dtype as officially."""
    import torch
    if calibration not in CALIBRATIONS:
        raise ValueError(f'calibration must be one of {CALIBRATIONS}, got {calibration!r}')
    x = z * TRAINED_SCALE + TRAINED_SHIFT if calibration == 'trained' else z
    return torch.sigmoid(x) * 100.0


@functools.cache
def _module_classes() -> tuple[type, type]:
    """Define the torch modules on first use, so importing this file does not import torch."""
    import torch
    from torch import nn

    class AttentionPooling(nn.Module):
        """Score each position with a small MLP, softmax over the sequence, weighted sum."""

        def __init__(self, hidden_size: int) -> None:
            super().__init__()
            self.score = nn.Sequential(
                nn.Linear(hidden_size, hidden_size // 4), nn.GELU(),
                nn.Linear(hidden_size // 4, 1))

        def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            scores = self.score(hidden).squeeze(-1)  # (B, T)
            if mask is not None:
                scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=1)  # (B, T)
            return torch.sum(hidden * weights.unsqueeze(-1), dim=1)  # (B, H)

    class ProcVlmValueHead(nn.Module):
        """``pooler`` + ``value_head`` with the official attribute names; forward returns z."""

        def __init__(self, hidden_size: int, dropout: float = 0.0) -> None:
            super().__init__()
            mid = hidden_size * 4
            self.pooler = AttentionPooling(hidden_size)
            self.value_head = nn.Sequential(
                nn.Linear(hidden_size, mid), nn.GELU(), nn.LayerNorm(mid), nn.Dropout(dropout),
                nn.Linear(mid, hidden_size), nn.GELU(), nn.LayerNorm(hidden_size),
                nn.Dropout(dropout), nn.Linear(hidden_size, 1))

        def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            pooled = self.pooler(hidden, mask)  # (B, H)
            z: torch.Tensor = self.value_head(pooled).squeeze(-1)  # (B,) logits
            return z

    return AttentionPooling, ProcVlmValueHead


def build_value_head(hidden_size: int, dropout: float = 0.0) -> Any:
    """
    Create a randomly initialised head module (attributes ``pooler`` and ``value_head``).

    :param hidden_size: Text hidden size H (2048 for ProcVLM-2B).
    :param dropout: Dropout of the two Dropout layers (inactive in eval mode).
    :returns: A ``torch.nn.Module`` whose ``forward(hidden, mask)`` returns the logits z (B,).
    """
    return _module_classes()[1](hidden_size, dropout)


def find_head_sidecar(model_dir: str | Path) -> Path | None:
    """Return the first existing head sidecar in the official lookup order, or None."""
    for rel in HEAD_SIDECAR_CANDIDATES:
        path = Path(model_dir) / rel
        if path.is_file():
            return path
    return None


def _remap_key(key: str) -> str:
    """Strip legacy ``base_model.`` wrapper prefixes, as the official loader does."""
    while key.startswith('base_model.'):
        key = key[len('base_model.'):]
    return key


def load_value_head(path: str | Path, hidden_size: int, *, device: Any = 'cpu',
                    dtype: Any = None) -> Any:
    """
    Load a head sidecar strictly; refuse missing or mismatching tensors.

    :param path: ``procvlm_head.pt`` / ``.bin`` file (a state dict saved with ``torch.save``).
    :param hidden_size: Text hidden size H of the loaded model.
    :param device: Target device.
    :param dtype: Target dtype (the model's, as in the official code), or None to keep fp32.
    :returns: The head module in eval mode.
    :raises BackendUnavailableError: If the file cannot be read or its keys/shapes do not match.
    """
    import torch
    try:
        raw = torch.load(Path(path), map_location='cpu', weights_only=True)
    except Exception as e:  # any unpickling failure means an unusable file
        raise BackendUnavailableError(
            f'value-head sidecar {path} could not be read ({type(e).__name__}: {e}); '
            'is it a truncated or non-torch file?') from e
    if not isinstance(raw, dict):
        raise BackendUnavailableError(
            f'value-head sidecar {path} holds a {type(raw).__name__}, expected a state dict')
    state = {_remap_key(k): v for k, v in raw.items()}
    state = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    head = build_value_head(hidden_size)
    expected = set(head.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise BackendUnavailableError(
            f'value-head sidecar {path} does not match the official layout (14 keys pooler.* / '
            f'value_head.*): missing {missing}, unexpected {unexpected}')
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BackendUnavailableError(
            f'value-head sidecar {path} does not fit hidden size {hidden_size}: {e}') from e
    return head.to(device=device, dtype=dtype if dtype is not None else torch.float32).eval()
