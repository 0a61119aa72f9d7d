"""
Per-frame progress labels of an annotated demonstration, with the official formula.

Reproduces ``evqa/tools/functions/progress.py`` ``p()`` and ``r()`` (ProcVLM at 5a8c6b2d):

- frames with the same sub-task description in a row form a segment; segments named
  ``done``/``done.``/``not done``/``not done.`` (any case) or empty are not counted;
- inside a counted segment of n frames, frame 0 adds 0 and frame i adds
  ``1.5 - pHashSimilarity(frame[i-1], frame[i])`` (in [0.5, 1.5]), normalised by the segment's
  sum (a one-frame segment adds 0);
- each counted segment is weighted by ``clip(K * n / T, 0.75, 1.25)`` (K counted segments,
  T frames in them);
- ``p[0] = 0`` and ``p[i] = sum(dp[:i]) / sum(dp)``: the frame's own increment is **not**
  included, so the last counted frame stays below 1 and only frames after it (the trailing
  ``Done`` segment) reach 1.0;
- Not Done demonstrations are scaled by the success cutoff (in the annotator).

Known weakness (documented, reproduced): a frozen scene still adds 0.5 per frame, so labels
keep rising through a stall or a pause. ``stall_aware=True`` (not official) lets a frame whose
pHash equals the previous frame's add nothing, so the labels stay flat while nothing moves.

pHash as ``imagehash.phash`` (hash size 8): greyscale, Lanczos resize to 32x32, 2-D DCT-II,
the top-left 8x8 coefficients compared with their median; similarity ``1 - hamming / 64``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

NOT_COUNTED = ('done', 'done.', 'not done', 'not done.')
_HASH, _SIZE = 8, 32


def _dct_rows(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of scipy's unnormalised DCT-II matrix (``2 cos(pi k (2n+1) / 2N)``)."""
    rows = np.arange(k)[:, None]
    cols = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * rows * (2 * cols + 1) / (2 * n))


_DCT = _dct_rows(_SIZE, _HASH)


def phash(image: Any) -> np.ndarray:
    """
    64-bit perceptual hash of an image (``imagehash.phash`` semantics), as a bool (8, 8) array.

    :param image: PIL image or ``(H, W, 3)`` uint8 RGB array.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    grey = image.convert('L').resize((_SIZE, _SIZE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T  # the 8x8 low-frequency corner of the 2-D DCT
    return np.asarray(low > np.median(low))


def phash_similarity(a: Any, b: Any) -> float:
    """``1 - hamming(phash(a), phash(b)) / 64``; the official helper returns 1.0 for sizes that
    differ."""
    size_a = a.size if isinstance(a, Image.Image) else (a.shape[1], a.shape[0])
    size_b = b.size if isinstance(b, Image.Image) else (b.shape[1], b.shape[0])
    if size_a != size_b:
        return 1.0
    return 1.0 - float(np.count_nonzero(phash(a) != phash(b))) / (_HASH * _HASH)


def segments(sub_tasks: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(start, end_exclusive, description)`` of each run of equal descriptions."""
    out = []
    start = 0
    for i in range(1, len(sub_tasks)):
        if sub_tasks[i] != sub_tasks[i - 1]:
            out.append((start, i, sub_tasks[i - 1]))
            start = i
    out.append((start, len(sub_tasks), sub_tasks[-1]))
    return out


def counted(description: str) -> bool:
    """Whether a segment counts towards progress (not empty, not done / not done)."""
    return bool(description) and description.lower() not in NOT_COUNTED


def increments(images: Sequence[Any], similarity: Callable[[Any, Any], float],
               stall_aware: bool = False) -> list[float]:
    """
    Official ``r()``: 0 for the first frame, then normalised ``1.5 - similarity``.

    :param stall_aware: An unchanged frame (similarity 1) adds 0 instead of 0.5 (not official).
    """
    if len(images) == 1:
        return [0.0]
    sims = [similarity(images[i - 1], images[i]) for i in range(1, len(images))]
    dphi = [0.0 if stall_aware and s >= 1.0 else 1.5 - s for s in sims]
    total = sum(dphi)
    return [0.0] + [d / total if total > 0 else 0.0 for d in dphi]


def progress_labels(images: Sequence[Any], sub_tasks: Sequence[str], *,
                    similarity: Callable[[Any, Any], float] = phash_similarity,
                    stall_aware: bool = False) -> list[float]:
    """
    Official ``p()``: progress in [0, 1) per frame (1.0 only after the last counted segment).

    :param images: One image per frame (after ``/delete`` segments were removed).
    :param sub_tasks: The sub-task description of each frame.
    :param similarity: Image similarity in [0, 1]; pHash similarity as officially.
    :param stall_aware: Unchanged frames add nothing (see :func:`increments`; not official).
    :raises ValueError: If there are no frames or the lengths differ.
    """
    if not images:
        raise ValueError('progress labels need at least one frame')
    if len(images) != len(sub_tasks):
        raise ValueError(f'{len(images)} images but {len(sub_tasks)} sub-task labels')
    splits = segments(sub_tasks)
    valid = [counted(desc) for _, _, desc in splits]
    k = sum(valid)
    t = sum(e - s for (s, e, _), ok in zip(splits, valid) if ok)
    dp: list[float] = []
    for (s, e, _), ok in zip(splits, valid):
        if not ok:
            dp.extend([0.0] * (e - s))
            continue
        weight = float(np.clip(k * (e - s) / t if t > 0 else 0.0, 0.75, 1.25))
        dp.extend(weight * r for r in increments(images[s:e], similarity, stall_aware))
    total = sum(dp)  # left to right like the partial sums: exactly 1.0 after the last
    out = [0.0]
    running = 0.0
    for i in range(1, len(images)):
        running += dp[i - 1]
        out.append(running / total if total > 0 else 0.0)
    return out


def planned_actions(sub_tasks: Sequence[str]) -> list[list[str]]:
    """
    The remaining actions of each frame, as the official annotator derives them.

    Walking backwards, each description that is not ``done``/``not done`` (any case) and not
    yet listed is put in front; a frame's list is the list at that point (its own segment
    first).
    """
    following: list[str] = []
    out: list[list[str]] = []
    for desc in reversed(sub_tasks):
        if desc.lower() not in ('done', 'not done') and desc not in following:
            following.insert(0, desc)
        out.append(list(following))
    out.reverse()
    return out
