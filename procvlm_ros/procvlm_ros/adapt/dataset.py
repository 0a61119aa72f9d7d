"""
``procvlm-adapt dataset``: annotated demonstrations -> the official one-shot training data.

Reproduces ``finalize_and_exit`` of the official annotator (``evqa/one-shot/annotator.py``):

- frames of ``/delete`` segments are dropped (the rest is renumbered);
- labels: :func:`procvlm_ros.adapt.labels.progress_labels`, times the success cutoff when the
  demonstration is Not Done; remaining actions: :func:`~procvlm_ros.adapt.labels.planned_actions`;
- samples: every frame with progress < 1 (unless it has no remaining action), plus up to 10
  random frames with progress >= 1, each three times;
- images of a sample: with probability 0.3 the current frame alone, otherwise frames
  ``max(0, i - n) .. i`` with n uniform in 4..16 (5-17 consecutive native-rate frames);
- answers: ``The following actions are required: \\n1. ...\\nTherefore, the estimated progress
  is <progress>XX.XX%</progress>.`` / ``Image shows the final result.[ Reason: R.]\\nTherefore,
  the estimated progress is <progress>100%</progress>.``;
- rows ``{"image": [relative paths], "conversations": [{"from": "human", "value":
  "<image>\\n" * k + prompt}, {"from": "gpt", "value": answer}]}`` in ``qa_pairs.jsonl``, images
  as JPEG (Pillow default quality) under ``images/<task[:15], spaces -> _>/<tag>/NNNNNN.jpg``.

Deliberate differences: the random draws come from a seeded generator (same inputs, same data
set), and the tag is ``<video stem>_<number from the annotation's content>`` instead of the
wall-clock milliseconds, so rebuilding gives the same paths. ``dataset.json`` beside the rows
records the inputs, labels and counts. Options beyond the official builder (off by default):
``labels='stall_aware'`` and a :class:`WindowPlan` with the windows the node feeds or several
window draws per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import hashlib
import json
import logging
from pathlib import Path
import random
from typing import Any

import numpy as np
from PIL import Image

from procvlm_ros.adapt import annotation as ann
from procvlm_ros.adapt.frames import Demonstration, read_demonstration
from procvlm_ros.adapt.labels import planned_actions, progress_labels
from procvlm_ros.core.config import WindowConfig
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.prompt import build_prompt

_LOG = logging.getLogger(__name__)

QA_NAME = 'qa_pairs.jsonl'
META_NAME = 'dataset.json'
IMAGE_TOKEN = '<image>\n'
SINGLE_FRAME_P = 0.3
MIN_HISTORY, MAX_HISTORY = 4, 16
MAX_FINISHED, FINISHED_REPEAT = 10, 3
UNFINISHED = ('The following actions are required: \n{steps}\nTherefore, the estimated '
              'progress is <progress>{percent:.2f}%</progress>.')
FINISHED_TAIL = '\nTherefore, the estimated progress is <progress>100%</progress>.'


@dataclass(frozen=True)
class LabelledFrames:
    """The frames kept after ``/delete``, with their sub-task, label and remaining actions."""

    images: list[np.ndarray]
    sub_tasks: list[str]
    progress: list[float]
    planned: list[list[str]]
    source_index: list[int]
    times_s: list[float]


LABELS = ('official', 'stall_aware')
WINDOWS = ('official', 'monitor')


def label_demonstration(annotation: ann.Annotation, demo: Demonstration,
                        similarity: Any = None, labels: str = 'official') -> LabelledFrames:
    """Assign sub-tasks to frames, drop ``/delete`` frames, compute labels and actions."""
    sub_tasks = ann.resolve_sub_tasks(annotation, demo.times_s)
    per_frame: list[str] = []
    k = 0
    for i in range(demo.num_frames):
        if i > sub_tasks[k][1]:
            k += 1
        per_frame.append(sub_tasks[k][0])
    keep = [i for i, d in enumerate(per_frame) if d.strip() != ann.DELETE]
    if not keep:
        raise ConfigError('no frame is left after dropping /delete segments')
    images = [demo.frames[i] for i in keep]
    kept = [per_frame[i] for i in keep]
    kwargs = {} if similarity is None else {'similarity': similarity}
    if labels not in LABELS:
        raise ConfigError(f'labels must be one of {LABELS}, got {labels!r}')
    progress = progress_labels(images, kept, stall_aware=labels == 'stall_aware', **kwargs)
    if not annotation.done:
        progress = [p * annotation.success_cutoff for p in progress]
    return LabelledFrames(images, kept, progress, planned_actions(kept), keep,
                          [demo.times_s[i] for i in keep])


def sample_history(rng: random.Random, current: int) -> list[int]:
    """Official window variety: the current frame alone (p=0.3) or 5-17 frames ending at it."""
    if rng.random() < SINGLE_FRAME_P:
        return [current]
    n = rng.randint(MIN_HISTORY, MAX_HISTORY)
    return list(range(max(0, current - n), current + 1))


def monitor_history(times_s: Sequence[float], current: int, window_size: int = 8,
                    sample_period_s: float = 0.0) -> list[int]:
    """
    A window spaced like the monitor's, ending at ``current``: ``window_size`` frames, oldest
    first.

    Each earlier slot holds the newest frame at least ``sample_period_s`` older than the slot
    after it (0: the previous frame), so frames sit as far apart as in the node's buffer; with
    period 0 it is exactly the offline path's window (``core.sampling.window_positions``).
    Before the first frame the first frame repeats, as in the official front padding. Unlike
    the node's ``FrameWindow``, whose kept frames form a grid from the episode's first frame,
    the spacing is counted back from ``current``, so every labelled frame is its window's
    newest.
    """
    picked = [current]
    for _ in range(max(1, int(window_size)) - 1):
        last = picked[-1]
        j = last - 1
        if sample_period_s > 0:
            while j >= 0 and times_s[last] - times_s[j] < sample_period_s - 1e-9:
                j -= 1
        picked.append(max(j, 0))
    return picked[::-1]


@dataclass(frozen=True)
class WindowPlan:
    """
    Which frames each sample shows: ``official`` draws the official variety (1 or 5-17
    consecutive frames), ``draws`` times per sample (1 = official); ``monitor`` gives each
    sample the window inference builds (:func:`monitor_history`: ``size`` frames
    ``period_s`` apart).
    """

    kind: str = 'official'
    size: int = WindowConfig.window_size
    period_s: float = 0.0
    draws: int = 1

    def __post_init__(self) -> None:
        if self.kind not in WINDOWS:
            raise ConfigError(f'windows must be one of {WINDOWS}, got {self.kind!r}')
        if self.size < 1 or not self.period_s >= 0 or self.draws < 1:
            raise ConfigError(f'window_size and draws must be >= 1 and sample_period_s >= 0, '
                              f'got {self.size}, {self.draws} and {self.period_s}')

    def copies(self, done: bool) -> int:
        """Rows per sample (finished frames are repeated officially)."""
        return (FINISHED_REPEAT if done else 1) * (self.draws if self.kind == 'official' else 1)

    def history(self, rng: random.Random, times_s: Sequence[float], current: int) -> list[int]:
        if self.kind == 'official':
            return sample_history(rng, current)
        return monitor_history(times_s, current, self.size, self.period_s)

    def describe(self) -> dict[str, Any]:
        if self.kind == 'official':
            return {'windows': self.kind, 'draws': self.draws}
        return {'windows': self.kind, 'window_size': self.size, 'sample_period_s': self.period_s}


def answer_text(progress: float, actions: Sequence[str], reason: str = '') -> str:
    """The official answer for a frame (finished when progress >= 1)."""
    if progress >= 1:
        head = 'Image shows the final result.'
        if reason:
            head += f' Reason: {reason}.'
        return head + FINISHED_TAIL
    steps = '\n'.join(f'{i + 1}. {a}' for i, a in enumerate(actions))
    return UNFINISHED.format(steps=steps, percent=progress * 100)


def sample_tag(annotation: ann.Annotation, source: Path) -> str:
    """``<stem>_<13 digits>``: the official ``<stem>_<ms>`` shape, from the annotation."""
    stem = source.stem.replace(' ', '_')
    safe = ''.join(ch if (ch.isalnum() or ch in '_-') else '_' for ch in stem)
    digest = hashlib.sha256(json.dumps(annotation.to_dict(), sort_keys=True).encode())
    return f'{safe}_{int(digest.hexdigest()[:12], 16) % 10**13:013d}'


def write_samples(out: Path, task: str, labelled: LabelledFrames, tag: str,
                  rng: random.Random, reason: str = '',
                  windows: WindowPlan | None = None) -> list[dict[str, Any]]:
    """Write the images of one demonstration and return its ``qa_pairs`` rows."""
    windows = windows or WindowPlan()
    image_root = out / 'images' / task[:15].replace(' ', '_') / tag
    image_root.mkdir(parents=True, exist_ok=True)
    prompt = build_prompt(task)
    progress = labelled.progress
    unfinished = [i for i, p in enumerate(progress) if p < 1]
    finished = [i for i, p in enumerate(progress) if p >= 1]
    rng.shuffle(finished)
    chosen = sorted(unfinished + finished[:MAX_FINISHED])
    written: dict[int, str] = {}

    def image_path(i: int) -> str:
        if i not in written:
            path = image_root / f'{i:06d}.jpg'
            Image.fromarray(labelled.images[i]).save(path)  # Pillow default, as officially
            written[i] = path.relative_to(out).as_posix()
        return written[i]

    rows = []
    for i in chosen:
        done = progress[i] >= 1
        if not done and not labelled.planned[i]:
            continue  # unfinished without a remaining action: dropped officially
        for _ in range(windows.copies(done)):
            history = windows.history(rng, labelled.times_s, i)
            rows.append({
                'image': [image_path(j) for j in history],
                'conversations': [
                    {'from': 'human', 'value': IMAGE_TOKEN * len(history) + prompt},
                    {'from': 'gpt', 'value': answer_text(progress[i], labelled.planned[i],
                                                         reason)}]})
    return rows


def build_dataset(annotations: Sequence[str | Path], out: str | Path, *, seed: int = 0,
                  similarity: Any = None, labels: str = 'official',
                  windows: WindowPlan | None = None) -> dict[str, Any]:
    """
    Build the official one-shot data set from annotated demonstrations.

    :param annotations: Annotation files, or directories holding ``annotation.yaml``.
    :param out: New or empty directory; gets ``qa_pairs.jsonl``, ``images/``, ``dataset.json``.
    :param seed: Seed of the sample and window draws.
    :param similarity: Image similarity for the labels (pHash similarity when None).
    :param labels: ``official`` formula, or ``stall_aware`` (unchanged frames add nothing).
    :param windows: The images of each sample (:class:`WindowPlan`; None: official).
    :returns: The metadata written to ``dataset.json``.
    :raises FileExistsError: If ``out`` already holds a ``qa_pairs.jsonl``.
    :raises ConfigError: On a bad annotation, an empty demonstration or an unknown topic.
    """
    if not annotations:
        raise ConfigError('give at least one annotated demonstration')
    windows = windows or WindowPlan()
    root = Path(out)
    if (root / QA_NAME).exists():
        raise FileExistsError(f'{root / QA_NAME} exists; choose a new output directory')
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    formula = ('official p() (pHash increments, segment weights, not-done cutoff)'
               if labels == 'official' else 'stall-aware p() (unchanged pHash adds nothing)')
    meta: dict[str, Any] = {'format': 'procvlm one-shot qa_pairs', 'seed': seed,
                            'labels': labels, 'label_formula': formula,
                            **windows.describe(), 'demonstrations': []}
    for item in annotations:
        a = ann.load(item)
        demo = read_demonstration(a.source_path(), a.image_topic)
        labelled = label_demonstration(a, demo, similarity, labels)
        tag = sample_tag(a, demo.path)
        new = write_samples(root, a.task, labelled, tag, rng, a.reason if a.done else '',
                            windows)
        rows.extend(new)
        meta['demonstrations'].append({
            'annotation': str(a.origin), 'source': str(demo.path), 'topic': demo.topic,
            'task': a.task, 'done': a.done, 'frames': demo.num_frames,
            'kept_frames': len(labelled.images), 'samples': len(new), 'tag': tag,
            'sub_tasks': ann.resolve_sub_tasks(a, demo.times_s),
            'progress': [round(p, 6) for p in labelled.progress]})
        _LOG.info('%s: %d frames, %d samples', demo.path.name, demo.num_frames, len(new))
    with (root / QA_NAME).open('w', encoding='utf-8') as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + '\n')
    meta['samples'] = len(rows)
    (root / META_NAME).write_text(json.dumps(meta, indent=1), encoding='utf-8')
    return meta


def read_qa_pairs(data_dir: str | Path) -> list[dict[str, Any]]:
    """
    Read ``qa_pairs.jsonl`` rows, checking the official shape of each.

    :raises FileNotFoundError: If the file is missing.
    :raises ConfigError: On a row that is not the official shape or names a missing image.
    """
    root = Path(data_dir)
    path = root / QA_NAME
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: build it with procvlm-adapt dataset')
    rows = []
    for n, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            images = row['image']
            human, gpt = row['conversations'][0]['value'], row['conversations'][1]['value']
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ConfigError(f'{path}:{n}: not an official qa_pairs row ({e})') from e
        images = [images] if isinstance(images, str) else list(images)
        if human.count('<image>') != len(images):
            raise ConfigError(f'{path}:{n}: {human.count("<image>")} <image> tags but '
                              f'{len(images)} images')
        for rel in images:
            if not (root / rel).is_file():
                raise ConfigError(f'{path}:{n}: image {rel} is missing')
        rows.append({'images': [str(root / rel) for rel in images],
                     'prompt': human.replace('<image>\n', '').replace('<image>', ''),
                     'answer': gpt})
    if not rows:
        raise ConfigError(f'{path} holds no samples')
    return rows
