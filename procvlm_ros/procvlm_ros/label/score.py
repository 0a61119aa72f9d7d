"""
Label one episode: official windows through ``offline.score_source``, progress interpolated to
every frame, rewards, done and a supervisor replay for stalls. Pure function of the episode and
the settings, so a Ray worker and the local loop produce the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
import math
import time
from typing import Any

import numpy as np

from procvlm_ros.core.supervision import EpisodeSupervisor, SupervisionConfig
from procvlm_ros.core.types import ProgressEstimate, Status
from procvlm_ros.label import rewards as rw
from procvlm_ros.label.sources import EpisodeError, EpisodeSpec, open_episode

NS = 1_000_000_000


@dataclass(frozen=True)
class ScoringConfig:
    """How frames are sampled and windows formed (the official defaults but ``stride``)."""

    window_size: int = 8
    stride: int = 1  # score every stride-th frame, interpolate the others
    max_sampled_frames: int = 512
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.stride < 1 or self.max_sampled_frames < 1:
            raise ValueError('window_size, stride and max_sampled_frames must be >= 1')


@dataclass(frozen=True)
class LabelSettings:
    """Everything that determines an episode's result (hashed for resume)."""

    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    rewards: rw.RewardConfig = field(default_factory=rw.RewardConfig)
    supervision: SupervisionConfig = field(default_factory=SupervisionConfig)

    def to_dict(self) -> dict[str, Any]:
        return {'scoring': asdict(self.scoring), 'rewards': asdict(self.rewards),
                'supervision': asdict(self.supervision)}


def strided(source: Any, stride: int, stamps: dict[int, int]) -> Any:
    """
    The same source seen at every ``stride``-th frame; frames keep their original index (so
    records name real frames) and their stamps are remembered in ``stamps``.
    """
    total = source.total_frames if stride == 1 else math.ceil(source.total_frames / stride)

    def read(positions: list[int]):
        for frame in source.read([p * stride for p in positions]):
            stamps[frame.index] = frame.stamp_ns
            yield frame

    return replace(source, total_frames=total, read=read)


def label_episode(spec: EpisodeSpec, make_scorer: Callable[[str], Any],
                  settings: LabelSettings) -> dict[str, Any]:
    """
    Score one episode and derive its per-frame labels and summary. ``make_scorer(task)``
    returns a fresh ``offline.score_source`` scorer (a core Monitor) for the episode.

    :raises EpisodeError: For a problem of this episode (missing task, unreadable file, ...).
    """
    from procvlm_ros.offline import score_source

    t0 = time.perf_counter()
    source = open_episode(spec)
    try:
        scorer = make_scorer(spec.task)
    except Exception as exc:  # invalid task text
        raise EpisodeError(f'bad task for {spec.episode_id}: {exc}') from exc
    cfg = settings.scoring
    stamps: dict[int, int] = {}
    try:
        records = score_source(strided(source, cfg.stride, stamps), scorer,
                               window_size=cfg.window_size, max_frames=_max_positions(cfg),
                               max_sampled_frames=cfg.max_sampled_frames, show_progress=False)
    except EpisodeError:
        raise
    except Exception as exc:  # decode error mid-file, backend error: this episode fails
        raise EpisodeError(f'{spec.episode_id}: scoring failed: {exc}') from exc
    num_frames = source.total_frames if cfg.max_frames is None else min(
        source.total_frames, cfg.max_frames)
    result = derive(spec, records, num_frames, source.fps, stamps, settings,
                    seconds=time.perf_counter() - t0)
    if 'dataset_from_index' in spec.extra:  # LeRobot: global frame index of frame 0
        result['dataset_from_index'] = spec.extra['dataset_from_index']
    return result


def _max_positions(cfg: ScoringConfig) -> int | None:
    return None if cfg.max_frames is None else math.ceil(cfg.max_frames / cfg.stride)


def derive(spec: EpisodeSpec, records: list[dict[str, Any]], num_frames: int,
           fps: float | None, stamps: dict[int, int], settings: LabelSettings, *,
           seconds: float = 0.0) -> dict[str, Any]:
    """Per-frame progress/reward/done/advantage and the episode summary from the records."""
    sample_frames = [int(r['frame_index']) for r in records]
    sample_times = [float(r['timestamp_sec']) for r in records]
    sample_progress = [float(r['progress']) / 100.0 for r in records]
    progress = rw.interpolate(sample_frames, sample_progress, num_frames)
    reward = rw.dense_rewards(progress, settings.rewards)
    advantage = rw.advantages(reward, settings.rewards.horizon)
    replay = supervise(sample_times, sample_progress, settings.supervision)
    done = np.zeros(num_frames, dtype=bool)
    for f, d in zip(sample_frames, replay['done']):
        if d:  # latched: done from the first sample that said so to the end
            done[f:] = True
            break
    frame_times = _frame_times(num_frames, fps, sample_frames, sample_times)
    model_share = float(np.mean([r['progress_source'] == 'model' for r in records]))
    done_frames = np.flatnonzero(done)
    summary = {
        'final_progress': float(progress[-1]),
        'max_progress': float(progress.max()),
        'done': bool(done.any()),
        'done_frame': int(done_frames[0]) if done_frames.size else None,
        'monotonicity': rw.monotonicity(sample_progress),
        'self_consistency': rw.self_consistency(sample_progress),
        'stall_intervals': replay['stall_intervals'],
        'stalled': bool(replay['stall_intervals']),
        'regressed': replay['regressed'],
        'return': float(reward.sum()),
        'mean_advantage': float(advantage.mean()),
        'parsed_share': model_share,
        'windows': len(records),
        'seconds': seconds,
    }
    return {
        'episode_id': spec.episode_id, 'kind': spec.kind, 'path': spec.path,
        'index': spec.index, 'task': spec.task, 'image_topic': spec.image_topic,
        'num_frames': num_frames, 'fps': fps,
        'sampled': {'frame_index': sample_frames, 'time_s': sample_times,
                    'progress': sample_progress,
                    'stamp_ns': [stamps.get(f) for f in sample_frames]},
        'frames': {'time_s': frame_times, 'progress': progress.tolist(),
                   'reward': reward.tolist(), 'advantage': advantage.tolist(),
                   'done': done.tolist()},
        'summary': summary,
        'records': records,
    }


def _frame_times(num_frames: int, fps: float | None, sample_frames: list[int],
                 sample_times: list[float]) -> list[float]:
    if fps:
        return (np.arange(num_frames) / float(fps)).tolist()
    # Bags: no nominal rate; interpolate the sampled frames' times.
    if len(sample_frames) < 2:
        return [sample_times[0]] * num_frames
    return np.interp(np.arange(num_frames), sample_frames, sample_times).tolist()


def supervise(times_s: list[float], values: list[float], config: SupervisionConfig
              ) -> dict[str, Any]:
    """
    Replay the monitor's supervisor over the sampled estimates: per-sample done, the stall
    intervals ``[start_s, end_s]`` (end = last stalled sample) and whether it ever regressed.
    """
    supervisor = EpisodeSupervisor(config, stale_after_s=3600.0)
    supervisor.reset(0)
    done, intervals, regressed = [], [], False
    start = last = None
    for t, v in zip(times_s, values):
        estimate = ProgressEstimate(status=Status.OK, percent=100.0 * v,
                                    parsed_percent=100.0 * v, progress_source='model')
        state = supervisor.update(estimate, int(round(t * NS)))
        done.append(state.done)
        regressed = regressed or state.regressed
        if state.stalled:
            start = t if start is None else start
            last = t
        elif start is not None:
            intervals.append([start, last])
            start = None
    if start is not None:
        intervals.append([start, last])
    return {'done': done, 'stall_intervals': intervals, 'regressed': regressed}
