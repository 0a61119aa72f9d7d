"""
Score synthetic episodes against their ground truth and summarise the accuracy.

:func:`evaluate` runs every episode of a directory written by ``procvlm-synth`` through
``offline.infer_progress_from_video`` (the official windows: every frame of the episode video,
causal 8-frame windows padded with the first frame, JPEG q95, pre-resize) with one loaded
backend, then compares the per-frame progress with the ground truth using
``procvlm_ros.core.metrics``. The report keeps each episode's predicted and true curves so other
analyses (e.g. a stall detector run offline on the predictions) need no second inference run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import logging
import math
from pathlib import Path
import time
from typing import Any

import numpy as np

from procvlm_ros.core import metrics
from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.supervision import SupervisionConfig
from procvlm_ros.evaluation.supervision import stall_report
from procvlm_ros.synth.export import BAG_NAME, list_episode_dirs, load_ground_truth, VIDEO_NAME

_LOG = logging.getLogger(__name__)

REPORT_VERSION = 1
DONE_THRESHOLD = 95.0  # percent; the official MCC@95 threshold
WINDOW_SIZE = 8


class _KeepLoaded(Backend):
    """Delegates to a backend but ignores close(), so one load serves every episode."""

    def __init__(self, inner: Backend) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]

    def _load(self) -> None:
        self.inner.load()

    def _generate(self, request: GenerationRequest) -> GenerationResult:
        return self.inner.generate(request)

    def _close(self) -> None:
        """Keep the model; the owner closes ``inner``."""


@dataclass
class EpisodeResult:
    """Ground truth and predictions of one episode, frame by frame."""

    episode_id: str
    kind: str
    task_kind: str
    task: str
    fps: float
    gt: np.ndarray  # progress fraction per frame
    gt_done: np.ndarray
    pred: np.ndarray  # progress fraction per frame (after the carry-forward fallback)
    parsed: np.ndarray  # whether the model's own answer held a value
    actions_match: np.ndarray  # predicted remaining actions == ground truth, per frame
    stall_intervals: list[dict[str, Any]]
    regress_intervals: list[dict[str, Any]]
    success: bool
    seconds: float
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)

    @property
    def times(self) -> np.ndarray:
        return np.arange(self.gt.size) / self.fps

    def row(self, done_threshold: float = DONE_THRESHOLD) -> dict[str, Any]:
        """Per-episode metrics (and the curves) as plain JSON values."""
        done = metrics.done_metrics(self.pred * 100 >= done_threshold, self.gt_done)
        return {
            'episode_id': self.episode_id, 'kind': self.kind, 'task_kind': self.task_kind,
            'task': self.task, 'num_frames': int(self.gt.size), 'success': self.success,
            'voc': metrics.voc(self.pred, self.gt), 'voc_time': metrics.voc_time(self.pred),
            'kendall_tau': _nan_none(metrics.kendall_tau(self.pred, self.gt)),
            'ccc': _nan_none(metrics.ccc(self.pred * 100, self.gt * 100)),
            'mae': metrics.mae(self.pred, self.gt),
            'negative_step_rate': _nan_none(metrics.negative_step_rate(self.pred)),
            'gt_negative_step_rate': _nan_none(metrics.negative_step_rate(self.gt)),
            'done': done.to_dict(),
            'final_pred': float(self.pred[-1]), 'final_gt': float(self.gt[-1]),
            'parse_rate': float(self.parsed.mean()),
            'actions_exact_rate': float(self.actions_match.mean()),
            'seconds': round(self.seconds, 3),
            'stall_intervals': self.stall_intervals,
            'regress_intervals': self.regress_intervals,
            'curve': {'time_s': [round(t, 4) for t in self.times.tolist()],
                      'gt': [round(v, 4) for v in self.gt.tolist()],
                      'pred': [round(v, 4) for v in self.pred.tolist()]},
        }


def _nan_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def episode_input(folder: Path, prefer: str = 'mp4') -> Path:
    """The video (or bag) of an episode directory; ``prefer`` picks when both exist."""
    video, bag = folder / VIDEO_NAME, folder / BAG_NAME
    order = (video, bag) if prefer == 'mp4' else (bag, video)
    for path in order:
        if path.exists():
            return path
    raise FileNotFoundError(f'{folder} has neither {VIDEO_NAME} nor {BAG_NAME}/')


def score_episode(folder: Path, backend: Backend, *, prefer: str = 'mp4',
                  window_size: int = WINDOW_SIZE,
                  records_path: Path | None = None) -> EpisodeResult:
    """Run one episode through ``infer_progress_from_video`` and align it with its ground truth."""
    from procvlm_ros.core.parsing import extract_remaining_actions
    from procvlm_ros.offline import infer_progress_from_video

    gt = load_ground_truth(folder)
    t0 = time.perf_counter()
    records = infer_progress_from_video(
        video_path=episode_input(folder, prefer), task=gt['task'],
        backend=_KeepLoaded(backend), window_size=window_size, output_path=records_path,
        plot=False, show_progress=False)
    seconds = time.perf_counter() - t0
    frames = gt['frames']
    if len(records) != len(frames):
        raise ValueError(f'{folder}: {len(records)} scored frames, ground truth has '
                         f'{len(frames)}')
    pred = np.array([r['progress'] / 100.0 for r in records], dtype=np.float64)
    parsed = np.array([r['progress_source'] == 'model' for r in records])
    match = np.array([extract_remaining_actions(r['model_output']) == f['remaining_actions']
                      for r, f in zip(records, frames)])
    return EpisodeResult(
        episode_id=gt['episode_id'], kind=gt['kind'], task_kind=gt['task_kind'], task=gt['task'],
        fps=float(gt['fps']), gt=np.array([f['progress'] for f in frames], dtype=np.float64),
        gt_done=np.array([f['done'] for f in frames], dtype=bool), pred=pred, parsed=parsed,
        actions_match=match, stall_intervals=gt['stall_intervals'],
        regress_intervals=gt['regress_intervals'], success=bool(gt['success']),
        seconds=seconds, records=records)


def summarise(results: Sequence[EpisodeResult],
              done_threshold: float = DONE_THRESHOLD) -> dict[str, Any]:
    """Aggregate metrics over episodes (definitions in ``procvlm_ros.core.metrics``)."""
    rows = [r.row(done_threshold) for r in results]
    steady = [row for row in rows if row['kind'] == 'success']
    monotone = [row for row, r in zip(rows, results) if not r.regress_intervals]
    done = metrics.pooled_done_metrics(
        metrics.done_metrics(r.pred * 100 >= done_threshold, r.gt_done) for r in results)
    mcc95 = metrics.pooled_done_metrics(
        metrics.mcc_at(r.pred * 100, r.gt * 100, 95.0) for r in results)
    windows = sum(int(r.gt.size) for r in results)
    seconds = sum(r.seconds for r in results)
    by_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({row['kind'] for row in rows}):
        group = [row for row in rows if row['kind'] == kind]
        by_kind[kind] = {
            'episodes': len(group),
            'voc_mean': metrics.mean_over_episodes(row['voc'] for row in group),
            'mae_mean': metrics.mean_over_episodes(row['mae'] for row in group),
            'negative_step_rate_mean': metrics.mean_over_episodes(
                row['negative_step_rate'] for row in group),
        }
    return {
        'episodes': len(rows),
        'voc_mean': metrics.mean_over_episodes(row['voc'] for row in steady),
        'voc_scope': "episodes of kind 'success' (steady, monotone ground truth)",
        'voc_mean_all': metrics.mean_over_episodes(row['voc'] for row in rows),
        'voc_time_mean_all': metrics.mean_over_episodes(row['voc_time'] for row in rows),
        'kendall_tau_mean': metrics.mean_over_episodes(row['kendall_tau'] for row in rows),
        'ccc_mean': metrics.mean_over_episodes(row['ccc'] for row in rows),
        'mae_mean': metrics.mean_over_episodes(row['mae'] for row in rows),
        'mae_frames': float(np.mean(np.concatenate([np.abs(r.pred - r.gt) for r in results])))
        if results else math.nan,
        'negative_step_rate_mean': metrics.mean_over_episodes(
            row['negative_step_rate'] for row in monotone),
        'negative_step_scope': 'episodes whose ground truth never drops (no regress interval)',
        'done_threshold_percent': done_threshold,
        'done_precision': done.precision, 'done_recall': done.recall, 'done_f1': done.f1,
        'done_mcc': done.mcc, 'done_counts': done.to_dict(),
        'mcc95': mcc95.mcc,
        'parse_rate': float(np.mean(np.concatenate([r.parsed for r in results])))
        if results else math.nan,
        'actions_exact_rate': float(np.mean(np.concatenate([r.actions_match for r in results])))
        if results else math.nan,
        'by_kind': by_kind,
        'windows': windows, 'seconds': round(seconds, 2),
        'windows_per_s': round(windows / seconds, 3) if seconds > 0 else None,
        'rows': rows,
    }


def evaluate(episodes_dir: str | Path, *, model: str = '', backend: str = 'transformers',
             prefer: str = 'mp4', max_episodes: int | None = None,
             done_threshold: float = DONE_THRESHOLD, records_dir: Path | None = None,
             backend_options: dict[str, Any] | None = None,
             supervision: SupervisionConfig | None = None,
             show_progress: bool = True) -> tuple[dict[str, Any], list[EpisodeResult]]:
    """
    Score every episode under ``episodes_dir``; return ``(report, results)``.

    :param backend_options: Further ``BackendConfig`` fields (``device``, ``dtype``, ...).
    :param supervision: Also replay the node's supervisor on the predictions with these
        settings (``report['supervision']``: stall and steady-episode figures).
    """
    from tqdm import tqdm

    folders = list_episode_dirs(episodes_dir)
    if max_episodes is not None:
        folders = folders[:max_episodes]
    if not folders:
        raise FileNotFoundError(f'no episode directories (with ground_truth.json) in '
                                f'{episodes_dir}')
    # Answers of the trained format are < 100 tokens; the cap keeps a broken model from
    # generating the official 4096 tokens per window.
    options = {'device': 'cpu', 'dtype': 'fp32', 'max_new_tokens': 256,
               **(backend_options or {})}
    runner = create_backend(BackendConfig(backend=backend, model=model, **options))
    results = []
    with runner:
        for folder in tqdm(folders, desc='Episodes', unit='ep', disable=not show_progress):
            path = None if records_dir is None else records_dir / f'{folder.name}.jsonl'
            result = score_episode(folder, runner, prefer=prefer, records_path=path)
            results.append(result)
            _LOG.info('%s %-8s voc %.3f mae %.3f', result.episode_id, result.kind,
                      metrics.voc(result.pred, result.gt), metrics.mae(result.pred, result.gt))
    report = summarise(results, done_threshold)
    if supervision is not None:
        report['supervision'] = stall_report(results, supervision)
    report.update({'version': REPORT_VERSION, 'episodes_dir': str(Path(episodes_dir).resolve()),
                   'model': model, 'backend': backend, 'input': prefer,
                   'backend_options': options})
    return report, results
