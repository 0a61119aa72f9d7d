"""``procvlm-synth``: write synthetic episodes (mp4 / rosbag2 + ground-truth JSON)."""

from __future__ import annotations

import argparse
import logging
import sys

from procvlm_ros.synth.episode import DEFAULT_FPS, EPISODE_KINDS
from procvlm_ros.synth.export import BAG_TOPIC, FORMATS, write_dataset
from procvlm_ros.synth.scene import ALL_TASK_KINDS, TASK_KINDS


def _csv(choices: tuple[str, ...]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(',') if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f'expected a comma-separated subset of {",".join(choices)}, got {text!r}')
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='procvlm-synth',
        description='Generate synthetic table-top episodes with ground-truth progress. '
                    'Episode i gets kind KINDS[i %% len(KINDS)] and task kind '
                    'TASK_KINDS[(i // len(KINDS)) %% len(TASK_KINDS)].')
    p.add_argument('--out', required=True, help='new (or empty) output directory')
    p.add_argument('--episodes', type=int, required=True, help='number of episodes')
    p.add_argument('--seed', type=int, required=True, help='data-set seed (same seed, same data)')
    p.add_argument('--kinds', type=_csv(EPISODE_KINDS), default=list(EPISODE_KINDS),
                   help=f'episode kinds to cycle through (default {",".join(EPISODE_KINDS)})')
    p.add_argument('--task-kinds', type=_csv(ALL_TASK_KINDS), default=list(TASK_KINDS),
                   help=f'task kinds to cycle through (default {",".join(TASK_KINDS)}; '
                        f'held out from the demo model: {",".join(ALL_TASK_KINDS[3:])})')
    p.add_argument('--format', type=_csv(FORMATS), default=['mp4'],
                   help='mp4, bag or mp4,bag (default mp4); ground truth is always written')
    p.add_argument('--fps', type=float, default=DEFAULT_FPS,
                   help=f'frame rate (default {DEFAULT_FPS}); speeds and pauses are in seconds')
    p.add_argument('--bag-topic', default=BAG_TOPIC, help=f'image topic in bags ({BAG_TOPIC})')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    if args.episodes < 1:
        print('procvlm-synth: --episodes must be >= 1', file=sys.stderr)
        return 2
    if not args.fps > 0:
        print('procvlm-synth: --fps must be > 0', file=sys.stderr)
        return 2
    try:
        manifest = write_dataset(args.out, args.episodes, args.seed, kinds=args.kinds,
                                 task_kinds=args.task_kinds, formats=args.format, fps=args.fps,
                                 bag_topic=args.bag_topic, show_progress=True)
    except FileExistsError as e:
        print(f'procvlm-synth: {e}', file=sys.stderr)
        return 1
    frames = sum(e['num_frames'] for e in manifest['episodes'])
    print(f'wrote {len(manifest["episodes"])} episodes ({frames} frames) to {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
