"""
Pixel conversions: ROS image buffers to RGB arrays, JPEG/PNG codecs and the Qwen-VL pre-resize.

ROS-free (numpy + Pillow). The ROS layer passes message fields in; nothing here imports a
message package or cv_bridge.

Message data is untrusted: every failure of :func:`raw_to_rgb` and :func:`compressed_to_rgb`
is an :class:`ImageError` naming the problem. Compressed payloads are parsed here (JPEG marker
walk, PNG chunk walk with CRCs) and their declared size is checked before Pillow sees any byte.
"""

from __future__ import annotations

from dataclasses import dataclass
import io
import math
import numbers
import operator
from typing import Any, NamedTuple
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image

from procvlm_ros.core.errors import ConfigError, ImageError

__all__ = [
    'DEFAULT_MAX_PIXELS',
    'MAX_ASPECT_RATIO',
    'MIN_SIDE',
    'SUPPORTED_ENCODINGS',
    'CompressedHeader',
    'check_geometry',
    'compressed_to_rgb',
    'jpeg_roundtrip',
    'qwen_vl_pre_resize',
    'raw_to_rgb',
    'read_compressed_header',
    'rgb_to_jpeg',
    'rgb_to_png',
    'smart_resize',
]

# bytes, bytearray, memoryview, array.array('B') (what rclpy gives for uint8[]), numpy uint8
# arrays (what rosbags gives): anything with the buffer protocol.
BytesLike = Any
RgbArray = npt.NDArray[np.uint8]  # (H, W, 3) RGB, C-contiguous

# 4096 x 4096: the most the Qwen3-VL processor keeps (size.longest_edge) and the qwen-vl-utils
# cap at factor 32; larger frames are only downscaled by the model, so decoding them wastes memory.
DEFAULT_MAX_PIXELS = 4096 * 4096

# qwen-vl-utils 0.0.14 constants (vision_process.py).
_MAX_RATIO = 200
_SPATIAL_MERGE_SIZE = 2
_IMAGE_MIN_TOKEN_NUM = 4
_IMAGE_MAX_TOKEN_NUM = 16384

# Both smart_resize copies (qwen-vl-utils and transformers' Qwen2-VL processor) raise above this.
MAX_ASPECT_RATIO = _MAX_RATIO
# One merged vision patch of Qwen3-VL (patch 16 x spatial merge 2, the processor's factor). A
# shorter side is invented by upsampling, and transformers releases that check sides against
# the factor refuse it.
MIN_SIDE = 32


def check_geometry(
    height: int,
    width: int,
    max_pixels: int,
    *,
    min_side: int = MIN_SIDE,
    max_ratio: float = MAX_ASPECT_RATIO,
) -> tuple[int, int]:
    """
    Check a frame's size against what the model's preprocessing accepts.

    Defaults are the model's limits: sides of at least :data:`MIN_SIDE`, aspect ratio at most
    :data:`MAX_ASPECT_RATIO` (qwen-vl-utils and transformers ``smart_resize`` raise above it).

    :param height: Rows.
    :param width: Columns.
    :param max_pixels: Refuse more pixels than this.
    :param min_side: Refuse a side shorter than this.
    :param max_ratio: Refuse ``long side / short side`` above this.
    :returns: ``(height, width)`` as Python ints.
    :raises ImageError: If the size is not an integer, not positive, or breaks a limit.
    :raises ConfigError: If a limit itself is invalid.
    """
    _check_limits(max_pixels, min_side, max_ratio)
    height, width = _as_int('height', height), _as_int('width', width)
    if height <= 0 or width <= 0:
        raise ImageError(f'image size must be positive, got height={height} width={width}')
    if height * width > max_pixels:
        raise ImageError(
            f'image {width}x{height} has {height * width} pixels, more than '
            f'max_pixels={max_pixels}')
    if min(height, width) < min_side:
        short = [f'{n} {v}' for n, v in (('height', height), ('width', width)) if v < min_side]
        raise ImageError(
            f'image {width}x{height}: {" and ".join(short)} below min_side={min_side} '
            '(one merged vision patch)')
    if max(height, width) > max_ratio * min(height, width):
        ratio = max(height, width) / min(height, width)
        raise ImageError(
            f'image {width}x{height} has aspect ratio {ratio:.1f}, above '
            f'max_ratio={max_ratio:g} (the Qwen-VL resize limit)')
    return height, width



@dataclass(frozen=True)
class _Layout:
    channels: int
    channel_bytes: int
    rgb: tuple[int, int, int]  # source channel of R, G and B

    @property
    def pixel_bytes(self) -> int:
        return self.channels * self.channel_bytes


_RGB = (0, 1, 2)
_BGR = (2, 1, 0)
_MONO = (0, 0, 0)

# Keys are lower case; ROS spells some encodings in upper case ('16UC1').
_ENCODINGS = {
    'rgb8': _Layout(3, 1, _RGB),
    'bgr8': _Layout(3, 1, _BGR),
    'rgba8': _Layout(4, 1, _RGB),
    'bgra8': _Layout(4, 1, _BGR),
    'mono8': _Layout(1, 1, _MONO),
    '8uc1': _Layout(1, 1, _MONO),
    'rgb16': _Layout(3, 2, _RGB),
    'bgr16': _Layout(3, 2, _BGR),
    'rgba16': _Layout(4, 2, _RGB),
    'bgra16': _Layout(4, 2, _BGR),
    'mono16': _Layout(1, 2, _MONO),
    '16uc1': _Layout(1, 2, _MONO),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)


def raw_to_rgb(
    data: BytesLike,
    height: int,
    width: int,
    step: int,
    encoding: str,
    is_bigendian: bool = False,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    max_ratio: float = MAX_ASPECT_RATIO,
) -> RgbArray:
    """
    Convert the fields of a ``sensor_msgs/Image`` to an RGB array.

    16-bit encodings keep their high byte (value // 256), as a linear 16 -> 8 bit scaling.

    :param data: Pixel bytes; any buffer (bytes, bytearray, memoryview, ``array.array('B')``,
        numpy array). Only ``step * height`` bytes are read.
    :param height: Rows.
    :param width: Columns.
    :param step: Bytes per row, including padding; a multiple of the channel size (2 bytes for
        16-bit encodings, as OpenCV and cv_bridge require).
    :param encoding: ROS encoding, one of :data:`SUPPORTED_ENCODINGS` (case-insensitive).
    :param is_bigendian: Byte order of 16-bit encodings.
    :param max_pixels: Refuse images with more pixels than this.
    :param min_side: Refuse a side shorter than this (the node passes :data:`MIN_SIDE`).
    :param max_ratio: Refuse a larger aspect ratio (see :func:`check_geometry`).
    :returns: ``(H, W, 3)`` uint8 RGB array that owns its memory.
    :raises ImageError: On an unknown encoding, bad geometry or too little data.
    """
    if not isinstance(encoding, str):
        raise ImageError(f'encoding must be a string, got {type(encoding).__name__}')
    layout = _ENCODINGS.get(encoding.lower())
    if layout is None:
        raise ImageError(
            f'unsupported encoding {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
    height, width = check_geometry(
        height, width, max_pixels, min_side=min_side, max_ratio=max_ratio)
    step = _as_int('step', step)
    _check_step(step, width, layout, encoding)
    buf = _byte_view(data)
    if buf.nbytes < step * height:
        raise ImageError(
            f'data has {buf.nbytes} bytes, fewer than step {step} x height {height} '
            f'= {step * height}')
    rows = np.frombuffer(buf, dtype=np.uint8, count=step * height).reshape(height, step)
    rows = rows[:, :width * layout.pixel_bytes]  # drop row padding, still a view
    if layout.channel_bytes == 1:
        pixels = rows.reshape(height, width, layout.channels)
    else:
        pixels = _high_bytes(rows, is_bigendian).reshape(height, width, layout.channels)
    if layout.channels == 3 and layout.rgb == _RGB:
        return np.array(pixels, dtype=np.uint8, order='C')  # plain copy, ~0.02 ms at VGA
    # Channel by channel: ~0.25 ms for VGA bgr8, 3x faster than copying a reversed-stride view
    # (fancy indexing returns a channel-planar array that needs a second copy).
    out = np.empty((height, width, 3), dtype=np.uint8)
    for dst, src in enumerate(layout.rgb):
        out[..., dst] = pixels[..., src]
    return out


def _check_step(step: int, width: int, layout: _Layout, encoding: str) -> None:
    row_bytes = width * layout.pixel_bytes
    if step < row_bytes:
        raise ImageError(
            f'step {step} is smaller than width {width} x {layout.pixel_bytes} bytes per pixel '
            f'= {row_bytes} for encoding {encoding!r}')
    if step % layout.channel_bytes:
        raise ImageError(
            f'step {step} is not a multiple of {layout.channel_bytes} bytes, the channel size '
            f'of encoding {encoding!r} (rows would start mid-sample)')


class CompressedHeader(NamedTuple):
    """What a JPEG or PNG payload declares before any pixel is decoded."""

    kind: str  # 'JPEG' or 'PNG'
    height: int
    width: int


class _FormatError(Exception):
    """A payload that is not a JPEG/PNG this module accepts; becomes an ImageError."""


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Pillow only needs the critical chunks. Ancillary ones (zTXt/iTXt/iCCP inflate bombs, eXIf,
# APNG frames) never reach it, and dropping them changes no pixel Pillow returns here.
_PNG_KEEP = frozenset({b'IHDR', b'PLTE', b'IDAT', b'IEND'})
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_MAX_INT = 2**31 - 1  # PNG's limit on lengths and sides
# The chunk walk costs 10-20 us per chunk; empty chunks could make a 2 MB payload take seconds.
# Encoders write IDAT in pieces of 8 KB (libpng) or more; this allows 1 chunk per 256 bytes.
_PNG_BYTES_PER_CHUNK = 256
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # x0, y0, dx, dy of the 7 interlace passes

_JPEG_SOI = b'\xff\xd8'
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9
_JPEG_SOF = {0xC0: 'baseline', 0xC1: 'extended sequential', 0xC2: 'progressive',
             0xC3: 'lossless', 0xC5: 'differential sequential', 0xC6: 'differential progressive',
             0xC7: 'differential lossless', 0xC9: 'arithmetic sequential',
             0xCA: 'arithmetic progressive', 0xCB: 'arithmetic lossless',
             0xCD: 'arithmetic differential sequential',
             0xCE: 'arithmetic differential progressive',
             0xCF: 'arithmetic differential lossless'}
_JPEG_SOF_OK = frozenset({0xC0, 0xC1, 0xC2})  # what libjpeg encoders (OpenCV, Pillow) write
# Kept before the scan: APP0 (JFIF) and APP14 (Adobe) choose the colour transform; DQT, DHT,
# DRI, DAC. Other APPn (EXIF, ICC, MPF, XMP) and COM are metadata Pillow would parse for nothing.
_JPEG_KEEP = frozenset({0xE0, 0xEE, 0xDB, 0xC4, 0xDD, 0xCC}) | _JPEG_SOF_OK
_JPEG_SKIP = frozenset(range(0xE0, 0xF0)) | {0xFE}
_JPEG_NO_LENGTH = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})  # TEM, RSTn, SOI, EOI (+ 0x00)
# Each progressive scan is a pass over the whole frame, so scans bound the decoding time. libjpeg
# (OpenCV, Pillow) writes 10 for a colour progressive JPEG, 1 for baseline.
_JPEG_MAX_SCANS = 100

# Formats a CompressedImage may carry that this module refuses, by magic number.
_FOREIGN = (
    (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'), (b'II+\x00', 'BigTIFF'), (b'MM\x00+', 'BigTIFF'),
    (b'GIF87a', 'GIF'), (b'GIF89a', 'GIF'), (b'BM', 'BMP'), (b'qoif', 'QOI'),
    (b'\x00\x00\x00\x0cjP  \r\n\x87\n', 'JPEG 2000'), (b'\xff\x4f\xff\x51', 'JPEG 2000'),
    (b'\xff\x0a', 'JPEG XL'), (b'\x00\x00\x00\x0cJXL \r\n\x87\n', 'JPEG XL'),
    (b'8BPS', 'Photoshop'), (b'v/1\x01', 'OpenEXR'), (b'\x00\x00\x01\x00', 'ICO'),
    (b'%PDF', 'PDF'), (b'\x1f\x8b', 'gzip'), (b'PK\x03\x04', 'ZIP'),
)


def compressed_to_rgb(
    data: BytesLike,
    format: str = '',  # noqa: A002
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
    max_ratio: float = MAX_ASPECT_RATIO,
    draft_pixels: int | None = None,
) -> RgbArray:
    """
    Decode the payload of a ``sensor_msgs/CompressedImage`` (JPEG or PNG) to RGB.

    Only what image_transport's compressed plugin writes is accepted, recognised by its magic
    bytes: JPEG (baseline, extended or progressive Huffman, 8 bit, grey or colour) and PNG.
    ``format`` (e.g. ``'jpeg'`` or ``'bgr8; jpeg compressed bgr8'``) only refuses
    ``compressedDepth``. The size is read from the PNG IHDR or the JPEG frame header and checked
    (:func:`check_geometry`, and Pillow's ``MAX_IMAGE_PIXELS``) before decoding; the decoded size
    must match it. Pillow receives only the segments decoding needs (no text, ICC or EXIF), and
    a PNG's pixel data is inflated once beforehand to check that it fills the declared size.
    Peak memory is about 10 bytes per pixel (Pillow's 4-byte pixels, its bytes export, the array).

    :param data: Compressed bytes (any buffer).
    :param format: The message's ``format`` field.
    :param max_pixels: Refuse images declaring more pixels than this.
    :param min_side: Refuse a side shorter than this (the node passes :data:`MIN_SIDE`).
    :param max_ratio: Refuse a larger aspect ratio.
    :param draft_pixels: JPEG only: if the frame has more pixels than this, let libjpeg decode it
        at 1/2, 1/4 or 1/8 scale (the smallest output with at least this many pixels). Saves
        time and memory when the model downscales anyway, but the pixels differ from a full
        decode, so ``None`` (full decode, the official pipeline's pixels) is the default.
    :returns: ``(H, W, 3)`` uint8 RGB array (alpha dropped, grey replicated, 16 bit -> high byte).
    :raises ImageError: If the data is not an accepted JPEG/PNG, is too large, or is corrupt.
    """
    if not isinstance(format, str):
        raise ImageError(f'format must be a string, got {type(format).__name__}')
    if 'compresseddepth' in format.lower():
        raise ImageError(f'compressedDepth images are not supported (format {format!r})')
    if draft_pixels is not None and (isinstance(draft_pixels, bool) or
                                     not isinstance(draft_pixels, int) or draft_pixels < 1):
        raise ConfigError(f'draft_pixels must be None or an integer >= 1, got {draft_pixels!r}')
    payload = _byte_view(data)
    header, stream = _parse_compressed(payload, format, max_pixels, min_side, max_ratio)
    return _decode(stream, header, f'{payload.nbytes} bytes, format {format!r}', draft_pixels)


def read_compressed_header(data: BytesLike, format: str = '') -> CompressedHeader:  # noqa: A002
    """
    Read a JPEG/PNG payload's declared kind and size without decoding it.

    :param data: Compressed bytes (any buffer).
    :param format: The message's ``format`` field (used in messages only).
    :returns: The :class:`CompressedHeader`.
    :raises ImageError: If the payload is not an accepted JPEG/PNG or its header is malformed.
    """
    payload = _byte_view(data)
    header, _ = _parse_compressed(payload, str(format), None, 1, math.inf)
    return header


def _parse_compressed(
    payload: memoryview, fmt: str, max_pixels: int | None, min_side: int, max_ratio: float
) -> tuple[CompressedHeader, bytes]:
    # max_pixels None: header only (the stream returned is empty).
    try:
        head = bytes(payload[:32])
        if head.startswith(_PNG_SIGNATURE):
            header, stream = _png_header(payload), b''  # the walk waits for the size check
        elif head.startswith(_JPEG_SOI):
            header, stream = _jpeg_stream(payload)
        else:
            raise _FormatError(f'{_describe(head)}; only JPEG and PNG (what the image_transport '
                               'compressed plugin writes) are accepted')
        if max_pixels is None:
            return header, b''
        check_geometry(header.height, header.width, max_pixels,
                       min_side=min_side, max_ratio=max_ratio)
        _check_pillow_limit(header)
        return header, _png_stream(payload) if header.kind == 'PNG' else stream
    except _FormatError as e:
        raise ImageError(
            f'cannot decode {payload.nbytes} bytes of compressed image (format {fmt!r}): {e}'
        ) from None


def _describe(head: bytes) -> str:
    if not head:
        return 'empty payload'
    if head.startswith(b'\x89PNG'):
        return 'PNG with a damaged signature (text-mode transfer?)'
    for magic, name in _FOREIGN:
        if head.startswith(magic):
            return f'looks like {name}'
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'looks like WebP'
    if head[4:8] == b'ftyp':
        return f'looks like ISO media ({head[8:12].decode("latin-1")!r}, e.g. AVIF/HEIF)'
    if head[12:20] == _PNG_SIGNATURE:
        return 'looks like compressedDepth (12-byte depth header, then PNG)'
    if head[:1] == b'P' and head[1:2] in (b'1', b'2', b'3', b'4', b'5', b'6', b'7'):
        return 'looks like PNM'
    return f'unrecognised data starting with {head[:8].hex(" ")}'


def _check_pillow_limit(header: CompressedHeader) -> None:
    # Refusing above 1x (Pillow warns above 1x and raises above 2x) keeps its global warning
    # filter out of the picture: no DecompressionBombWarning can be emitted afterwards.
    limit = Image.MAX_IMAGE_PIXELS
    pixels = header.height * header.width
    if limit is not None and pixels > limit:
        raise ImageError(
            f'{header.kind} image {header.width}x{header.height} has {pixels} pixels, above '
            f"Pillow's decompression bomb limit Image.MAX_IMAGE_PIXELS={limit}")


def _png_chunk(buf: memoryview, pos: int) -> tuple[bytes, int]:
    # Returns (type, end) of the chunk at pos after checking its length and CRC.
    n = buf.nbytes
    if pos + 8 > n:
        raise _FormatError(f'PNG ends at byte {n} inside the chunk header at byte {pos} '
                           '(no IEND chunk)')
    length = int.from_bytes(buf[pos:pos + 4], 'big')
    ctype = bytes(buf[pos + 4:pos + 8])
    if not ctype.isalpha():  # bytes.isalpha: ASCII letters only
        raise _FormatError(f'PNG chunk at byte {pos} has an invalid type {ctype!r}')
    name = ctype.decode('ascii')
    if length > _PNG_MAX_INT:
        raise _FormatError(f'PNG chunk {name} at byte {pos} declares {length} bytes, above 2^31-1')
    end = pos + 12 + length
    if end > n:
        raise _FormatError(f'PNG chunk {name} at byte {pos} declares {length} data bytes, past '
                           f'the end of the {n}-byte payload')
    if zlib.crc32(buf[pos + 4:end - 4]) != int.from_bytes(buf[end - 4:end], 'big'):
        raise _FormatError(f'PNG chunk {name} at byte {pos} has a wrong CRC')
    return ctype, end


def _png_header(buf: memoryview) -> CompressedHeader:
    ctype, end = _png_chunk(buf, 8)
    if ctype != b'IHDR':
        raise _FormatError(f'PNG starts with a {ctype.decode()} chunk instead of IHDR')
    if end - 20 != 13:
        raise _FormatError(f'PNG IHDR chunk has {end - 20} data bytes instead of 13')
    width, height = int.from_bytes(buf[16:20], 'big'), int.from_bytes(buf[20:24], 'big')
    depth, colour, compression, filtering, interlace = bytes(buf[24:29])
    if max(width, height) > _PNG_MAX_INT:
        raise _FormatError(f'PNG IHDR declares {width}x{height}, a side above 2^31-1')
    if depth not in _PNG_DEPTHS.get(colour, ()):
        raise _FormatError(f'PNG IHDR has bit depth {depth} with colour type {colour}, an '
                           'invalid combination')
    if (compression, filtering) != (0, 0) or interlace not in (0, 1):
        raise _FormatError(f'PNG IHDR has compression {compression}, filter {filtering}, '
                           f'interlace {interlace} (valid: 0, 0, 0 or 1)')
    return CompressedHeader('PNG', height, width)


def _png_stream(buf: memoryview) -> bytes:
    # Every chunk up to IEND checked; the critical ones are returned as a new PNG.
    kept: list[Any] = [_PNG_SIGNATURE]
    idat: list[memoryview] = []
    pos, chunks, max_chunks = 8, 0, 16 + buf.nbytes // _PNG_BYTES_PER_CHUNK
    while True:
        chunks += 1
        if chunks > max_chunks:
            raise _FormatError(f'PNG has more than {max_chunks} chunks in {buf.nbytes} bytes '
                               f'(one per {_PNG_BYTES_PER_CHUNK} bytes at most)')
        ctype, end = _png_chunk(buf, pos)
        if ctype == b'IHDR' and pos != 8:
            raise _FormatError(f'PNG has a second IHDR chunk at byte {pos}')
        if ctype[:1].isupper() and ctype not in _PNG_KEEP:
            raise _FormatError(f'PNG has an unknown critical chunk {ctype.decode()} at byte {pos}')
        if ctype in _PNG_KEEP:
            kept.append(buf[pos:end])
        if ctype == b'IDAT':
            idat.append(buf[pos + 8:end - 4])
        if ctype == b'IEND':
            break
        pos = end
    if not idat:
        raise _FormatError('PNG has no IDAT chunk (no pixel data)')
    _png_check_pixel_data(idat, _png_raw_size(buf))
    return b''.join(kept)


def _png_raw_size(buf: memoryview) -> int:
    # Bytes the IDAT stream must inflate to: filter byte + packed samples per row, per pass.
    width, height = int.from_bytes(buf[16:20], 'big'), int.from_bytes(buf[20:24], 'big')
    depth, colour, interlace = buf[24], buf[25], buf[28]
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def _png_check_pixel_data(idat: list[memoryview], expected: int) -> None:
    # Pillow fills rows missing from a short but well-terminated zlib stream with zeros, silently
    # (Pillow 12). Inflating once more here, 4 MB at a time and discarded, catches that.
    inflater, got = zlib.decompressobj(), 0
    try:
        for data in idat:
            for i in range(0, data.nbytes, 1 << 16):
                piece: Any = data[i:i + (1 << 16)]
                while piece and got < expected and not inflater.eof:
                    got += len(inflater.decompress(piece, 1 << 22))
                    piece = inflater.unconsumed_tail
                if got >= expected:
                    return
        got += len(inflater.flush())  # output zlib still held when the input ran out
    except zlib.error as e:
        raise _FormatError(f'PNG pixel data is not a valid zlib stream ({e})') from None
    if got >= expected:
        return
    raise _FormatError(f'PNG pixel data inflates to {got} bytes, fewer than the {expected} the '
                       'header needs (truncated IDAT)')


def _jpeg_stream(buf: memoryview) -> tuple[CompressedHeader, bytes]:
    # Walk the markers from SOI to the first SOS; keep what decoding needs, then the rest as is.
    kept: list[Any] = [_JPEG_SOI]
    header: CompressedHeader | None = None
    pos = 2
    while True:
        marker, start, end = _jpeg_segment(buf, pos)
        if marker == _JPEG_SOS:
            if header is None:
                raise _FormatError(f'JPEG scan (SOS) at byte {start} comes before any frame '
                                   'header (SOF)')
            kept.append(buf[start:])
            stream = b''.join(kept)
            # 0xFF in entropy-coded data is followed by 0x00 or RSTn, so this counts SOS markers.
            scans = stream.count(b'\xff\xda')
            if scans > _JPEG_MAX_SCANS:
                raise _FormatError(f'JPEG has {scans} scans, more than {_JPEG_MAX_SCANS}')
            return header, stream
        if marker in _JPEG_SOF:
            if header is not None:
                raise _FormatError(f'JPEG has a second frame header at byte {start}')
            header = _jpeg_frame_header(buf, marker, start, end)
        elif marker == _JPEG_EOI:
            raise _FormatError(f'JPEG ends (EOI at byte {start}) before any scan')
        elif marker not in _JPEG_KEEP and marker not in _JPEG_SKIP:
            raise _FormatError(f'JPEG has an unsupported marker 0xFF{marker:02X} at byte {start}')
        if marker in _JPEG_KEEP:
            kept.append(buf[start:end])
        pos = end


def _jpeg_segment(buf: memoryview, pos: int) -> tuple[int, int, int]:
    # (marker, start, end) of the marker segment at pos; start is its 0xFF (fill bytes skipped).
    n = buf.nbytes
    if pos >= n:
        raise _FormatError(f'JPEG ends at byte {n} before the start of scan (truncated)')
    if buf[pos] != 0xFF:
        raise _FormatError(f'JPEG has byte 0x{buf[pos]:02X} at byte {pos} where a marker '
                           'should start')
    while pos + 1 < n and buf[pos + 1] == 0xFF:
        pos += 1
    if pos + 2 > n:
        raise _FormatError(f'JPEG ends at byte {n} inside a marker (truncated)')
    marker = buf[pos + 1]
    if marker in _JPEG_NO_LENGTH:
        return marker, pos, pos + 2
    if pos + 4 > n:
        raise _FormatError(f'JPEG ends at byte {n} inside the length of marker '
                           f'0xFF{marker:02X} (truncated)')
    length = int.from_bytes(buf[pos + 2:pos + 4], 'big')
    if length < 2:
        raise _FormatError(f'JPEG marker 0xFF{marker:02X} at byte {pos} has length {length} '
                           '(at least 2)')
    if pos + 2 + length > n:
        raise _FormatError(f'JPEG marker 0xFF{marker:02X} at byte {pos} declares {length} '
                           f'bytes, past the end of the {n}-byte payload')
    return marker, pos, pos + 2 + length


def _jpeg_frame_header(buf: memoryview, marker: int, start: int, end: int) -> CompressedHeader:
    length = end - start - 2
    if length < 8:
        raise _FormatError(f'JPEG frame header at byte {start} has length {length} (at least 8)')
    precision, components = buf[start + 4], buf[start + 9]
    height = int.from_bytes(buf[start + 5:start + 7], 'big')
    width = int.from_bytes(buf[start + 7:start + 9], 'big')
    if length != 8 + 3 * components:
        raise _FormatError(f'JPEG frame header at byte {start} has length {length} for '
                           f'{components} components (expected {8 + 3 * components})')
    if marker not in _JPEG_SOF_OK:
        raise _FormatError(f'JPEG coding process SOF{marker - 0xC0} ({_JPEG_SOF[marker]}) is not '
                           'supported (baseline, extended or progressive Huffman only)')
    if precision != 8:
        raise _FormatError(f'JPEG sample precision {precision} bits is not supported (8 only)')
    if components not in (1, 3):
        raise _FormatError(f'JPEG with {components} colour components is not supported '
                           '(1 grey or 3 colour)')
    if height == 0:
        raise _FormatError('JPEG frame header declares height 0 (a height set later by a DNL '
                           'marker is not supported)')
    return CompressedHeader('JPEG', height, width)


def _decode(
    stream: bytes, header: CompressedHeader, what: str, draft_pixels: int | None
) -> RgbArray:
    where = f'corrupt {header.kind} data ({what})'
    try:
        with Image.open(io.BytesIO(stream), formats=(header.kind,)) as image:
            _expect_size(image.size, [(header.width, header.height)], where)
            size = _draft(image, header, draft_pixels, where)
            image.load()
            _expect_size(image.size, [size], where)
            rgb = _pil_to_rgb(image)
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure rejects the frame, never the node
        # Seen: OSError, ValueError, SyntaxError, OverflowError, struct.error, zlib.error,
        # MemoryError, Image.DecompressionBombError.
        raise ImageError(f'{where}: {e} ({type(e).__name__})') from e
    _expect_size((rgb.shape[1], rgb.shape[0]), [size], where)
    return rgb


def _draft(
    image: Image.Image, header: CompressedHeader, draft_pixels: int | None, where: str
) -> tuple[int, int]:
    # libjpeg DCT scaling by 1/k, k in 1, 2, 4, 8: output sides are ceil(side / k).
    width, height = header.width, header.height
    if draft_pixels is None or header.kind != 'JPEG' or width * height <= draft_pixels:
        return width, height
    scale = math.sqrt(draft_pixels / (width * height))
    image.draft(image.mode, (math.ceil(width * scale), math.ceil(height * scale)))
    sizes = [(-(-width // k), -(-height // k)) for k in (1, 2, 4, 8)]
    _expect_size(image.size, sizes, where)
    return image.size


def _expect_size(got: tuple[int, int], allowed: list[tuple[int, int]], where: str) -> None:
    if tuple(got) not in allowed:
        raise ImageError(f'{where}: decoder size {got[0]}x{got[1]} differs from the header size '
                         f'{allowed[0][0]}x{allowed[0][1]}')


def rgb_to_jpeg(rgb: RgbArray, quality: int = 95) -> bytes:
    """
    Encode an RGB array as JPEG with Pillow's defaults (4:2:0 subsampling, no optimisation).

    :param rgb: ``(H, W, 3)`` uint8 array.
    :param quality: Pillow JPEG quality, 0-100.
    :returns: JPEG bytes.
    """
    if not 0 <= quality <= 100:
        raise ConfigError(f'JPEG quality must be in [0, 100], got {quality}')
    out = io.BytesIO()
    Image.fromarray(_check_rgb(rgb)).save(out, format='JPEG', quality=quality)
    return out.getvalue()


def rgb_to_png(rgb: RgbArray) -> bytes:
    """
    Encode an RGB array as PNG (lossless).

    :param rgb: ``(H, W, 3)`` uint8 array.
    :returns: PNG bytes.
    """
    out = io.BytesIO()
    Image.fromarray(_check_rgb(rgb)).save(out, format='PNG')
    return out.getvalue()


def jpeg_roundtrip(rgb: RgbArray, quality: int = 95) -> RgbArray:
    """
    Apply the official frame round trip in memory.

    ProcVLM saves every frame with ``Image.fromarray(frame).save(path, quality=95)`` and the model
    reads those files back; this returns the same pixels without touching the disk.

    :param rgb: ``(H, W, 3)`` uint8 array.
    :param quality: JPEG quality (the official value is 95).
    :returns: The decoded ``(H, W, 3)`` uint8 RGB array.
    """
    with Image.open(io.BytesIO(rgb_to_jpeg(rgb, quality))) as image:
        return np.array(image.convert('RGB'), dtype=np.uint8)


def smart_resize(
    height: int,
    width: int,
    factor: int,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> tuple[int, int]:
    """
    Return ``(height, width)`` as qwen-vl-utils 0.0.14 ``smart_resize`` computes them.

    Each side is rounded to a multiple of ``factor`` with Python's ``round`` (halves to even);
    if the area leaves ``[min_pixels, max_pixels]`` both sides are scaled by one factor and
    floored (too big) or ceiled (too small). A local copy: qwen-vl-utils (and transformers'
    Qwen2-VL image processor) import torch/torchvision at module level, and transformers' copy
    differs in edge cases (it rejects sides below ``factor``).

    :param height: Source height.
    :param width: Source width.
    :param factor: Patch size x spatial merge size (28 or 32 for Qwen3-VL).
    :param min_pixels: Lower area bound; default ``4 * factor**2``.
    :param max_pixels: Upper area bound; default ``16384 * factor**2``.
    :returns: The resized ``(height, width)``.
    :raises ImageError: On a non-positive size or an aspect ratio above 200.
    """
    max_pixels = _IMAGE_MAX_TOKEN_NUM * factor**2 if max_pixels is None else max_pixels
    min_pixels = _IMAGE_MIN_TOKEN_NUM * factor**2 if min_pixels is None else min_pixels
    if max_pixels < min_pixels:
        raise ConfigError(f'max_pixels {max_pixels} is smaller than min_pixels {min_pixels}')
    if height <= 0 or width <= 0:
        raise ImageError(f'image size must be positive, got height={height} width={width}')
    if max(height, width) / min(height, width) > _MAX_RATIO:
        raise ImageError(
            f'aspect ratio of {width}x{height} exceeds {_MAX_RATIO} (qwen-vl-utils limit)')
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_vl_pre_resize(
    image: Image.Image | RgbArray, patch_size: int = 14
) -> Image.Image:
    """
    Reproduce qwen-vl-utils 0.0.14 ``fetch_image`` for one image (its default pixel limits).

    ``to_rgb`` (RGBA composited on white, anything else ``convert('RGB')``), then ``smart_resize``
    with factor ``2 * patch_size``, then ``image.resize((w, h))`` with Pillow's default filter
    (bicubic for RGB). ProcVLM's vLLM path uses patch 16, its transformers path patch 14.

    :param image: PIL image, or an ``(H, W, 3)`` uint8 RGB array.
    :param patch_size: Vision patch size; 0 converts to RGB but does not resize.
    :returns: The RGB PIL image the processor would receive.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_check_rgb(image))
    rgb = _qwen_to_rgb(image)
    if patch_size == 0:
        return rgb
    if patch_size < 0:
        raise ConfigError(f'patch_size must be >= 0, got {patch_size}')
    factor = patch_size * _SPATIAL_MERGE_SIZE
    height, width = smart_resize(rgb.height, rgb.width, factor)
    return rgb.resize((width, height))


def _qwen_to_rgb(image: Image.Image) -> Image.Image:
    # Same as qwen_vl_utils.to_rgb: only 'RGBA' is composited, 'LA'/'P' go through convert().
    if image.mode == 'RGBA':
        background = Image.new('RGB', image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert('RGB')


def _pil_to_rgb(image: Image.Image) -> RgbArray:
    if image.mode.startswith('I'):
        # 16-bit grey PNG ('I;16', or 'I' in older Pillow): high byte, as in raw_to_rgb.
        grey = (np.clip(np.asarray(image), 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == 'RGB':
        return np.array(image, dtype=np.uint8)  # convert() would add a full-size copy
    return np.array(image.convert('RGB'), dtype=np.uint8)


def _high_bytes(rows: npt.NDArray[np.uint8], is_bigendian: bool) -> npt.NDArray[np.uint8]:
    # (H, W*C*2) bytes -> (H, W*C) uint16 in the message's byte order -> top 8 bits.
    words = np.ascontiguousarray(rows).view('>u2' if is_bigendian else '<u2')
    return (words >> 8).astype(np.uint8)


def _byte_view(data: BytesLike) -> memoryview:
    try:
        view = memoryview(data)
        if view.format not in ('B', 'b', 'c'):  # e.g. an object array would expose pointers
            raise TypeError(f'items of format {view.format!r}, not bytes')
        return view.cast('B')
    except (TypeError, ValueError, BufferError) as e:
        raise ImageError(
            f'data must be a contiguous bytes-like object, got {type(data).__name__}: {e}') from e


def _as_int(name: str, value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError(name)
        return operator.index(value)
    except TypeError as e:
        raise ImageError(f'{name} must be an integer, got {value!r}') from e


def _check_limits(max_pixels: Any, min_side: Any, max_ratio: Any) -> None:
    for name, value in (('max_pixels', max_pixels), ('min_side', min_side)):
        try:
            valid = not isinstance(value, bool) and operator.index(value) >= 1
        except TypeError:
            valid = False
        if not valid:
            raise ConfigError(f'{name} must be an integer >= 1, got {value!r}')
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, numbers.Real) or \
            not max_ratio >= 1:
        raise ConfigError(f'max_ratio must be a number >= 1, got {max_ratio!r}')


def _check_rgb(rgb: Any) -> RgbArray:
    if not isinstance(rgb, np.ndarray):
        raise ImageError(f'expected an (H, W, 3) uint8 RGB array, got {type(rgb).__name__}')
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(
            f'expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} of shape {rgb.shape}')
    return rgb
