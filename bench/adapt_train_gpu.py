#!/usr/bin/env python3
"""
What adapting ProcVLM-2B needs on a GPU: step time and peak memory of ``procvlm-adapt train``
(issue 10, GPU section).

1. A randomly initialised Qwen3-VL with ProcVLM-2B's shapes (``--shape procvlm_2b``: 2.13 B
   parameters, Qwen3 tokenizer, bf16 safetensors, ~4.3 GB), written once to ``OUT/base``.
   Random weights cost what trained ones cost: same shapes, same kernels.
2. One demonstration recorded the way a user records it: a ``drawer`` episode of
   ``procvlm_ros.synth`` (the demonstration of ``make adapt-demo``) scaled up to a camera-sized
   video (``--frame-size``, 640x480 by default), then ``procvlm-adapt annotate --stages`` and
   ``procvlm-adapt dataset`` (the official window variety: 1 to 17 frames per sample).
3. ``procvlm-adapt train`` with the official recipe (``--preset official``: r 64 on q/k/v/o,
   batch 4 x accumulation 2, value head, processor limits 32^2..512^2) for ``--steps`` steps,
   once per ``--configs`` entry, each in its own process so each peak is its own:
   ``official``, ``checkpointing`` (+ ``--gradient_checkpointing``, as the official script sets
   on GPUs) and ``batch1`` (checkpointing, batch 1 x accumulation 8: the smallest footprint
   with the same effective batch).

It prints a table (median step time after the first step, first step, peak CUDA memory
allocated and reserved) and writes ``OUT/adapt_train_gpu.json``. Needs torch with CUDA for
``--device cuda``; ``--shape tiny --device cpu`` runs the same path on a CPU (what the test
suite checks).

    python bench/adapt_train_gpu.py --out /tmp/adapt-gpu                 # H200/A100/...: ~5 min
    python bench/adapt_train_gpu.py --out /tmp/a --shape tiny --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

from procvlm_ros.synth.scene import HEIGHT, WIDTH  # the synthetic frames' size

CONFIGS = {
    'official': [],
    'checkpointing': ['--gradient_checkpointing'],
    'batch1': ['--gradient_checkpointing', '--batch_size', '1', '--grad_accum', '8'],
}


def base_checkpoint(out: Path, shape: str, device: str) -> Path:
    """The random base, built once (a rerun reuses it)."""
    from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

    path = out / 'base'
    if path.is_dir():
        return path
    t0 = time.perf_counter()
    partial = out / 'base.partial'  # renamed when complete: a rerun never reuses half a base
    shutil.rmtree(partial, ignore_errors=True)
    build_tiny_checkpoint(partial, shape=shape, dtype='bfloat16' if shape == 'procvlm_2b'
                          else 'float32', device=device, with_value_head=True)
    partial.rename(path)
    print(f'{shape} base written to {path} in {time.perf_counter() - t0:.0f} s', flush=True)
    return path


def demonstration(out: Path, scale: int) -> Path:
    """annotate -> dataset on a camera-sized video (``scale`` x 160x120) of the adapt-demo
    demonstration."""
    import numpy as np

    from procvlm_ros.adapt.cli import main as adapt
    from procvlm_ros.adapt.demo import DEMO_SEED, FAMILY, stage_file
    from procvlm_ros.media.video import write_video
    from procvlm_ros.synth.episode import generate_episode

    data = out / 'data'
    if (data / 'qa_pairs.jsonl').is_file():
        return data
    ep = generate_episode(DEMO_SEED, 0, 'success', FAMILY)
    video = out / 'demonstration.mp4'
    write_video(video, (np.repeat(np.repeat(f, scale, axis=0), scale, axis=1)
                        for f in ep.frames()), ep.fps, options={'crf': '18'})
    stages = stage_file(ep, out / 'stages.yaml')
    if adapt(['annotate', '--source', str(video), '--out', str(out / 'annotation'),
              '--stages', str(stages)]) != 0:
        raise SystemExit('procvlm-adapt annotate failed')
    if adapt(['dataset', str(out / 'annotation'), '--out', str(data)]) != 0:
        raise SystemExit('procvlm-adapt dataset failed')
    return data


def train(base: Path, data: Path, adapter: Path, extra: list[str], steps: int, device: str,
          dtype: str) -> dict[str, Any]:
    """One ``procvlm-adapt train`` process; its summary (``procvlm_adapter.json``)."""
    cmd = [sys.executable, '-m', 'procvlm_ros.adapt.cli', 'train', '--model', str(base),
           '--data', str(data), '--out', str(adapter), '--preset', 'official', '--steps',
           str(steps), '--device', device, '--dtype', dtype, '--quiet', *extra]
    print('$ ' + ' '.join(cmd), flush=True)
    done = subprocess.run(cmd, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    if done.returncode != 0:
        return {'error': f'exit code {done.returncode}'}
    return dict(json.loads((adapter / 'procvlm_adapter.json').read_text(encoding='utf-8')))


def _frame_scale(size: str) -> int | None:
    try:
        width, height = (int(v) for v in size.lower().split('x'))
    except ValueError:
        return None
    if width <= 0 or width % WIDTH or height % HEIGHT or width // WIDTH != height // HEIGHT:
        return None
    return width // WIDTH


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    p.add_argument('--out', required=True, help='work directory (base, data, adapters, JSON)')
    p.add_argument('--shape', default='procvlm_2b', choices=['procvlm_2b', 'tiny'])
    p.add_argument('--device', default='cuda')
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'])
    p.add_argument('--steps', type=int, default=6, help='optimizer steps per configuration')
    p.add_argument('--frame-size', default='640x480', help='WxH, a multiple of 160x120')
    p.add_argument('--configs', default=','.join(CONFIGS),
                   help=f'comma-separated, of {", ".join(CONFIGS)}')
    args = p.parse_args(argv)
    scale = _frame_scale(args.frame_size)
    if scale is None:
        p.error(f'--frame-size {args.frame_size!r}: must be a whole multiple of '
                f'{WIDTH}x{HEIGHT} (the synthetic frames are scaled up), e.g. 640x480')
    import torch

    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('adapt_train_gpu: no CUDA device (torch sees none); use --device cpu with '
              '--shape tiny for a CPU run', file=sys.stderr)
        return 2
    configs = [c.strip() for c in args.configs.split(',') if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        p.error(f'--configs: unknown {unknown}, choose from {list(CONFIGS)}')
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_checkpoint(out, args.shape, args.device)
    data = demonstration(out, scale)
    samples = sum(1 for _ in (data / 'qa_pairs.jsonl').open(encoding='utf-8'))
    rows = []
    for name in configs:
        adapter = out / 'adapters' / name
        if adapter.exists():  # train refuses a non-empty folder; a rerun measures again
            shutil.rmtree(adapter)
        s = train(base, data, adapter, CONFIGS[name], args.steps, args.device, args.dtype)
        rows.append({'config': name, **{k: s.get(k) for k in (
            'error', 'steps', 'step_seconds_median', 'first_step_seconds',
            'peak_cuda_memory_gib', 'peak_cuda_reserved_gib', 'peak_rss_gib', 'train_seconds',
            'final_loss', 'dtype', 'device')}, 'settings': s.get('settings')})
    gpu = torch.cuda.get_device_name(0) if args.device.startswith('cuda') else None
    import transformers
    result = {'gpu': gpu, 'shape': args.shape, 'frame_size': args.frame_size,
              'samples': samples, 'python': platform.python_version(),
              'torch': torch.__version__, 'transformers': transformers.__version__,
              'rows': rows}
    (out / 'adapt_train_gpu.json').write_text(json.dumps(result, indent=1) + '\n',
                                              encoding='utf-8')
    print(f'\n{gpu or "CPU"}, {args.shape}, {args.dtype}, {args.frame_size} frames, '
          f'{samples} samples, official recipe, {args.steps} steps each')
    print(f'{"config":<15}{"step s":>9}{"first s":>9}{"peak GiB":>10}{"reserved":>10}')
    for r in rows:
        if r.get('error'):
            print(f'{r["config"]:<15} failed: {r["error"]}')
            continue
        peak = r['peak_cuda_memory_gib'] if gpu else r['peak_rss_gib']
        print(f'{r["config"]:<15}{r["step_seconds_median"]:9.3f}{r["first_step_seconds"]:9.3f}'
              f'{peak if peak is not None else float("nan"):10.2f}'
              f'{r["peak_cuda_reserved_gib"] or float("nan"):10.2f}')
    print(f'-> {out / "adapt_train_gpu.json"}')
    return 1 if any(r.get('error') for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
