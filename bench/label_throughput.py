#!/usr/bin/env python3
"""
Labelling throughput of ``procvlm-label``: episodes/s and windows/s, in-process and on a local
Ray cluster with 1 and 2 model-holding workers, on synthetic episodes with the demo model
(CPU) or any backend/model given.

    .venv/bin/python bench/label_throughput.py --episodes 8 --workers 1,2 --json out.json

Each configuration labels the same episodes into a fresh output folder; the figures are wall
time from the first submitted episode to the last written result (model loading included, as
in a real run). On a machine shared with other work the figures are noisy: run it idle.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import sys
import tempfile
import time


def _label(args: argparse.Namespace, data: Path, out: Path, mode: str, workers: int) -> dict:
    from procvlm_ros.label import cli, runner
    from procvlm_ros.label.sources import discover
    from procvlm_ros.label.store import LabelStore
    from procvlm_ros.label.worker import Labeller

    argv = ['run', '--videos', str(data), '--out', str(out), '--model', args.model,
            '--backend', args.backend, '--device', args.device, '--dtype', args.dtype,
            '--stride', str(args.stride), '--torch-threads', str(args.torch_threads)]
    parsed = cli.build_parser().parse_args(argv)
    settings, options = cli._settings(parsed), cli._backend_options(parsed)
    store = LabelStore(out, {'bench': mode})
    store.open()
    specs = discover(data, 'videos')

    def handle(outcome: dict) -> None:
        if not outcome['ok']:
            raise RuntimeError(outcome['reason'])
        store.write_result(outcome['result'])

    t0 = time.perf_counter()
    if mode == 'local':
        labeller = Labeller(options, settings, args.torch_threads)
        stats = runner.run_local(specs, labeller, handle, show_progress=False)
        labeller.close()
    else:
        stats = runner.run_ray(specs, options, settings, handle, workers=workers,
                               cpus_per_worker=1, gpus_per_worker=args.worker_gpus,
                               torch_threads=args.torch_threads, show_progress=False)
    wall = time.perf_counter() - t0
    return {'mode': mode, 'workers': workers, 'episodes': len(specs),
            'windows': stats['windows'], 'seconds': round(wall, 2),
            'episodes_per_s': round(len(specs) / wall, 3),
            'windows_per_s': round(stats['windows'] / wall, 2)}


def main() -> int:
    from procvlm_ros.demo_model import CHECKPOINT_DIR

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('--episodes', type=int, default=8)
    parser.add_argument('--stride', type=int, default=2)
    parser.add_argument('--workers', default='1,2', help='Ray worker counts to run')
    parser.add_argument('--no-local', action='store_true', help='skip the in-process run')
    parser.add_argument('--model', default=str(CHECKPOINT_DIR))
    parser.add_argument('--backend', default='transformers')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--dtype', default='fp32')
    parser.add_argument('--worker-gpus', type=float, default=0.0)
    parser.add_argument('--torch-threads', type=int, default=1)
    parser.add_argument('--json', help='also write the rows here')
    args = parser.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from procvlm_ros.synth.export import write_dataset

    counts = [int(x) for x in args.workers.split(',') if x]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / 'ds'
        write_dataset(data, args.episodes, 2024)
        rows = []
        if not args.no_local:
            rows.append(_label(args, data, Path(tmp) / 'local', 'local', 1))
            print(json.dumps(rows[-1]), flush=True)
        if counts:
            import ray

            ray.init(num_cpus=max(counts), num_gpus=None if args.worker_gpus else 0,
                     include_dashboard=False, log_to_driver=False)
            for n in counts:
                rows.append(_label(args, data, Path(tmp) / f'ray{n}', 'ray', n))
                print(json.dumps(rows[-1]), flush=True)
            ray.shutdown()
    print(f"{'mode':6} {'workers':>7} {'episodes':>8} {'windows':>7} {'seconds':>8} "
          f"{'ep/s':>7} {'win/s':>7}")
    for r in rows:
        print(f"{r['mode']:6} {r['workers']:7d} {r['episodes']:8d} {r['windows']:7d} "
              f"{r['seconds']:8.1f} {r['episodes_per_s']:7.3f} {r['windows_per_s']:7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({'cpu_count': os.cpu_count(), 'rows': rows},
                                              indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
