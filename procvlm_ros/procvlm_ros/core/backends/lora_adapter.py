"""
LoRA adapters (peft) on top of a ProcVLM checkpoint, as the official ``--use_lora`` path.

An adapter directory holds ``adapter_config.json`` (``base_model_name_or_path``, rank, alpha,
target modules), the adapter weights, usually ``procvlm_head.bin`` (pooler + value head trained
with it) and the processor files (``procvlm-reference.md`` sections 5.2-5.3). The official loader
applies the adapter unmerged with ``PeftModel.from_pretrained`` and then calls
``load_state_dict(head, strict=False)`` on the peft wrapper, whose keys carry a
``base_model.model.`` prefix: every head key is silently dropped and the **base** checkpoint's
head runs (bug 10.2). ``head_mode='adapter'`` (default) loads the adapter's head instead;
``head_mode='official'`` reproduces the official behaviour.

Checks before anything is applied, each with a message that names the problem: a missing
``adapter_config.json``; a fingerprint written by ``procvlm-adapt train`` that does not match
the base; target modules the base does not have; LoRA matrices whose rank or shapes do not fit.

torch and peft are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from procvlm_ros.core.backends.json_files import read_json_object
from procvlm_ros.core.errors import BackendUnavailableError

_LOG = logging.getLogger(__name__)

ADAPTER_CONFIG = 'adapter_config.json'
ADAPTER_WEIGHTS = ('adapter_model.safetensors', 'adapter_model.bin')
ADAPTER_HEAD = 'procvlm_head.bin'
# Written by procvlm-adapt train: which base the adapter was trained on.
FINGERPRINT_FILE = 'procvlm_adapter.json'
HEAD_MODES = ('adapter', 'official')
_FINGERPRINT_BYTES = 1 << 20  # first MiB of each weight file: header + first tensors


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding ``adapter_config.json``."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """
    Read and check ``adapter_config.json``.

    :raises BackendUnavailableError: If the directory or the file is missing, unreadable, or not
        a LoRA adapter config.
    """
    path = Path(adapter_dir).expanduser()
    if not path.is_dir():
        raise BackendUnavailableError(f'adapter directory {str(adapter_dir)!r} does not exist')
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise BackendUnavailableError(
            f'{path} is not a LoRA adapter: {ADAPTER_CONFIG} is missing (a peft adapter saved '
            'by procvlm-adapt train or the official lora_oneshot.sh has one)')
    cfg = read_json_object(cfg_path)
    peft_type = str(cfg.get('peft_type', '')).upper()
    if peft_type != 'LORA':
        raise BackendUnavailableError(
            f'{cfg_path} describes a {peft_type or "unknown"} adapter; only LoRA is supported')
    if not any((path / name).is_file() for name in ADAPTER_WEIGHTS):
        raise BackendUnavailableError(
            f'{path} has {ADAPTER_CONFIG} but no adapter weights ({" or ".join(ADAPTER_WEIGHTS)})')
    return dict(cfg)


def base_model_of(adapter_dir: str | Path) -> str:
    """
    The base checkpoint named by the adapter (``base_model_name_or_path``), as the official CLI.

    A relative path is tried against the adapter directory first, then as given.

    :raises BackendUnavailableError: If the config names no base.
    """
    cfg = read_adapter_config(adapter_dir)
    base = str(cfg.get('base_model_name_or_path') or '').strip()
    if not base:
        raise BackendUnavailableError(
            f'{Path(adapter_dir) / ADAPTER_CONFIG} has no base_model_name_or_path; give the base '
            'checkpoint explicitly (node parameter model, or --model_path BASE --adapter DIR)')
    candidate = Path(adapter_dir).expanduser() / base
    if not Path(base).is_absolute() and candidate.is_dir():
        return str(candidate.resolve())
    return base


def base_fingerprint(model_dir: str | Path) -> str:
    """
    A cheap identity of a checkpoint's weights: sha256 over each weight file's name, size and
    first MiB (the safetensors header lists every tensor's name, dtype and shape).
    """
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir()
                   if p.is_file() and p.suffix in ('.safetensors', '.bin')
                   and p.name.startswith(('model', 'pytorch_model')))
    for p in files:
        digest.update(p.name.encode())
        digest.update(str(p.stat().st_size).encode())
        with p.open('rb') as fh:
            digest.update(fh.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


def check_fingerprint(adapter_dir: Path, base_dir: Path) -> None:
    """Refuse an adapter whose recorded base fingerprint differs from ``base_dir``'s."""
    meta_path = adapter_dir / FINGERPRINT_FILE
    if not meta_path.is_file():
        return  # official adapters carry none; the shape checks still run
    try:
        meta = json.loads(meta_path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise BackendUnavailableError(f'{meta_path} is not valid JSON: {e}') from e
    want = meta.get('base_fingerprint') if isinstance(meta, dict) else None
    if want and want != base_fingerprint(base_dir):
        raise BackendUnavailableError(
            f'adapter {adapter_dir} was trained on another base checkpoint: its '
            f'{FINGERPRINT_FILE} records base fingerprint {str(want)[:12]}... '
            f'(base {meta.get("base_model", "?")}), but {base_dir} has '
            f'{base_fingerprint(base_dir)[:12]}...; load it on the base it was trained on')


def _load_adapter_state(adapter_dir: Path) -> dict[str, Any]:
    import torch
    st = adapter_dir / ADAPTER_WEIGHTS[0]
    try:
        if st.is_file():
            from safetensors.torch import load_file
            return dict(load_file(str(st)))
        return dict(torch.load(adapter_dir / ADAPTER_WEIGHTS[1], map_location='cpu',
                               weights_only=True))
    except Exception as e:  # any unreadable weight file
        raise BackendUnavailableError(
            f'adapter weights in {adapter_dir} could not be read ({type(e).__name__}: {e})') from e


def _module_for_key(key: str) -> str:
    """``base_model.model.<path>.lora_A.weight`` -> ``<path>`` (peft's saved key layout)."""
    name = key
    if name.startswith('base_model.model.'):
        name = name[len('base_model.model.'):]
    for marker in ('.lora_A', '.lora_B', '.lora_embedding_A', '.lora_embedding_B',
                   '.lora_magnitude_vector'):
        if marker in name:
            return name.split(marker)[0]
    return name


def check_adapter_fits(model: Any, adapter_cfg: dict[str, Any], state: dict[str, Any],
                       adapter_dir: Path) -> None:
    """
    Check that the adapter's targets exist in ``model`` and its matrices fit them.

    :raises BackendUnavailableError: On unknown targets, rank or shape mismatches.
    """
    modules = dict(model.named_modules())
    targets = adapter_cfg.get('target_modules') or []
    if isinstance(targets, str):
        targets = [targets]
    # peft's rule: a target names a module exactly or is a dotted suffix of its name
    unknown = sorted(t for t in targets
                     if not any(n == t or n.endswith('.' + t) for n in modules))
    if unknown and not isinstance(adapter_cfg.get('target_modules'), str):
        raise BackendUnavailableError(
            f'adapter {adapter_dir} targets modules {unknown} that the base model does not have; '
            'it was trained for another architecture')
    rank = int(adapter_cfg.get('r') or 0)
    rank_pattern = adapter_cfg.get('rank_pattern') or {}
    if not any('lora_A' in k for k in state):
        raise BackendUnavailableError(f'adapter weights in {adapter_dir} hold no lora_A tensors')
    for key, tensor in state.items():
        if '.lora_A' not in key and '.lora_B' not in key:
            continue
        path = _module_for_key(key)
        module = modules.get(path)
        if module is None:
            raise BackendUnavailableError(
                f'adapter {adapter_dir} has weights for {path}, which the base model does not '
                'have; it was trained for another base')
        weight = getattr(module, 'weight', None)
        if weight is None or weight.dim() != 2:
            raise BackendUnavailableError(f'adapter target {path} is not a linear layer')
        out_f, in_f = int(weight.shape[0]), int(weight.shape[1])
        want_r = int(next((v for k, v in rank_pattern.items() if path.endswith(k)), rank))
        shape = tuple(int(s) for s in tensor.shape)
        expect = (want_r, in_f) if '.lora_A' in key else (out_f, want_r)
        if shape != expect:
            raise BackendUnavailableError(
                f'adapter {adapter_dir} does not fit the base: {key} has shape {shape}, the base '
                f'layer {path} ({in_f} -> {out_f}) with rank r={want_r} from {ADAPTER_CONFIG} '
                f'needs {expect}; rank or hidden size differ (adapter for another base?)')


def apply_adapter(model: Any, adapter_dir: str | Path, *, base_dir: str | Path | None = None
                  ) -> Any:
    """
    Apply a LoRA adapter unmerged, as ``PeftModel.from_pretrained(base, dir)`` does.

    :param model: The loaded ``Qwen3VLForConditionalGeneration`` (base weights).
    :param adapter_dir: The adapter directory.
    :param base_dir: The base checkpoint directory, for the fingerprint check.
    :returns: The same model class with LoRA layers injected (``PeftModel.get_base_model()``),
        so ``generate`` and ``model.model`` work as on a plain checkpoint.
    :raises BackendUnavailableError: If the adapter is missing, unreadable or does not fit.
    """
    path = Path(adapter_dir).expanduser()
    cfg = read_adapter_config(path)
    if base_dir is not None:
        check_fingerprint(path, Path(base_dir))
    check_adapter_fits(model, cfg, _load_adapter_state(path), path)
    try:
        from peft import PeftModel
    except ImportError as e:
        raise BackendUnavailableError(
            'LoRA adapters need peft: pip install peft==0.21.2') from e
    try:
        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except Exception as e:  # peft raises many types for bad adapters
        raise BackendUnavailableError(
            f'peft could not apply the adapter {path} ({type(e).__name__}: {e})') from e
    return wrapped.get_base_model().eval()


def adapter_head_path(adapter_dir: str | Path) -> Path | None:
    """The adapter's ``procvlm_head.bin``, if it has one."""
    path = Path(adapter_dir).expanduser() / ADAPTER_HEAD
    return path if path.is_file() else None


def choose_head(base_head: Path | None, adapter_dir: str | Path, head_mode: str
                ) -> Path | None:
    """
    Which head sidecar runs with an adapter.

    ``adapter`` (documented fix): the adapter's ``procvlm_head.bin`` when it has one, else the
    base's. ``official``: always the base's, as the official loader ends up doing after it
    drops the adapter's head keys.
    """
    if head_mode not in HEAD_MODES:
        raise BackendUnavailableError(
            f'adapter_head must be one of {HEAD_MODES}, got {head_mode!r}')
    own = adapter_head_path(adapter_dir)
    if head_mode == 'official':
        if own is not None:
            _LOG.warning('adapter_head=official: %s is ignored and the base head runs, as the '
                         'official --use_lora loader does (its keys do not match the peft '
                         'wrapper); set adapter_head=adapter to use it', own)
        return base_head
    return own if own is not None else base_head
