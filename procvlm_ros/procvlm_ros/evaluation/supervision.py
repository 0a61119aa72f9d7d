"""
Offline evaluation of the episode supervisor on scored episodes.

The monitor's stall logic (``core.supervision.EpisodeSupervisor``) runs on each episode's
predicted progress, one estimate per evaluated frame at that frame's time, exactly as the node
feeds it; its intervention events are compared with the ground-truth stall intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from procvlm_ros.core import metrics
from procvlm_ros.core.supervision import EpisodeSupervisor, Reason, SupervisionConfig
from procvlm_ros.core.types import ProgressEstimate, Status

NS = 1_000_000_000


def replay(times_s: Sequence[float], values: Sequence[float], config: SupervisionConfig,
           ) -> tuple[list[tuple[float, bool]], list[tuple[float, Reason]]]:
    """
    Replay predictions through the supervisor; return (time, stalled) samples and the
    (time, reason) of every intervention it raised.
    """
    supervisor = EpisodeSupervisor(config, stale_after_s=3600.0)
    supervisor.reset(0)
    flags, raised = [], []
    for t, v in zip(times_s, values):
        estimate = ProgressEstimate(status=Status.OK, percent=100.0 * float(v),
                                    parsed_percent=100.0 * float(v), progress_source='model')
        state = supervisor.update(estimate, int(round(t * NS)))
        flags.append((float(t), state.stalled))
        raised += [(e.stamp_ns / NS, e.reason) for e in state.events if e.active]
    return flags, raised


def stall_report(results: Sequence[Any], config: SupervisionConfig) -> dict[str, Any]:
    """
    Stall episodes: share whose stall raised an intervention while it lasted (within the stall
    window after it ended at the latest), and the stricter share flagged *within the configured
    window* of the stall's start (delay <= ``stall_window_s`` plus one frame period: the
    supervisor only looks when an estimate arrives). Steady (success) episodes: share without
    any intervention (of any reason).
    """
    grace = config.stall_window_s
    stall_rows, steady_rows = [], []
    for r in results:
        flags, raised = replay(r.times, r.pred, config)
        alarms = [t for t, reason in raised if reason is Reason.STALLED]
        # A steady episode must raise no intervention at all (a regression one counts too).
        any_alarm = [t for t, _ in raised]
        intervals = [(iv['start_s'], iv['end_s']) for iv in r.stall_intervals]
        detection = metrics.stall_detection(intervals, flags, grace_s=grace)
        period = float(np.median(np.diff(r.times))) if len(r.times) > 1 else 0.0
        limit = config.stall_window_s + period
        row = {'episode_id': r.episode_id, 'kind': r.kind, 'alarms_s': alarms,
               'interventions_s': any_alarm,
               **detection.to_dict(),
               'in_window': bool(detection.delays) and all(
                   d is not None and d <= limit + 1e-9 for d in detection.delays)}
        if r.kind == 'stall':
            stall_rows.append(row)
        elif r.kind == 'success':
            steady_rows.append(row)
    detected = sum(row['missed'] == 0 and row['detected'] > 0 for row in stall_rows)
    in_window = sum(row['in_window'] for row in stall_rows)
    quiet = sum(not row['interventions_s'] for row in steady_rows)
    return {
        'config': {'stall_window_s': config.stall_window_s,
                   'stall_min_delta': config.stall_min_delta, 'grace_s': grace},
        'stall_episodes': len(stall_rows),
        'stall_detected_rate': detected / len(stall_rows) if stall_rows else None,
        'stall_in_window_rate': in_window / len(stall_rows) if stall_rows else None,
        'stall_mean_delay_s': metrics.mean_over_episodes(
            row['mean_delay_s'] for row in stall_rows),
        'steady_episodes': len(steady_rows),
        'steady_no_intervention_rate': quiet / len(steady_rows) if steady_rows else None,
        'rows': stall_rows + steady_rows,
    }
