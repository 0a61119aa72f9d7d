"""Seeded fuzzing of compressed_to_rgb: nothing but ImageError may leave it."""

from collections import Counter
import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.errors import ImageError
from procvlm_ros.core.image import compressed_to_rgb, MAX_ASPECT_RATIO

MAX_PIXELS = 1 << 18  # bounds the cost of a mutated header that declares a large frame
MIN_SIDE = 8


def _save(array, fmt, **kw):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kw)
    return out.getvalue()


def _seeds():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:56]
    rgb = (np.stack([x * 4, y * 6, x + y], axis=2) + rng.integers(0, 24, (40, 56, 3))
           ).astype(np.uint8)
    grey = rgb[..., 1]
    exif = Image.Exif()
    exif[0x010F] = 'fuzz'
    return [
        _save(rgb, 'JPEG', quality=95),
        _save(rgb, 'JPEG', quality=40, subsampling=0, progressive=True),
        _save(grey, 'JPEG', restart_marker_blocks=2, exif=exif.tobytes(), comment=b'c'),
        _save(rgb, 'PNG'),
        _save(np.dstack([rgb, grey]), 'PNG'),
        _save(grey.astype(np.uint16) * 200, 'PNG'),
        _save(grey > 99, 'PNG'),
        _palette(rgb),
        _save(rgb, 'GIF'),
        _save(rgb, 'BMP'),
        _save(rgb, 'TIFF'),
        _save(rgb, 'WEBP'),
    ]


def _palette(rgb):
    out = io.BytesIO()
    Image.fromarray(rgb).quantize(8).save(out, format='PNG', transparency=1)
    return out.getvalue()


SEEDS = _seeds()


def _segments(data):
    """(start, end) of PNG chunks or JPEG marker segments up to the scan; [] for other data."""
    spans = []
    if data.startswith(b'\x89PNG'):
        pos = 8
        while pos + 12 <= len(data):
            end = pos + 12 + int.from_bytes(data[pos:pos + 4], 'big')
            if end > len(data):
                break
            spans.append((pos, end))
            pos = end
    elif data.startswith(b'\xff\xd8'):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
            end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], 'big')
            spans.append((pos, end))
            pos = end
    return spans


def _fix_png_crcs(data):
    out = bytearray(data)
    for start, end in _segments(data):
        out[end - 4:end] = struct.pack('>I', zlib.crc32(data[start + 4:end - 4]))
    return bytes(out)


def _mutate(rng, data):
    data = bytearray(data)
    n = len(data)
    kind = int(rng.integers(0, 9)) if n else 8
    spans = _segments(bytes(data))
    if kind == 0:  # bit flips
        for i in rng.integers(0, n, int(rng.integers(1, 9))):
            data[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # bytes set to edge values
        for i in rng.integers(0, n, int(rng.integers(1, 5))):
            data[i] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.integers(0, 256)]))
    elif kind == 2:  # truncation
        del data[int(rng.integers(0, n)):]
    elif kind == 3:  # random bytes inserted
        i = int(rng.integers(0, n + 1))
        data[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 4:  # a range deleted
        i = int(rng.integers(0, n))
        del data[i:i + int(rng.integers(1, 256))]
    elif kind == 5 and spans:  # a chunk/segment from any seed spliced in at a boundary
        donor = SEEDS[int(rng.integers(0, len(SEEDS)))]
        donor_spans = _segments(donor) or [(0, min(len(donor), 64))]
        a, b = donor_spans[int(rng.integers(0, len(donor_spans)))]
        at = spans[int(rng.integers(0, len(spans)))][int(rng.integers(0, 2))]
        data[at:at] = donor[a:b]
    elif kind == 6 and spans:  # a segment duplicated or dropped
        a, b = spans[int(rng.integers(0, len(spans)))]
        segment = bytes(data[a:b])
        if rng.random() < 0.5:
            del data[a:b]
        else:
            data[b:b] = segment
    elif kind == 7 and spans:  # a length field or a size set to an edge value
        a, _ = spans[int(rng.integers(0, len(spans)))]
        value = int(rng.choice([0, 1, 2, 8, 13, 255, 0x7FFF, 0xFFFF, rng.integers(0, 1 << 16)]))
        if data[:4] == b'\x89PNG':
            at = a + int(rng.choice([0, 8, 12]))  # chunk length, IHDR width, IHDR height
            data[at:at + 4] = struct.pack('>I', value if rng.random() < 0.7 else value << 15)
        else:
            at = a + int(rng.choice([2, 5, 7]))  # marker length, SOF height, SOF width
            data[at:at + 2] = struct.pack('>H', value)
    else:  # random bytes of random length behind a magic number
        magic = [b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'', b'II*\x00'][int(rng.integers(0, 4))]
        size = int(rng.integers(0, 2048))
        return magic + rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if data[:4] == b'\x89PNG' and rng.random() < 0.6:
        return _fix_png_crcs(bytes(data))  # let most PNG mutants reach the decoder
    return bytes(data)


def _payloads(seed, count):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        data = SEEDS[int(rng.integers(0, len(SEEDS)))]
        for _ in range(int(rng.choice([1, 1, 1, 2, 3]))):  # mostly one mutation, some stacked
            data = _mutate(rng, data)
        yield data


def _fuzz(seed, count):
    outcomes = Counter()
    escaped = []
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a warning would be a way out too
        for i, data in enumerate(_payloads(seed, count)):
            try:
                rgb = compressed_to_rgb(data, 'jpeg', max_pixels=MAX_PIXELS, min_side=MIN_SIDE)
            except ImageError as e:
                outcomes['corrupt' if str(e).startswith('corrupt') else 'refused'] += 1
                continue
            except BaseException as e:  # anything else is the bug this test looks for
                escaped.append((seed, i, type(e).__name__, str(e)[:120]))
                continue
            h, w = rgb.shape[:2]
            assert rgb.dtype == np.uint8 and rgb.shape == (h, w, 3), (seed, i)
            assert h * w <= MAX_PIXELS and min(h, w) >= MIN_SIDE, (seed, i, rgb.shape)
            assert max(h, w) <= MAX_ASPECT_RATIO * min(h, w), (seed, i, rgb.shape)
            outcomes['decoded'] += 1
    assert not escaped, escaped[:10]
    return outcomes


def test_fuzz_quick():
    outcomes = _fuzz(1, 400)
    # The mutants reach every stage: header refusals, decoder failures and successful decodes.
    assert min(outcomes['refused'], outcomes['corrupt'], outcomes['decoded']) >= 10, outcomes


def test_quick_corpus_breaks_a_bare_pillow_decode():
    # The same 400 payloads through Pillow alone (the previous decoder, which caught OSError):
    # other exception types escape, so the corpus above is hostile enough to matter.
    escaped = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for data in _payloads(1, 400):
            try:
                with Image.open(io.BytesIO(data), formats=('JPEG', 'PNG', 'TIFF')) as image:
                    if image.width * image.height <= MAX_PIXELS:
                        image.load()
            except OSError:
                pass
            except Exception as e:  # noqa: BLE001
                escaped[type(e).__name__] += 1
    assert escaped['ValueError'] and escaped['SyntaxError'], escaped


@pytest.mark.slow
@pytest.mark.parametrize('seed', range(2, 6))
def test_fuzz_many(seed):
    outcomes = _fuzz(seed, 20_000)
    assert min(outcomes['refused'], outcomes['corrupt'], outcomes['decoded']) >= 100, outcomes
