"""
What the exported runtime does differently per model family: the vision graph's host inputs.

Everything else of :mod:`exported` is one code path. The families differ in

- the inputs of the vision graph that depend on the frame's patch grid (Qwen3-VL: the
  position-table taps and rotary positions; Qwen2.5-VL: rotary positions and the window
  attention layout), computed here on the host;
- whether the graphs carry deepstack features (``model.num_deepstack`` of the manifest; 0 for
  Qwen2.5-VL, whose vision graph returns ``image_embeds`` only and whose decoder has no
  ``deepstack`` input).

M-RoPE positions of images-only prompts are the same for both families
(:func:`qwen3vl_inputs.rope_index`). The exporter names the vision inputs from
:data:`VISION_INPUTS`, so graphs, runtimes and TensorRT profiles agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from procvlm_ros.core.backends import qwen3vl_inputs as qin
from procvlm_ros.core.backends import qwen25vl_inputs as q25
from procvlm_ros.core.errors import BackendUnavailableError


@dataclass(frozen=True)
class VisionInput:
    """
    One grid-dependent input of a vision graph.

    :param name: Graph input name.
    :param dtype: ``int64`` or ``float32``.
    :param width: Second axis (0: the input is 1-D).
    :param per_token: One row per merged token instead of one per patch.
    """

    name: str
    dtype: str
    width: int = 0
    per_token: bool = False

    def shape(self, patches: int, merge: int) -> tuple[int, ...]:
        """Shape for a frame of ``patches`` patches."""
        rows = patches // (merge * merge) if self.per_token else patches
        return (rows, self.width) if self.width else (rows,)


VISION_INPUTS: dict[str, tuple[VisionInput, ...]] = {
    'qwen3_vl': (VisionInput('interp_indices', 'int64', 4),
                 VisionInput('interp_weights', 'float32', 4),
                 VisionInput('rope_pos', 'int64', 2)),
    'qwen2_5_vl': (VisionInput('rope_pos', 'int64', 2),
                   VisionInput('window_index', 'int64', per_token=True),
                   VisionInput('reverse_index', 'int64', per_token=True),
                   VisionInput('window_ids', 'int64')),
}


@dataclass(frozen=True)
class FamilyInputs:
    """
    Host-side inputs of one export's family.

    :param family: Family name (``model.family`` of the manifest).
    :param vision_inputs: Grid-dependent vision-graph inputs (``pixel_values`` comes first).
    :param geometry: ``(grid_h, grid_w) -> arrays`` in the order of ``vision_inputs``.
    :param rope_index: M-RoPE positions of a prompt (:func:`qwen3vl_inputs.rope_index`).
    """

    family: str
    vision_inputs: tuple[VisionInput, ...]
    geometry: Callable[[int, int], tuple[npt.NDArray[Any], ...]]
    rope_index: Callable[..., tuple[npt.NDArray[np.int64], int]] = qin.rope_index

    def vision_arrays(self, grid_h: int, grid_w: int) -> dict[str, npt.NDArray[Any]]:
        """Name -> array of every grid-dependent vision input for one frame grid."""
        return {spec.name: values for spec, values in
                zip(self.vision_inputs, self.geometry(grid_h, grid_w))}


def family_inputs(family: str, model: dict[str, Any]) -> FamilyInputs:
    """
    The host inputs of ``family`` with the sizes of a manifest's ``model`` section.

    :raises BackendUnavailableError: For a family the exported backends do not serve.
    """
    merge = int(model['spatial_merge_size'])
    if family == 'qwen3_vl':
        side = int(model['num_grid_per_side'])
        return FamilyInputs(family, VISION_INPUTS[family],
                            lambda h, w: qin.vision_geometry(h, w, side, merge))
    if family == 'qwen2_5_vl':
        window, patch = int(model['window_size']), int(model['patch_size'])
        return FamilyInputs(family, VISION_INPUTS[family],
                            lambda h, w: q25.vision_geometry(h, w, merge, window, patch))
    raise BackendUnavailableError(
        f'the exported backends serve the model families {", ".join(VISION_INPUTS)}, not '
        f'{family!r}; serve it with the transformers backend')
