"""
Camera frames from and to rosbag2 recordings, through ``rosbags`` (no ROS install, no rclpy).

Reads sqlite3 and MCAP rosbag2 directories, single ``.mcap`` / ``.db3`` files and ROS 1 ``.bag``
files; writes sqlite3 or MCAP rosbag2 directories.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
import functools
import os
from pathlib import Path
import shutil
import sqlite3
from typing import Any, Literal

import numpy as np
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.interfaces import Connection
from rosbags.rosbag2 import ReaderError, StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from rosbags.typesys.store import Typestore

from procvlm_ros.core.errors import ConfigError, ImageError, MediaError
from procvlm_ros.core.image import (
    compressed_to_rgb,
    DEFAULT_MAX_PIXELS,
    raw_to_rgb,
    rgb_to_jpeg,
)
from procvlm_ros.core.types import Frame
from procvlm_ros.media import unique_sorted_indices

__all__ = [
    'IMAGE_MSGTYPES',
    'list_image_topics',
    'probe_image_topic',
    'read_bag_frames',
    'write_image_bag',
]

IMAGE_MSGTYPE = 'sensor_msgs/msg/Image'
COMPRESSED_MSGTYPE = 'sensor_msgs/msg/CompressedImage'
IMAGE_MSGTYPES = (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)
STORAGES = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
# Version 8 writes offered_qos_profiles as a string, which Humble's metadata reader requires;
# Jazzy and Kilted read it too (ros2-from-pypi.md section 9).
DEFAULT_BAG_VERSION: Literal[8, 9] = 8


@functools.lru_cache(maxsize=1)
def _typestore() -> Typestore:
    # Image/CompressedImage are identical from Humble to Kilted; Kilted's hashes were verified.
    return get_typestore(Stores.ROS2_KILTED)


def list_image_topics(bag_path: str | os.PathLike[str]) -> dict[str, str]:
    """
    Return the image topics of a bag.

    :param bag_path: rosbag2 directory, ``.mcap``/``.db3`` file or ROS 1 ``.bag``.
    :returns: ``{topic: msgtype}`` for Image and CompressedImage topics, sorted by topic.
    :raises FileNotFoundError: If ``bag_path`` does not exist.
    :raises MediaError: If it is not a readable bag.
    """
    with _open(bag_path) as reader:
        return _image_topics(reader)


def probe_image_topic(bag_path: str | os.PathLike[str], topic: str) -> int:
    """
    Return the number of messages on an image topic.

    :param bag_path: Bag as for :func:`list_image_topics`.
    :param topic: Image or CompressedImage topic.
    :returns: Message count.
    :raises MediaError: If the topic is absent or not an image topic (the message lists those
        present).
    """
    with _open(bag_path) as reader:
        return sum(c.msgcount for c in _topic_connections(reader, topic, bag_path))


def read_bag_frames(
    bag_path: str | os.PathLike[str],
    topic: str,
    indices: Sequence[int] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Frame]:
    """
    Yield the images of one topic as RGB frames, in bag (log time) order.

    Bag and topic errors are raised at call time; decoding errors while iterating. Only the
    selected messages are deserialised.

    :param bag_path: Bag as for :func:`list_image_topics`.
    :param topic: Image or CompressedImage topic.
    :param indices: Message ordinals on ``topic`` to keep (duplicates ignored, yielded in
        ascending order); ``None`` keeps all.
    :param max_pixels: Refuse larger images (see :func:`procvlm_ros.core.image.raw_to_rgb`).
    :returns: Iterator of frames: ``stamp_ns`` from the header stamp (the bag's log time when the
        header stamp is zero), ``frame_id`` from the header, ``index`` = ordinal on the topic.
    :raises MediaError: Bag or topic problems, or an index past the last message.
    :raises ImageError: While iterating, for a message that cannot be converted.
    """
    wanted = unique_sorted_indices(indices, 'message')
    with _open(bag_path) as reader:
        _topic_connections(reader, topic, bag_path)
    if wanted is not None and not wanted:
        return iter(())
    return _read(bag_path, topic, wanted, max_pixels)


def write_image_bag(
    bag_path: str | os.PathLike[str],
    frames: Iterable[Frame],
    topic: str,
    *,
    storage: str = 'sqlite3',
    compressed: bool = False,
    version: Literal[8, 9] = DEFAULT_BAG_VERSION,
    frame_id: str | None = None,
    jpeg_quality: int = 95,
) -> Path:
    """
    Write frames as a rosbag2 recording of ``sensor_msgs/msg/Image`` (rgb8) or CompressedImage.

    Each message's log time and header stamp are ``frame.stamp_ns``.

    :param bag_path: Bag directory to create; must not exist.
    :param frames: Frames with ``(H, W, 3)`` uint8 RGB images.
    :param topic: Topic name, e.g. ``'/camera/image_raw'``.
    :param storage: ``'sqlite3'`` or ``'mcap'``.
    :param compressed: Write CompressedImage (format ``'jpeg'``) instead of raw rgb8.
    :param version: rosbag2 metadata version, 8 (readable by Humble and later) or 9.
    :param frame_id: Header frame id for every message; ``None`` uses each frame's own.
    :param jpeg_quality: JPEG quality when ``compressed``.
    :returns: ``bag_path``.
    :raises FileExistsError: If ``bag_path`` exists.
    :raises ConfigError: On an unknown storage or version.
    """
    path = Path(bag_path)
    if storage not in STORAGES:
        raise ConfigError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
    if version not in (8, 9):
        raise ConfigError(f'rosbag2 version must be 8 or 9, got {version!r}')
    if path.exists():
        raise FileExistsError(f'{path} exists; rosbag2 writers only create new bags')
    msgtype = COMPRESSED_MSGTYPE if compressed else IMAGE_MSGTYPE
    typestore = _typestore()
    try:
        with Writer(path, version=version, storage_plugin=STORAGES[storage]) as writer:
            connection = writer.add_connection(topic, msgtype, typestore=typestore)
            for frame in frames:
                msg = _frame_to_msg(frame, compressed, frame_id, jpeg_quality)
                writer.write(connection, frame.stamp_ns, typestore.serialize_cdr(msg, msgtype))
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # the writer created it; leave no half bag
        raise
    return path


def _read(
    bag_path: str | os.PathLike[str], topic: str, wanted: list[int] | None, max_pixels: int
) -> Iterator[Frame]:
    wanted_set = None if wanted is None else set(wanted)
    ordinal = -1
    with _open(bag_path) as reader:
        connections = _topic_connections(reader, topic, bag_path)
        for ordinal, (connection, log_ns, raw) in enumerate(reader.messages(connections)):
            if wanted_set is None or ordinal in wanted_set:
                msg = _deserialize(reader, raw, connection, ordinal)
                yield _msg_to_frame(msg, connection.msgtype, ordinal, log_ns, max_pixels, topic)
            if wanted is not None and ordinal >= wanted[-1]:
                return
    if wanted is not None:
        missing = [i for i in wanted if i > ordinal]
        raise MediaError(
            f'{topic} in {bag_path} has {ordinal + 1} messages; requested indices '
            f'{missing[:5]}{" ..." if len(missing) > 5 else ""} do not exist')


def _msg_to_frame(
    msg: Any, msgtype: str, ordinal: int, log_ns: int, max_pixels: int, topic: str
) -> Frame:
    try:
        if msgtype == COMPRESSED_MSGTYPE:
            rgb = compressed_to_rgb(msg.data, msg.format, max_pixels=max_pixels)
        else:
            rgb = raw_to_rgb(msg.data, msg.height, msg.width, msg.step, msg.encoding,
                             bool(msg.is_bigendian), max_pixels=max_pixels)
    except ImageError as e:
        raise ImageError(f'{topic} message {ordinal}: {e}') from e
    stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    # Some drivers leave the stamp at zero; the recording time is then the best capture time.
    return Frame(rgb, stamp_ns or log_ns, msg.header.frame_id, ordinal)


def _frame_to_msg(
    frame: Frame, compressed: bool, frame_id: str | None, jpeg_quality: int
) -> object:
    types = _typestore().types
    rgb = frame.image
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3
            and rgb.shape[2] == 3):
        raise ImageError(f'frame {frame.index}: expected an (H, W, 3) uint8 RGB image')
    sec, nanosec = divmod(int(frame.stamp_ns), 1_000_000_000)
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec),
        frame_id=frame.frame_id if frame_id is None else frame_id)
    if compressed:
        data = np.frombuffer(rgb_to_jpeg(rgb, jpeg_quality), dtype=np.uint8)
        return types[COMPRESSED_MSGTYPE](header=header, format='jpeg', data=data)
    height, width = rgb.shape[:2]
    return types[IMAGE_MSGTYPE](
        header=header, height=height, width=width, encoding='rgb8', is_bigendian=0,
        step=width * 3, data=np.ascontiguousarray(rgb).reshape(-1))


@contextmanager
def _open(bag_path: str | os.PathLike[str]) -> Iterator[AnyReader]:
    path = Path(bag_path)
    if not path.exists():
        raise FileNotFoundError(f'bag {path} does not exist')
    if path.is_dir() and not (path / 'metadata.yaml').exists():
        raise MediaError(f'{path} is not a rosbag2 directory (no metadata.yaml)')
    try:
        reader = AnyReader([path], default_typestore=_typestore())
        reader.open()
    except (AnyReaderError, ReaderError, sqlite3.Error, OSError, ValueError) as e:
        raise MediaError(f'cannot read bag {path}: {e}') from e
    try:
        yield reader
    finally:
        reader.close()


def _image_topics(reader: AnyReader) -> dict[str, str]:
    return {c.topic: c.msgtype for c in sorted(reader.connections, key=lambda c: c.topic)
            if c.msgtype in IMAGE_MSGTYPES}


def _topic_connections(
    reader: AnyReader, topic: str, bag_path: str | os.PathLike[str]
) -> list[Connection]:
    connections = [c for c in reader.connections if c.topic == topic]
    images = [c for c in connections if c.msgtype in IMAGE_MSGTYPES]
    if not images:
        found = f'has type {connections[0].msgtype}' if connections else 'is not in the bag'
        present = ', '.join(f'{t} ({m.rsplit("/", 1)[-1]})'
                            for t, m in _image_topics(reader).items()) or 'none'
        raise MediaError(f'topic {topic!r} {found} ({bag_path}); image topics present: {present}')
    return images


def _deserialize(reader: AnyReader, raw: bytes, connection: Connection, ordinal: int) -> Any:
    try:
        return reader.deserialize(raw, connection.msgtype)
    except AnyReaderError as e:
        msg = f'{connection.topic} message {ordinal} cannot be deserialised: {e}'
        raise MediaError(msg) from e
