"""Decode every frame of a demonstration (video file or rosbag2 image topic) with its time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from procvlm_ros.core.errors import ConfigError, MediaError


@dataclass(frozen=True)
class Demonstration:
    """All frames of one recording: RGB arrays and seconds from the first frame."""

    path: Path
    topic: str
    frames: list[np.ndarray]
    times_s: list[float]
    fps: float

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def read_demonstration(path: str | Path, image_topic: str = '') -> Demonstration:
    """
    Read every frame at its native rate, as the official annotator does (PyAV / rosbags).

    :param path: Video file, rosbag2 directory, ``.mcap`` or ``.db3``.
    :param image_topic: Image topic of a bag; may be empty when the bag has exactly one.
    :raises FileNotFoundError: If ``path`` does not exist.
    :raises MediaError: If the topic is unknown (the message lists the image topics there).
    :raises ConfigError: If the recording holds no frame.
    """
    from procvlm_ros.offline import open_source

    source = open_source(path, image_topic or None)
    if source.total_frames <= 0:
        raise ConfigError(f'{source.path} holds no frames'
                          + (f' on topic {source.topic}' if source.topic else '')
                          + ': the demonstration is empty')
    frames, stamps = [], []
    for frame in source.read(list(range(source.total_frames))):
        frames.append(np.ascontiguousarray(frame.image))
        stamps.append(int(frame.stamp_ns))
    if not frames:
        raise ConfigError(f'{source.path}: no frame could be decoded; the demonstration is empty')
    times = [(s - stamps[0]) / 1e9 for s in stamps]
    if any(b < a for a, b in zip(times, times[1:])):
        raise MediaError(f'{source.path}: frame times go backwards; cannot map stage times')
    if source.fps:
        fps = float(source.fps)
    elif len(times) > 1 and times[-1] > 0:
        fps = (len(times) - 1) / times[-1]
    else:
        fps = 0.0
    return Demonstration(source.path, source.topic or '', frames, times, fps)
