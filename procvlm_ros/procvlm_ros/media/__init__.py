"""
Offline media I/O: video files (PyAV), rosbag2 recordings (rosbags) and progress plots.

Each submodule needs its own optional dependency (the ``media`` extra), so none is imported here:
``from procvlm_ros.media.video import read_video_frames``.
"""

from __future__ import annotations

from collections.abc import Iterable
import operator

from procvlm_ros.core.errors import ConfigError, MediaError

__all__ = ['MediaError', 'unique_sorted_indices']


def unique_sorted_indices(indices: Iterable[int] | None, what: str = 'frame') -> list[int] | None:
    """
    Normalise a selection of source indices for a sequential reader.

    :param indices: Indices in any order, possibly repeated; ``None`` means all.
    :param what: Noun for the error message.
    :returns: Ascending unique indices, or ``None``.
    :raises ConfigError: On a negative or non-integer index.
    """
    if indices is None:
        return None
    try:
        wanted = sorted({operator.index(i) for i in indices})
    except TypeError as e:
        raise ConfigError(f'{what} indices must be integers: {e}') from e
    if wanted and wanted[0] < 0:
        raise ConfigError(f'{what} indices must be >= 0, got {wanted[0]}')
    return wanted
