"""
``procvlm-export check``: torch (transformers, fp32) vs ONNX Runtime on the same inputs.

Compared, each as max abs error and relative error (max abs error / max |reference|):

- ``vision.image_embeds`` (and, for Qwen3-VL, ``vision.deepstack_k``) against HF's vision tower;
- ``decoder.prefill_logits`` (last position) and ``decoder.present_key_i/value_i`` (the new K/V
  rows) against HF ``model(**inputs)`` and its ``DynamicCache``;
- ``decoder.decode_logits``: one decode step fed with the cache, against HF with its cache;
- ``decoder.verify_logits`` (format 2): a 4-token draft-verifying pass, every position;
- a greedy decode of ``new_tokens`` tokens with the ``onnxruntime`` backend against the
  ``transformers`` backend, token for token.

Every failing output is listed (optimum's ``validate_model_outputs`` habit); the CLI exits
non-zero when one fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from procvlm_ros.core.backends import qwen3vl_inputs as qin
from procvlm_ros.core.backends.family_inputs import family_inputs
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.core.errors import BackendUnavailableError
from procvlm_ros.export.errors import ExportError, ValidationError

# Relative tolerance (max abs error / max |reference|) per graph dtype.
DEFAULT_RTOL = {'fp32': 1e-4, 'fp16': 2e-2}
CHECK_TASK = 'put the red block in the bowl'


@dataclass
class OutputError:
    """Error of one output against the torch reference."""

    name: str
    max_abs: float
    rel: float
    rtol: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel)) and self.rel <= self.rtol


@dataclass
class CheckReport:
    """Everything ``check`` measured; ``ok`` is what the exit code reflects."""

    export_id: str
    dtype: str
    outputs: list[OutputError] = field(default_factory=list)
    reference_tokens: list[int] = field(default_factory=list)
    onnx_tokens: list[int] = field(default_factory=list)
    require_greedy_match: bool = True

    @property
    def greedy_match_prefix(self) -> int:
        n = 0
        for a, b in zip(self.reference_tokens, self.onnx_tokens):
            if a != b:
                break
            n += 1
        return n

    @property
    def greedy_identical(self) -> bool:
        return self.reference_tokens == self.onnx_tokens

    @property
    def failures(self) -> list[str]:
        out = [f'{e.name}: rel {e.rel:.3g} > {e.rtol:.3g} (max abs {e.max_abs:.3g})'
               for e in self.outputs if not e.ok]
        if self.require_greedy_match and not self.greedy_identical:
            out.append(f'greedy decode: first {self.greedy_match_prefix} of '
                       f'{len(self.reference_tokens)} tokens match')
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def table(self) -> str:
        """Readable per-output table plus the greedy line."""
        lines = [f'{"output":32} {"max_abs":>10} {"rel":>10} {"rtol":>8}  ok']
        for e in self.outputs:
            lines.append(f'{e.name:32} {e.max_abs:10.3g} {e.rel:10.3g} {e.rtol:8.1g}  '
                         f'{"yes" if e.ok else "NO"}')
        lines.append(f'greedy decode: {self.greedy_match_prefix}/{len(self.reference_tokens)} '
                     f'tokens identical ({"identical" if self.greedy_identical else "differ"})')
        return '\n'.join(lines)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(ok=self.ok, failures=self.failures,
                    greedy_identical=self.greedy_identical,
                    greedy_match_prefix=self.greedy_match_prefix)
        return data


def compare(name: str, ref: Any, got: Any, rtol: float) -> OutputError:
    """Max abs and relative error of ``got`` against ``ref`` (shape mismatch is infinite)."""
    r = np.asarray(ref, dtype=np.float64)
    g = np.asarray(got, dtype=np.float64)
    if r.shape != g.shape:
        return OutputError(f'{name} (shape {g.shape} vs {r.shape})', float('inf'),
                           float('inf'), rtol)
    max_abs = float(np.max(np.abs(r - g))) if r.size else 0.0
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    return OutputError(name, max_abs, max_abs / scale if scale else max_abs, rtol)


def check_images(manifest: ExportManifest, frames: int, seed: int) -> list[Any]:
    """Seeded random frames at the export's image size, pre-resized like the node does."""
    from PIL import Image

    from procvlm_ros.core.image import qwen_vl_pre_resize
    width, height = manifest.limits['image_size']
    rng = np.random.default_rng(seed)
    return [qwen_vl_pre_resize(Image.fromarray(rng.integers(0, 256, (height, width, 3),
                                                            dtype=np.uint8)), 14)
            for _ in range(frames)]


def _np(tensor: Any) -> npt.NDArray[Any]:
    return np.asarray(tensor.detach().float().cpu().numpy())


class _Sessions:
    """Direct ONNX Runtime sessions on the export (no backend logic in between)."""

    def __init__(self, manifest: ExportManifest) -> None:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.vision = ort.InferenceSession(str(manifest.graph_path('vision')), options,
                                           providers=['CPUExecutionProvider'])
        self.decoder = ort.InferenceSession(str(manifest.graph_path('decoder')), options,
                                            providers=['CPUExecutionProvider'])
        self.float = np.float16 if manifest.dtype == 'fp16' else np.float32
        self.model = manifest.model


def _tensor_checks(manifest: ExportManifest, ref: Any, inputs: dict[str, Any],
                   rtol: float) -> list[OutputError]:
    import torch
    s = _Sessions(manifest)
    md = manifest.model
    grid = inputs['image_grid_thw']
    frames, (_, gh, gw) = int(grid.shape[0]), (int(v) for v in grid[0])
    patches, tokens = gh * gw, gh * gw // 4
    with torch.no_grad():
        hf_vision = ref.model.model.visual(inputs['pixel_values'], grid_thw=grid)
        hf_out = ref.model(**inputs, use_cache=True)
    family = family_inputs(manifest.family, md)
    pixels = _np(inputs['pixel_values']).reshape(frames, patches, -1).astype(s.float)
    vision_out = s.vision.run(None, {'pixel_values': pixels, **family.vision_arrays(gh, gw)})
    embeds = vision_out[0]
    errors = [compare('vision.image_embeds', _np(hf_vision.pooler_output),
                      embeds.reshape(frames * tokens, -1), rtol)]
    ids = _np(inputs['input_ids'])[0].astype(np.int64)
    bank = np.concatenate([np.zeros((1, embeds.shape[-1]), embeds.dtype),
                           embeds.reshape(frames * tokens, -1)])
    ds_bank = None
    if md['num_deepstack']:  # Qwen3-VL: deepstack features from the vision graph's 2nd output
        deep = vision_out[1]
        errors += [compare(f'vision.deepstack_{k}', _np(feat),
                           deep[k].reshape(frames * tokens, -1), rtol)
                   for k, feat in enumerate(hf_vision.deepstack_features)]
        ds_bank = np.concatenate([np.zeros((deep.shape[0], 1, deep.shape[-1]), deep.dtype),
                                  deep.reshape(deep.shape[0], frames * tokens, -1)], axis=1)
    image_id = int(manifest.tokens['image_token_id'])
    vis = qin.visual_index(ids, image_id, [1 + f * tokens for f in range(frames)],
                           [tokens] * frames)
    positions, delta = family.rope_index(ids, image_id, [(1, gh, gw)] * frames,
                                         md['spatial_merge_size'])
    slots = ids.size + 8
    cache = np.zeros((md['num_layers'], 2, 1, md['num_kv_heads'], slots, md['head_dim']),
                     s.float)

    def run(tok_ids: Any, vindex: Any, pos: Any, past: int, heads: int = 1) -> list[Any]:
        feed = {'input_ids': tok_ids[None], 'visual_index': vindex[None],
                'image_embeds': bank, 'position_ids': pos[:, None],
                'past_length': np.array([past], np.int64)}
        if ds_bank is not None:
            feed['deepstack'] = ds_bank
        if manifest.verifies_drafts:  # format 2: logits of the last ``heads`` positions
            feed['logit_index'] = np.arange(tok_ids.size - heads, tok_ids.size, dtype=np.int64)
        for i in range(md['num_layers']):
            feed[f'past_key_{i}'], feed[f'past_value_{i}'] = cache[i, 0], cache[i, 1]
        return list(s.decoder.run(None, feed))

    logits, _, new_kv = run(ids, vis, positions, 0)
    errors.append(compare('decoder.prefill_logits', _np(hf_out.logits[:, -1]), logits, rtol))
    for i, layer in enumerate(hf_out.past_key_values.layers):
        errors.append(compare(f'decoder.present_key_{i}', _np(layer.keys), new_kv[i, 0], rtol))
        errors.append(compare(f'decoder.present_value_{i}', _np(layer.values), new_kv[i, 1],
                              rtol))
    cache[:, :, :, :, :ids.size] = new_kv
    token = int(np.argmax(logits[0]))
    with torch.no_grad():
        hf_step = ref.model(input_ids=torch.tensor([[token]]),
                            past_key_values=hf_out.past_key_values, use_cache=True)
    pos = np.full((3, 1), ids.size + delta, np.int64)
    step_logits = run(np.array([token], np.int64), np.zeros(1, np.int64), pos, ids.size)[0]
    errors.append(compare('decoder.decode_logits', _np(hf_step.logits[:, -1]), step_logits,
                          rtol))
    if manifest.verifies_drafts:  # a draft-verifying pass: every position's logits
        hf_out.past_key_values.crop(-1)
        chunk = np.array([token, *ids[-3:]], np.int64)
        with torch.no_grad():
            hf_verify = ref.model(input_ids=torch.from_numpy(chunk)[None],
                                  past_key_values=hf_out.past_key_values, use_cache=True)
        pos = np.broadcast_to(np.arange(ids.size, ids.size + chunk.size) + delta,
                              (3, chunk.size)).copy()
        verify_logits = run(chunk, np.zeros(chunk.size, np.int64), pos, ids.size,
                            chunk.size)[0]
        errors.append(compare('decoder.verify_logits', _np(hf_verify.logits[0]),
                              verify_logits, rtol))
    return errors


def check_export(onnx_dir: str | Path, model: str, *, frames: int = 3, new_tokens: int = 16,
                 rtol: float | None = None, seed: int = 0,
                 require_greedy_match: bool | None = None) -> CheckReport:
    """
    Compare an export with its checkpoint; never raises for a numeric mismatch (see ``ok``).

    :param onnx_dir: ``procvlm-export onnx`` folder.
    :param model: The checkpoint it was exported from (directory or hub id).
    :param frames: Frames in the test window (at the export's image size).
    :param new_tokens: Greedy tokens compared.
    :param rtol: Relative tolerance; default per dtype (:data:`DEFAULT_RTOL`).
    :param require_greedy_match: Fail on any greedy difference (default: fp32 exports only).
    :raises ExportError: If the folder or checkpoint cannot be used at all.
    """
    from procvlm_ros.core.backends.base import GenerationRequest
    from procvlm_ros.core.backends.onnx_backend import OnnxRuntimeBackend
    from procvlm_ros.core.backends.transformers_backend import TransformersBackend
    from procvlm_ros.core.config import BackendConfig
    try:
        manifest = ExportManifest.read(onnx_dir)
        manifest.verify_files(hashes=True)
        ref = TransformersBackend(BackendConfig(model=model, device='cpu', dtype='fp32',
                                                max_new_tokens=new_tokens))
        ref.load()
        onnx = OnnxRuntimeBackend(BackendConfig(backend='onnxruntime', engine_dir=str(onnx_dir),
                                                device='cpu', max_new_tokens=new_tokens))
        onnx.load()
    except BackendUnavailableError as e:
        raise ExportError(str(e)) from e
    frames = min(frames, int(manifest.limits['max_frames']))
    tol = rtol if rtol is not None else DEFAULT_RTOL[manifest.dtype]
    strict = manifest.dtype == 'fp32' if require_greedy_match is None else require_greedy_match
    report = CheckReport(manifest.export_id, manifest.dtype, require_greedy_match=strict)
    request = GenerationRequest(images=check_images(manifest, frames, seed), task=CHECK_TASK)
    with ref, onnx:
        report.outputs = _tensor_checks(manifest, ref, ref.prepare_inputs(request), tol)
        report.reference_tokens = ref.generate(request).token_ids
        report.onnx_tokens = onnx.generate(request).token_ids
    return report


def raise_on_failure(report: CheckReport) -> None:
    """Raise :class:`ValidationError` listing every failing output."""
    if not report.ok:
        raise ValidationError('export does not match the checkpoint:\n- '
                              + '\n- '.join(report.failures))
