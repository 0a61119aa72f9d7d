"""Hostile frames at the image door: every one is an ImageError naming the problem."""

import io
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.errors import ConfigError, ImageError
from procvlm_ros.core.image import (
    check_geometry,
    compressed_to_rgb,
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    MIN_SIDE,
    raw_to_rgb,
    read_compressed_header,
    rgb_to_jpeg,
)

MODEL = {'min_side': MIN_SIDE, 'max_ratio': MAX_ASPECT_RATIO}  # what the node passes


def gradient(h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x * 7 + y * 3) % 256],
                    axis=2).astype(np.uint8)


def chunk(ctype, data, crc=None):
    crc = zlib.crc32(ctype + data) if crc is None else crc
    return struct.pack('>I', len(data)) + ctype + data + struct.pack('>I', crc)


def ihdr(w, h, depth=8, colour=2, interlace=0):
    return chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, interlace))


def png(w=64, h=48, rows=None, colour=2, before=(), after=()):
    """A PNG of zeros built by hand; rows < h writes a short (but well-terminated) IDAT."""
    channels = {0: 1, 2: 3, 6: 4}[colour]
    raw = (b'\x00' + bytes(w * channels)) * (h if rows is None else rows)
    return (b'\x89PNG\r\n\x1a\n' + ihdr(w, h, colour=colour) + b''.join(before)
            + chunk(b'IDAT', zlib.compress(raw, 9)) + b''.join(after) + chunk(b'IEND', b''))


def pil_bytes(array, fmt, **kw):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kw)
    return out.getvalue()


JPEG = rgb_to_jpeg(gradient(), 95)
PNG = pil_bytes(gradient(), 'PNG')
SOF = JPEG.index(b'\xff\xc0')  # Pillow writes a baseline frame header
PROGRESSIVE = pil_bytes(gradient(), 'JPEG', progressive=True)  # 10 scans


def patch(data, at, new):
    return data[:at] + new + data[at + len(new):]


def jpeg_size(w, h):
    return patch(JPEG, SOF + 5, struct.pack('>HH', h, w))


def jpeg_marker(code):
    return patch(JPEG, SOF + 1, bytes([code]))


ZTXT_BOMB = chunk(b'zTXt', b'Comment\x00\x00' + zlib.compress(b'A' * (4 << 20), 9))  # 4 MiB

# (payload, format, message); each is a crash, a silent mis-decode or a memory cost seen in the
# issue or a neighbour of one. Geometry cases use the model limits (MODEL).
COMPRESSED_CASES = {
    # The four escaping exceptions.
    'png-ihdr-truncated': (PNG[:8 + 8 + 5], r'PNG chunk IHDR at byte 8 declares 13 data bytes, '
                           r'past the end of the 21-byte payload'),
    'png-ihdr-short-length': (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', b'\x00\x00\x00\x40\x00')
                              + PNG[33:], r'PNG IHDR chunk has 5 data bytes instead of 13'),
    'png-broken-chunk': (PNG[:33] + struct.pack('>I', 1 << 30) + PNG[37:],
                         r'PNG chunk IDAT at byte 33 declares 1073741824 data bytes, past '),
    'tiff-offset-overflow': (b'II*\x00' + struct.pack('<I', 0xFFFFFFF0) + bytes(32),
                             r'looks like TIFF; only JPEG and PNG'),
    # Declared sizes far above the limit in a few KB.
    'png-7680x4320': (png(7680, 4320, colour=0),
                      r'image 7680x4320 has 33177600 pixels, more than max_pixels=16777216'),
    'jpeg-7680x4320': (jpeg_size(7680, 4320),
                       r'image 7680x4320 has 33177600 pixels, more than max_pixels=16777216'),
    'png-2^31-side': (b'\x89PNG\r\n\x1a\n' + ihdr(2**31, 1) + PNG[33:],
                      r'PNG IHDR declares 2147483648x1, a side above 2\^31-1'),
    # Broken JPEG structure.
    'jpeg-truncated-header': (JPEG[:SOF + 6], r'JPEG marker 0xFFC0 at byte \d+ declares 17 bytes, '
                              r'past the end of the \d+-byte payload'),
    'jpeg-truncated-scan': (JPEG[:-40], r"corrupt JPEG data \(\d+ bytes, format 'jpeg'\): "
                            r'image file is truncated'),
    'jpeg-soi-only': (b'\xff\xd8', r'JPEG ends at byte 2 before the start of scan'),
    'jpeg-width-0': (jpeg_size(0, 48), r'image size must be positive, got height=48 width=0'),
    'jpeg-height-0': (jpeg_size(64, 0), r'JPEG frame header declares height 0'),
    'jpeg-length-past-end': (patch(JPEG, JPEG.index(b'\xff\xdb') + 2, b'\xff\xff'),
                             r'JPEG marker 0xFFDB at byte 20 declares 65535 bytes, past the end'),
    'jpeg-length-below-2': (patch(JPEG, 4, b'\x00\x01'),
                            r'JPEG marker 0xFFE0 at byte 2 has length 1 \(at least 2\)'),
    'jpeg-garbage-between-markers': (patch(JPEG, 20, b'\x00'),
                                     r'JPEG has byte 0x00 at byte 20 where a marker should start'),
    'jpeg-lossless': (jpeg_marker(0xC3), r'JPEG coding process SOF3 \(lossless\) is not '),
    'jpeg-arithmetic': (jpeg_marker(0xC9), r'SOF9 \(arithmetic sequential\) is not supported'),
    'jpeg-12-bit': (patch(JPEG, SOF + 4, b'\x0c'), r'JPEG sample precision 12 bits'),
    'jpeg-sof-length': (patch(JPEG, SOF + 2, b'\x00\x0e'),
                        r'JPEG frame header at byte \d+ has length 14 for 3 components '
                        r'\(expected 17\)'),
    'jpeg-second-sof': (JPEG[:SOF] + JPEG[SOF:SOF + 19] + JPEG[SOF:],
                        r'JPEG has a second frame header'),
    'jpeg-no-sof': (JPEG[:SOF] + JPEG[SOF + 19:], r'JPEG scan \(SOS\) at byte \d+ comes before'),
    'jpeg-eoi-first': (b'\xff\xd8\xff\xd9', r'JPEG ends \(EOI at byte 2\) before any scan'),
    'jpeg-unknown-marker': (patch(JPEG, 3, b'\xf7'), r'unsupported marker 0xFFF7 at byte 2'),
    'jpeg-too-many-scans': (PROGRESSIVE[:-2] + PROGRESSIVE[PROGRESSIVE.rindex(b'\xff\xda'):-2] * 95
                            + b'\xff\xd9', r'JPEG has 105 scans, more than 100'),
    # Broken PNG structure.
    'png-chunk-flood': (png(before=[chunk(b'IDAT', b'')] * 2000),
                        r'PNG has more than \d+ chunks in \d+ bytes \(one per 256 bytes'),
    'png-wrong-crc': (PNG[:-16] + bytes([PNG[-16] ^ 1]) + PNG[-15:], r'has a wrong CRC'),
    'png-idat-short': (png(rows=10), r'PNG pixel data inflates to 1930 bytes, fewer than the '
                       r'9264 the header needs \(truncated IDAT\)'),
    'png-idat-not-zlib': (b'\x89PNG\r\n\x1a\n' + ihdr(64, 48) + chunk(b'IDAT', b'nope')
                          + chunk(b'IEND', b''), r'PNG pixel data is not a valid zlib stream'),
    'png-no-idat': (b'\x89PNG\r\n\x1a\n' + ihdr(64, 48) + chunk(b'IEND', b''),
                    r'PNG has no IDAT chunk'),
    'png-no-iend': (png()[:-12], r'PNG ends at byte \d+ inside the chunk header at byte \d+ '
                    r'\(no IEND chunk\)'),
    'png-ihdr-not-first': (b'\x89PNG\r\n\x1a\n' + chunk(b'gAMA', bytes(4)) + PNG[8:],
                           r'PNG starts with a gAMA chunk instead of IHDR'),
    'png-second-ihdr': (png(before=[ihdr(64, 48)]), r'PNG has a second IHDR chunk'),
    'png-bad-depth': (png()[:24] + b'\x03' + png()[25:], r'wrong CRC'),
    'png-bad-depth-crc-ok': (b'\x89PNG\r\n\x1a\n' + ihdr(64, 48, depth=3) + PNG[33:],
                             r'PNG IHDR has bit depth 3 with colour type 2'),
    'png-bad-interlace': (b'\x89PNG\r\n\x1a\n' + ihdr(64, 48, interlace=2) + PNG[33:],
                          r'PNG IHDR has compression 0, filter 0, interlace 2'),
    'png-unknown-critical': (png(before=[chunk(b'ZZZZ', b'x')]),
                             r'PNG has an unknown critical chunk ZZZZ'),
    'png-bad-chunk-type': (png(before=[chunk(b'a1b2', b'x')]), r"invalid type b'a1b2'"),
    'png-text-signature': (b'\x89PNG\n\x1a\n' + PNG[8:], r'PNG with a damaged signature'),
    # Not JPEG or PNG at all.
    'empty': (b'', r"cannot decode 0 bytes of compressed image \(format 'jpeg'\): empty payload"),
    'one-byte': (b'\xff', r'unrecognised data starting with ff'),
    'random': (bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)),
               r'unrecognised data starting with 8b 4a e5 f1'),
    'gif': (pil_bytes(gradient(), 'GIF'), r'looks like GIF'),
    'bmp': (pil_bytes(gradient(), 'BMP'), r'looks like BMP'),
    'webp': (pil_bytes(gradient(), 'WEBP'), r'looks like WebP'),
    'tiff': (pil_bytes(gradient(), 'TIFF'), r'looks like TIFF'),
    'tiff-big-endian': (b'MM\x00*' + bytes(12), r'looks like TIFF'),
    'compressed-depth-payload': (bytes(12) + PNG, r'looks like compressedDepth'),
    'pnm': (b'P6\n64 48\n255\n' + bytes(64 * 48 * 3), r'looks like PNM'),
    # Geometry the model's resize refuses or degrades.
    'png-4000x3': (pil_bytes(np.zeros((3, 4000, 3), np.uint8), 'PNG'),
                   r'image 4000x3: height 3 below min_side=32'),
    'jpeg-3x4000': (rgb_to_jpeg(np.zeros((4000, 3, 3), np.uint8)),
                    r'image 3x4000: width 3 below min_side=32'),
    'png-1x1': (pil_bytes(np.zeros((1, 1, 3), np.uint8), 'PNG'),
                r'image 1x1: height 1 and width 1 below min_side=32'),
    'jpeg-6600x32': (rgb_to_jpeg(np.zeros((32, 6600, 3), np.uint8)),
                     r'image 6600x32 has aspect ratio 206.2, above max_ratio=200'),
}


@pytest.mark.parametrize('name', sorted(COMPRESSED_CASES))
def test_hostile_compressed_payload_is_an_image_error(name):
    data, match = COMPRESSED_CASES[name]
    with pytest.raises(ImageError, match=match):
        compressed_to_rgb(data, 'jpeg', **MODEL)


def test_compressed_depth_by_format_is_refused():
    with pytest.raises(ImageError, match=r'compressedDepth images are not supported \(format'):
        compressed_to_rgb(PNG, '16UC1; compressedDepth png')


def test_aspect_ratio_is_refused_by_default_but_tiny_frames_are_not():
    # Converters check the ratio always and min_side only when asked (bags and tests carry
    # small frames; the node passes MIN_SIDE).
    with pytest.raises(ImageError, match=r'image 4000x3 has aspect ratio 1333.3, above'):
        compressed_to_rgb(pil_bytes(np.zeros((3, 4000, 3), np.uint8), 'PNG'))
    assert compressed_to_rgb(pil_bytes(np.zeros((1, 1, 3), np.uint8), 'PNG')).shape == (1, 1, 3)


def test_png_text_bomb_is_never_inflated():
    # The zTXt case (Pillow: ValueError past MAX_TEXT_CHUNK). Text chunks never reach
    # Pillow, so the valid image inside decodes, without inflating 4 MiB of text.
    for before, after in (([ZTXT_BOMB], []), ([], [ZTXT_BOMB])):
        data = png(before=before, after=after)
        assert len(data) < 8192
        tracemalloc.start()
        try:
            out = compressed_to_rgb(data, 'png', **MODEL)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(out, np.zeros((48, 64, 3), np.uint8))
        assert peak < 1 << 20, peak


RAW = gradient()
RAW_BYTES = RAW.tobytes()

RAW_CASES = {
    '4000x3': ({'data': bytes(4000 * 3 * 3), 'height': 3, 'width': 4000, 'step': 12000},
               r'image 4000x3: height 3 below min_side=32'),
    '3x4000': ({'data': bytes(4000 * 3 * 3), 'height': 4000, 'width': 3, 'step': 9},
               r'image 3x4000: width 3 below min_side=32'),
    '1x1': ({'data': b'abc', 'height': 1, 'width': 1, 'step': 3},
            r'image 1x1: height 1 and width 1 below min_side=32'),
    'ratio': ({'data': bytes(32 * 6600 * 3), 'height': 32, 'width': 6600, 'step': 19800},
              r'aspect ratio 206.2, above max_ratio=200'),
    'too-many-pixels': ({'height': 5000, 'width': 5000, 'step': 15000},
                        r'image 5000x5000 has 25000000 pixels, more than max_pixels=16777216'),
    'huge-height': ({'height': 2**40}, r'image 64x1099511627776 has \d+ pixels, more than'),
    'huge-step': ({'step': 2**62}, r'data has 9216 bytes, fewer than step 4611686018427387904'),
    'negative-step': ({'step': -192}, r'step -192 is smaller than width 64 x 3 bytes per pixel'),
    'negative-height': ({'height': -48}, r'image size must be positive, got height=-48 width=64'),
    'float-step': ({'step': 192.0}, r'step must be an integer, got 192.0'),
    'bool-width': ({'width': True}, r'width must be an integer, got True'),
    'str-height': ({'height': '48'}, r"height must be an integer, got '48'"),
    'data-str': ({'data': 'x' * 9216}, r'data must be a contiguous bytes-like object, got str'),
    'data-none': ({'data': None}, r'data must be a contiguous bytes-like object, got NoneType'),
    'data-strided': ({'data': np.zeros((48, 384), np.uint8)[:, ::2]},
                     r'data must be a contiguous bytes-like object, got ndarray'),
    'data-object-array': ({'data': np.array([object()] * 9216)},
                          r'data must be a contiguous bytes-like object, got ndarray'),
    'data-short': ({'data': RAW_BYTES[:-1]}, r'data has 9215 bytes, fewer than step 192 x '
                   r'height 48 = 9216'),
    'encoding-none': ({'encoding': None}, r'encoding must be a string, got NoneType'),
    'encoding-unknown': ({'encoding': 'yuv422'}, r"unsupported encoding 'yuv422'"),
    'mono16-odd-step': ({'data': bytes(129 * 48), 'encoding': 'mono16', 'step': 129},
                        r"step 129 is not a multiple of 2 bytes, the channel size of encoding "
                        r"'mono16'"),
    'bgr16-odd-step': ({'data': bytes(385 * 48), 'encoding': 'bgr16', 'step': 385},
                       r"step 385 is not a multiple of 2 bytes, the channel size of encoding "
                       r"'bgr16'"),
    'bgr16-step-too-small': ({'data': bytes(384 * 48), 'encoding': 'bgr16', 'step': 380},
                             r'step 380 is smaller than width 64 x 6 bytes per pixel = 384'),
}


@pytest.mark.parametrize('name', sorted(RAW_CASES))
def test_hostile_raw_image_is_an_image_error(name):
    kwargs, match = RAW_CASES[name]
    args = {'data': RAW_BYTES, 'height': 48, 'width': 64, 'step': 192, 'encoding': 'rgb8'}
    args.update(kwargs)
    with pytest.raises(ImageError, match=match):
        raw_to_rgb(**args, **MODEL)


def test_even_16bit_padding_that_is_not_a_pixel_multiple_is_fine():
    # OpenCV/cv_bridge need step % 2 == 0 for 16-bit data, not step % 6 == 0.
    words = (RAW.astype('<u2') * 256 + 0x11).tobytes()
    rows = [words[r * 384:(r + 1) * 384] + b'\x00\x00' for r in range(48)]
    out = raw_to_rgb(b''.join(rows), 48, 64, 386, 'rgb16', **MODEL)
    np.testing.assert_array_equal(out, RAW)


@pytest.mark.parametrize(('args', 'match'), [
    ((0, 64, 100), r'image size must be positive, got height=0 width=64'),
    ((48, 64, 100), r'image 64x48 has 3072 pixels, more than max_pixels=100'),
    ((31, 64, 10**6), r'image 64x31: height 31 below min_side=32'),
    ((64, 31, 10**6), r'image 31x64: width 31 below min_side=32'),
    ((32, 6401, 10**6), r'image 6401x32 has aspect ratio 200.0, above max_ratio=200'),
    ((6401, 32, 10**6), r'image 32x6401 has aspect ratio 200.0, above max_ratio=200'),
    ((48.0, 64, 10**6), r'height must be an integer, got 48.0'),
])
def test_check_geometry_names_the_problem(args, match):
    with pytest.raises(ImageError, match=match):
        check_geometry(*args)


def test_check_geometry_bounds_are_inclusive():
    assert check_geometry(32, 6400, 32 * 6400) == (32, 6400)  # ratio exactly 200, exact budget
    assert check_geometry(np.uint32(48), np.int64(64), 3072) == (48, 64)
    assert type(check_geometry(np.uint32(48), 64, 3072)[0]) is int
    assert check_geometry(1, 1, 1, min_side=1) == (1, 1)


@pytest.mark.parametrize(('kwargs', 'match'), [
    ({'max_pixels': 0}, r'max_pixels must be an integer >= 1, got 0'),
    ({'max_pixels': 1e6}, r'max_pixels must be an integer >= 1, got 1000000.0'),
    ({'min_side': 0}, r'min_side must be an integer >= 1, got 0'),
    ({'max_ratio': 0.5}, r'max_ratio must be a number >= 1, got 0.5'),
    ({'max_ratio': float('nan')}, r'max_ratio must be a number >= 1, got nan'),
])
def test_invalid_limits_are_config_errors(kwargs, match):
    args = {'height': 48, 'width': 64, 'max_pixels': 10**6}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        check_geometry(**args)


def _pillow_rgb(data):
    # What the previous compressed_to_rgb returned: Pillow's decode, converted to RGB.
    with Image.open(io.BytesIO(data)) as image:
        if image.mode.startswith('I'):
            grey = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(image.convert('RGB'))


def _valid_payloads():
    rgb = gradient(61, 83)
    grey = rgb[..., 0]
    exif = Image.Exif()
    exif[0x010F] = 'maker'
    icc = bytes(range(256)) * 4
    return {
        'jpeg-q95': rgb_to_jpeg(rgb, 95),
        'jpeg-q50-444': pil_bytes(rgb, 'JPEG', quality=50, subsampling=0),
        'jpeg-progressive': pil_bytes(rgb, 'JPEG', progressive=True),
        'jpeg-grey': pil_bytes(grey, 'JPEG'),
        'jpeg-restart-exif-icc-comment': pil_bytes(rgb, 'JPEG', exif=exif.tobytes(),
                                                   icc_profile=icc, comment=b'hi',
                                                   restart_marker_rows=1),
        'png-rgb': pil_bytes(rgb, 'PNG'),
        'png-rgba': pil_bytes(np.dstack([rgb, grey]), 'PNG'),
        'png-grey': pil_bytes(grey, 'PNG'),
        'png-grey16': pil_bytes(grey.astype(np.uint16) * 257, 'PNG'),
        'png-palette': _palette_png(rgb),
        'png-1bit': pil_bytes(grey > 128, 'PNG'),
        'png-grey-alpha': pil_bytes(np.dstack([grey, 255 - grey]), 'PNG'),
        'png-rgb16': _rgb16_png(rgb),
        'png-interlaced-with-text': _interlaced_png(rgb),
    }


def _rgb16_png(rgb):
    h, w, _ = rgb.shape
    words = rgb.astype('>u2') * 257 + 3
    raw = b''.join(b'\x00' + words[y].tobytes() for y in range(h))
    return (b'\x89PNG\r\n\x1a\n' + ihdr(w, h, depth=16) + chunk(b'IDAT', zlib.compress(raw))
            + chunk(b'IEND', b''))


def _palette_png(rgb):
    out = io.BytesIO()
    Image.fromarray(rgb).quantize(16).save(out, format='PNG', transparency=0)
    return out.getvalue()


def _interlaced_png(rgb):
    # Pillow cannot write Adam7; build it: 7 passes, filter type 0 rows.
    h, w, _ = rgb.shape
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))
    raw = b''.join(b'\x00' + rgb[y, x0::dx].tobytes()
                   for x0, y0, dx, dy in passes if x0 < w for y in range(y0, h, dy))
    return (b'\x89PNG\r\n\x1a\n' + ihdr(w, h, interlace=1) + chunk(b'tEXt', b'k\x00v')
            + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))


VALID = _valid_payloads()


@pytest.mark.parametrize('name', sorted(VALID))
def test_valid_payloads_decode_to_pillows_pixels(name):
    data = VALID[name]
    out = compressed_to_rgb(data, 'png' if name.startswith('png') else 'jpeg', **MODEL)
    expected = _pillow_rgb(data)
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable
    kind = 'PNG' if name.startswith('png') else 'JPEG'
    assert read_compressed_header(data) == (kind, expected.shape[0], expected.shape[1])


def test_interlaced_png_really_is_the_gradient():
    np.testing.assert_array_equal(compressed_to_rgb(VALID['png-interlaced-with-text']),
                                  gradient(61, 83))


def test_draft_decodes_large_jpegs_at_reduced_scale():
    rgb = gradient(768, 1024)
    data = rgb_to_jpeg(rgb, 95)
    full = compressed_to_rgb(data)
    np.testing.assert_array_equal(compressed_to_rgb(data, draft_pixels=1024 * 768), full)
    small = compressed_to_rgb(data, draft_pixels=100_000)
    assert small.shape == (384, 512, 3)  # 1/2 scale: the smallest with >= 100k pixels
    assert small.shape[0] * small.shape[1] >= 100_000
    with Image.open(io.BytesIO(data)) as image:
        image.draft('RGB', (366, 275))
        np.testing.assert_array_equal(small, np.asarray(image))
    assert compressed_to_rgb(data, draft_pixels=10_000).shape == (96, 128, 3)  # 1/8
    assert np.abs(small.astype(int) - full[::2, ::2]).mean() < 4  # same picture
    assert compressed_to_rgb(PNG, draft_pixels=10).shape == (48, 64, 3)  # JPEG only
    with pytest.raises(ConfigError, match=r'draft_pixels must be None or an integer >= 1, got 0'):
        compressed_to_rgb(data, draft_pixels=0)


def test_pillow_bomb_limit_refuses_before_pillow_warns(monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 3000)  # Pillow warns above 1x, raises above 2x
    with pytest.raises(ImageError, match=r"image 64x48 has 3072 pixels, above Pillow's "
                                         r'decompression bomb limit'):
        compressed_to_rgb(JPEG)


def test_default_max_pixels_is_what_the_qwen3_vl_processor_keeps():
    assert DEFAULT_MAX_PIXELS == 4096 * 4096  # size.longest_edge of Qwen3-VL's processor


BOMB_SCRIPT = textwrap.dedent("""
    import struct, sys, zlib
    from procvlm_ros.core.errors import ImageError
    from procvlm_ros.core.image import compressed_to_rgb

    def chunk(t, d):
        return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))

    z = zlib.compressobj(9)
    row = bytes(7681)
    idat = b''.join(z.compress(row) for _ in range(4320)) + z.flush()
    bomb = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 7680, 4320, 8, 0, 0,
            0, 0)) + chunk(b'IDAT', idat) + chunk(b'IEND', b''))
    def peak_mb():  # VmHWM: this program's peak (ru_maxrss can carry the parent's over exec)
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM')) / 1024
    base = peak_mb()
    try:
        compressed_to_rgb(bomb, 'png')
        sys.exit('bomb accepted')
    except ImageError as e:
        refused = peak_mb() - base
    compressed_to_rgb(bomb, 'png', max_pixels=40_000_000)  # control: the decode it prevents
    print(len(bomb), refused, peak_mb() - base)
""")


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc/self/status')
def test_png_bomb_is_refused_without_allocating():
    # The peak RSS is process-wide, so this runs in a fresh interpreter.
    out = subprocess.run([sys.executable, '-c', BOMB_SCRIPT], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    size, refused_mb, decoded_mb = int(out[0]), float(out[1]), float(out[2])
    assert size < 40_000  # 33 MB of pixels declared in about 32 KB
    assert refused_mb < 5, refused_mb
    assert decoded_mb > 100, decoded_mb  # the control: decoding it really costs > 100 MB
