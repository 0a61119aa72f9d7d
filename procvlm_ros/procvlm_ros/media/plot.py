"""Progress-over-time plots of ProcVLM output records (the official JSONL rows)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import math
import os
from pathlib import Path
from typing import Any

from procvlm_ros.core.errors import ConfigError

__all__ = ['plot_progress']

_MODEL_COLOUR = '#2e7d32'  # the official visualiser draws progress in green
_CARRIED_COLOUR = '#ef6c00'


def plot_progress(
    records: Iterable[Mapping[str, Any]],
    png_path: str | os.PathLike[str],
    *,
    title: str = '',
    size_px: tuple[int, int] = (960, 540),
    dpi: int = 100,
) -> Path:
    """
    Plot progress (0-100 %) against time and save it as a PNG.

    Points whose ``progress_source`` is ``'previous'`` (no value parsed, value carried forward)
    are drawn as hollow orange squares, model values as filled green dots.

    :param records: Mappings with ``timestamp_sec``, ``progress`` (0-100 or None),
        ``progress_source`` (``'model'`` or ``'previous'``) and optionally ``frame_index``.
    :param png_path: Output file; parent directories are created.
    :param title: Figure title.
    :param size_px: ``(width, height)`` of the PNG in pixels.
    :param dpi: Resolution used to turn ``size_px`` into inches.
    :returns: ``png_path`` as a :class:`~pathlib.Path`.
    :raises ConfigError: If a record lacks ``timestamp_sec`` or ``progress``.
    """
    # Figure + Agg canvas directly: no pyplot global state, no GUI backend, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    points = _points(records)
    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # clip_on=False: points at exactly 0 % or 100 % sit on the frame and must stay visible.
    ax.plot([t for t, _, _ in points], [v for _, v, _ in points], color=_MODEL_COLOUR,
            linewidth=1.8, zorder=2, clip_on=False)
    model = [(t, v) for t, v, carried in points if not carried]
    previous = [(t, v) for t, v, carried in points if carried]
    if model:
        ax.scatter([t for t, _ in model], [v for _, v in model], s=18, color=_MODEL_COLOUR,
                   zorder=3, clip_on=False, label='model')
    if previous:
        ax.scatter([t for t, _ in previous], [v for _, v in previous], s=30, marker='s',
                   facecolors='white', edgecolors=_CARRIED_COLOUR, linewidths=1.5, zorder=4,
                   clip_on=False, label='carried forward (no value parsed)')
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_formatter(PercentFormatter(100))
    ax.set_xlabel('time [s]')
    ax.set_ylabel('progress')
    ax.grid(True, alpha=0.4)
    if model or previous:
        ax.legend(loc='upper left')
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(png_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format='png', dpi=dpi)
    return path


def _points(records: Iterable[Mapping[str, Any]]) -> list[tuple[float, float, bool]]:
    # (time, progress or NaN, carried forward), in time order; NaN leaves a gap in the curve.
    points = []
    for n, record in enumerate(records):
        try:
            t = float(record['timestamp_sec'])
            progress = record['progress']
        except KeyError as e:
            raise ConfigError(f'record {n} has no {e.args[0]!r} key') from e
        value = math.nan if progress is None else float(progress)
        points.append((t, value, record.get('progress_source') == 'previous'))
    return sorted(points, key=lambda point: point[0])
