"""
Episodes of a dataset: discovery (folder of bags, folder of videos, LeRobot v3) and task text.

An :class:`EpisodeSpec` is plain data (picklable for Ray workers); :func:`open_episode` turns it
into an ``offline.Source`` at scoring time. Task text, first match wins: ``--task`` (when
given, for every episode), a per-episode ``task.txt`` or ``ground_truth.json`` ``task`` beside
the episode, the dataset's task field (LeRobot). None of them: the episode fails with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
from pathlib import Path
from typing import Any

from procvlm_ros.core.errors import ProcVlmError

VIDEO_SUFFIXES = ('.mp4', '.mkv', '.avi', '.mov', '.webm')
# Outputs this tool writes next to bags; never treat them as inputs.
PROGRESS_MCAP_SUFFIX = '.progress.mcap'
TASK_FILE = 'task.txt'
GT_FILE = 'ground_truth.json'


class EpisodeError(ProcVlmError):
    """This episode cannot be labelled (the message says why); others go on."""


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to label; ``kind`` is 'video', 'bag' or 'lerobot'."""

    episode_id: str
    kind: str
    path: str
    task: str | None = None
    image_topic: str | None = None
    index: int = 0  # position in the dataset (LeRobot episode_index)
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def discover(root: str | Path, kind: str, *, task: str | None = None,
             image_topic: str | None = None, camera_key: str | None = None,
             exclude: Path | None = None) -> list[EpisodeSpec]:
    """
    List the episodes under ``root`` (kind 'bags', 'videos' or 'lerobot'), sorted.

    :raises ProcVlmError: If ``root`` does not exist or the dataset metadata is unusable
        (problems of a single episode are raised later, per episode, by :func:`open_episode`).
    """
    if kind == 'lerobot':
        from procvlm_ros.label.lerobot_source import discover_lerobot

        return discover_lerobot(root, camera_key=camera_key, task=task)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ProcVlmError(f'dataset folder not found: {root}')
    if kind == 'bags':
        paths = _find_bags(root, exclude)
        spec_kind = 'bag'
    elif kind == 'videos':
        paths = sorted(p for p in root.rglob('*') if p.suffix.lower() in VIDEO_SUFFIXES
                       and p.is_file() and not _skip(p, root, exclude))
        spec_kind = 'video'
    else:
        raise ProcVlmError(f"unknown dataset kind {kind!r}; use 'bags', 'videos' or 'lerobot'")
    specs = []
    for i, path in enumerate(paths):
        rel = path.relative_to(root)
        episode_id = '__'.join(rel.with_suffix('').parts) if path.is_file() else '__'.join(
            rel.parts)
        specs.append(EpisodeSpec(episode_id, spec_kind, str(path),
                                 task if task else _episode_task(path),
                                 image_topic if spec_kind == 'bag' else None, i))
    return specs


def _skip(path: Path, root: Path, folder: Path | None) -> bool:
    """Inside the output folder, or hidden below the root (our temp files, e.g. a half-written
    MCAP)."""
    if any(part.startswith('.') for part in path.relative_to(root).parts):
        return True
    return folder is not None and folder.resolve() in path.resolve().parents


def _find_bags(root: Path, exclude: Path | None) -> list[Path]:
    bag_dirs = sorted(p.parent for p in root.rglob('metadata.yaml')
                      if not _skip(p, root, exclude))
    found = list(bag_dirs)
    for p in sorted(root.rglob('*')):
        if (p.suffix in ('.mcap', '.db3') and p.is_file() and not _skip(p, root, exclude)
                and not p.name.endswith(PROGRESS_MCAP_SUFFIX)
                and not any(d in p.parents for d in bag_dirs)):
            found.append(p)
    return sorted(found)


def _episode_task(path: Path) -> str | None:
    """A task from ``task.txt`` / ``ground_truth.json`` in the episode's own folder(s)."""
    folders = [path] if path.is_dir() else []
    folders.append(path.parent)
    for folder in folders:
        text = folder / TASK_FILE
        if text.is_file():
            value = text.read_text(encoding='utf-8').strip()
            if value:
                return value
        gt = folder / GT_FILE
        if gt.is_file():
            try:
                value = json.loads(gt.read_text(encoding='utf-8')).get('task')
            except (ValueError, AttributeError):
                continue
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def open_episode(spec: EpisodeSpec) -> Any:
    """The ``offline.Source`` of an episode; raises EpisodeError naming the problem."""
    if not spec.task or not spec.task.strip():
        raise EpisodeError(f'no task text for {spec.episode_id} (no --task, no {TASK_FILE} or '
                           f'{GT_FILE} task beside it, no dataset task)')
    if spec.kind == 'lerobot':
        from procvlm_ros.label.lerobot_source import open_lerobot_episode

        return open_lerobot_episode(spec)
    from procvlm_ros.offline import open_source

    try:
        source = open_source(spec.path, spec.image_topic)
    except Exception as exc:  # any decoder/bag error: this episode fails, others go on
        raise EpisodeError(f'cannot open {spec.path}: {exc}') from exc
    if source.total_frames <= 0:
        raise EpisodeError(f'{spec.path} has no frames')
    return source
