"""
Field values of the messages of the non-progress profiles, duck-typed like ``conversions``.

Nothing here imports a message package: the node builds ``NavigationAction``, the
``QueryFrame`` response and ``ImageMarker`` from these plain values, and tests run them on
the core's result types directly.
"""

from __future__ import annotations

from typing import Any

from procvlm_ros.core.profiles.results import GroundedAnswer, GroundedPoint, NavigationDecision
from procvlm_ros.core.types import ProgressEstimate, Status
from procvlm_ros.ros.conversions import ns_to_stamp

# NavigationAction.STATUS_* (the same codes as Progress.STATUS_*, see the .msg file).
ACTION_OK = int(Status.OK)
ACTION_NONE = int(Status.CARRIED_FORWARD)
ACTION_ERROR = int(Status.ERROR)


def navigation_fields(estimate: ProgressEstimate, *, task: str, backend: str,
                      next_step: int) -> dict[str, Any]:
    """
    ``procvlm_msgs/NavigationAction`` fields of one window's estimate (header set by the node).

    :param next_step: The step index to report when the estimate carries no decision (an
        inference error): the index the step would have had.
    """
    decision = estimate.result if isinstance(estimate.result, NavigationDecision) else None
    if estimate.status is Status.ERROR or decision is None:
        status, action, step = ACTION_ERROR, '', next_step
        message = estimate.status_message or 'no navigation decision in this window'
    else:
        step, action = decision.step, decision.action
        status = ACTION_OK if action else ACTION_NONE
        message = estimate.status_message or ('' if action else 'the answer named no action')
    return {
        'instruction': task,
        'episode': int(estimate.episode),
        'step': int(step),
        'action': action if status == ACTION_OK else '',
        'raw_answer': decision.raw if decision is not None and decision.raw
        else estimate.model_output,
        'status': status,
        'status_message': message,
        'frame_stamps': [ns_to_stamp(ns) for ns in estimate.frame_stamps_ns],
        'backend': backend,
        'inference_time_s': float(estimate.inference_time_s),
    }


def _xy(point: GroundedPoint | None) -> dict[str, float]:
    if point is None:
        return {'x': 0.0, 'y': 0.0, 'z': 0.0}
    return {'x': float(point.x), 'y': float(point.y), 'z': 0.0}


def query_fields(answer: GroundedAnswer, *, inference_time_s: float) -> dict[str, Any]:
    """
    ``procvlm_msgs/QueryFrame`` response fields of a grounded answer.

    Points are ``{'x', 'y', 'z'}`` dicts (``geometry_msgs/Point`` in camera pixels); success,
    message and header are set by the node.
    """
    return {
        'answer': answer.answer,
        'points': [_xy(p) for p in answer.points],
        'point_labels': [p.label for p in answer.points],
        'zoomed': bool(answer.zoomed),
        'zoom_point': _xy(answer.zoom_point),
        'raw_answers': list(answer.raw),
        'inference_time_s': float(inference_time_s),
    }


def marker_points(answer: GroundedAnswer) -> list[dict[str, float]]:
    """The cited points as ImageMarker POINTS (camera pixels, z = 0), in order."""
    return [_xy(p) for p in answer.points]
