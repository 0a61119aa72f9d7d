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
   VOC counts success episodes only, 5 of the 20 mixed ones, so the same models are also
   scored on a success-only set of the same seed (``--success-episodes``, 20 by default).

``--split validation`` runs the same loop on validation episodes (data seed
``VALIDATION_SEED``): the ``demo`` preset was chosen there, never on the held-out episodes.

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
VALIDATION_SEED = 2718  # episodes the demo preset was chosen on
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


def summary_row(name: str, report: dict[str, Any], minutes: float | None,
                cpu_minutes: float | None = None) -> dict[str, Any]:
    return {'model': name, 'voc_success': report['voc_mean'], 'mae': report['mae_mean'],
            'done_f1': report['done_f1'], 'parse_rate': report.get('parse_rate'),
            'adapt_minutes': minutes, 'adapt_cpu_minutes': cpu_minutes,
            'episodes': report['episodes']}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ['| model | VOC (success) | MAE | done F1 | parsed | adaptation wall / CPU (min, '
             '2 threads) |', '|---|---|---|---|---|---|']
    for r in rows:
        minutes = '-' if r['adapt_minutes'] is None else f'{r["adapt_minutes"]:.1f}'
        if r.get('adapt_cpu_minutes') is not None:
            minutes += f' / {r["adapt_cpu_minutes"]:.1f}'
        parsed = '-' if r.get('parse_rate') is None else f'{r["parse_rate"]:.3f}'
        lines.append(f'| {r["model"]} | {r["voc_success"]:.3f} | {r["mae"]:.3f} | '
                     f'{r["done_f1"]:.3f} | {parsed} | {minutes} |')
    return '\n'.join(lines)


def run(out: Path, *, episodes: int = 20, steps: int | None = None, threads: int = 2,
        failure: bool = True, split: str = 'heldout',
        success_episodes: int = 20) -> dict[str, Any]:
    from procvlm_ros.adapt.cli import main as adapt
    from procvlm_ros.demo_model import CHECKPOINT_DIR
    from procvlm_ros.synth.export import write_dataset

    out.mkdir(parents=True, exist_ok=True)
    base = str(CHECKPOINT_DIR)
    seed = HELDOUT_SEED if split == 'heldout' else VALIDATION_SEED
    heldout = out / split
    if not (heldout / 'manifest.json').is_file():
        write_dataset(heldout, episodes, seed, task_kinds=(FAMILY,), show_progress=True)
    successes = out / f'{split}_success'
    if success_episodes and not (successes / 'manifest.json').is_file():
        write_dataset(successes, success_episodes, seed, kinds=('success',),
                      task_kinds=(FAMILY,), show_progress=True)
    anns = record(out)
    runs = [('one success', [anns['success']])]
    if failure:
        runs.append(('one success + one failure', [anns['success'], anns['fail']]))
    tail = '' if split == 'heldout' else f'_{split}'
    rows = [summary_row('demo model, zero-shot',
                        evaluate(heldout, base, out / f'zero_shot{tail}.json'), None)]
    success_rows = [summary_row('demo model, zero-shot', evaluate(
        successes, base, out / f'zero_shot{tail}_success.json'), None)] if success_episodes else []
    for name, dirs in runs:
        tag = name.replace(' ', '_').replace('+', 'and')
        t0, c0 = time.perf_counter(), time.process_time()
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
            timing.write_text(json.dumps({  # dataset + train, this process (all threads)
                'wall_minutes': (time.perf_counter() - t0) / 60,
                'cpu_minutes': (time.process_time() - c0) / 60}), encoding='utf-8')
        spent = json.loads(timing.read_text(encoding='utf-8'))
        if not isinstance(spent, dict):  # written by an older version: wall minutes only
            spent = {'wall_minutes': float(spent), 'cpu_minutes': None}
        report = evaluate(heldout, base, out / f'{tag}{tail}.json', adapter=str(adapter))
        rows.append(summary_row(f'adapted: {name}', report, spent['wall_minutes'],
                                spent['cpu_minutes']))
        if success_episodes:
            success_rows.append(summary_row(f'adapted: {name}', evaluate(
                successes, base, out / f'{tag}{tail}_success.json', adapter=str(adapter)),
                spent['wall_minutes'], spent['cpu_minutes']))
    result = {'family': FAMILY, 'split': split, 'data_seed': seed, 'demo_seed': DEMO_SEED,
              'episodes': episodes, 'rows': rows, 'table': table(rows),
              'success_episodes': success_episodes, 'success_rows': success_rows,
              'success_table': table(success_rows) if success_rows else ''}
    (out / f'adapt_demo{tail}.json').write_text(json.dumps(result, indent=1), encoding='utf-8')
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
    p.add_argument('--success-episodes', type=int, default=20,
                   help='success-only episodes of the same seed, scored too (0: none)')
    p.add_argument('--split', choices=('heldout', 'validation'), default='heldout',
                   help=f'held-out episodes (seed {HELDOUT_SEED}, the reported figures) or '
                        f'validation episodes (seed {VALIDATION_SEED}, for choosing settings)')
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    result = run(Path(args.out), episodes=args.episodes, steps=args.steps or None,
                 threads=args.threads, failure=not args.no_failure, split=args.split,
                 success_episodes=args.success_episodes)
    print(f'{args.split} {FAMILY} episodes: {args.episodes} (data seed {result["data_seed"]})')
    print(result['table'])
    if result['success_table']:
        print(f'\n{args.split} {FAMILY} success-only episodes: {args.success_episodes} '
              f'(data seed {result["data_seed"]})')
        print(result['success_table'])
    return 0


if __name__ == '__main__':
    sys.exit(main())
