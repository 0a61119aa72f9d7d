"""``procvlm-visualize``: an annotated video (curve + reasoning panel) from records and frames."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import sys
from typing import Any

import numpy as np

from procvlm_ros.core.annotate import panel_frame
from procvlm_ros.core.errors import ProcVlmError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='procvlm-visualize',
        description='Render an mp4 with the progress curve and the model reasoning under each '
                    'evaluated frame (layout of the official ProcVLM visualiser).')
    p.add_argument('--records', required=True, help='JSONL written by procvlm-infer')
    p.add_argument('--output', default=None, help='mp4 path (default: <records>.mp4)')
    p.add_argument('--video_path', default=None,
                   help='video or rosbag2 (default: video_path stored in the records)')
    p.add_argument('--image_topic', default=None, help='rosbag2 input: the image topic')
    p.add_argument('--hide_model_output', action='store_true', help='curve only')
    p.add_argument('--fps', type=float, default=0.0,
                   help='output fps (default: source fps x sampled / source frames, >= 1)')
    p.add_argument('--quiet', action='store_true')
    return p


def load_records(path: Path) -> list[dict[str, Any]]:
    try:
        rows = [json.loads(line) for line in path.read_text(encoding='utf-8').splitlines()
                if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise ProcVlmError(f'cannot read records {path}: {e}') from e
    if not rows:
        raise ProcVlmError(f'{path} holds no records')
    missing = {'frame_index', 'timestamp_sec', 'progress'} - set(rows[0])
    if missing:
        raise ProcVlmError(f'{path} is not a procvlm-infer JSONL: missing {sorted(missing)}')
    return rows


def render(records: list[dict[str, Any]], source: Any, output: Path, *, fps: float = 0.0,
           show_reasoning: bool = True, show_progress: bool = True) -> Path:
    """Write one annotated frame per record; return the video path."""
    from tqdm import tqdm

    from procvlm_ros.media.video import write_video

    wanted = sorted({int(r['frame_index']) for r in records})
    if fps <= 0:
        src_fps = source.fps or _fps_from_times(records)
        fps = max(1.0, round(src_fps * len(records) / max(source.total_frames, 1)))
    frames = {f.index: f.image for f in source.read(wanted)}

    def annotated():
        history = []
        for r in tqdm(records, desc='Rendering', unit='frame', disable=not show_progress):
            value = float(r['progress']) / 100.0
            history.append((float(r['timestamp_sec']), value))
            img = panel_frame(frames[int(r['frame_index'])], history, value=value,
                              frame_index=int(r['frame_index']),
                              reasoning=r.get('reasoning', ''), show_reasoning=show_reasoning)
            h, w = img.shape[:2]
            yield np.ascontiguousarray(img[:h - h % 2, :w - w % 2])  # yuv420p needs even sizes

    return write_video(output, annotated(), fps=fps)


def _fps_from_times(records: list[dict[str, Any]]) -> float:
    times = [float(r['timestamp_sec']) for r in records]
    span = times[-1] - times[0]
    return (len(times) - 1) / span if span > 0 else 1.0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from procvlm_ros.offline import open_source

    records_path = Path(args.records)
    output = Path(args.output) if args.output else records_path.with_suffix('.mp4')
    try:
        records = load_records(records_path)
        source = open_source(args.video_path or records[0]['video_path'],
                             args.image_topic or records[0].get('image_topic'))
        render(records, source, output, fps=args.fps, show_reasoning=not args.hide_model_output,
               show_progress=not args.quiet)
    except (ProcVlmError, FileNotFoundError, KeyError) as e:
        print(f'procvlm-visualize: error: {e}', file=sys.stderr)
        return 2
    print(f'Wrote {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
