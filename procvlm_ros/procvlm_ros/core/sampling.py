"""Which frames are evaluated and which frames form each window (official ProcVLM rules)."""

from __future__ import annotations

import numpy as np


def build_uniform_indices(total_frames: int, max_sampled_frames: int = 512,
                          max_frames: int | None = None) -> list[int]:
    """
    Return the source-frame indices to evaluate, as the official ``build_uniform_indices``.

    Every frame when there are at most ``max_sampled_frames``; otherwise ``np.round`` of a
    linspace (halves to even), de-duplicated in order, padded from 0 upward, sorted.
    """
    source = total_frames if max_frames is None else min(total_frames, max(max_frames, 0))
    count = min(source, max(int(max_sampled_frames), 1))
    if source <= 0:
        return []
    if count >= source:
        return list(range(source))
    picked = [int(i) for i in np.round(np.linspace(0, source - 1, num=count))]
    indices = list(dict.fromkeys(picked))
    filler = (i for i in range(source) if i not in set(indices))
    while len(indices) < count:
        indices.append(next(filler))
    return sorted(indices)


def window_positions(sample_position: int, window_size: int = 8) -> list[int]:
    """
    Positions (into the list of evaluated frames) of the causal window ending at a sample.

    Oldest first, current last; positions before the episode start are clamped to 0, so the
    first frame repeats at the front until ``window_size`` frames exist.
    """
    size = max(1, int(window_size))
    start = sample_position - size + 1
    return [min(max(p, 0), sample_position) for p in range(start, sample_position + 1)]
