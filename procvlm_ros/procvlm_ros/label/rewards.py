"""
Rewards from progress (NumPy only): interpolation to every frame, clipped deltas with a
terminal bonus, n-step advantages, top-k % selection and self-consistency figures.

Conventions (the ProcVLM guide's recipe, every number configurable):
- ``reward[0] = 0``; ``reward[t] = clip(p[t] - p[t-1], delta_min, delta_max)`` for t >= 1,
  plus ``terminal_bonus`` on the last frame when the final progress is above
  ``terminal_threshold``.
- ``advantage[t] = sum(reward[t+1 : t+1+horizon])`` (undiscounted, truncated at the episode
  end): the progress an agent gains in the next ``horizon`` steps, with progress as the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np


@dataclass(frozen=True)
class RewardConfig:
    """Dense-reward settings; the defaults are the ProcVLM guide's example."""

    delta_min: float = -0.05
    delta_max: float = 0.10
    terminal_bonus: float = 1.0
    terminal_threshold: float = 0.95
    horizon: int = 50

    def __post_init__(self) -> None:
        for name in ('delta_min', 'delta_max', 'terminal_bonus', 'terminal_threshold'):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f'{name} must be finite, got {getattr(self, name)!r}')
        if self.delta_min > self.delta_max:
            raise ValueError(f'delta_min {self.delta_min} > delta_max {self.delta_max}')
        if int(self.horizon) != self.horizon or self.horizon < 1:
            raise ValueError(f'horizon must be a positive integer, got {self.horizon!r}')


def interpolate(sample_frames: Sequence[int], values: Sequence[float],
                num_frames: int) -> np.ndarray:
    """
    Progress for every frame ``0..num_frames-1`` from values at sampled frames: linear between
    samples, held constant before the first and after the last (no extrapolation).
    """
    x = np.asarray(sample_frames, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.size == 0 or x.size != y.size:
        raise ValueError(f'need matching, non-empty samples (got {x.size} frames, {y.size} '
                         'values)')
    if np.any(np.diff(x) <= 0):
        raise ValueError('sampled frame indices must be strictly increasing')
    return np.interp(np.arange(int(num_frames), dtype=np.float64), x, y)


def dense_rewards(progress: Sequence[float], config: RewardConfig | None = None
                  ) -> np.ndarray:
    """Clipped progress deltas plus the terminal bonus (see the module docstring)."""
    config = config or RewardConfig()
    p = np.asarray(progress, dtype=np.float64)
    reward = np.zeros_like(p)
    if p.size == 0:
        return reward
    reward[1:] = np.clip(np.diff(p), config.delta_min, config.delta_max)
    if p[-1] > config.terminal_threshold:
        reward[-1] += config.terminal_bonus
    return reward


def advantages(rewards: Sequence[float], horizon: int) -> np.ndarray:
    """``A[t] = sum(r[t+1 : t+1+horizon])`` via a cumulative sum (O(n))."""
    r = np.asarray(rewards, dtype=np.float64)
    if int(horizon) < 1:
        raise ValueError(f'horizon must be >= 1, got {horizon!r}')
    c = np.concatenate([[0.0], np.cumsum(r)])
    t = np.arange(r.size)
    end = np.minimum(t + 1 + int(horizon), r.size)
    return c[end] - c[t + 1]


def top_fraction_mask(values: Sequence[float], fraction: float) -> np.ndarray:
    """
    True for the ``ceil(fraction * n)`` largest values (ties broken by position, earlier
    first, so the count is exact and the result deterministic).
    """
    v = np.asarray(values, dtype=np.float64)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f'fraction must be in [0, 1], got {fraction!r}')
    k = math.ceil(fraction * v.size - 1e-9)
    mask = np.zeros(v.size, dtype=bool)
    if k > 0:
        order = np.lexsort((np.arange(v.size), -v))  # descending value, then position
        mask[order[:k]] = True
    return mask


def monotonicity(progress: Sequence[float]) -> float:
    """Share of non-decreasing steps (1.0 for a monotone curve; 1.0 for < 2 values)."""
    p = np.asarray(progress, dtype=np.float64)
    if p.size < 2:
        return 1.0
    return float(np.mean(np.diff(p) >= 0.0))


def self_consistency(progress: Sequence[float]) -> float:
    """
    VOC-style order consistency without ground truth: Spearman correlation between the
    predicted progress and time (1 = progress only rises). 0 when either is constant.
    """
    p = np.asarray(progress, dtype=np.float64)
    if p.size < 2 or np.all(p == p[0]):
        return 0.0
    rank_p = _ranks(p)
    rank_t = np.arange(p.size, dtype=np.float64)
    return float(np.corrcoef(rank_p, rank_t)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    # Average ranks for ties, as scipy.stats.rankdata (scipy is not a dependency).
    order = np.argsort(x, kind='mergesort')
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(x.size, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]
