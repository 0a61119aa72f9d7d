"""
``procvlm-adapt``: one-shot adaptation to a user's robot.

    procvlm-adapt annotate --source BAG_OR_VIDEO [--image_topic T] --task "..." --out DIR
                           [--stages FILE]            # FILE: scripted; without: local web page
    procvlm-adapt dataset DIR [DIR ...] --out DATA
    procvlm-adapt train --model BASE --data DATA --out ADAPTER [--preset official|demo]
    procvlm-adapt merge --adapter ADAPTER --out CKPT
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
import sys
from typing import Any

from procvlm_ros.core.config import WindowConfig
from procvlm_ros.core.errors import ProcVlmError


def _add_annotate(sub: Any) -> None:
    p = sub.add_parser('annotate', help='mark where each stage of a demonstration ends')
    p.add_argument('--source', required=True,
                   help='video file, rosbag2 directory, .mcap or .db3 of the demonstration')
    p.add_argument('--image_topic', default='', help='image topic (bags with several)')
    p.add_argument('--task', default='', help='task sentence (required unless in --stages)')
    p.add_argument('--out', required=True, help='directory for annotation.yaml')
    p.add_argument('--stages', default='',
                   help='scripted: YAML/JSON annotation file (stages with end_frame or end_s, '
                        'done, ...); without it a local web page is served')
    outcome = p.add_mutually_exclusive_group()
    outcome.add_argument('--done', dest='done', action='store_true', default=None,
                         help='the demonstration succeeded (overrides the file)')
    outcome.add_argument('--not_done', dest='done', action='store_false',
                         help='the demonstration failed (overrides the file)')
    p.add_argument('--reason', default=None, help='why it is done (optional)')
    p.add_argument('--success_cutoff', type=float, default=None,
                   help='not done: labels are scaled by this (official default 0.75)')
    p.add_argument('--port', type=int, default=5110, help='web page port on 127.0.0.1')
    p.add_argument('--no_browser', action='store_true', help='do not open a browser')


def _add_dataset(sub: Any) -> None:
    p = sub.add_parser('dataset', help='build qa_pairs.jsonl + images from annotations')
    p.add_argument('annotations', nargs='+',
                   help='annotation directories (annotation.yaml) or files')
    p.add_argument('--out', required=True, help='new data directory')
    p.add_argument('--seed', type=int, default=0, help='seed of the sample/window draws')
    p.add_argument('--labels', choices=('official', 'stall_aware'), default='official',
                   help='progress labels: the official formula (default), or stall_aware: a '
                        'frame whose pHash is unchanged adds nothing (labels stay flat through '
                        'a pause)')
    p.add_argument('--windows', choices=('official', 'monitor'), default='official',
                   help='images per sample: the official variety (default: the frame alone '
                        'or 5-17 consecutive frames), or monitor: windows spaced like the '
                        "monitor's (--window_size frames, --sample_period_s apart, counted "
                        'back from the labelled frame, first frame repeated at the start)')
    p.add_argument('--window_size', type=int, default=WindowConfig.window_size,
                   help='monitor windows: frames')
    p.add_argument('--draws', type=int, default=1,
                   help='official windows: samples per frame, each with its own window draw '
                        '(1 = official)')
    p.add_argument('--sample_period_s', type=float, default=0.0,
                   help="monitor windows: spacing of their frames in seconds (the node's "
                        'sample_period_s; 0 = consecutive frames, as offline scoring of a '
                        'video of <= 512 frames)')


def _add_train(sub: Any) -> None:
    from procvlm_ros.adapt.train import add_train_arguments

    p = sub.add_parser('train', help='train a LoRA adapter with peft')
    add_train_arguments(p)


def _add_merge(sub: Any) -> None:
    p = sub.add_parser('merge', help='merge an adapter into a plain checkpoint')
    p.add_argument('--adapter', required=True, help='LoRA adapter directory')
    p.add_argument('--model', default='', help="base checkpoint (default: the adapter's base)")
    p.add_argument('--out', required=True, help='new checkpoint directory')
    p.add_argument('--adapter_head', default='adapter', choices=['adapter', 'official'],
                   help="head sidecar copied: the adapter's (default) or the base's")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='procvlm-adapt', description=__doc__.split('\n\n')[0])
    sub = p.add_subparsers(dest='command', required=True)
    _add_annotate(sub)
    _add_dataset(sub)
    _add_train(sub)
    _add_merge(sub)
    return p


def annotate(args: argparse.Namespace) -> int:
    from procvlm_ros.adapt import annotation as ann
    from procvlm_ros.adapt.frames import read_demonstration

    source = Path(args.source).expanduser().resolve()
    out = Path(args.out)
    base: dict[str, Any] = {}
    if args.stages:
        base = ann.load(args.stages).to_dict()
    task = args.task or base.get('task', '')
    demo = read_demonstration(source, args.image_topic or base.get('image_topic', ''))
    print(f'{demo.path.name}: {demo.num_frames} frames'
          + (f' on {demo.topic}' if demo.topic else '') + f', {demo.fps:.3g} fps')
    topic = demo.topic if demo.topic else ''
    if not args.stages:
        if not task:
            raise ProcVlmError('--task is required')
        return serve(demo, task, out, str(source), topic, args)
    data = dict(base, task=task, source=str(source))
    if topic:
        data['image_topic'] = topic
    if args.done is not None:
        data['done'] = args.done
    if args.reason is not None:
        data['reason'] = args.reason
    if args.success_cutoff is not None:
        data['success_cutoff'] = args.success_cutoff
    annotation = ann.from_dict(data, args.stages)
    sub_tasks = ann.resolve_sub_tasks(annotation, demo.times_s)
    path = ann.save(annotation, out / ann.ANNOTATION_NAME)
    for desc, end in sub_tasks:
        print(f'  {desc!r} ends at frame {end}')
    print(f'wrote {path}')
    return 0


def serve(demo: Any, task: str, out: Path, source: str, topic: str,
          args: argparse.Namespace) -> int:
    from procvlm_ros.adapt import annotation as ann
    from procvlm_ros.adapt.server import AnnotationServer

    existing = out / ann.ANNOTATION_NAME
    initial = ann.load(existing) if existing.is_file() else None
    with AnnotationServer(demo, task, out, source=source, image_topic=topic, port=args.port,
                          initial=initial) as server:
        print(f'Annotate at {server.url} (Ctrl-C to stop); the file is saved to {existing}')
        if not args.no_browser:
            import webbrowser
            webbrowser.open(server.url)
        try:
            server.saved.wait()
        except KeyboardInterrupt:
            print('stopped without saving' if not existing.is_file() else 'stopped')
            return 1
    print(f'wrote {existing}')
    return 0


def dataset(args: argparse.Namespace) -> int:
    from procvlm_ros.adapt.dataset import build_dataset, WindowPlan

    windows = WindowPlan(args.windows, args.window_size, args.sample_period_s, args.draws)
    meta = build_dataset(args.annotations, args.out, seed=args.seed, labels=args.labels,
                         windows=windows)
    for d in meta['demonstrations']:
        print(f'{Path(d["source"]).name}: {d["kept_frames"]} frames, {d["samples"]} samples '
              f'({"done" if d["done"] else "not done"})')
    print(f'wrote {meta["samples"]} samples to {Path(args.out) / "qa_pairs.jsonl"}')
    return 0


def main(argv: list[str] | None = None) -> int:
    # Sleeping OpenMP waits: spinning threads slow everything down on a shared CPU.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        if args.command == 'annotate':
            return annotate(args)
        if args.command == 'dataset':
            return dataset(args)
        if args.command == 'train':
            from procvlm_ros.adapt.train import run_from_args
            return run_from_args(args)
        from procvlm_ros.adapt.merge import merge_adapter
        out = merge_adapter(args.adapter, args.out, base=args.model,
                            adapter_head=args.adapter_head)
        print(f'wrote merged checkpoint {out}')
        return 0
    except (ProcVlmError, FileNotFoundError, FileExistsError) as e:
        print(f'procvlm-adapt {args.command}: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
