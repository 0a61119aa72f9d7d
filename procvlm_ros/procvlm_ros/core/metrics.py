"""
Accuracy metrics of progress estimates: pure functions over numbers (numpy only).

Where the official ProcVLM evaluation (``evqa/eval/compute_metrics.py`` at 5a8c6b2d, see
``procvlm-reference.md`` section 6) defines a metric, the per-episode function here computes
exactly that:

- :func:`voc`: value-order correlation. Samples sorted by ground truth (stable: ties keep their
  order, which is time order here), then Spearman's rho between the sorted position and the
  prediction; NaN or out of range -> 0. For a monotone ground truth this is Spearman of the
  prediction against time. :func:`voc_time` correlates with time directly (no ground truth).
- :func:`kendall_tau`: pairs sorted by ground truth, Kendall tau-a: pairs tied in either series
  count in neither C nor D, the denominator is ``n(n-1)/2``.
- :func:`mcc_at`: success detection by thresholding: done := value >= threshold (95 %) for both
  prediction and ground truth, MCC with ``sqrt(... + 1e-8)`` in the denominator.
- :func:`ccc`: Lin's concordance on values clamped to [0, 100] %, population variances, 0 when a
  variance is below 1e-8.

Not in the official code (project definitions): :func:`mae` (mean absolute error against the
ground truth; the official "mMAE" is a segmentation-boundary error), :func:`negative_step_rate`,
:func:`done_metrics` (precision/recall/F1/MCC of a done flag against the ground-truth done
flag) and the stall-detection helpers. The official code pools MCC@95 over all samples and
averages the others over episodes; :func:`mean_over_episodes` and :func:`pooled_done_metrics`
do the same aggregation.

Progress can be given as fractions or percentages as long as prediction and ground truth use
the same scale; only :func:`mcc_at` and :func:`ccc` take percentages (their thresholds are in
percent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
import math

import numpy as np

__all__ = [
    'DoneMetrics', 'StallDetection', 'ccc', 'done_metrics', 'kendall_tau', 'mae', 'mcc_at',
    'mean_over_episodes', 'negative_step_rate', 'pooled_done_metrics', 'rankdata', 'spearman',
    'stall_detection', 'alarm_times', 'voc', 'voc_time',
]


def _array(values: Iterable[float], name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f'{name} must be one-dimensional')
    return arr


def _pair(pred: Iterable[float], gt: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    p, g = _array(pred, 'pred'), _array(gt, 'gt')
    if p.shape != g.shape:
        raise ValueError(f'pred has {p.size} values, gt has {g.size}')
    return p, g


def rankdata(values: Iterable[float]) -> np.ndarray:
    """Ranks from 1, ties get their average rank (``scipy.stats.rankdata`` 'average')."""
    x = _array(values, 'values')
    order = np.argsort(x, kind='mergesort')
    ranks = np.empty(x.size, dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN if a series is constant."""
    a, b = _pair(x, y)
    if a.size < 2:
        return math.nan
    ra, rb = rankdata(a) - (a.size + 1) / 2.0, rankdata(b) - (b.size + 1) / 2.0
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return math.nan if denom == 0.0 else float((ra * rb).sum()) / denom


def _gt_order(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    # Python's sorted() on (gt, pred) tuples keyed by gt is stable: a stable argsort.
    return pred[np.argsort(gt, kind='mergesort')]


def voc(pred: Iterable[float], gt: Iterable[float]) -> float:
    """
    Official value-order correlation of one episode.

    :returns: Spearman between ``0..T-1`` and the predictions sorted by ground truth; 0.0 when
        undefined (constant predictions) or fewer than 2 samples (the official code skips such
        episodes; :func:`mean_over_episodes` does too when given ``None``).
    """
    p, g = _pair(pred, gt)
    if p.size < 2:
        return 0.0
    rho = spearman(np.arange(p.size), _gt_order(p, g))
    return 0.0 if math.isnan(rho) or not -1.0 <= rho <= 1.0 else rho


def voc_time(pred: Iterable[float]) -> float:
    """Spearman of the predictions against time order (0.0 when undefined)."""
    p = _array(pred, 'pred')
    if p.size < 2:
        return 0.0
    rho = spearman(np.arange(p.size), p)
    return 0.0 if math.isnan(rho) else rho


def kendall_tau(pred: Iterable[float], gt: Iterable[float]) -> float:
    """Official Kendall tau-a of one episode (pairs sorted by ground truth; ties skipped)."""
    p, g = _pair(pred, gt)
    n = p.size
    if n < 2:
        return math.nan
    dx = np.sign(g[:, None] - g[None, :])
    dy = np.sign(p[:, None] - p[None, :])
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    prod = (dx * dy)[upper]
    return float((prod > 0).sum() - (prod < 0).sum()) / (n * (n - 1) / 2)


def ccc(pred_percent: Iterable[float], gt_percent: Iterable[float]) -> float:
    """Official concordance correlation coefficient of one episode (percent scale)."""
    p, g = _pair(pred_percent, gt_percent)
    if p.size < 2:
        return math.nan
    p, g = np.clip(p, 0, 100), np.clip(g, 0, 100)
    vp, vg = p.var(), g.var()
    if vp < 1e-8 or vg < 1e-8:
        return 0.0
    corr = float(np.corrcoef(g, p)[0, 1])
    if math.isnan(corr):
        return 0.0
    return 2 * corr * math.sqrt(vp) * math.sqrt(vg) / (vp + vg + (p.mean() - g.mean()) ** 2
                                                       + 1e-8)


def mae(pred: Iterable[float], gt: Iterable[float]) -> float:
    """Mean absolute error of the predictions against the ground truth."""
    p, g = _pair(pred, gt)
    if p.size == 0:
        return math.nan
    return float(np.abs(p - g).mean())


def negative_step_rate(pred: Iterable[float], tolerance: float = 0.0) -> float:
    """
    Fraction of consecutive steps where the prediction drops by more than ``tolerance``.

    A progress estimate of a task that is not being undone should not go down; on episodes
    whose ground truth never drops every counted step is an error.
    """
    p = _array(pred, 'pred')
    if p.size < 2:
        return math.nan
    return float((np.diff(p) < -abs(tolerance)).mean())


@dataclass(frozen=True)
class DoneMetrics:
    """Confusion counts of a binary done flag and the scores derived from them."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        """tp / (tp + fp); 0.0 when nothing was predicted done."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        """tp / (tp + fn); 0.0 when nothing is done in the ground truth."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        """2tp / (2tp + fp + fn); 1.0 when there are no positives at all (nothing to get wrong)."""
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0

    @property
    def mcc(self) -> float:
        """Matthews correlation with the official ``+1e-8`` inside the square root."""
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn) + 1e-8)
        return (tp * tn - fp * fn) / denom

    def __add__(self, other: DoneMetrics) -> DoneMetrics:
        return DoneMetrics(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                           self.tn + other.tn)

    def to_dict(self) -> dict[str, float]:
        return {'tp': self.tp, 'fp': self.fp, 'fn': self.fn, 'tn': self.tn,
                'precision': self.precision, 'recall': self.recall, 'f1': self.f1,
                'mcc': self.mcc}


def done_metrics(pred_done: Iterable[bool], gt_done: Iterable[bool]) -> DoneMetrics:
    """Confusion counts of predicted done flags against ground-truth done flags."""
    p = np.asarray(list(pred_done), dtype=bool)
    g = np.asarray(list(gt_done), dtype=bool)
    if p.shape != g.shape:
        raise ValueError(f'pred_done has {p.size} values, gt_done has {g.size}')
    return DoneMetrics(int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum()),
                       int((~p & ~g).sum()))


def pooled_done_metrics(parts: Iterable[DoneMetrics]) -> DoneMetrics:
    """Sum confusion counts over episodes (the official MCC@95 pools all samples)."""
    total = DoneMetrics(0, 0, 0, 0)
    for part in parts:
        total = total + part
    return total


def mcc_at(pred_percent: Iterable[float], gt_percent: Iterable[float],
           threshold: float = 95.0) -> DoneMetrics:
    """Official MCC@95 counts: done := value >= threshold for prediction and ground truth."""
    p, g = _pair(pred_percent, gt_percent)
    return done_metrics(p >= threshold, g >= threshold)


def mean_over_episodes(values: Iterable[float | None]) -> float:
    """Mean of per-episode values, skipping None and NaN (official: episodes < 2 samples)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(kept)) if kept else math.nan


# ---------------------------------------------------------------- stall detection


def alarm_times(flags: Sequence[tuple[float, bool]]) -> list[float]:
    """Times at which a flag series turns on (rising edges; a series starting on counts)."""
    times, previous = [], False
    for t, flag in sorted(flags, key=lambda tf: tf[0]):
        if flag and not previous:
            times.append(float(t))
        previous = bool(flag)
    return times


@dataclass(frozen=True)
class StallDetection:
    """
    How a stall detector's flags compare with ground-truth stall intervals.

    :param delays: Per ground-truth interval, seconds from its start to the first flagged
        sample inside ``[start, end + grace_s]``; None when it was missed.
    :param false_alarms: Alarm times (rising edges) outside every ``[start, end + grace_s]``.
    """

    delays: tuple[float | None, ...]
    false_alarms: tuple[float, ...]
    duration_s: float
    grace_s: float
    intervals: tuple[tuple[float, float], ...] = field(default=())

    @property
    def detected(self) -> int:
        return sum(d is not None for d in self.delays)

    @property
    def missed(self) -> int:
        return sum(d is None for d in self.delays)

    @property
    def mean_delay_s(self) -> float:
        found = [d for d in self.delays if d is not None]
        return float(np.mean(found)) if found else math.nan

    def detected_within(self, seconds: float) -> int:
        """Intervals flagged at most ``seconds`` after they started."""
        return sum(d is not None and d <= seconds for d in self.delays)

    @property
    def false_alarms_per_hour(self) -> float:
        if self.duration_s <= 0:
            return math.nan
        return len(self.false_alarms) * 3600.0 / self.duration_s

    def to_dict(self) -> dict[str, object]:
        return {'intervals': [list(iv) for iv in self.intervals], 'delays_s': list(self.delays),
                'detected': self.detected, 'missed': self.missed,
                'mean_delay_s': self.mean_delay_s, 'false_alarms': len(self.false_alarms),
                'false_alarm_times_s': list(self.false_alarms),
                'false_alarms_per_hour': self.false_alarms_per_hour,
                'duration_s': self.duration_s, 'grace_s': self.grace_s}


def stall_detection(intervals: Sequence[tuple[float, float]],
                    flags: Sequence[tuple[float, bool]], *, grace_s: float = 0.0,
                    duration_s: float | None = None) -> StallDetection:
    """
    Score a stall detector's ``(time, stalled)`` samples against ground-truth intervals.

    :param intervals: Ground-truth stall intervals ``(start_s, end_s)`` (e.g. the
        ``stall_intervals`` of a synthetic episode, ``start_s``/``end_s``).
    :param flags: Detector output: ``(time_s, flag)`` samples, e.g. every published Progress'
        ``stalled`` field, on the same clock as the intervals.
    :param grace_s: A flag up to this long after an interval ended still counts for it (a
        detector needs evidence before it can call a stall, and clears it late).
    :param duration_s: Observation time for the false-alarm rate; by default the span of the
        flag samples.
    """
    spans = [(float(a), float(b)) for a, b in intervals]
    for a, b in spans:
        if b < a:
            raise ValueError(f'stall interval ends before it starts: {(a, b)}')
    samples = sorted(((float(t), bool(f)) for t, f in flags), key=lambda tf: tf[0])
    delays: list[float | None] = []
    for a, b in spans:
        hits = [t for t, f in samples if f and a <= t <= b + grace_s]
        delays.append(hits[0] - a if hits else None)
    false = [t for t in alarm_times(samples)
             if not any(a <= t <= b + grace_s for a, b in spans)]
    if duration_s is None:
        duration_s = samples[-1][0] - samples[0][0] if len(samples) > 1 else 0.0
    return StallDetection(tuple(delays), tuple(false), float(duration_s), float(grace_s),
                          tuple(spans))
