"""
The adaptation loop on the demo model, end to end (``make adapt-demo``).

1. Record: one successful and one failed demonstration of the held-out ``drawer`` family
   (``procvlm_ros.synth``, data seed ``DEMO_SEED``), written as videos.
2. Annotate: a stage file per demonstration with the end frame of each coarse stage, as a user
   marks them while scrubbing the video (here read off the generator's action boundaries), then
   ``procvlm-adapt annotate --stages``.
3. ``procvlm-adapt dataset`` and ``procvlm-adapt train --preset demo``: once on the success
   alone, once on the success + the failure.
4. ``procvlm-eval`` on held-out episodes of the family (data seed ``HELDOUT_SEED``, used
   nowhere else): the demo model zero-shot and with each adapter; a table of the figures.

The demonstrations go through exactly the commands a user runs (no special code path).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import shutil
import sys
import time
from typing import Any

DEMO_SEED = 9100  # demonstrations
HELDOUT_SEED = 31337  # evaluation episodes; no other test or training uses it
FAMILY = 'drawer'


def stage_file(episode: Any, path: Path) -> Path:
    """The stages a user marks: where each action of the procedure ends (inclusive frames)."""
    import yaml

    frames = episode.ground_truth()['frames']
    stages = []
    for i in range(len(frames) - 1):
        now, nxt = frames[i]['remaining_actions'], frames[i + 1]['remaining_actions']
        if now and now != nxt and now[0] not in [s['description'] for s in stages]:
            stages.append({'description': now[0], 'end_frame': i})
    last = frames[-1]['remaining_actions']
    if last and (not stages or stages[-1]['end_frame'] < len(frames) - 1):
        stages.append({'description': last[0], 'end_frame': len(frames) - 1})  # cut off
    data = {'task': episode.task.sentence, 'done': episode.success, 'stages': stages}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding='utf-8')
    return path


def record(out: Path) -> dict[str, Path]:
    """Step 1-2: demonstration videos and their annotations (through procvlm-adapt)."""
    from procvlm_ros.adapt.cli import main as adapt
    from procvlm_ros.synth.episode import generate_episode
    from procvlm_ros.synth.export import export_episode, VIDEO_NAME

    dirs = {}
    for index, kind in ((0, 'success'), (1, 'fail')):
        ep = generate_episode(DEMO_SEED, index, kind, FAMILY)
        folder = export_episode(ep, out / 'demonstrations', ('mp4',))
        stages = stage_file(ep, out / f'{kind}_stages.yaml')
        ann_dir = out / f'annotation_{kind}'
        if adapt(['annotate', '--source', str(folder / VIDEO_NAME), '--out', str(ann_dir),
                  '--stages', str(stages)]) != 0:
            raise RuntimeError(f'annotate failed for the {kind} demonstration')
        dirs[kind] = ann_dir
    return dirs


def evaluate(episodes: Path, model: str, report: Path, adapter: str = '',
             max_episodes: int | None = None) -> dict[str, Any]:
    from procvlm_ros.evaluation.cli import main as eval_main

    if report.is_file():  # a rerun keeps what is already measured (delete OUT to redo)
        return dict(json.loads(report.read_text(encoding='utf-8')))
    args = ['--episodes', str(episodes), '--model', model, '--report', str(report),
            '--plots', 'none', '--done-threshold', '100',
            # The demo model's supervision settings (only the stall figures depend on them).
            '--stall-window-s', '6', '--stall-min-delta', '0.03']
    if adapter:
        args += ['--adapter', adapter]
    if max_episodes:
        args += ['--max-episodes', str(max_episodes)]
    if eval_main(args) != 0:
        raise RuntimeError(f'procvlm-eval failed ({report})')
    return dict(json.loads(report.read_text(encoding='utf-8')))


def summary_row(name: str, report: dict[str, Any], minutes: float | None) -> dict[str, Any]:
    return {'model': name, 'voc_success': report['voc_mean'], 'mae': report['mae_mean'],
            'done_f1': report['done_f1'], 'parse_rate': report.get('parse_rate'),
            'adapt_minutes': minutes, 'episodes': report['episodes']}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ['| model | VOC (success) | MAE | done F1 | adaptation (min, 2 CPU threads) |',
             '|---|---|---|---|---|']
    for r in rows:
        minutes = '-' if r['adapt_minutes'] is None else f'{r["adapt_minutes"]:.1f}'
        lines.append(f'| {r["model"]} | {r["voc_success"]:.3f} | {r["mae"]:.3f} | '
                     f'{r["done_f1"]:.3f} | {minutes} |')
    return '\n'.join(lines)


def run(out: Path, *, episodes: int = 20, steps: int | None = None, threads: int = 2,
        failure: bool = True) -> dict[str, Any]:
    from procvlm_ros.adapt.cli import main as adapt
    from procvlm_ros.demo_model import CHECKPOINT_DIR
    from procvlm_ros.synth.export import write_dataset

    out.mkdir(parents=True, exist_ok=True)
    base = str(CHECKPOINT_DIR)
    heldout = out / 'heldout'
    if not (heldout / 'manifest.json').is_file():
        write_dataset(heldout, episodes, HELDOUT_SEED, task_kinds=(FAMILY,), show_progress=True)
    anns = record(out)
    runs = [('one success', [anns['success']])]
    if failure:
        runs.append(('one success + one failure', [anns['success'], anns['fail']]))
    rows = [summary_row('demo model, zero-shot', evaluate(heldout, base, out / 'zero_shot.json'),
                        None)]
    for name, dirs in runs:
        tag = name.replace(' ', '_').replace('+', 'and')
        t0 = time.perf_counter()
        data = out / f'data_{tag}'
        adapter = out / f'adapter_{tag}'
        timing = out / f'{tag}_minutes.json'
        if not (adapter / 'adapter_config.json').is_file():
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(adapter, ignore_errors=True)
            if adapt(['dataset', *map(str, dirs), '--out', str(data)]) != 0:
                raise RuntimeError('dataset failed')
            extra = ['--steps', str(steps)] if steps else []
            if adapt(['train', '--model', base, '--data', str(data), '--out', str(adapter),
                      '--preset', 'demo', '--device', 'cpu', '--threads', str(threads),
                      '--quiet', *extra]) != 0:
                raise RuntimeError('train failed')
            timing.write_text(json.dumps((time.perf_counter() - t0) / 60), encoding='utf-8')
        minutes = float(json.loads(timing.read_text(encoding='utf-8')))
        report = evaluate(heldout, base, out / f'{tag}.json', adapter=str(adapter))
        rows.append(summary_row(f'adapted: {name}', report, minutes))
    result = {'family': FAMILY, 'heldout_seed': HELDOUT_SEED, 'demo_seed': DEMO_SEED,
              'episodes': episodes, 'rows': rows, 'table': table(rows)}
    (out / 'adapt_demo.json').write_text(json.dumps(result, indent=1), encoding='utf-8')
    return result


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    p = argparse.ArgumentParser(prog='python -m procvlm_ros.adapt.demo',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--out', default='out/adapt-demo')
    p.add_argument('--episodes', type=int, default=20, help='held-out episodes')
    p.add_argument('--steps', type=int, default=0, help='training steps (0: the demo preset)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--no-failure', action='store_true', help='skip the success+failure run')
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    result = run(Path(args.out), episodes=args.episodes, steps=args.steps or None,
                 threads=args.threads, failure=not args.no_failure)
    print(f'Held-out {FAMILY} episodes: {args.episodes} (data seed {HELDOUT_SEED})')
    print(result['table'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
