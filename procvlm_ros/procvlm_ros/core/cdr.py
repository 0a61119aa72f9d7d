"""
Read ``sensor_msgs/Image`` and ``CompressedImage`` straight from their serialized CDR bytes.

The node subscribes to serialized messages so that a frame the window will not keep costs a
stamp read (a few microseconds), not a deserialization into Python (what made a 30 Hz VGA
camera cost a quarter of a core). A due frame's pixels are then viewed in place, never copied
into a Python message. Every length is bounds-checked: the bytes come from the network.

Layout (OMG CDR, XCDR1 as ROS 2 rmw implementations write it): a 4-byte encapsulation header
(``00 00`` big endian, ``00 01`` little endian, 2 option bytes), then the fields, each aligned
to its size relative to the end of that header.
"""

from __future__ import annotations

from dataclasses import dataclass
import struct

from procvlm_ros.core.errors import ImageError

NS = 1_000_000_000
_ENCAPSULATION = {b'\x00\x00': '>', b'\x00\x01': '<', b'\x00\x02': '>', b'\x00\x03': '<'}
_MAX_STRING = 4096  # frame ids, encodings and formats are short; a bigger length is corrupt


@dataclass(frozen=True)
class ImageFields:
    """The fields of ``sensor_msgs/Image``; ``data`` is a view into the serialized bytes."""

    stamp_ns: int
    frame_id: str
    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: memoryview


@dataclass(frozen=True)
class CompressedFields:
    """The fields of ``sensor_msgs/CompressedImage``; ``data`` is a view into the bytes."""

    stamp_ns: int
    frame_id: str
    format: str
    data: memoryview


class _Reader:
    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        self.buf = memoryview(raw).cast('B')
        if self.buf.nbytes < 4:
            raise ImageError(f'serialized message has {self.buf.nbytes} bytes, not a CDR message')
        order = _ENCAPSULATION.get(bytes(self.buf[:2]))
        if order is None:
            raise ImageError(f'unknown CDR encapsulation {bytes(self.buf[:2]).hex()}')
        self.order = order
        self.pos = 4

    def _align(self, size: int) -> None:
        self.pos += (-(self.pos - 4)) % size

    def _take(self, size: int, what: str) -> memoryview:
        end = self.pos + size
        if size < 0 or end > self.buf.nbytes:
            raise ImageError(f'serialized message truncated in {what} ({self.buf.nbytes} bytes)')
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def u32(self, what: str) -> int:
        self._align(4)
        return int(struct.unpack(self.order + 'I', self._take(4, what))[0])

    def i32(self, what: str) -> int:
        self._align(4)
        return int(struct.unpack(self.order + 'i', self._take(4, what))[0])

    def u8(self, what: str) -> int:
        return int(self._take(1, what)[0])

    def string(self, what: str) -> str:
        size = self.u32(what)
        if size > _MAX_STRING:
            raise ImageError(f'{what} length {size} is not plausible')
        raw = bytes(self._take(size, what))
        return raw.rstrip(b'\x00').decode('utf-8', errors='replace')

    def octets(self, what: str) -> memoryview:
        return self._take(self.u32(what), what)

    def stamp(self) -> int:
        sec = self.i32('header.stamp.sec')
        nanosec = self.u32('header.stamp.nanosec')
        if nanosec >= NS:
            raise ImageError(f'header.stamp.nanosec {nanosec} is not below 10^9')
        return sec * NS + nanosec


def header_stamp_ns(raw: bytes | bytearray | memoryview) -> int:
    """The header stamp of any message that starts with a ``std_msgs/Header``."""
    return _Reader(raw).stamp()


def parse_image(raw: bytes | bytearray | memoryview) -> ImageFields:
    """Read a serialized ``sensor_msgs/Image``; raise ImageError when it is malformed."""
    r = _Reader(raw)
    stamp = r.stamp()
    frame_id = r.string('header.frame_id')
    height = r.u32('height')
    width = r.u32('width')
    encoding = r.string('encoding')
    is_bigendian = bool(r.u8('is_bigendian'))
    step = r.u32('step')
    data = r.octets('data')
    return ImageFields(stamp, frame_id, height, width, encoding, is_bigendian, step, data)


def parse_compressed(raw: bytes | bytearray | memoryview) -> CompressedFields:
    """Read a serialized ``sensor_msgs/CompressedImage``; raise ImageError when malformed."""
    r = _Reader(raw)
    stamp = r.stamp()
    frame_id = r.string('header.frame_id')
    fmt = r.string('format')
    data = r.octets('data')
    return CompressedFields(stamp, frame_id, fmt, data)
