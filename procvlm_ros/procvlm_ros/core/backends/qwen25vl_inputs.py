"""
Host-side Qwen2.5-VL vision inputs in numpy: window permutation, window ids, rotary positions.

Qwen2.5-VL's vision tower has no learned position table; what depends on the frame's patch grid
is the 2-D rotary position of every patch and the *window attention* layout
(``Qwen2_5_VisionTransformerPretrainedModel.forward`` in transformers 5.x):

- the merged tokens (2x2 patch blocks) are regrouped window by window: windows of
  ``window_size // merge // patch_size`` merged tokens per side, row-major over the grid padded
  up to whole windows, tokens row-major inside each window (``get_vision_window_index``);
- blocks listed in ``fullatt_block_indexes`` attend over the whole frame, the others only inside
  their window;
- after the merger the tokens are put back in grid order (``argsort`` of the permutation).

These functions compute that layout for one frame so the exported graph takes it as inputs,
as the Qwen3-VL graph takes its position-table taps (:mod:`qwen3vl_inputs`). M-RoPE positions of
an images-only prompt are the same as Qwen3-VL's (:func:`qwen3vl_inputs.rope_index`; the tests
check it against ``Qwen2_5_VLModel.get_rope_index``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from procvlm_ros.core.backends.qwen3vl_inputs import merge_order_rows_cols

I64 = npt.NDArray[np.int64]


def window_layout(grid_h: int, grid_w: int, merge: int, window_size: int,
                  patch_size: int) -> tuple[I64, I64]:
    """
    Window order of the merged tokens of one frame.

    :param grid_h: Patch rows of the frame (``image_grid_thw[1]``).
    :param grid_w: Patch columns of the frame.
    :param merge: Spatial merge size (2).
    :param window_size: Vision ``window_size`` in pixels (112 for Qwen2.5-VL).
    :param patch_size: Vision patch side in pixels (14).
    :returns: ``window_index (U,)``: the merged token (grid order) at each window-order
        position, and ``window_of (U,)``: the window of each window-order position, with
        ``U = grid_h * grid_w / merge**2``.
    """
    lh, lw = grid_h // merge, grid_w // merge
    side = max(window_size // merge // patch_size, 1)
    # HF pads by a whole window when the grid is already a multiple; the extra windows are
    # empty and change nothing, so pad to the next multiple only.
    ph, pw = -(-lh // side) * side, -(-lw // side) * side
    padded = np.full((ph, pw), -1, dtype=np.int64)
    padded[:lh, :lw] = np.arange(lh * lw, dtype=np.int64).reshape(lh, lw)
    windows = padded.reshape(ph // side, side, pw // side, side).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, side * side)
    valid = windows >= 0
    window_of = np.broadcast_to(np.arange(windows.shape[0], dtype=np.int64)[:, None],
                                windows.shape)[valid]
    return np.ascontiguousarray(windows[valid]), np.ascontiguousarray(window_of)


def vision_geometry(grid_h: int, grid_w: int, merge: int, window_size: int,
                    patch_size: int) -> tuple[I64, I64, I64, I64]:
    """
    Geometry inputs of the Qwen2.5-VL vision graph for one frame grid.

    :returns: ``rope_pos (P, 2)`` (row, column of every patch, in window order),
        ``window_index (U,)`` (merged token in grid order at each window-order position),
        ``reverse_index (U,)`` (its inverse: window-order position of each grid-order token) and
        ``window_ids (P,)`` (window of every patch in window order), all int64, with
        ``P = grid_h * grid_w`` and ``U = P / merge**2``.
    """
    unit = merge * merge
    window_index, window_of = window_layout(grid_h, grid_w, merge, window_size, patch_size)
    rows, cols = merge_order_rows_cols(grid_h, grid_w, merge)
    patches = (window_index[:, None] * unit + np.arange(unit, dtype=np.int64)).reshape(-1)
    rope_pos = np.stack([rows[patches], cols[patches]], axis=-1)
    reverse = np.argsort(window_index, kind='stable').astype(np.int64)
    return (np.ascontiguousarray(rope_pos), window_index, reverse,
            np.repeat(window_of, unit).astype(np.int64))
