"""
The runtime interface of the exported backends and the buffers they own.

A :class:`GraphRuntime` (ONNX Runtime or TensorRT) only runs the two exported graphs on named
tensors. :class:`Buffers` allocates every one of those tensors once, at load, with the
capacities of the manifest's limits:

- the KV cache is one flat buffer of ``max_context`` slots; a request views it as
  ``[L, 2, 1, kv, C, hd]`` for its capacity ``C`` (contiguous, so it binds by pointer);
- the feature bank holds ``cache_frames`` frames of ``max_tokens_per_frame`` rows each after a
  zero row; the decoder gathers visual rows from it by index;
- the per-call inputs (token ids, bank rows, positions, past length, pixels, the family's
  grid-dependent vision inputs) are staged pairs of host and device arrays of their largest
  size;
- deepstack tensors (feature bank, vision output, decoder input) exist only for families that
  have them (``Dims.deepstack > 0``, Qwen3-VL).

:func:`decoder_bindings` returns the views for one (new tokens, cache slots, head positions)
shape; the same shape gives the same pointers, so runtimes keep their bindings between passes.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
import math
from typing import Any

from procvlm_ros.core.backends.device_arrays import HostArrays, Staged, TorchCudaArrays
from procvlm_ros.core.backends.family_inputs import FamilyInputs, VisionInput
from procvlm_ros.core.backends.greedy import GreedySettings
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.core.backends.vision_cache import VisionCache

Arrays = HostArrays | TorchCudaArrays
_DTYPES = {'fp32': 'float32', 'fp16': 'float16'}


class GraphRuntime(abc.ABC):
    """Runs the vision and decoder graphs on tensors the backend owns."""

    arrays: Arrays

    @abc.abstractmethod
    def run_vision(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Run the vision graph; outputs are written into the given buffers."""

    @abc.abstractmethod
    def run_decoder(self, inputs: dict[str, Any], outputs: dict[str, Any],
                    phase: tuple[int, int, int]) -> None:
        """
        Run the decoder; ``phase`` = (new tokens, cache slots, head positions) identifies
        reusable bindings.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release sessions/engines."""


@dataclass(frozen=True)
class Dims:
    """Sizes from the manifest that the buffers and bindings need."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    deepstack: int
    vocab: int
    patch_dim: int
    merge: int
    grid_side: int
    max_context: int
    chunk: int
    max_frames: int
    tokens_per_frame: int
    cache_frames: int
    dtype: str
    # Format 2: the decoder returns the argmax (and logits) of the ``logit_index`` positions,
    # at most ``max_verify`` of them; format 1: of the last position only (max_verify 1).
    per_position: bool = False
    max_verify: int = 1

    @classmethod
    def from_manifest(cls, m: ExportManifest) -> Dims:
        md, lim = m.model, m.limits
        return cls(int(md['num_layers']), int(md['num_kv_heads']), int(md['head_dim']),
                   int(md['hidden_size']), int(md['num_deepstack']), int(md['vocab_size']),
                   int(md['patch_dim']), int(md['spatial_merge_size']),
                   int(md.get('num_grid_per_side', 0)), int(lim['max_context']),
                   int(lim['prefill_chunk']), int(lim['max_frames']),
                   int(lim['max_tokens_per_frame']), int(lim['cache_frames']),
                   _DTYPES[m.dtype], m.verifies_drafts,
                   int(lim.get('max_verify_tokens', 1)) if m.verifies_drafts else 1)


class Buffers:
    """
    Every tensor of both graphs, allocated once.

    :param a: Host or CUDA arrays.
    :param d: Sizes.
    :param bank_rows: Rows of the feature bank (zero row included).
    :param vision_inputs: The family's grid-dependent vision-graph inputs.
    """

    def __init__(self, a: Arrays, d: Dims, bank_rows: int,
                 vision_inputs: tuple[VisionInput, ...]) -> None:
        self.arrays, self.dims, self.bank_rows = a, d, bank_rows
        self.vision_inputs = vision_inputs
        kv_row = d.layers * 2 * d.kv_heads * d.head_dim
        self.kv = a.zeros(kv_row * d.max_context, d.dtype)
        self.new_kv = a.zeros(kv_row * d.chunk, d.dtype)
        self.bank = a.zeros(bank_rows * d.hidden, d.dtype)  # row 0 stays zero
        self.ds_bank = a.zeros(d.deepstack * bank_rows * d.hidden, d.dtype)
        self.logits = a.zeros(d.max_verify * d.vocab, 'float32')
        self.next = a.zeros(d.max_verify, 'int64')
        self.heads: Staged = a.staged(d.max_verify, 'int64')
        self.ids: Staged = a.staged(d.chunk, 'int64')
        self.vis: Staged = a.staged(d.chunk, 'int64')
        self.pos: Staged = a.staged(3 * d.chunk, 'int64')
        self.past: Staged = a.staged(1, 'int64')
        patches = d.merge * d.merge * d.tokens_per_frame
        self.pixels: Staged = a.staged(d.max_frames * patches * d.patch_dim, d.dtype)
        self.geometry: dict[str, Staged] = {
            v.name: a.staged(math.prod(v.shape(patches, d.merge)), v.dtype) for v in vision_inputs}
        per_frame = d.tokens_per_frame * d.hidden
        self.embeds = a.zeros(d.max_frames * per_frame, d.dtype)
        self.ds_out = a.zeros(d.deepstack * d.max_frames * per_frame, d.dtype)

    def bank_views(self) -> tuple[Any, Any]:
        """``(image_embeds (R, H), deepstack (K, R, H))`` views of the feature bank."""
        a, d = self.arrays, self.dims
        return (a.view(self.bank, (self.bank_rows, d.hidden)),
                a.view(self.ds_bank, (d.deepstack, self.bank_rows, d.hidden)))

    def vision_bindings(self, frames: int, patches: int) -> tuple[dict[str, Any],
                                                                  dict[str, Any]]:
        """Inputs/outputs of the vision graph for ``frames`` frames of ``patches`` patches."""
        a, d = self.arrays, self.dims
        tokens = patches // (d.merge * d.merge)
        inputs = {'pixel_values': a.view(self.pixels.dev, (frames, patches, d.patch_dim))}
        for v in self.vision_inputs:
            inputs[v.name] = a.view(self.geometry[v.name].dev, v.shape(patches, d.merge))
        outputs = {'image_embeds': a.view(self.embeds, (frames, tokens, d.hidden))}
        if d.deepstack:
            outputs['deepstack'] = a.view(self.ds_out, (d.deepstack, frames, tokens, d.hidden))
        return inputs, outputs

    def decoder_bindings(self, seq: int, slots: int,
                         heads: int = 1) -> tuple[dict[str, Any], dict[str, Any], Any, Any]:
        """
        Inputs, outputs, the cache view and the new-K/V view for one decoder shape.

        :param heads: Chunk positions whose logits/argmax the graph returns (format 2).
        """
        a, d = self.arrays, self.dims
        kv = a.view(self.kv, (d.layers, 2, 1, d.kv_heads, slots, d.head_dim))
        bank, ds_bank = self.bank_views()
        inputs = {'input_ids': a.view(self.ids.dev, (1, seq)),
                  'visual_index': a.view(self.vis.dev, (1, seq)),
                  'image_embeds': bank}
        if d.deepstack:
            inputs['deepstack'] = ds_bank
        inputs.update({'position_ids': a.view(self.pos.dev, (3, 1, seq)),
                       'past_length': a.view(self.past.dev, (1,))})
        if d.per_position:
            inputs['logit_index'] = a.view(self.heads.dev, (heads,))
        for i in range(d.layers):
            inputs[f'past_key_{i}'] = kv[i, 0]
            inputs[f'past_value_{i}'] = kv[i, 1]
        new = a.view(self.new_kv, (d.layers, 2, 1, d.kv_heads, seq, d.head_dim))
        outputs = {'logits': a.view(self.logits, (heads, d.vocab)),
                   'next_token': a.view(self.next, (heads,)), 'new_kv': new}
        return inputs, outputs, kv, new


@dataclass
class LoadedExport:
    """Everything an exported backend's ``load()`` sets up."""

    runtime: GraphRuntime
    manifest: ExportManifest
    processor: Any
    greedy: GreedySettings
    cache: VisionCache
    buf: Buffers
    dims: Dims
    image_token_id: int
    family: FamilyInputs
