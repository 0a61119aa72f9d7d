#!/usr/bin/env python3
"""
Where an onnxruntime decoder pass spends its time on the host (issue 11).

Runs the ``onnxruntime`` backend (CPU provider, one thread) on a window of ``--frames``
synthetic camera frames and times every decoder pass after the prefill, split into the time
inside ``run_with_iobinding`` (the graph) and the rest (the host: staging the token, position
and slot, binding lookup, reading the argmax, writing the new K/V rows into the cache, the
Python loop), and the host part alone (the graph call replaced by nothing). Then one pass of each verify size (1, 2, 4, 8, 16, 32 tokens after the same
prefill) is timed, the CPU counterpart of ``verify_cost_gpu.py``.

The pass split uses only what older versions of the backend also have (``step_times`` and the
runtime's ``run_decoder``), so ``PYTHONPATH=<old checkout>/procvlm_ros`` measures them with the
same script (give them an export of the format they read).

    python bench/ort_pass_cost.py --onnx out/bench/tiny-onnx --json bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np


def frames(count: int, size: tuple[int, int]) -> list[Any]:
    from PIL import Image

    from procvlm_ros.core.image import qwen_vl_pre_resize
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return [qwen_vl_pre_resize(Image.fromarray(np.roll(base, 7 * i, axis=1)), 14)
            for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    p.add_argument('--onnx', required=True)
    p.add_argument('--frames', type=int, default=8)
    p.add_argument('--image-size', default='640x480')
    p.add_argument('--new-tokens', type=int, default=32)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--json', default=None)
    args = p.parse_args(argv)
    os.environ['PROCVLM_ORT_INTRA_OP_THREADS'] = '1'
    from procvlm_ros.core.backends import create_backend
    from procvlm_ros.core.backends.base import GenerationRequest
    from procvlm_ros.core.config import BackendConfig
    width, height = (int(v) for v in args.image_size.split('x'))
    images = frames(args.frames, (width, height))
    request = GenerationRequest(images, 'put the red block in the bowl')
    backend = create_backend(BackendConfig(backend='onnxruntime', engine_dir=args.onnx,
                                           device='cpu', max_new_tokens=args.new_tokens))
    backend.load()
    backend.ignore_eos = True
    runtime = backend._s.runtime
    graph: list[float] = []
    run = runtime.run_decoder

    def timed(*a: Any, **k: Any) -> None:
        t0 = time.perf_counter()
        run(*a, **k)
        graph.append(time.perf_counter() - t0)

    runtime.run_decoder = timed
    totals, graphs = [], []
    for rep in range(args.repeats + 1):
        graph.clear()
        backend.generate(request)
        steps = list(backend.step_times)
        if rep:  # the first call warms up
            totals += steps
            graphs += graph[-len(steps):]
    host = [t - g for t, g in zip(totals, graphs)]
    result: dict[str, Any] = {
        'export': args.onnx, 'passes': len(totals),
        'pass_ms_median': 1e3 * statistics.median(totals),
        'graph_ms_median': 1e3 * statistics.median(graphs),
        'host_ms_median': 1e3 * statistics.median(host),
        'host_ms_mean': 1e3 * statistics.mean(host)}
    # Host cost alone: the same passes with the graph call replaced by nothing (the loop
    # reads whatever id the buffers hold; eos is ignored, so the pass count is the same).
    runtime.run_decoder = lambda *a, **k: None
    host_only = []
    for rep in range(3 * args.repeats + 1):
        backend.generate(request)
        if rep:
            host_only += list(backend.step_times)
    result['host_only_us_median'] = 1e6 * statistics.median(host_only)
    result['host_only_us_p10'] = 1e6 * sorted(host_only)[len(host_only) // 10]
    runtime.run_decoder = timed
    result['verify_ms'] = verify_curve(backend, request, graph)
    backend.close()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=2)
            f.write('\n')
    return 0


def verify_curve(backend: Any, request: Any, graph: list[float]) -> dict[str, float]:
    """Graph time of one pass verifying k tokens after the prefill (format-2 exports only)."""
    s = backend._s
    if not getattr(s.dims, 'per_position', False):
        return {}
    from procvlm_ros.core.backends import qwen3vl_inputs as qin
    from procvlm_ros.core.backends.frame_features import frame_features
    images = list(request.images)
    entries, _, _ = frame_features(s, images, None)
    ids = backend._tokenize(s, request.task, images, [e.tokens for e in entries])
    positions, delta = qin.rope_index(ids, s.image_token_id, [e.grid for e in entries],
                                      s.dims.merge)
    vis = qin.visual_index(ids, s.image_token_id,
                           [s.cache.first_row(e.slot) for e in entries],
                           [e.tokens for e in entries])
    slots = backend._capacity(s, ids.size)
    backend._prefill(s, ids, vis, positions, slots)
    out = {}
    for k in (1, 2, 4, 8, 16, 32):
        if k > s.dims.max_verify:
            break
        feed = np.arange(100, 100 + k, dtype=np.int64)
        pos = np.broadcast_to(np.arange(ids.size, ids.size + k) + delta, (3, k)).copy()
        times = []
        for _ in range(6):
            graph.clear()
            backend._run_chunk(s, ids.size, feed, np.zeros(k, np.int64), pos, slots, k)
            times.append(graph[-1])
        out[str(k)] = 1e3 * statistics.median(times[1:])
    return out


if __name__ == '__main__':
    sys.exit(main())
