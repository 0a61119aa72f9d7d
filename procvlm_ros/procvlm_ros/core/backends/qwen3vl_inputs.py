"""
Host-side Qwen3-VL inputs in numpy: vision geometry, M-RoPE positions and the token layout.

These reproduce, without torch, what transformers 5.x computes inside
``Qwen3VLVisionModel.forward`` (position-table interpolation, vision rotary positions) and
``Qwen3VLModel.get_rope_index`` (3-axis M-RoPE positions and ``rope_delta``), so exported graphs
can take them as inputs (``qwen3vl-export.md`` sections 2.1 and 3.1). Each function is checked
against its transformers counterpart in the tests, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
import re

import numpy as np
import numpy.typing as npt

from procvlm_ros.core.errors import BackendError

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


def merge_order_rows_cols(grid_h: int, grid_w: int, merge: int) -> tuple[I64, I64]:
    """
    Row and column of every patch, in the processor's merge-block order.

    :param grid_h: Patch rows of the frame.
    :param grid_w: Patch columns of the frame.
    :param merge: Spatial merge size (2 for Qwen3-VL).
    :returns: ``(rows, cols)``, each ``(grid_h * grid_w,)`` int64.
    """
    within = np.arange(grid_h * grid_w, dtype=np.int64)
    blocks_w = grid_w // merge
    in_col = within % merge
    in_row = (within // merge) % merge
    block_col = (within // (merge * merge)) % blocks_w
    block_row = within // (merge * merge * blocks_w)
    return block_row * merge + in_row, block_col * merge + in_col


def _axis_taps(index: I64, size: int, side: int) -> tuple[I64, F32]:
    """Bilinear, align-corners taps into a ``side``-long table (float32 like torch)."""
    idx = index.astype(np.float32)
    src = idx * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2, dtype=np.int64)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    distance = np.abs((src[:, None] - floor[:, None]) - offsets.astype(np.float32))
    weights = np.maximum(np.float32(1.0) - distance, np.float32(0.0)).astype(np.float32)
    return taps, weights


def vision_geometry(grid_h: int, grid_w: int, num_grid_per_side: int,
                    merge: int) -> tuple[I64, F32, I64]:
    """
    Geometry inputs of the vision graph for one frame grid.

    :param grid_h: Patch rows of the frame (``image_grid_thw[1]``).
    :param grid_w: Patch columns of the frame (``image_grid_thw[2]``).
    :param num_grid_per_side: Side of the learned square position table (48 for Qwen3-VL).
    :param merge: Spatial merge size.
    :returns: ``interp_indices (P, 4)`` int64, ``interp_weights (P, 4)`` float32 and
        ``rope_pos (P, 2)`` int64 with ``P = grid_h * grid_w``.
    """
    rows, cols = merge_order_rows_cols(grid_h, grid_w, merge)
    h_taps, h_weights = _axis_taps(rows, grid_h, num_grid_per_side)
    w_taps, w_weights = _axis_taps(cols, grid_w, num_grid_per_side)
    indices = (h_taps[:, :, None] * num_grid_per_side + w_taps[:, None, :]).reshape(-1, 4)
    weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return indices, weights.astype(np.float32), np.stack([rows, cols], axis=-1)


def expand_image_placeholders(text: str, image_token: str, counts: Sequence[int]) -> str:
    """
    Replace the i-th ``image_token`` by ``counts[i]`` copies, as the processor does.

    :raises BackendError: If the number of placeholders differs from ``len(counts)``.
    """
    parts = re.split(re.escape(image_token), text)
    if len(parts) - 1 != len(counts):
        raise BackendError(f'the rendered prompt has {len(parts) - 1} image placeholders '
                           f'for {len(counts)} images; the chat template does not match')
    out = [parts[0]]
    for count, part in zip(counts, parts[1:]):
        out.append(image_token * int(count))
        out.append(part)
    return ''.join(out)


def _runs(mask: npt.NDArray[np.bool_]) -> list[tuple[bool, int, int]]:
    """Consecutive runs of equal values as ``(value, start, end)``."""
    if mask.size == 0:
        return []
    edges = np.flatnonzero(mask[1:] != mask[:-1]) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [mask.size]])
    return [(bool(mask[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def rope_index(input_ids: Sequence[int] | I64, image_token_id: int,
               grids: Sequence[tuple[int, int, int]], merge: int) -> tuple[I64, int]:
    """
    M-RoPE positions of a prompt (``Qwen3VLModel.get_rope_index`` for batch 1, images only).

    :param input_ids: Prompt token ids (image placeholders already expanded).
    :param image_token_id: Id of ``<|image_pad|>``.
    :param grids: ``(t, h, w)`` patch grid of each image, in prompt order.
    :param merge: Spatial merge size.
    :returns: ``positions (3, L)`` int64 and ``rope_delta`` (decode position of the token at
        index ``i`` is ``i + rope_delta`` on all three axes).
    :raises BackendError: If the image token runs do not match ``grids``.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    chunks: list[I64] = []
    pos = 0
    grid_iter = iter(grids)
    for is_image, start, end in _runs(ids == image_token_id):
        if not is_image:
            chunks.append(np.broadcast_to(np.arange(end - start, dtype=np.int64) + pos,
                                          (3, end - start)))
            pos += end - start
            continue
        t, h, w = next(grid_iter, (0, 0, 0))
        lh, lw = h // merge, w // merge
        if t * lh * lw != end - start:
            raise BackendError(f'image token run of {end - start} at {start} does not match '
                               f'grid {(t, h, w)} (expects {t * lh * lw})')
        tt, hh, ww = np.meshgrid(np.arange(t, dtype=np.int64), np.arange(lh, dtype=np.int64),
                                 np.arange(lw, dtype=np.int64), indexing='ij')
        chunks.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos)
        pos += max(h, w) // merge
    if next(grid_iter, None) is not None:
        raise BackendError('more image grids than image token runs in the prompt')
    positions = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
    delta = int(positions.max()) + 1 - ids.size if ids.size else 0
    return np.ascontiguousarray(positions), delta


def visual_index(input_ids: I64, image_token_id: int, frame_rows: Sequence[int],
                 tokens_per_frame: Sequence[int]) -> I64:
    """
    Row of the feature bank each prompt position reads (0 = text, bank row 0 is zeros).

    :param input_ids: Prompt token ids ``(L,)``.
    :param image_token_id: Id of ``<|image_pad|>``.
    :param frame_rows: First bank row of each image, in prompt order.
    :param tokens_per_frame: Visual tokens of each image.
    :returns: ``(L,)`` int64.
    """
    index = np.zeros(input_ids.shape, dtype=np.int64)
    positions = np.flatnonzero(input_ids == image_token_id)
    rows = [np.arange(r, r + n, dtype=np.int64) for r, n in zip(frame_rows, tokens_per_frame)]
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if flat.size != positions.size:
        raise BackendError(f'{positions.size} image tokens in the prompt but {flat.size} '
                           'visual features')
    index[positions] = flat
    return index
