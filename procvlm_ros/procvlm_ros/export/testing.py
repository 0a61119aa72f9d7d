"""
Test/demo fixture: a tiny random checkpoint (Qwen3-VL, or another exportable family) and its
ONNX export, built once per folder.

Several test modules need the same export; building it takes ~20 s on two CPU cores, so it is
reused when its manifest is already there (tests pass a per-session temporary folder).
"""

from __future__ import annotations

from pathlib import Path

TINY_IMAGE_SIZE = (64, 48)


def tiny_checkpoint(base: str | Path, seed: int = 7, family: str = 'qwen3_vl') -> Path:
    """Build (once) the tiny checkpoint ``<base>/tiny-<seed>`` (``tiny-<family>-<seed>``)."""
    from procvlm_ros.testing.tiny_model import build_tiny_checkpoint
    name = f'tiny-{seed}' if family == 'qwen3_vl' else f'tiny-{family}-{seed}'
    path = Path(base) / name
    if not (path / 'model.safetensors').is_file():
        build_tiny_checkpoint(path, seed=seed, family=family)
    return path


def tiny_export(base: str | Path, *, seed: int = 7, dtype: str = 'fp32',
                image_size: tuple[int, int] = TINY_IMAGE_SIZE,
                max_frames: int = 8, format_version: int | None = None,
                family: str = 'qwen3_vl') -> tuple[Path, Path]:
    """
    Build (once) the tiny checkpoint and its export; return ``(checkpoint, export folder)``.

    :param base: Folder shared by the callers (e.g. pytest's session base temp).
    :param format_version: Export format (default: the current one).
    :param family: Model family of the tiny checkpoint (``qwen3_vl`` or ``qwen2_5_vl``).
    """
    from procvlm_ros.core.backends.manifest import FORMAT_VERSION
    from procvlm_ros.export.onnx_export import export_onnx, OnnxExportOptions
    checkpoint = tiny_checkpoint(base, seed, family)
    width, height = image_size
    version = format_version or FORMAT_VERSION
    suffix = '' if version == FORMAT_VERSION else f'-v{version}'
    prefix = 'export' if family == 'qwen3_vl' else f'export-{family}'
    out = Path(base) / f'{prefix}-{seed}-{dtype}-{width}x{height}-f{max_frames}{suffix}'
    if not (out / 'manifest.json').is_file():
        export_onnx(OnnxExportOptions(model=str(checkpoint), out=out, dtype=dtype,
                                      max_frames=max_frames, image_size=image_size,
                                      format_version=version),
                    show_progress=False)
    return checkpoint, out


def demo_export(base: str | Path, *, format_version: int | None = None) -> Path:
    """Build (once) the ONNX export of the committed demo model (160x120 frames, 8 frames)."""
    from procvlm_ros.core.backends.manifest import FORMAT_VERSION
    from procvlm_ros.demo_model import CHECKPOINT_DIR
    from procvlm_ros.export.onnx_export import export_onnx, OnnxExportOptions
    version = format_version or FORMAT_VERSION
    out = Path(base) / f'demo-export-v{version}'
    if not (out / 'manifest.json').is_file():
        export_onnx(OnnxExportOptions(model=str(CHECKPOINT_DIR), out=out, image_size=(160, 120),
                                      format_version=version), show_progress=False)
    return out


def write_fake_export(folder: str | Path, *, export_id: str = 'fake-export',
                      dtype: str = 'fp32') -> Path:
    """
    A folder with a valid ``manifest.json`` and placeholder graph files (not runnable graphs).

    For fast tests of manifest verification, engine records and load-time refusals.
    """
    from procvlm_ros.core.backends.manifest import (
        ExportManifest,
        FORMAT,
        FORMAT_VERSION,
        sha256_file,
    )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for name, payload in (('vision', b'v' * 1000), ('decoder', b'd' * 3000)):
        files = {}
        for fname, data in ((f'{name}.onnx', payload[:100]), (f'{name}.onnx.data', payload)):
            (out / fname).write_bytes(data)
            files[fname] = {'size': len(data), 'sha256': sha256_file(out / fname)}
        graphs[name] = {'file': f'{name}.onnx', 'files': files,
                        'inputs': [{'name': f'{name}_in', 'dtype': 'float32', 'shape': [1]}],
                        'outputs': [{'name': f'{name}_out', 'dtype': 'float32', 'shape': [1]}]}
    ExportManifest({
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'export_id': export_id,
        'dtype': dtype, 'graphs': graphs,
        'limits': {'max_frames': 2, 'image_size': [64, 48], 'frame_grid': [4, 4],
                   'max_tokens_per_frame': 4, 'max_patches_per_frame': 16, 'max_context': 128,
                   'prefill_chunk': 64, 'cache_frames': 4},
        'model': {'num_layers': 1, 'num_attention_heads': 2, 'num_kv_heads': 1, 'head_dim': 4,
                  'hidden_size': 8, 'vocab_size': 32, 'num_deepstack': 1, 'patch_dim': 1536,
                  'num_grid_per_side': 48, 'spatial_merge_size': 2},
        'tokens': {'image_token_id': 5, 'eos_token_ids': [1]},
        'generation': {'eos_token_id': [1]}}, out).write()
    return out
