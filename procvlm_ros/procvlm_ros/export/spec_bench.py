"""
``procvlm-export bench-spec``: temporal speculative decoding at live cadence (issue 11).

For each backend two instances run side by side on the same windows, one window after the
other: speculation off (plain greedy) and on (the previous window's answer as the draft, as the
monitor passes it). Each has its own vision cache, so both see the live pattern (one new frame
per window). Per window: generated tokens, sequential decoder passes, accepted draft tokens,
wall time, decode time (and, for the exported backends, the time inside the decoder graph, so
the host cost per pass is the rest). Summaries: the first window (no draft yet), the steady
state (every later window) and the whole run; every output is checked token for token.

Models: the committed demo model on synthetic episodes (meaningful, slowly changing answers)
and the tiny random model (answers that drafts cannot predict: the overhead case).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

RESULT_PREFIX = 'SPEC_BENCH_RESULT '


@dataclass(frozen=True)
class SpecBenchOptions:
    """What to run: a model (checkpoint + optional export folder) over episodes."""

    model: str
    onnx: str = ''
    engine_dir: str = ''
    backends: tuple[str, ...] = ('transformers', 'onnxruntime')
    episodes: str = 'synthetic'  # synthetic (demo model) or moving (tiny model frames)
    seed: int = 555
    count: int = 6  # episodes
    max_windows: int = 0  # per episode, 0 = every window
    max_draft: int = 16
    max_new_tokens: int = 256
    threads: int = 1
    label: str = ''


def _windows(opts: SpecBenchOptions) -> list[tuple[str, list[Any]]]:
    """``[(task, [(images, keys), ...]), ...]`` per episode."""
    if opts.episodes == 'synthetic':
        from procvlm_ros.export.episodes import episode_run
        from procvlm_ros.synth.episode import EPISODE_KINDS
        runs = [episode_run(opts.seed, i, EPISODE_KINDS[i % len(EPISODE_KINDS)],
                            max_windows=opts.max_windows) for i in range(opts.count)]
        return [(r.task, r.windows) for r in runs]
    from PIL import Image

    from procvlm_ros.core.image import qwen_vl_pre_resize
    out = []
    for e in range(opts.count):
        rng = np.random.default_rng(opts.seed + e)
        base = rng.integers(0, 256, (48, 64, 3), np.uint8)
        count = opts.max_windows or 8
        frames = []
        for i in range(count + 7):
            img = base.copy()
            img[8:28, 2 + 3 * (i % 16):14 + 3 * (i % 16)] = (240, 40, 30)
            frames.append(qwen_vl_pre_resize(Image.fromarray(img), 14))
        out.append(('stack the blocks', [(frames[w:w + 8], [(e, i) for i in range(w, w + 8)])
                                         for w in range(count)]))
    return out


def _record(res: Any) -> dict[str, Any]:
    t = res.timings
    decode = t.get('decode_s', t.get('generate_s', 0.0))
    return {'tokens': res.generated_tokens, 'passes': res.decoder_passes,
            'accepted': res.draft_tokens_accepted, 'wall_s': res.latency_s, 'decode_s': decode,
            'graph_s': t.get('decoder_graph_s', float('nan'))}


def worker(name: str, opts: SpecBenchOptions) -> dict[str, Any]:
    """One backend, speculation off and on, in this process."""
    from procvlm_ros.core.backends import create_backend
    from procvlm_ros.core.backends.base import GenerationRequest
    from procvlm_ros.core.config import BackendConfig
    from procvlm_ros.core.errors import BackendUnavailableError
    if opts.threads:
        import torch
        torch.set_num_threads(opts.threads)
        os.environ['PROCVLM_ORT_INTRA_OP_THREADS'] = str(opts.threads)
    folder = (opts.engine_dir or opts.onnx) if name == 'tensorrt' else opts.onnx
    device = 'cpu' if name != 'tensorrt' else 'auto'
    common = dict(backend=name, model=opts.model, engine_dir=folder, device=device,
                  dtype='fp32' if device == 'cpu' else 'auto',
                  max_new_tokens=opts.max_new_tokens, speculation_max_draft=opts.max_draft)
    try:
        plain = create_backend(BackendConfig(speculation=False, **common))
        fast = create_backend(BackendConfig(speculation=True, **common))
        plain.load()
        fast.load()
    except BackendUnavailableError as e:
        return {'available': False, 'reason': str(e).splitlines()[0]}
    episodes = _windows(opts)
    rows = []
    mismatches = 0
    with plain, fast:
        warm_images, warm_keys = episodes[0][1][0]
        for b in (plain, fast):  # one untimed window: lazy initialisation is not a window cost
            b.generate(GenerationRequest(warm_images, episodes[0][0], [('warm', k)
                                                                      for k in warm_keys]))
        for e, (task, windows) in enumerate(episodes):
            previous = None
            for w, (images, keys) in enumerate(windows):
                req = GenerationRequest(images, task, keys, draft_token_ids=previous)
                a, b = plain.generate(req), fast.generate(req)
                mismatches += a.token_ids != b.token_ids
                rows.append({'episode': e, 'window': w, 'plain': _record(a), 'spec': _record(b),
                             'token_ids': b.token_ids})
                previous = b.token_ids
    return {'available': True, 'mismatches': mismatches, 'summary': summarise(rows),
            'draft_sweep': draft_sweep(rows, opts.max_new_tokens), 'windows': rows}


def draft_sweep(rows: list[dict[str, Any]], max_new_tokens: int,
                sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> dict[str, Any]:
    """
    Sequential passes of the same answers for other ``speculation_max_draft`` values.

    The output does not depend on the draft, so the pass count of a draft length follows from
    the answers alone: the loop of :mod:`speculation` replayed on them (eos = each answer's
    last id) gives exactly the passes a run with that setting makes. Wall time needs real runs.
    """
    from procvlm_ros.core.backends.speculation import speculative_greedy
    out: dict[str, Any] = {}
    for size in sizes:
        passes = steady = 0
        previous: list[int] | None = None
        for r in rows:
            answer = list(r['token_ids'])
            if r['window'] == 0:
                previous = None
            if not answer:
                continue
            stop = answer[-1] if len(answer) < max_new_tokens else None

            def run_pass(tokens: list[int], draft: list[int], answer: list[int] = answer) -> Any:
                return lambda i: answer[len(tokens) + i]

            _, stats = speculative_greedy(answer[0], previous, size, len(answer),
                                          lambda t, stop=stop: t == stop, run_pass,
                                          stop_ids=() if stop is None else (stop,))
            passes += stats.decoder_passes
            steady += stats.decoder_passes if r['window'] else 0
            previous = answer
        out[str(size)] = {'passes': passes, 'steady_state_passes': steady}
    plain = sum(max(0, len(r['token_ids']) - 1) for r in rows)
    plain_steady = sum(max(0, len(r['token_ids']) - 1) for r in rows if r['window'])
    for v in out.values():
        v['reduction'] = plain / v['passes'] if v['passes'] else float('inf')
        v['steady_state_reduction'] = (plain_steady / v['steady_state_passes']
                                       if v['steady_state_passes'] else float('inf'))
    return {'plain_passes': plain, 'by_max_draft': out}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """First windows (no draft), steady state (the rest) and all windows."""
    def part(sel: list[dict[str, Any]]) -> dict[str, Any]:
        if not sel:
            return {}
        out: dict[str, Any] = {'windows': len(sel)}
        for mode in ('plain', 'spec'):
            recs = [r[mode] for r in sel]
            passes = sum(r['passes'] for r in recs)
            out[mode] = {
                'tokens': sum(r['tokens'] for r in recs), 'passes': passes,
                'accepted': sum(r['accepted'] for r in recs),
                'passes_per_window': passes / len(recs),
                'accepted_per_pass': sum(r['accepted'] for r in recs) / passes if passes else 0,
                'wall_ms_mean': 1e3 * float(np.mean([r['wall_s'] for r in recs])),
                'wall_ms_p50': 1e3 * float(np.median([r['wall_s'] for r in recs])),
                'decode_ms_mean': 1e3 * float(np.mean([r['decode_s'] for r in recs])),
                'host_ms_per_pass': 1e3 * (sum(r['decode_s'] - r['graph_s'] for r in recs)
                                           / passes) if passes else float('nan')}
        p, s = out['plain'], out['spec']
        out['pass_reduction'] = p['passes'] / s['passes'] if s['passes'] else float('inf')
        out['wall_speedup'] = p['wall_ms_mean'] / s['wall_ms_mean']
        out['decode_speedup'] = p['decode_ms_mean'] / s['decode_ms_mean']
        return out

    first = [r for r in rows if r['window'] == 0]
    steady = [r for r in rows if r['window'] > 0]
    return {'first_window': part(first), 'steady_state': part(steady), 'all': part(rows)}


def _run_worker(name: str, opts: SpecBenchOptions) -> dict[str, Any]:
    cmd = [sys.executable, '-m', 'procvlm_ros.export.spec_bench', name, json.dumps(asdict(opts))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX):]))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {'available': False, 'reason': f'worker exited {proc.returncode}: {" | ".join(tail)}'}


def run_spec_bench(opts: SpecBenchOptions) -> dict[str, Any]:
    """Every backend in its own process; the options and machine facts beside the results."""
    from procvlm_ros.export.bench import machine
    started = time.time()
    results = {'machine': machine(), 'options': asdict(opts),
               'backends': {name: _run_worker(name, opts) for name in opts.backends}}
    results['elapsed_s'] = time.time() - started
    return results


def format_table(results: dict[str, Any]) -> str:
    """One line per backend and part: passes, accepted per pass, wall times, speedups."""
    o = results['options']
    lines = [f'{o["label"] or o["model"]}: {o["episodes"]} episodes x{o["count"]}, max draft '
             f'{o["max_draft"]}, threads {o["threads"]}',
             f'{"backend":13}{"part":14}{"win":>5}{"passes off/on":>15}{"x fewer":>8}'
             f'{"acc/pass":>9}{"wall ms off/on":>16}{"x wall":>7}{"decode ms off/on":>18}'
             f'{"host ms/pass off/on":>21}']
    for name, r in results['backends'].items():
        if not r.get('available'):
            lines.append(f'{name:13} unavailable: {r.get("reason", "")[:90]}')
            continue
        for part in ('first_window', 'steady_state', 'all'):
            s = r['summary'][part]
            if not s:
                continue
            p, q = s['plain'], s['spec']
            lines.append(
                f'{name:13}{part:14}{s["windows"]:5d}{p["passes"]:>8d}/{q["passes"]:<6d}'
                f'{s["pass_reduction"]:8.2f}{q["accepted_per_pass"]:9.2f}'
                f'{p["wall_ms_mean"]:>9.1f}/{q["wall_ms_mean"]:<6.1f}{s["wall_speedup"]:7.2f}'
                f'{p["decode_ms_mean"]:>11.1f}/{q["decode_ms_mean"]:<6.1f}'
                f'{p["host_ms_per_pass"]:>14.3f}/{q["host_ms_per_pass"]:<6.3f}')
        sweep = r.get('draft_sweep', {}).get('by_max_draft', {})
        if sweep:
            lines.append(f'{name:13}passes by max draft (steady-state reduction): ' + ', '.join(
                f'{k}: {v["passes"]} ({v["steady_state_reduction"]:.1f}x)'
                for k, v in sweep.items()))
        if r['mismatches']:
            lines.append(f'{name:13} {r["mismatches"]} WINDOWS DIFFER WITH SPECULATION')
    return '\n'.join(lines)


def _main() -> int:
    name, data = sys.argv[1], json.loads(sys.argv[2])
    opts = SpecBenchOptions(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in data.items()})
    print(RESULT_PREFIX + json.dumps(worker(name, opts)))
    return 0


if __name__ == '__main__':
    sys.exit(_main())
