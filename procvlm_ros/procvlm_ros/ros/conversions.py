"""
Message <-> core conversions, duck-typed: nothing here imports a message package.

Tests run these with ``SimpleNamespace`` stand-ins; the node passes real rclpy messages.
"""

from __future__ import annotations

import math
from typing import Any

from procvlm_ros.core.types import ProgressEstimate

NS = 1_000_000_000


def ns_to_stamp(ns: int) -> tuple[int, int]:
    """Split nanoseconds into ``(sec, nanosec)`` as builtin_interfaces/Time holds them."""
    return ns // NS, ns % NS


def progress_fields(estimate: ProgressEstimate, *, task: str, backend: str,
                    publish_model_output: bool) -> dict[str, Any]:
    """Plain field values for ``procvlm_msgs/Progress`` (stamps as ``(sec, nanosec)``)."""
    return {
        'task': task,
        'episode': estimate.episode,
        'value': float(estimate.value),
        'raw_value': float(estimate.raw_value),
        'remaining_actions': list(estimate.remaining_actions),
        'done': False,
        'stalled': False,
        'status': int(estimate.status),
        'status_message': estimate.status_message,
        'reasoning': estimate.reasoning,
        'model_output': estimate.model_output if publish_model_output else '',
        'frame_stamps': [ns_to_stamp(ns) for ns in estimate.frame_stamps_ns],
        'backend': backend,
        'inference_time_s': float(estimate.inference_time_s),
        'generated_tokens': int(estimate.generated_tokens),
        'decoder_passes': int(estimate.decoder_passes),
        'draft_tokens_accepted': int(estimate.draft_tokens_accepted),
    }


def is_nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def supervision_fields(state: Any) -> dict[str, Any]:
    """Progress fields owned by the episode supervisor (value is the published one)."""
    return {'value': float(state.value), 'raw_value': float(state.raw_value),
            'done': bool(state.done), 'stalled': bool(state.stalled),
            'stalled_for_s': float(state.stalled_for_s), 'regressed': bool(state.regressed),
            'episode_time_s': float(state.episode_time_s)}


def intervention_fields(event: Any) -> dict[str, Any]:
    """``procvlm_msgs/Intervention`` fields of a supervisor event (header set by the node)."""
    return {'reason': int(event.reason), 'active': bool(event.active),
            'episode_time_s': float(event.episode_time_s), 'value': float(event.value),
            'stalled_for_s': float(event.stalled_for_s),
            'remaining_actions': list(event.remaining_actions), 'message': event.message}
