import array
import io

import numpy as np
from PIL import Image, JpegImagePlugin
import pytest

from procvlm_ros.core.errors import ConfigError, ImageError, ProcVlmError
from procvlm_ros.core.image import (
    compressed_to_rgb,
    jpeg_roundtrip,
    qwen_vl_pre_resize,
    raw_to_rgb,
    rgb_to_jpeg,
    rgb_to_png,
    smart_resize,
    SUPPORTED_ENCODINGS,
)

H, W = 2, 3
# Six distinct pixels: a transposition, channel swap or padding slip changes at least one.
RGB = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]],
                [[10, 20, 30], [200, 100, 50], [1, 128, 254]]], dtype=np.uint8)
GREY = np.array([[0, 17, 255], [128, 64, 1]], dtype=np.uint8)
ALPHA = np.full((H, W, 1), 7, dtype=np.uint8)


def _grey_rgb(grey):
    return np.repeat(grey[..., None], 3, axis=2)


def _to16(img8, big):
    # High byte carries the 8-bit value, low byte noise that the conversion must drop.
    words = img8.astype(np.uint16) * 256 + 0x5A
    return words.astype('>u2' if big else '<u2').tobytes()


ENCODED = {
    'rgb8': (RGB.tobytes(), 3, False, RGB),
    'bgr8': (RGB[..., ::-1].tobytes(), 3, False, RGB),
    'rgba8': (np.concatenate([RGB, ALPHA], axis=2).tobytes(), 4, False, RGB),
    'bgra8': (np.concatenate([RGB[..., ::-1], ALPHA], axis=2).tobytes(), 4, False, RGB),
    'mono8': (GREY.tobytes(), 1, False, _grey_rgb(GREY)),
    '8UC1': (GREY.tobytes(), 1, False, _grey_rgb(GREY)),
    'mono16': (_to16(GREY, False), 2, False, _grey_rgb(GREY)),
    '16UC1': (_to16(GREY, True), 2, True, _grey_rgb(GREY)),
    'rgb16': (_to16(RGB, False), 6, False, RGB),
    'bgr16': (_to16(RGB[..., ::-1], True), 6, True, RGB),
}


@pytest.mark.parametrize('encoding', sorted(ENCODED))
def test_raw_encodings_give_rgb(encoding):
    data, pixel_bytes, big, expected = ENCODED[encoding]
    out = raw_to_rgb(data, H, W, W * pixel_bytes, encoding, big)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    assert out.shape == (H, W, 3)
    assert out.flags.c_contiguous
    assert out.flags.owndata
    assert out.flags.writeable


def test_every_supported_encoding_is_tested_or_a_variant():
    tested = {e.lower() for e in ENCODED}
    assert tested <= set(SUPPORTED_ENCODINGS)
    assert set(SUPPORTED_ENCODINGS) - tested <= {'rgba16', 'bgra16'}


def test_encoding_is_case_insensitive():
    np.testing.assert_array_equal(raw_to_rgb(RGB.tobytes(), H, W, W * 3, 'RGB8'), RGB)


@pytest.mark.parametrize('wrap', [bytes, bytearray, memoryview, lambda b: array.array('B', b),
                                  lambda b: np.frombuffer(b, np.uint8)],
                         ids=['bytes', 'bytearray', 'memoryview', 'array', 'ndarray'])
def test_raw_accepts_every_buffer_type(wrap):
    np.testing.assert_array_equal(raw_to_rgb(wrap(RGB.tobytes()), H, W, W * 3, 'rgb8'), RGB)


def test_result_does_not_alias_the_message_buffer():
    data = bytearray(RGB.tobytes())
    out = raw_to_rgb(data, H, W, W * 3, 'rgb8')
    data[:] = bytes(len(data))
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8', 'mono16'])
def test_row_padding_is_skipped(encoding):
    data, pixel_bytes, big, expected = ENCODED[encoding]
    row = W * pixel_bytes
    pad = 5 if encoding.endswith('8') else 6  # 16-bit rows must start on a sample (OpenCV rule)
    step = row + pad
    padded = b''.join(data[r * row:(r + 1) * row] + b'\xee' * pad for r in range(H))
    np.testing.assert_array_equal(raw_to_rgb(padded, H, W, step, encoding, big), expected)


def test_extra_trailing_data_is_ignored():
    np.testing.assert_array_equal(raw_to_rgb(RGB.tobytes() + b'xyz', H, W, W * 3, 'rgb8'), RGB)


@pytest.mark.parametrize(('kwargs', 'match'), [
    ({'encoding': 'yuv422'}, r"unsupported encoding 'yuv422'; supported: rgb8, bgr8"),
    ({'height': 0}, r'size must be positive, got height=0 width=3'),
    ({'width': -1}, r'size must be positive, got height=2 width=-1'),
    ({'step': 8}, r"step 8 is smaller than width 3 x 3 bytes per pixel = 9 for encoding 'rgb8'"),
    ({'data': RGB.tobytes()[:-1]}, r'data has 17 bytes, fewer than step 9 x height 2 = 18'),
    ({'step': 10}, r'data has 18 bytes, fewer than step 10 x height 2 = 20'),
    ({'max_pixels': 5}, r'image 3x2 has 6 pixels, more than max_pixels=5'),
    ({'height': 2.0}, r'height must be an integer, got 2.0'),
    ({'data': list(RGB.tobytes())}, r'data must be a contiguous bytes-like object, got list'),
])
def test_malformed_raw_images_raise_image_error(kwargs, match):
    args = {'data': RGB.tobytes(), 'height': H, 'width': W, 'step': W * 3, 'encoding': 'rgb8'}
    args.update(kwargs)
    with pytest.raises(ImageError, match=match):
        raw_to_rgb(**args)


def test_image_error_is_a_value_error_and_a_package_error():
    assert issubclass(ImageError, ValueError)
    assert issubclass(ImageError, ProcVlmError)


def _smooth(h=24, w=32):
    # A gradient survives JPEG with small errors, unlike noise.
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 4 % 256],
                    axis=2).astype(np.uint8)


@pytest.mark.parametrize('fmt', ['jpeg', 'bgr8; jpeg compressed bgr8', ''])
def test_compressed_jpeg_decodes_to_rgb(fmt):
    img = _smooth()
    out = compressed_to_rgb(rgb_to_jpeg(img, 95), fmt)
    assert out.shape == img.shape
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).max() <= 12


def test_compressed_png_is_lossless_for_every_buffer_type():
    img = _smooth()
    png = rgb_to_png(img)
    for data in (png, bytearray(png), memoryview(png), array.array('B', png),
                 np.frombuffer(png, np.uint8)):
        np.testing.assert_array_equal(compressed_to_rgb(data, 'png'), img)


@pytest.mark.parametrize(('array_in', 'expected'), [
    (GREY, _grey_rgb(GREY)),
    (np.concatenate([RGB, ALPHA], axis=2), RGB),
    (GREY.astype(np.uint16) * 256 + 3, _grey_rgb(GREY)),
], ids=['grey', 'rgba', 'grey16'])
def test_compressed_png_modes_become_rgb(array_in, expected):
    buf = io.BytesIO()
    Image.fromarray(array_in).save(buf, format='PNG')
    np.testing.assert_array_equal(compressed_to_rgb(buf.getvalue(), 'png'), expected)


@pytest.mark.parametrize(('data', 'match'), [
    (b'', r'cannot decode 0 bytes of compressed image'),
    (b'not an image at all', r'cannot decode 19 bytes'),
    (b'GIF89a' + bytes(40), r'cannot decode'),  # GIF is not a CompressedImage format
])
def test_undecodable_compressed_data_raises(data, match):
    with pytest.raises(ImageError, match=match):
        compressed_to_rgb(data, 'jpeg')


@pytest.mark.parametrize(('cut', 'match'), [
    (lambda n: n // 2, r"cannot decode \d+ bytes of compressed image \(format 'jpeg'\)"),
    (lambda n: n - 60, r"corrupt JPEG data \(\d+ bytes, format 'jpeg'\): image file is truncated"),
], ids=['in-header', 'in-scan'])
def test_truncated_jpeg_raises(cut, match):
    jpeg = rgb_to_jpeg(_smooth(), 95)
    with pytest.raises(ImageError, match=match):
        compressed_to_rgb(jpeg[:cut(len(jpeg))], 'jpeg')


def test_compressed_depth_is_refused():
    with pytest.raises(ImageError, match='compressedDepth images are not supported'):
        compressed_to_rgb(rgb_to_png(_smooth()), '16UC1; compressedDepth png')


def test_compressed_size_guard_runs_before_decoding():
    with pytest.raises(ImageError, match=r'image 32x24 has 768 pixels, more than max_pixels=100'):
        compressed_to_rgb(rgb_to_png(_smooth()), 'png', max_pixels=100)


def test_pillow_decompression_bomb_limit_is_respected(monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # error above 2x this: 768 > 200
    with pytest.raises(ImageError, match='decompression bomb'):
        compressed_to_rgb(rgb_to_png(_smooth()), 'png')


@pytest.mark.parametrize('bad', [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                                 np.zeros((4, 4, 4), np.uint8), [[1, 2, 3]]])
def test_encoders_reject_non_rgb_arrays(bad):
    with pytest.raises(ImageError, match=r'expected an \(H, W, 3\) uint8 RGB array'):
        rgb_to_png(bad)
    with pytest.raises(ImageError, match=r'expected an \(H, W, 3\) uint8 RGB array'):
        jpeg_roundtrip(bad)


def test_jpeg_quality_is_validated():
    with pytest.raises(ConfigError, match=r'JPEG quality must be in \[0, 100\], got 101'):
        rgb_to_jpeg(_smooth(), 101)


@pytest.mark.parametrize('shape', [(48, 64, 3), (37, 53, 3)])
def test_jpeg_roundtrip_equals_the_official_file_roundtrip(tmp_path, shape):
    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / 'frame_000000.jpg'
    Image.fromarray(frame).save(path, quality=95)  # evqa/inference.py extract_frames_moviepy
    with Image.open(path) as reopened:
        official = np.asarray(reopened.convert('RGB'))
        assert JpegImagePlugin.get_sampling(reopened) == 2  # 4:2:0, Pillow's default
    assert rgb_to_jpeg(frame, 95) == path.read_bytes()
    out = jpeg_roundtrip(frame)
    np.testing.assert_array_equal(out, official)
    assert out.flags.c_contiguous
    assert out.dtype == np.uint8
    assert not np.array_equal(out, frame)  # it really is lossy


# procvlm-reference.md section 1.6, measured table, first (qwen-vl-utils) resize step:
# (source w, h) -> vLLM path (patch 16), HF path (patch 14).
PRE_RESIZE_TABLE = [
    ((160, 120), (160, 128), (168, 112)),
    ((224, 224), (224, 224), (224, 224)),
    ((320, 240), (320, 256), (308, 252)),
    ((640, 480), (640, 480), (644, 476)),
    ((848, 480), (832, 480), (840, 476)),
    ((1280, 720), (1280, 704), (1288, 728)),
    ((1920, 1080), (1920, 1088), (1932, 1092)),
]


@pytest.mark.parametrize(('source', 'vllm', 'hf'), PRE_RESIZE_TABLE,
                         ids=[f'{w}x{h}' for (w, h), _, _ in PRE_RESIZE_TABLE])
def test_pre_resize_matches_the_measured_table(source, vllm, hf):
    image = Image.new('RGB', source, (90, 120, 150))
    assert qwen_vl_pre_resize(image, patch_size=16).size == vllm
    assert qwen_vl_pre_resize(image, patch_size=14).size == hf
    assert smart_resize(source[1], source[0], 32) == (vllm[1], vllm[0])
    assert smart_resize(source[1], source[0], 28) == (hf[1], hf[0])


def test_pre_resize_uses_pillows_default_filter():
    frame = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image = Image.fromarray(frame)
    out = qwen_vl_pre_resize(image, patch_size=14)
    expected = image.resize((168, 112), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(qwen_vl_pre_resize(frame, 14)), np.asarray(out))


def test_smart_resize_rounds_halves_to_even_and_respects_bounds():
    assert smart_resize(80, 848, 32) == (64, 832)  # 2.5 -> 2 and 26.5 -> 26 (banker's)
    assert smart_resize(10, 10, 28) == (56, 56)  # below min_pixels 3136: ceil after upscaling
    h, w = smart_resize(5000, 5000, 28)  # above max_pixels: floor after downscaling
    assert h * w <= 16384 * 28 * 28
    assert (h % 28, w % 28) == (0, 0)
    with pytest.raises(ImageError, match='aspect ratio of 201x1 exceeds 200'):
        smart_resize(1, 201, 28)
    with pytest.raises(ConfigError, match='max_pixels 10 is smaller than min_pixels 20'):
        smart_resize(100, 100, 28, min_pixels=20, max_pixels=10)


def test_pre_resize_composites_rgba_on_white_like_qwen_vl_utils():
    rgba = np.zeros((56, 56, 4), np.uint8)
    rgba[:, :28] = (255, 0, 0, 255)  # opaque red left, transparent black right
    out = np.asarray(qwen_vl_pre_resize(Image.fromarray(rgba, 'RGBA'), patch_size=14))
    assert out.shape == (56, 56, 3)
    np.testing.assert_array_equal(out[:, :20], np.broadcast_to([255, 0, 0], (56, 20, 3)))
    np.testing.assert_array_equal(out[:, 36:], np.full((56, 20, 3), 255))


def test_patch_size_zero_converts_but_keeps_the_size():
    grey = Image.new('L', (37, 23), 99)
    out = qwen_vl_pre_resize(grey, patch_size=0)
    assert out.mode == 'RGB'
    assert out.size == (37, 23)
    assert out.getpixel((0, 0)) == (99, 99, 99)
