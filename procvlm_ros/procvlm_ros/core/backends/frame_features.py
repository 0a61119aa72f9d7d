"""
Per-frame vision features of a window: cache lookup, preprocessing and encoding of new frames.

Keyed frames are cached under (frame key, pixel CRC32) in the :class:`VisionCache`; a frame
found there is neither preprocessed nor encoded. New frames are preprocessed one by one with
the exported image processor (identical to processing the window at once), grouped by patch
grid and encoded in batches of at most ``max_frames`` frames; their features are copied into
their bank slots. Frames without keys are encoded every time and forgotten afterwards.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
import time
from typing import Any
import zlib

import numpy as np
import numpy.typing as npt
from PIL import Image

from procvlm_ros.core.backends.graph_runtime import LoadedExport
from procvlm_ros.core.backends.vision_cache import CacheEntry
from procvlm_ros.core.errors import BackendError

Pending = dict[Hashable, tuple[CacheEntry, npt.NDArray[Any]]]


def _pixel_key(image: Image.Image) -> tuple[tuple[int, int], str, int]:
    return image.size, image.mode, zlib.crc32(image.tobytes())


def frame_features(s: LoadedExport, images: list[Image.Image],
                   keys: Sequence[Any] | None) -> tuple[list[CacheEntry], float, int]:
    """
    Bank entry of every frame of a window, encoding only frames not in the cache.

    :returns: ``(entries, seconds spent encoding, frames encoded)``.
    """
    entries: list[CacheEntry] = []
    pending: Pending = {}
    temporary: list[Hashable] = []
    pinned: set[int] = set()
    try:
        for i, image in enumerate(images):
            # Keyed frames are cached under key + pixel CRC; keyless ones for this call only.
            key: Hashable = ((keys[i], _pixel_key(image)) if keys is not None
                             else ('uncached', i, id(image)))
            if keys is None:
                temporary.append(key)
            entry = s.cache.get(key) or _reserve(s, key, image, pinned, pending)
            pinned.add(entry.slot)
            entries.append(entry)
        t0 = time.perf_counter()
        _encode(s, list(pending.values()))
        vision_s = time.perf_counter() - t0
    except BaseException:
        for key in pending:
            s.cache.discard(key)  # never leave a slot claiming features it does not hold
        raise
    finally:
        for key in temporary:
            s.cache.discard(key)
    s.cache.count(len(images) - len(pending), len(pending))
    return entries, vision_s, len(pending)


def _reserve(s: LoadedExport, key: Hashable, image: Image.Image, pinned: set[int],
             pending: Pending) -> CacheEntry:
    out = s.processor.image_processor(images=[image], return_tensors='np')
    t, h, w = (int(v) for v in np.asarray(out['image_grid_thw'])[0])
    tokens = t * h * w // (s.dims.merge * s.dims.merge)
    if tokens > s.dims.tokens_per_frame:
        raise BackendError(
            f'a {image.width}x{image.height} frame becomes {tokens} visual tokens (grid '
            f'{h}x{w}) but export {s.manifest.export_id} allows {s.dims.tokens_per_frame} '
            'per frame (--image-size); re-export with a larger --image-size or lower '
            'max_pixels')
    entry = s.cache.put(key, (t, h, w), tokens, pinned)
    pending[key] = (entry, np.asarray(out['pixel_values']))
    return entry


def _encode(s: LoadedExport, frames: list[tuple[CacheEntry, npt.NDArray[Any]]]) -> None:
    """Run the vision graph on same-grid groups of at most ``max_frames`` frames."""
    groups: dict[tuple[int, int, int], list[tuple[CacheEntry, npt.NDArray[Any]]]] = {}
    for entry, pixels in frames:
        groups.setdefault(entry.grid, []).append((entry, pixels))
    for grid, members in groups.items():
        for start in range(0, len(members), s.dims.max_frames):
            _encode_group(s, grid, members[start:start + s.dims.max_frames])


def _encode_group(s: LoadedExport, grid: tuple[int, int, int],
                  members: list[tuple[CacheEntry, npt.NDArray[Any]]]) -> None:
    a, b = s.runtime.arrays, s.buf
    _, h, w = grid
    pixels = np.stack([p for _, p in members]).astype(b.pixels.host.dtype, copy=False)
    staged = [(b.pixels, pixels)] + [(b.geometry[name], values) for name, values in
                                     s.family.vision_arrays(h, w).items()]
    for buffer, values in staged:
        buffer.host[:values.size] = values.reshape(-1)
        a.push(buffer, values.size)
    inputs, outputs = b.vision_bindings(len(members), h * w)
    s.runtime.run_vision(inputs, outputs)
    bank, ds_bank = b.bank_views()
    embeds, deep = outputs['image_embeds'], outputs.get('deepstack')
    tokens = embeds.shape[1]
    for f, (entry, _) in enumerate(members):
        first = s.cache.first_row(entry.slot)
        a.copy(bank[first:first + tokens], embeds[f])
        if deep is not None:
            a.copy(ds_bank[:, first:first + tokens], deep[:, f])
