"""
Video files through PyAV: probe, read selected frames as RGB, write small test videos.

Frames are numbered in decode (presentation) order from 0, as ProcVLM's moviepy reader does for
constant-frame-rate videos, and stamped ``index / fps`` like its ``timestamp_sec``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
import math
import os
from pathlib import Path
from typing import cast

import av
import av.container
import av.video.stream
import numpy as np
import numpy.typing as npt

from procvlm_ros.core.errors import ConfigError, ImageError, MediaError
from procvlm_ros.core.types import Frame
from procvlm_ros.media import unique_sorted_indices

__all__ = ['DEFAULT_FPS', 'VideoInfo', 'probe_video', 'read_video_frames', 'write_video']

# ProcVLM's extract_frames_moviepy uses 30 fps when the container reports none (or 0).
DEFAULT_FPS = 30.0
FALLBACK_CODEC = 'mpeg4'  # built into every FFmpeg; libx264 is optional in some builds


@dataclass(frozen=True)
class VideoInfo:
    """
    What :func:`probe_video` learns without decoding.

    :param path: The video file.
    :param fps: Frame rate; :data:`DEFAULT_FPS` when the file has none.
    :param frame_count: Number of video frames.
    :param width: Frame width in pixels.
    :param height: Frame height in pixels.
    """

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        """Length as ``frame_count / fps``, the span ProcVLM's timestamps cover."""
        return self.frame_count / self.fps


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """
    Read frame rate, frame count and size of the first video stream.

    The count is the container's (``stream.frames``) when it has one; otherwise (Matroska, WebM,
    raw streams) packets are counted by demuxing, without decoding.

    :param path: Video file.
    :returns: The stream's :class:`VideoInfo`.
    :raises FileNotFoundError: If ``path`` does not exist.
    :raises MediaError: If the file cannot be opened or has no video stream.
    """
    path = _existing_file(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        count = stream.frames or _count_packets(container, stream, path)
        info = VideoInfo(path, _fps(stream), count, stream.width, stream.height)
    return info


def read_video_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | None = None,
    *,
    frame_id: str = '',
) -> Iterator[Frame]:
    """
    Decode a video sequentially and yield the frames at ``indices`` as RGB.

    Argument and file-existence errors are raised at call time; decoding errors while iterating.

    :param path: Video file.
    :param indices: Source frame indices to keep (any order, duplicates ignored; yielded in
        ascending order); ``None`` keeps every frame.
    :param frame_id: Copied into every :class:`Frame`.
    :returns: Iterator of frames with ``index`` = source index and ``stamp_ns`` = index / fps.
    :raises FileNotFoundError: If ``path`` does not exist.
    :raises ConfigError: On a negative index.
    :raises MediaError: While iterating, if decoding fails or an index is past the last frame.
    """
    path = _existing_file(path)
    wanted = unique_sorted_indices(indices, 'frame')
    if wanted is not None and not wanted:
        return iter(())
    return _decode(path, wanted, frame_id)


def write_video(
    path: str | os.PathLike[str],
    frames_rgb: Iterable[npt.NDArray[np.uint8]],
    fps: float,
    codec: str = 'libx264',
    *,
    options: Mapping[str, str] | None = None,
) -> Path:
    """
    Encode RGB frames into a yuv420p video with PyAV.

    :param path: Output file; the container follows the suffix (``.mp4``, ``.mkv``, ...).
    :param frames_rgb: ``(H, W, 3)`` uint8 frames, all the same even size.
    :param fps: Frame rate.
    :param codec: Encoder; falls back to ``mpeg4`` when it is not available.
    :param options: Encoder options, e.g. ``{'crf': '18'}`` for libx264.
    :returns: ``path``.
    :raises ConfigError: On a bad fps or no frames.
    :raises ImageError: On a frame of the wrong type, an odd or changing size.
    :raises MediaError: If encoding fails. A partial file is removed.
    """
    rate = _rate(fps)
    path = Path(path)
    codec = _writable_codec(codec)
    try:
        with av.open(str(path), mode='w') as container:
            _encode_all(container, frames_rgb, codec, rate, dict(options or {}))
    except av.error.FFmpegError as e:
        path.unlink(missing_ok=True)
        raise MediaError(f'writing {path} with {codec} failed: {e}') from e
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _decode(path: Path, wanted: list[int] | None, frame_id: str) -> Iterator[Frame]:
    wanted_set = None if wanted is None else set(wanted)
    index = -1
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = 'AUTO'
        fps = _fps(stream)
        try:
            for frame in container.decode(stream):
                index += 1
                if wanted_set is None or index in wanted_set:
                    yield Frame(_to_rgb(frame), round(index * 1e9 / fps), frame_id, index)
                if wanted is not None and index >= wanted[-1]:
                    return
        except av.error.FFmpegError as e:
            raise MediaError(f'decoding {path} failed after frame {index}: {e}') from e
    if wanted is not None:
        missing = [i for i in wanted if i > index]
        raise MediaError(
            f'{path} has {index + 1} frames; requested indices {missing[:5]}'
            f'{" ..." if len(missing) > 5 else ""} do not exist')


def _to_rgb(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    # rgb24 like moviepy's ffmpeg pipe; bicubic is the ffmpeg CLI's default sws flag.
    return np.ascontiguousarray(frame.to_ndarray(format='rgb24', interpolation='BICUBIC'))


def _encode_all(
    container: av.container.OutputContainer,
    frames_rgb: Iterable[npt.NDArray[np.uint8]],
    codec: str,
    rate: Fraction,
    options: dict[str, str],
) -> None:
    stream = None
    for n, rgb in enumerate(frames_rgb):
        _check_frame(rgb, n)
        height, width = rgb.shape[:2]
        if stream is None:
            stream = _add_stream(container, codec, rate, width, height, options)
        elif (width, height) != (stream.width, stream.height):
            raise ImageError(
                f'frame {n} is {width}x{height}, the first frame was '
                f'{stream.width}x{stream.height}')
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format='rgb24')))
    if stream is None:
        raise ConfigError('write_video got no frames')
    container.mux(stream.encode(None))  # flush delayed frames


def _add_stream(
    container: av.container.OutputContainer,
    codec: str,
    rate: Fraction,
    width: int,
    height: int,
    options: dict[str, str],
) -> av.video.stream.VideoStream:
    if width % 2 or height % 2:
        raise ImageError(f'yuv420p needs an even width and height, got {width}x{height}')
    stream = cast('av.video.stream.VideoStream',
                  container.add_stream(codec, rate=rate, options=options))
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    return stream


def _check_frame(rgb: object, n: int) -> None:
    if not isinstance(rgb, np.ndarray):
        raise ImageError(f'frame {n}: expected an (H, W, 3) uint8 array, got {type(rgb).__name__}')
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(
            f'frame {n}: expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}')


def _writable_codec(codec: str) -> str:
    for name in (codec, FALLBACK_CODEC):
        try:
            av.codec.Codec(name, 'w')
        except ValueError:  # UnknownCodecError
            continue
        return name
    raise MediaError(f'neither {codec!r} nor {FALLBACK_CODEC!r} encoders are available')


def _rate(fps: float) -> Fraction:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f'fps must be a positive number, got {fps!r}')
    # mpeg4 refuses time bases with a denominator above 65535; 30000/1001 etc. stay exact.
    return Fraction(value).limit_denominator(1001)


def _fps(stream: av.video.stream.VideoStream) -> float:
    # guessed_rate is FFmpeg's r_frame_rate with a sanity check: the "tbr" moviepy reports.
    for rate in (stream.guessed_rate, stream.average_rate):
        if rate and float(rate) > 0:
            return float(rate)
    return DEFAULT_FPS


def _count_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path
) -> int:
    try:
        # The demuxer ends with an empty flush packet, which is not a frame.
        return sum(1 for packet in container.demux(stream) if packet.size)
    except av.error.FFmpegError as e:
        raise MediaError(f'cannot count frames of {path}: {e}') from e


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode='r')
    except av.error.FFmpegError as e:
        raise MediaError(f'cannot open video {path}: {e}') from e


def _video_stream(
    container: av.container.InputContainer, path: Path
) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise MediaError(f'{path} has no video stream')
    return container.streams.video[0]


def _existing_file(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'video file {path} does not exist (or is not a file)')
    return path
