"""
The annotation file of one demonstration: task, coarse stages, done / not done.

The official annotator (``evqa/one-shot/annotator.html``) records ``sub_tasks = [[description,
end_frame], ...]`` (inclusive end frames, strictly increasing, the first > 0), a segment named
``/delete`` is dropped, and when the last end is before the last frame a trailing segment named
``Done`` / ``Not Done`` is appended. Done takes an optional reason; Not Done takes a success
cutoff in [0, 1] (default 0.75). This file stores the same facts, so the page and scripted use
share one format (YAML or JSON)::

    version: 1
    task: open the red drawer and put the blue ball in it
    source: demo.mp4            # video file, rosbag2 directory, .mcap or .db3 (relative to
    image_topic: /camera/image  #   this file); image_topic for bags with several
    done: true
    reason: ''                  # done only, optional
    success_cutoff: 0.75        # not done only
    stages:
      - {description: reach the red drawer handle, end_frame: 11}
      - {description: pull the red drawer open, end_s: 9.5}   # or seconds from the first frame

Timestamps become the last frame whose time is at or before them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
from typing import Any

from procvlm_ros.core.errors import ConfigError

VERSION = 1
DELETE = '/delete'
DONE, NOT_DONE = 'Done', 'Not Done'
DEFAULT_CUTOFF = 0.75
ANNOTATION_NAME = 'annotation.yaml'
# Half a millisecond of slack when a timestamp meets a frame time.
_TIME_EPS = 5e-4


@dataclass(frozen=True)
class Stage:
    """One coarse stage: what is done in it, and where it ends (a frame or a time)."""

    description: str
    end_frame: int | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Annotation:
    """The annotation of one demonstration (see the module docstring for the file format)."""

    task: str
    stages: tuple[Stage, ...]
    done: bool
    source: str = ''
    image_topic: str = ''
    reason: str = ''
    success_cutoff: float = DEFAULT_CUTOFF
    origin: Path | None = field(default=None, compare=False)

    def source_path(self) -> Path:
        """The source, relative paths taken against the annotation file's directory."""
        if not self.source:
            raise ConfigError('the annotation names no source (video or rosbag2)')
        path = Path(self.source).expanduser()
        if not path.is_absolute() and self.origin is not None:
            path = self.origin.parent / path
        return path

    def to_dict(self) -> dict[str, Any]:
        stages = []
        for s in self.stages:
            row: dict[str, Any] = {'description': s.description}
            if s.end_frame is not None:
                row['end_frame'] = s.end_frame
            else:
                row['end_s'] = s.end_s
            stages.append(row)
        out: dict[str, Any] = {'version': VERSION, 'task': self.task, 'source': self.source}
        if self.image_topic:
            out['image_topic'] = self.image_topic
        out['done'] = self.done
        if self.done:
            out['reason'] = self.reason
        else:
            out['success_cutoff'] = self.success_cutoff
        out['stages'] = stages
        return out


def _fail(where: str, msg: str) -> ConfigError:
    return ConfigError(f'{where}: {msg}')


def _stage(row: Any, i: int, where: str) -> Stage:
    if isinstance(row, (list, tuple)) and len(row) == 2:  # official [description, end_frame]
        row = {'description': row[0], 'end_frame': row[1]}
    if not isinstance(row, dict):
        raise _fail(where, f'stage {i + 1} must be a mapping with description and end_frame '
                           f'or end_s, got {row!r}')
    desc = row.get('description')
    if not isinstance(desc, str) or not desc.strip():
        raise _fail(where, f'stage {i + 1} has no description')
    unknown = sorted(set(row) - {'description', 'end_frame', 'end_s'})
    if unknown:
        raise _fail(where, f'stage {i + 1} has unknown keys {unknown}')
    has_f, has_s = row.get('end_frame') is not None, row.get('end_s') is not None
    if has_f == has_s:
        raise _fail(where, f'stage {i + 1} ({desc!r}) needs exactly one of end_frame, end_s')
    if has_f:
        value = row['end_frame']
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f'stage {i + 1} end_frame must be an integer, got {value!r}')
        return Stage(desc.strip(), end_frame=int(value))
    value = row['end_s']
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise _fail(where, f'stage {i + 1} end_s must be a finite number, got {value!r}')
    return Stage(desc.strip(), end_s=float(value))


def from_dict(data: Any, where: str = 'annotation', origin: Path | None = None) -> Annotation:
    """
    Build an :class:`Annotation` from parsed YAML/JSON; check types and ranges of each field.

    :raises ConfigError: Naming the field that is wrong.
    """
    if not isinstance(data, dict):
        raise _fail(where, 'must hold a mapping (task, stages, done, ...)')
    version = data.get('version', VERSION)
    if version != VERSION:
        raise _fail(where, f'unknown version {version!r} (this reader knows {VERSION})')
    known = {'version', 'task', 'source', 'image_topic', 'done', 'reason', 'success_cutoff',
             'stages'}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(where, f'unknown keys {unknown}')
    task = data.get('task')
    if not isinstance(task, str) or not task.strip():
        raise _fail(where, 'task is missing or empty')
    done = data.get('done')
    if not isinstance(done, bool):
        raise _fail(where, f'done must be true or false, got {done!r}')
    cutoff = data.get('success_cutoff', DEFAULT_CUTOFF)
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not (
            0.0 <= float(cutoff) <= 1.0):
        raise _fail(where, f'success_cutoff must be a number in [0, 1], got {cutoff!r}')
    stages = data.get('stages')
    if not isinstance(stages, list) or not stages:
        raise _fail(where, 'stages must be a non-empty list')
    for key in ('source', 'image_topic', 'reason'):
        if not isinstance(data.get(key, ''), str):
            raise _fail(where, f'{key} must be a string')
    return Annotation(task=task.strip(), stages=tuple(_stage(s, i, where)
                                                       for i, s in enumerate(stages)),
                      done=done, source=data.get('source', ''),
                      image_topic=data.get('image_topic', ''),
                      reason=str(data.get('reason', '')).strip(),
                      success_cutoff=float(cutoff), origin=origin)


def load(path: str | Path) -> Annotation:
    """
    Read an annotation file (``.yaml``/``.yml``/``.json``), or ``annotation.yaml`` in a directory.

    :raises FileNotFoundError: If there is no such file.
    :raises ConfigError: If it does not parse or a field is wrong.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / ANNOTATION_NAME
    if not path.is_file():
        raise FileNotFoundError(f'annotation file {path} not found')
    text = path.read_text(encoding='utf-8')
    try:
        if path.suffix == '.json':
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise different types
        raise ConfigError(f'{path}: not valid {path.suffix.lstrip(".") or "YAML"}: {e}') from e
    return from_dict(data, str(path), origin=path.resolve())


def save(annotation: Annotation, path: str | Path) -> Path:
    """Write ``annotation`` as YAML (or JSON when ``path`` ends in ``.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = annotation.to_dict()
    if path.suffix == '.json':
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    else:
        import yaml
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True),
                        encoding='utf-8')
    return path


def frame_for_time(times_s: Sequence[float], t: float) -> int:
    """The last frame whose time (seconds from the first frame) is at or before ``t``."""
    best = -1
    for i, ti in enumerate(times_s):
        if ti <= t + _TIME_EPS:
            best = i
        else:
            break
    return best


def resolve_sub_tasks(annotation: Annotation, times_s: Sequence[float]) -> list[list[Any]]:
    """
    The official ``sub_tasks`` list for a demonstration of ``len(times_s)`` frames.

    Ends are inclusive frame indices; they must increase strictly, the first must be > 0 (the
    official page refuses anything else) and the last must be inside the demonstration. A
    trailing ``Done`` / ``Not Done`` segment covers frames after the last end, as the page adds.

    :param annotation: The annotation.
    :param times_s: Time of each frame in seconds from the first frame (non-decreasing).
    :raises ConfigError: On an empty demonstration, or overlapping / out-of-range stages.
    """
    n = len(times_s)
    if n == 0:
        raise ConfigError('the demonstration has no frames (empty video or topic)')
    if n < 2:
        raise ConfigError('the demonstration has a single frame; stages need at least two')
    where = str(annotation.origin or 'annotation')
    last = -1
    out: list[list[Any]] = []
    for i, stage in enumerate(annotation.stages):
        if stage.end_frame is not None:
            end = stage.end_frame
            if not 0 <= end < n:
                raise _fail(where, f'stage {i + 1} ({stage.description!r}) ends at frame {end}, '
                                   f'outside the demonstration (frames 0..{n - 1})')
            label = f'frame {end}'
        else:
            assert stage.end_s is not None
            if stage.end_s < -_TIME_EPS or stage.end_s > times_s[-1] + _TIME_EPS:
                raise _fail(where, f'stage {i + 1} ({stage.description!r}) ends at '
                                   f'{stage.end_s:g} s, outside the demonstration '
                                   f'(0..{times_s[-1]:.3f} s)')
            end = frame_for_time(times_s, stage.end_s)
            label = f'{stage.end_s:g} s (frame {end})'
        if end <= 0:
            raise _fail(where, f'stage {i + 1} ({stage.description!r}) ends at {label}; the '
                               'first stage must end after frame 0')
        if end <= last:
            raise _fail(where, f'stage {i + 1} ({stage.description!r}) ends at {label}, not '
                               f'after the previous stage (frame {last}): stages overlap')
        out.append([stage.description, end])
        last = end
    if all(desc == DELETE for desc, _ in out):
        raise _fail(where, f'every stage is {DELETE}: nothing is left to learn from')
    if last < n - 1:
        out.append([DONE if annotation.done else NOT_DONE, n - 1])
    return out
