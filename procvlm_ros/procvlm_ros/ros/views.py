"""Builders for what people look at: annotated image, rviz markers, /diagnostics."""

from __future__ import annotations

import array
from collections.abc import Sequence
import math
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker


def rgb_to_image_msg(rgb: np.ndarray, header: Any) -> Image:
    """
    An ``rgb8`` Image of an ``(H, W, 3)`` uint8 array (any strides).

    ``data`` is an ``array.array('B')`` filled from the array's buffer: with field checks on
    (Humble, or ROS_PYTHON_CHECK_FIELDS) the generated setter keeps it as it is, whereas a numpy
    array, list or bytes is checked element by element in Python (~80 ms for 640x480); without
    checks (Kilted default) the setter copies it once more in C (~3 ms for 640x480).

    :raises ValueError: If ``rgb`` is not an ``(H, W, 3)`` uint8 array.
    """
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3):
        got = (f'{rgb.dtype} array of shape {rgb.shape}' if isinstance(rgb, np.ndarray)
               else type(rgb).__name__)
        raise ValueError(f'rgb_to_image_msg needs an (H, W, 3) uint8 array, got {got}')
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                step=rgb.shape[1] * 3, is_bigendian=0)
    msg.header = header
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(rgb).data)  # copies only if rgb is a strided view
    msg.data = data
    return msg


def progress_markers(header: Any, *, value: float, task: str, headline: str,
                     colour: tuple[int, int, int], scale: float) -> list[Marker]:
    """A facing text (task + headline) and a bar whose length is the progress."""
    r, g, b = (c / 255.0 for c in colour)
    text = Marker(header=header, ns='procvlm_progress', id=0, type=Marker.TEXT_VIEW_FACING,
                  action=Marker.ADD, text=f'{task}\n{headline}')
    text.pose.position.z = 1.2 * scale
    text.pose.orientation.w = 1.0
    text.scale.z = 0.15 * scale
    text.color.r, text.color.g, text.color.b, text.color.a = r, g, b, 1.0
    frac = 0.0 if math.isnan(value) else min(max(value, 0.0), 1.0)
    bar = Marker(header=header, ns='procvlm_progress', id=1, type=Marker.CUBE,
                 action=Marker.ADD)
    bar.pose.position.x = -0.5 * scale + frac * scale / 2  # grows from the left end
    bar.pose.position.z = 1.0 * scale
    bar.pose.orientation.w = 1.0
    bar.scale.x, bar.scale.y, bar.scale.z = max(frac * scale, 1e-3), 0.05 * scale, 0.05 * scale
    bar.color.r, bar.color.g, bar.color.b, bar.color.a = r * 0.8, g * 0.8, b * 0.8, 0.9
    return [text, bar]


def diagnostic_status(name: str, hardware_id: str, level: int, message: str,
                      values: Sequence[tuple[str, Any]]) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=k, value=_fmt(v)) for k, v in values])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return 'nan' if math.isnan(v) else f'{v:.4g}'
    return str(v)


def diagnostics_msg(stamp: Any, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray(status=statuses)
    msg.header.stamp = stamp
    return msg
