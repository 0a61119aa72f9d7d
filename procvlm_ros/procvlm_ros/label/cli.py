"""
``procvlm-label``: progress, rewards and summaries for every episode of a dataset.

    procvlm-label run --bags DIR --image-topic /camera/image_raw --model CKPT --out OUT
    procvlm-label run --videos DIR --task "..." --model CKPT --out OUT --stride 2
    procvlm-label run --lerobot ROOT_OR_REPO_ID --camera-key observation.images.top ...
    procvlm-label run ... --ray-address auto --workers 8 --worker-gpus 1
    procvlm-label select --out OUT --top-percent 30 --horizon 50

Exit status: 0 all episodes labelled, 1 some failed (summary printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import signal
import sys
import threading
from typing import Any

from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.core.supervision import SupervisionConfig
from procvlm_ros.label import rewards as rw
from procvlm_ros.label.score import LabelSettings, ScoringConfig
from procvlm_ros.label.sources import discover
from procvlm_ros.label.store import LabelStore

_LOG = logging.getLogger('procvlm-label')
# BackendConfig fields naming files or folders (``model`` may also be a hub id).
_PATH_OPTIONS = ('model', 'adapter', 'engine_dir')


class CtrlC:
    """
    Ctrl-C that cannot get lost. Python raises KeyboardInterrupt wherever the main thread is,
    and one raised while a finished episode's video or bag reader is being finalised (a
    generator's ``finally``, a ``__del__``) is printed as "Exception ignored" and dropped, so
    the run would go on. The request is also remembered and checked at every episode boundary.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, _signum: int, _frame: Any) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its first raise was lost."""
        if self.requested:
            raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='procvlm-label', description=__doc__.split('\n')[1])
    sub = parser.add_subparsers(dest='command', required=True)
    run = sub.add_parser('run', help='label a dataset')
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument('--bags', help='folder of rosbag2 bags (sqlite3/MCAP), searched recursively')
    src.add_argument('--videos', help='folder of videos, searched recursively')
    src.add_argument('--lerobot', help='LeRobot v3 dataset: local root or hub repo id')
    run.add_argument('--out', required=True, help='output folder (resumable)')
    run.add_argument('--task', help='task text for every episode (else per-episode task.txt / '
                     'ground_truth.json, or the dataset task field)')
    run.add_argument('--image-topic', help='image topic in the bags (default: the only one)')
    run.add_argument('--camera-key', help='LeRobot video feature, e.g. observation.images.top')
    run.add_argument('--backend', default='transformers')
    run.add_argument('--model', default='', help='checkpoint directory or id')
    run.add_argument('--device', default='auto')
    run.add_argument('--dtype', default='auto')
    run.add_argument('--max-new-tokens', type=int, default=4096)
    run.add_argument('--backend-option', action='append', default=[], metavar='KEY=JSON',
                     help='further BackendConfig field, e.g. engine_dir="..." (repeatable)')
    run.add_argument('--window-size', type=int, default=8)
    run.add_argument('--stride', type=int, default=1, help='score every N-th frame')
    run.add_argument('--max-sampled-frames', type=int, default=512)
    run.add_argument('--max-frames', type=int, default=None)
    run.add_argument('--delta-min', type=float, default=rw.RewardConfig.delta_min)
    run.add_argument('--delta-max', type=float, default=rw.RewardConfig.delta_max)
    run.add_argument('--terminal-bonus', type=float, default=rw.RewardConfig.terminal_bonus)
    run.add_argument('--terminal-threshold', type=float,
                     default=rw.RewardConfig.terminal_threshold)
    run.add_argument('--horizon', type=int, default=rw.RewardConfig.horizon)
    run.add_argument('--done-threshold', type=float, default=SupervisionConfig.done_threshold)
    run.add_argument('--stall-window-s', type=float, default=SupervisionConfig.stall_window_s)
    run.add_argument('--stall-min-delta', type=float,
                     default=SupervisionConfig.stall_min_delta)
    run.add_argument('--no-mcap', action='store_true', help='no .progress.mcap beside bags')
    run.add_argument('--write-dataset', help='LeRobot: write a copy of the dataset with '
                     'progress/reward features added here (LeRobot dataset tools)')
    run.add_argument('--overwrite', action='store_true', help='discard earlier results')
    run.add_argument('--ray-address', help="'local' (start one), 'auto' or 'ray://host:port'")
    run.add_argument('--workers', type=int, default=1, help='Ray actors (each holds a model)')
    run.add_argument('--worker-cpus', type=float, default=1.0)
    run.add_argument('--worker-gpus', type=float, default=0.0)
    run.add_argument('--torch-threads', type=int, default=None,
                     help='torch intra-op threads per worker (default: torch decides; Ray '
                     'workers get their CPU count)')
    run.add_argument('--quiet', action='store_true')
    sel = sub.add_parser('select', help='rank episodes, mark top k %% by advantage')
    sel.add_argument('--out', required=True, help='output folder of a run')
    sel.add_argument('--top-percent', type=float, default=30.0)
    sel.add_argument('--horizon', type=int, default=50)
    sel.add_argument('--keep-failed', action='store_true', help='keep episodes never done')
    sel.add_argument('--keep-stalled', action='store_true')
    sel.add_argument('--min-final-progress', type=float, default=0.0)
    sel.add_argument('--selection', help='output JSON (default OUT/selection.json)')
    sel.add_argument('--plot', help='output PNG (default OUT/selection.png)')
    return parser


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {'backend': args.backend, 'model': args.model,
                               'device': args.device, 'dtype': args.dtype,
                               'max_new_tokens': args.max_new_tokens}
    for item in args.backend_option:
        key, sep, value = item.partition('=')
        if not sep:
            raise ProcVlmError(f'--backend-option needs KEY=VALUE, got {item!r}')
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    for key in _PATH_OPTIONS:
        # Ray workers run in another working directory (the cluster's; with ray:// usually
        # another machine), so a relative path that exists here is made absolute for them.
        value = options.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            options[key] = str(Path(value).expanduser().resolve())
    from procvlm_ros.core.config import BackendConfig

    BackendConfig(**options)  # refuse a bad option before any episode is scored
    return options


def _settings(args: argparse.Namespace) -> LabelSettings:
    return LabelSettings(
        ScoringConfig(args.window_size, args.stride, args.max_sampled_frames, args.max_frames),
        rw.RewardConfig(args.delta_min, args.delta_max, args.terminal_bonus,
                        args.terminal_threshold, args.horizon),
        SupervisionConfig(done_threshold=args.done_threshold,
                          stall_window_s=args.stall_window_s,
                          stall_min_delta=args.stall_min_delta))


def run(args: argparse.Namespace, ctrl_c: CtrlC | None = None) -> int:
    from procvlm_ros.label import runner
    from procvlm_ros.label.writers import mcap_path_for, write_progress_mcap

    kind, root = next((k, v) for k, v in (('bags', args.bags), ('videos', args.videos),
                                          ('lerobot', args.lerobot)) if v)
    settings = _settings(args)
    options = _backend_options(args)
    out = Path(args.out).expanduser().resolve()
    specs = discover(root, kind, task=args.task, image_topic=args.image_topic,
                     camera_key=args.camera_key, exclude=out)
    if not specs:
        raise ProcVlmError(f'no episodes found in {root} ({kind})')
    config = {'source': {'kind': kind, 'root': str(root), 'image_topic': args.image_topic,
                         'camera_key': args.camera_key, 'task': args.task},
              'backend': options, **settings.to_dict()}
    store = LabelStore(out, config)
    store.open(overwrite=args.overwrite)
    todo = runner.pending(specs, store)
    _LOG.info('%d episodes, %d already labelled, %d to do', len(specs),
              len(specs) - len(todo), len(todo))
    mcap = kind == 'bags' and not args.no_mcap

    def handle(outcome: dict[str, Any]) -> None:
        try:
            record(outcome)  # the episode is finished: keep it even when stopping now
        finally:
            if ctrl_c is not None:
                ctrl_c.check()

    def record(outcome: dict[str, Any]) -> None:
        if outcome['ok']:
            result = outcome['result']
            try:
                if mcap:
                    write_progress_mcap(result, mcap_path_for(result['path']), args.backend)
            except Exception as exc:  # an unwritable folder fails this episode only
                outcome.update(ok=False, path=result['path'],
                               reason=f'cannot write progress MCAP: {exc}')
            else:
                store.write_result(result)
                return
        store.write_failure(outcome['episode_id'], outcome.get('path', ''), outcome['reason'])

    show = not args.quiet
    if args.ray_address:
        import ray

        if args.ray_address == 'local':
            ray.init(num_cpus=max(1, int(args.workers * args.worker_cpus)),
                     log_to_driver=False)
        stats = runner.run_ray(todo, options, settings, handle, workers=args.workers,
                               address=None if args.ray_address == 'local'
                               else args.ray_address, cpus_per_worker=args.worker_cpus,
                               gpus_per_worker=args.worker_gpus, show_progress=show,
                               torch_threads=args.torch_threads)
    else:
        from procvlm_ros.label.worker import Labeller

        labeller = Labeller(options, settings, args.torch_threads)
        try:
            stats = runner.run_local(todo, labeller, handle, show_progress=show)
        finally:
            labeller.close()
    return finish(store, specs, stats, args)


def finish(store: LabelStore, specs: list[Any], stats: dict[str, Any],
           args: argparse.Namespace) -> int:
    """Summary, sidecar and (LeRobot) the added-feature dataset; the exit status."""
    from procvlm_ros.label.writers import write_frame_signals, write_rabc_progress

    results = store.results()
    labelled = {r['episode_id'] for r in results}
    failures = {s.episode_id: _failure_reason(store, s.episode_id)
                for s in specs if s.episode_id not in labelled}
    summary = {'episodes': len(specs), 'labelled': len(labelled), 'failed': failures,
               'this_run': {k: v for k, v in stats.items() if k != 'failures'},
               'episodes_summary': {r['episode_id']: r['summary'] for r in results}}
    sidecar = None
    if results and not failures:
        provenance = {'tool': 'procvlm-label', 'fingerprint': store.fingerprint,
                      'settings': store.config}
        sidecar = write_frame_signals(results, store.root / 'frame_signals' / 'progress.parquet',
                                      provenance)
        summary['frame_signals'] = str(sidecar)
        summary['rabc_progress'] = str(write_rabc_progress(
            sidecar, store.root / 'frame_signals' / 'rabc_progress.parquet'))
        if getattr(args, 'write_dataset', None):
            from procvlm_ros.label.lerobot_source import write_dataset_with_features

            summary['dataset_with_features'] = str(write_dataset_with_features(
                args.lerobot, results, Path(args.write_dataset)))
    store.write_summary(summary)
    line = (f"labelled {len(labelled)}/{len(specs)} episodes "
            f"({stats['labelled']} this run, {stats['episodes_per_s']:.2f} ep/s, "
            f"{stats['windows_per_s']:.1f} windows/s); results in {store.root}")
    print(line)
    if failures:
        print(f'{len(failures)} episode(s) failed:', file=sys.stderr)
        for episode_id, reason in sorted(failures.items()):
            print(f'  {episode_id}: {reason}', file=sys.stderr)
        return 1
    return 0


def _failure_reason(store: LabelStore, episode_id: str) -> str:
    path = store.failed_path(episode_id)
    if path.is_file():
        return json.loads(path.read_text(encoding='utf-8'))['reason']
    return 'not labelled (run interrupted)'


def run_select(args: argparse.Namespace) -> int:
    from procvlm_ros.label.select import plot, select
    from procvlm_ros.label.store import write_json

    out = Path(args.out).expanduser().resolve()
    store = LabelStore(out, {})
    results = store.results() if (out / 'episodes').is_dir() else []
    if not results:
        raise ProcVlmError(f'no labelled episodes in {out}; run `procvlm-label run` first')
    selection = select(results, top_percent=args.top_percent, horizon=args.horizon,
                       keep_failed=args.keep_failed, keep_stalled=args.keep_stalled,
                       min_final_progress=args.min_final_progress)
    target = Path(args.selection) if args.selection else out / 'selection.json'
    write_json(target, selection)
    image = plot(results, selection, Path(args.plot) if args.plot else out / 'selection.png')
    top = sum(row['top'] for row in selection['rows'])
    print(f"{selection['kept']}/{selection['episodes']} episodes kept, {top} marked top "
          f'{args.top_percent:g} %; {target}, {image}')
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')
    args = build_parser().parse_args(argv)
    try:
        with CtrlC() as ctrl_c:
            return run(args, ctrl_c) if args.command == 'run' else run_select(args)
    except KeyboardInterrupt:
        print('procvlm-label: interrupted; finished episodes are kept, rerun to resume',
              file=sys.stderr)
        return 130
    except (ProcVlmError, ValueError, FileNotFoundError) as exc:
        print(f'procvlm-label: error: {exc}', file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1


if __name__ == '__main__':
    sys.exit(main())
