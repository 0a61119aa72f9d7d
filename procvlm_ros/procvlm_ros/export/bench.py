"""
``procvlm-export bench``: per-stage latency, tokens/s and peak memory of each backend.

Each backend runs in its own subprocess (so peak RSS is its own) on the same stated window:
``frames`` synthetic camera frames of ``image_size``, pre-resized as the node does, exactly
``new_tokens`` generated (eos ignored). Reported per backend, over ``repeats`` cold windows:
vision, prefill and per-token decode latency (p50/p95), end-to-end latency, tokens/s, peak
RSS (and peak CUDA memory where torch sees a GPU), plus a sliding window of ``windows`` stride-1
windows to show the vision-cache saving. Ratios are against the transformers backend measured
in the same run. The transformers stages are timed with the model's own modules (vision tower,
one forward for prefill, single-token forwards with the cache for decode).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

RESULT_PREFIX = 'BENCH_RESULT '
TASK = 'put the red block in the bowl'


@dataclass(frozen=True)
class BenchOptions:
    """The benchmark window and which backends to run."""

    model: str
    onnx: str = ''
    engine_dir: str = ''
    backends: tuple[str, ...] = ('transformers', 'onnxruntime', 'tensorrt')
    device: str = 'auto'
    frames: int = 8
    image_size: tuple[int, int] = (640, 480)
    new_tokens: int = 32
    repeats: int = 5
    windows: int = 6
    seed: int = 0
    threads: int = 0  # CPU threads for torch and ONNX Runtime (0: library defaults)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95 in milliseconds."""
    if not values:
        return {'p50_ms': float('nan'), 'p95_ms': float('nan')}
    arr = np.asarray(values) * 1e3
    return {'p50_ms': float(np.percentile(arr, 50)), 'p95_ms': float(np.percentile(arr, 95))}


def frames(opts: BenchOptions) -> list[Any]:
    """Moving synthetic frames, pre-resized like the node (qwen-vl-utils, patch 14)."""
    from PIL import Image

    from procvlm_ros.core.image import qwen_vl_pre_resize
    width, height = opts.image_size
    rng = np.random.default_rng(opts.seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = []
    for i in range(opts.frames + opts.windows - 1):
        img = np.roll(base, 7 * i, axis=1)
        out.append(qwen_vl_pre_resize(Image.fromarray(img), 14))
    return out


def _request(images: list[Any], start: int, count: int) -> Any:
    from procvlm_ros.core.backends.base import GenerationRequest
    return GenerationRequest(images=images[start:start + count], task=TASK,
                             frame_keys=[(0, i) for i in range(start, start + count)])


# ---------------------------------------------------------------- workers


def _torch_stages(backend: Any, opts: BenchOptions, images: list[Any]) -> dict[str, Any]:
    import torch
    model = backend.model
    samples: dict[str, list[float]] = {'vision': [], 'prefill': [], 'decode': [], 'e2e': []}
    request = _request(images, 0, opts.frames)
    with torch.inference_mode():
        for rep in range(opts.repeats + 1):  # the first run warms up
            t0 = time.perf_counter()
            inputs = backend.prepare_inputs(request)
            t1 = time.perf_counter()
            model.model.visual(inputs['pixel_values'], grid_thw=inputs['image_grid_thw'])
            t2 = time.perf_counter()
            out = model(**inputs, use_cache=True)  # vision + prefill
            t3 = time.perf_counter()
            token, cache, steps = out.logits[:, -1].argmax(-1, keepdim=True), \
                out.past_key_values, []
            for _ in range(opts.new_tokens - 1):
                ts = time.perf_counter()
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                token, cache = out.logits[:, -1].argmax(-1, keepdim=True), out.past_key_values
                steps.append(time.perf_counter() - ts)
            if rep:
                samples['vision'].append(t2 - t1)
                samples['prefill'].append((t3 - t2) - (t2 - t1))
                samples['decode'] += steps
                samples['e2e'].append((t1 - t0) + (t3 - t2) + sum(steps))
    prompt = int(inputs['input_ids'].shape[1])
    vision = float(np.mean(samples['vision']))
    sliding = {'cold_vision_ms': vision * 1e3, 'warm_vision_ms': vision * 1e3,
               'saving_pct': 0.0, 'saving_with_preprocess_pct': 0.0, 'hit_rate': 0.0,
               'note': 'no vision cache'}
    return _stage_summary(samples, prompt, sliding)


def _exported_stages(backend: Any, opts: BenchOptions, images: list[Any]) -> dict[str, Any]:
    backend.ignore_eos = True
    samples: dict[str, list[float]] = {'vision': [], 'prefill': [], 'decode': [], 'e2e': [],
                                       'preprocess': []}
    result = None
    for rep in range(opts.repeats + 1):  # the first run warms up
        backend.clear_cache()  # cold: every frame encoded
        result = backend.generate(_request(images, 0, opts.frames))
        if rep:
            samples['vision'].append(result.timings['vision_s'])
            samples['preprocess'].append(result.timings['preprocess_s'])
            samples['prefill'].append(result.timings['prefill_s'])
            samples['decode'] += list(backend.step_times)
            samples['e2e'].append(result.latency_s)
    backend.clear_cache()
    before = backend.cache_stats()
    warm, warm_pre = [], []
    for w in range(opts.windows):  # stride-1 sliding window: one new frame per window
        res = backend.generate(_request(images, w, opts.frames))
        if w:
            warm.append(res.timings['vision_s'])
            warm_pre.append(res.timings['preprocess_s'])
    after = backend.cache_stats()
    hits, misses = after['hits'] - before['hits'], after['misses'] - before['misses']
    cold = float(np.mean(samples['vision']))
    warm_mean = float(np.mean(warm)) if warm else cold
    # Cached frames also skip the image processor (resize + patchify): report both.
    cold_pre = float(np.mean(samples['preprocess']))
    warm_pre_mean = float(np.mean(warm_pre)) if warm_pre else cold_pre
    sliding = {'cold_vision_ms': cold * 1e3, 'warm_vision_ms': warm_mean * 1e3,
               'saving_pct': 100.0 * (1 - warm_mean / cold) if cold else 0.0,
               'hit_rate': hits / (hits + misses) if hits + misses else 0.0,
               'cold_preprocess_ms': cold_pre * 1e3, 'warm_preprocess_ms': warm_pre_mean * 1e3,
               'saving_with_preprocess_pct': 100.0 * (1 - (warm_mean + warm_pre_mean)
                                                      / (cold + cold_pre))}
    prompt = result.prompt_tokens if result is not None else 0
    return _stage_summary(samples, prompt, sliding)


def _stage_summary(samples: dict[str, list[float]], prompt: int,
                   sliding: dict[str, Any]) -> dict[str, Any]:
    decode = samples['decode']
    return {'vision': percentiles(samples['vision']), 'prefill': percentiles(samples['prefill']),
            'decode_per_token': percentiles(decode), 'end_to_end': percentiles(samples['e2e']),
            'tokens_per_s': float(len(decode) / sum(decode)) if decode else float('nan'),
            'prompt_tokens': prompt, 'sliding_window': sliding}


def worker(name: str, opts: BenchOptions) -> dict[str, Any]:
    """Run one backend in this process; return its figures (or why it is unavailable)."""
    from procvlm_ros.core.backends import create_backend
    from procvlm_ros.core.config import BackendConfig
    from procvlm_ros.core.errors import BackendUnavailableError
    device = opts.device
    if opts.threads:
        import torch
        torch.set_num_threads(opts.threads)
        os.environ['PROCVLM_ORT_INTRA_OP_THREADS'] = str(opts.threads)
    if name == 'transformers' and device == 'auto':
        device = 'cpu' if not _cuda() else 'cuda'
    folder = (opts.engine_dir or opts.onnx) if name == 'tensorrt' else opts.onnx
    config = BackendConfig(backend=name, model=opts.model, engine_dir=folder, device=device,
        dtype='fp32' if device == 'cpu' else 'auto', max_new_tokens=opts.new_tokens)
    images = frames(opts)
    try:
        backend = create_backend(config)
        t0 = time.perf_counter()
        backend.load()
        load_s = time.perf_counter() - t0
    except BackendUnavailableError as e:
        return {'available': False, 'reason': str(e).splitlines()[0]}
    with backend:
        stages = (_torch_stages if name == 'transformers' else _exported_stages)(
            backend, opts, images)
    stages.update(available=True, load_s=load_s, device=device,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if _cuda():
        import torch
        stages['peak_cuda_mb'] = torch.cuda.max_memory_allocated() / 2**20
    return stages


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------- driver


def machine() -> dict[str, Any]:
    facts: dict[str, Any] = {'python': platform.python_version(), 'cpu': platform.processor()
                             or platform.machine(), 'cpu_count': os.cpu_count()}
    for mod in ('torch', 'onnxruntime', 'transformers'):
        try:
            facts[mod] = __import__(mod).__version__
        except ImportError:
            facts[mod] = None
    if _cuda():
        import torch
        facts['gpu'] = torch.cuda.get_device_name(0)
    return facts


def _run_worker(name: str, opts: BenchOptions) -> dict[str, Any]:
    cmd = [sys.executable, '-m', 'procvlm_ros.export.bench', name, json.dumps(asdict(opts))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX):]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {'available': False, 'reason': f'worker exited {proc.returncode}: {" | ".join(tail)}'}


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run every requested backend in its own process; add ratios against transformers."""
    results: dict[str, Any] = {
        'machine': machine(),
        'window': {'frames': opts.frames, 'image_size': list(opts.image_size),
                   'new_tokens': opts.new_tokens, 'repeats': opts.repeats,
                   'sliding_windows': opts.windows, 'task': TASK,
                   'threads': opts.threads or 'default'},
        'backends': {name: _run_worker(name, opts) for name in opts.backends}}
    base = results['backends'].get('transformers', {})
    if base.get('available'):
        for res in results['backends'].values():
            if res.get('available'):
                res['speedup_vs_transformers'] = {
                    stage: base[stage]['p50_ms'] / res[stage]['p50_ms']
                    for stage in ('vision', 'prefill', 'decode_per_token', 'end_to_end')}
    return results


def _pair(result: dict[str, Any], stage: str) -> str:
    return f'{result[stage]["p50_ms"]:.1f}/{result[stage]["p95_ms"]:.1f} ms'


def format_table(results: dict[str, Any]) -> str:
    """Readable table of :func:`run_bench` results."""
    w = results['window']
    lines = [f'window: {w["frames"]} frames {w["image_size"][0]}x{w["image_size"][1]}, '
             f'{w["new_tokens"]} generated tokens, {w["repeats"]} repeats; machine '
             f'{results["machine"].get("gpu") or results["machine"]["cpu"]} '
             f'({results["machine"]["cpu_count"]} cpus, threads {w.get("threads")})',
             f'{"backend":13}{"vision p50/p95":>17}{"prefill p50/p95":>17}'
             f'{"decode/tok p50/p95":>20}{"tok/s":>8}{"e2e p50":>9}{"RSS MB":>8}'
             f'{"x e2e":>7}{"cache save (+prep)":>19}']
    for name, r in results['backends'].items():
        if not r.get('available'):
            lines.append(f'{name:13} unavailable: {r.get("reason", "")[:90]}')
            continue

        speed = r.get('speedup_vs_transformers', {}).get('end_to_end', float('nan'))
        lines.append(f'{name:13}{_pair(r, "vision"):>17}{_pair(r, "prefill"):>17}'
                     f'{_pair(r, "decode_per_token"):>20}{r["tokens_per_s"]:8.1f}'
                     f'{r["end_to_end"]["p50_ms"]:7.0f}ms{r["peak_rss_mb"]:8.0f}'
                     f'{speed:7.2f}{r["sliding_window"]["saving_pct"]:9.1f}% '
                     f'({r["sliding_window"]["saving_with_preprocess_pct"]:.1f}%)')
    return '\n'.join(lines)


def _main() -> int:
    name, opts_json = sys.argv[1], sys.argv[2]
    data = json.loads(opts_json)
    opts = replace(BenchOptions(model=data['model']), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    result = worker(name, opts)
    print(RESULT_PREFIX + json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(_main())
