"""
Write generated episodes to disk (mp4, rosbag2, ground-truth JSON) and read them back.

Layout of a data set directory::

    OUT/manifest.json                   generator settings and the list of episodes
    OUT/episode_0000/ground_truth.json  per-frame progress, remaining actions, done, stalls
    OUT/episode_0000/video.mp4          H.264 (crf 18), one video frame per episode frame
    OUT/episode_0000/bag/               rosbag2 (sqlite3) of sensor_msgs/Image rgb8 on /image

The ``episode_NNNN`` names match the episode key the official metrics code extracts
(``re.search(r"(episode_\\d+)", path)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import json
import logging
from pathlib import Path
from typing import Any

from procvlm_ros.synth.episode import (
    DEFAULT_FPS,
    Episode,
    EPISODE_KINDS,
    generate_episode,
    GT_VERSION,
)
from procvlm_ros.synth.scene import ALL_TASK_KINDS, TASK_KINDS

_LOG = logging.getLogger(__name__)

GT_NAME = 'ground_truth.json'
VIDEO_NAME = 'video.mp4'
BAG_NAME = 'bag'
MANIFEST_NAME = 'manifest.json'
BAG_TOPIC = '/image'
FORMATS = ('mp4', 'bag')
# mbtree off: with it, libx264 (PyAV 16.0.1 wheels) wrote a different stream for the same
# frames on each run, which made the exported videos (and training data) irreproducible.
VIDEO_OPTIONS = {'crf': '18', 'x264-params': 'mbtree=0'}
# Bag header stamps start here (a plausible wall-clock time; zero stamps mean "unset" in ROS).
STAMP_BASE_NS = 1_700_000_000 * 1_000_000_000


def episode_plan(count: int, kinds: Sequence[str] = EPISODE_KINDS,
                 task_kinds: Sequence[str] = TASK_KINDS) -> list[tuple[str, str]]:
    """
    ``(kind, task_kind)`` for each episode index: kinds cycle fastest, then task kinds.

    Twelve episodes with the defaults cover every (kind, task kind) pair once.
    """
    for k in kinds:
        if k not in EPISODE_KINDS:
            raise ValueError(f'unknown episode kind {k!r}; choose from {EPISODE_KINDS}')
    for t in task_kinds:
        if t not in ALL_TASK_KINDS:
            raise ValueError(f'unknown task kind {t!r}; choose from {ALL_TASK_KINDS}')
    if not kinds or not task_kinds:
        raise ValueError('kinds and task_kinds must not be empty')
    return [(kinds[i % len(kinds)], task_kinds[(i // len(kinds)) % len(task_kinds)])
            for i in range(count)]


def export_episode(episode: Episode, out_dir: str | Path, formats: Iterable[str] = ('mp4',),
                   *, bag_topic: str = BAG_TOPIC) -> Path:
    """
    Write one episode into ``out_dir/<episode_id>/``; return that directory.

    :param formats: Any of ``'mp4'`` and ``'bag'``; the ground-truth JSON is always written.
    """
    formats = tuple(formats)
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f'unknown format {fmt!r}; choose from {FORMATS}')
    folder = Path(out_dir) / episode.episode_id
    folder.mkdir(parents=True, exist_ok=True)
    frames = [episode.frame(i) for i in range(episode.num_frames)]
    if 'mp4' in formats:
        from procvlm_ros.media.video import write_video

        write_video(folder / VIDEO_NAME, frames, episode.fps, options=VIDEO_OPTIONS)
    if 'bag' in formats:
        from procvlm_ros.core.types import Frame
        from procvlm_ros.media.rosbag import write_image_bag

        period_ns = 1e9 / episode.fps
        write_image_bag(folder / BAG_NAME, (
            Frame(rgb, STAMP_BASE_NS + round(i * period_ns), 'camera', i)
            for i, rgb in enumerate(frames)), bag_topic)
    gt = episode.ground_truth()
    (folder / GT_NAME).write_text(json.dumps(gt, indent=1), encoding='utf-8')
    return folder


def write_dataset(out: str | Path, episodes: int, seed: int, *,
                  kinds: Sequence[str] = EPISODE_KINDS, task_kinds: Sequence[str] = TASK_KINDS,
                  formats: Sequence[str] = ('mp4',), fps: float = DEFAULT_FPS,
                  bag_topic: str = BAG_TOPIC, show_progress: bool = False) -> dict[str, Any]:
    """
    Generate ``episodes`` episodes with ``seed`` and write them under ``out``.

    :returns: The manifest (also written to ``out/manifest.json``).
    :raises FileExistsError: If ``out`` exists and is not empty.
    """
    from tqdm import tqdm

    root = Path(out)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f'{root} exists and is not empty; choose a new directory')
    root.mkdir(parents=True, exist_ok=True)
    plan = episode_plan(episodes, kinds, task_kinds)
    rows = []
    for index, (kind, task_kind) in enumerate(tqdm(plan, desc='Episodes', unit='ep',
                                                   disable=not show_progress)):
        episode = generate_episode(seed, index, kind, task_kind, fps=fps)
        folder = export_episode(episode, root, formats, bag_topic=bag_topic)
        rows.append({'episode_id': episode.episode_id, 'dir': folder.name, 'kind': kind,
                     'task_kind': task_kind, 'task': episode.task.sentence,
                     'num_frames': episode.num_frames, 'success': episode.success})
    manifest = {'version': GT_VERSION, 'generator': 'procvlm_ros.synth', 'seed': seed,
                'episodes': rows, 'kinds': list(kinds), 'task_kinds': list(task_kinds),
                'formats': list(formats), 'fps': fps, 'bag_topic': bag_topic}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding='utf-8')
    return manifest


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """
    Read an episode's ground truth from its directory or its JSON file.

    :raises FileNotFoundError: If there is no ground-truth file.
    :raises ValueError: If the file is not a ground-truth document of a known version.
    """
    path = Path(path)
    file = path / GT_NAME if path.is_dir() else path
    data = json.loads(file.read_text(encoding='utf-8'))
    if not isinstance(data, dict) or data.get('version') != GT_VERSION or 'frames' not in data:
        raise ValueError(f'{file} is not a version-{GT_VERSION} ground-truth file')
    return data


def list_episode_dirs(root: str | Path) -> list[Path]:
    """Episode directories (holding a ground-truth file) directly under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'episode directory {root} does not exist')
    return sorted(p for p in root.iterdir() if (p / GT_NAME).is_file())
