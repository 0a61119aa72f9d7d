"""
Traceable wrappers around the Qwen3-VL and Qwen2.5-VL sub-modules (``qwen3vl-export.md``
sections 3 and 5).

- ``VisionForExport``: the vision tower with frames as the batch axis, so the frame count is a
  plain dynamic dimension (HF's per-image ``cu_seqlens`` split does not trace). The geometry
  (position-table taps, rotary positions) comes in as inputs computed on the host.
- ``DecoderForExport``: the language model with the embedding lookup and the image/deepstack
  merge inside the graph. Visual features are read from a *feature bank* by row index (row 0 is
  zeros), so cached per-frame features are never concatenated per call. The KV cache is a
  preallocated input ``[1, kv, C, hd]`` per layer that the graph only reads (slots at or beyond
  ``past_length`` are masked); the graph returns the K/V rows of the new tokens only, which the
  host writes into the cache. Attention is split into a cache part and a new-token part so the
  cache is never concatenated or copied inside the graph. The LM head runs on the chunk
  positions listed in ``logit_index`` (the last one in prefill, all of them when a draft is
  verified), returning their logits and argmax (export format 2).

Qwen2.5-VL (:func:`qwen25_wrapper_classes`): the vision tower's window attention becomes a mask
from per-patch window ids, with the window permutation and its inverse as inputs; the decoder
is the same wrapper without deepstack (Qwen2-style q/k/v biases, no q/k norms).

Every module reuses the HF sub-modules and weights; only the control flow is rewritten.
torch is imported inside functions only.
"""

from __future__ import annotations

import functools
from typing import Any


def rotate_half(x: Any) -> Any:
    """The rotary helper: (x1, x2) -> (-x2, x1) over the last axis."""
    import torch
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def frame_attention(attn: Any, x: Any, cos: Any, sin: Any, heads: int, head_dim: int,
                    mask: Any = None) -> Any:
    """A vision block's attention with frames as the batch axis; ``mask`` is additive."""
    import torch
    frames, patches, width = x.shape
    qkv = attn.qkv(x).reshape(frames, patches, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (F, heads, P, hd)
    qf, kf = q.float(), k.float()
    q = (qf * cos + rotate_half(qf) * sin).to(v.dtype)
    k = (kf * cos + rotate_half(kf) * sin).to(v.dtype)
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # (F, heads, P, P)
    if mask is not None:
        scores = scores.float() + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(frames, patches, width)
    return attn.proj(out)


@functools.cache
def wrapper_classes() -> tuple[type, type, type]:
    """
    Return ``(VisionForExport, DecoderForExport, DecoderForExportV1)``; defined lazily to keep
    torch optional.
    """
    import torch
    from torch import nn



    class VisionForExport(nn.Module):
        """Per-frame pixels -> merged image embeddings and deepstack features."""

        def __init__(self, visual: Any) -> None:
            super().__init__()
            self.visual = visual
            self.deepstack_indexes = list(visual.deepstack_visual_indexes)
            cfg = visual.config
            self.num_heads = int(cfg.num_heads)
            self.head_dim = int(cfg.hidden_size) // self.num_heads

        def _attention(self, attn: Any, x: Any, cos: Any, sin: Any) -> Any:
            return frame_attention(attn, x, cos, sin, self.num_heads, self.head_dim)

        def forward(self, pixel_values: Any, interp_indices: Any, interp_weights: Any,
                    rope_pos: Any) -> tuple[Any, Any]:
            v = self.visual
            frames, patches, _ = pixel_values.shape
            proj = v.patch_embed.proj  # Conv3d with stride == kernel: a linear layer on patches
            weight = proj.weight.reshape(proj.weight.shape[0], -1)
            x = torch.matmul(pixel_values.to(weight.dtype), weight.t()) + proj.bias  # (F, P, D)
            pos = (v.pos_embed(interp_indices) * interp_weights[:, :, None]).sum(1)  # (P, D)
            x = x + pos.to(x.dtype)
            cos, sin = v.rotary_pos_emb(x, rope_pos)  # (P, hd) each, float32
            cos, sin = cos[None, None].float(), sin[None, None].float()
            feats = []
            for i, blk in enumerate(v.blocks):
                x = x + self._attention(blk.attn, blk.norm1(x), cos, sin)
                x = x + blk.mlp(blk.norm2(x))
                if i in self.deepstack_indexes:
                    merger = v.deepstack_merger_list[self.deepstack_indexes.index(i)]
                    feats.append(merger(x.reshape(frames * patches, -1)))
            embeds = v.merger(x.reshape(frames * patches, -1))
            tokens = embeds.shape[0] // frames
            deepstack = torch.stack(feats).reshape(len(feats), frames, tokens, -1)
            return embeds.reshape(frames, tokens, -1), deepstack

    class DecoderForExport(nn.Module):
        """Token ids + feature bank + M-RoPE positions + KV cache -> logits and new K/V rows."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            lm = model.model.language_model
            self.embed_tokens, self.layers, self.norm = lm.embed_tokens, lm.layers, lm.norm
            self.rotary_emb, self.lm_head = lm.rotary_emb, model.lm_head
            if getattr(self.lm_head, 'bias', None) is not None:
                raise ValueError('lm_head with a bias is not supported')
            cfg = lm.config
            self.num_heads = int(cfg.num_attention_heads)
            self.num_kv = int(cfg.num_key_value_heads)
            self.head_dim = int(getattr(cfg, 'head_dim', None)
                                or cfg.hidden_size // cfg.num_attention_heads)
            self.num_deepstack = len(getattr(model.config.vision_config,
                                             'deepstack_visual_indexes', None) or ())
            self.qk_norm = hasattr(self.layers[0].self_attn, 'q_norm')

        def _layer(self, layer: Any, h: Any, cos: Any, sin: Any, k_cache: Any, v_cache: Any,
                   mask: Any) -> tuple[Any, Any, Any]:
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            seq = x.shape[1]
            groups = self.num_heads // self.num_kv
            # Qwen3: per-head RMSNorm of q and k before the rotation; Qwen2.5: none.
            q = attn.q_proj(x).view(1, seq, self.num_heads, self.head_dim)
            if self.qk_norm:
                q = attn.q_norm(q)
            k = attn.k_proj(x).view(1, seq, self.num_kv, self.head_dim)
            if self.qk_norm:
                k = attn.k_norm(k)
            v = attn.v_proj(x).view(1, seq, self.num_kv, self.head_dim).transpose(1, 2)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q = q * cos[:, None] + rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + rotate_half(k) * sin[:, None]
            # Query heads grouped by their KV head: (1, kv, g*S, hd); HF's repeat_kv order.
            qg = q.reshape(1, self.num_kv, groups * seq, self.head_dim)
            # K_cache @ Q^T keeps the cache in its stored layout (no transpose of the cache).
            s_cache = torch.matmul(k_cache, qg.transpose(-1, -2)).transpose(-1, -2)
            s_new = torch.matmul(qg, k.transpose(-1, -2))
            scores = torch.cat([s_cache, s_new], dim=-1).float() * attn.scaling + mask
            probs = torch.softmax(scores, dim=-1).to(v.dtype)
            slots = k_cache.shape[2]
            out = (torch.matmul(probs[..., :slots], v_cache)
                   + torch.matmul(probs[..., slots:], v))  # (1, kv, g*S, hd)
            out = out.reshape(1, self.num_heads, seq, self.head_dim).transpose(1, 2)
            h = h + attn.o_proj(out.reshape(1, seq, self.num_heads * self.head_dim))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            return h, k, v

        def _mask(self, seq: int, slots: int, past_length: Any, device: Any) -> Any:
            """Additive float32 mask ``(g*S, C+S)``: valid cache slots, causal new tokens."""
            neg = torch.finfo(torch.float32).min
            slot = torch.arange(slots, device=device)
            cache_part = torch.where(slot[None, :] < past_length[:, None], 0.0, neg)
            groups = self.num_heads // self.num_kv
            token = torch.arange(seq, device=device)
            new_part = torch.where(token[None, :] <= token[:, None], 0.0, neg).repeat(groups, 1)
            cache_part = cache_part.expand(groups * seq, slots)
            return torch.cat([cache_part, new_part], dim=-1).to(torch.float32)

        def forward(self, input_ids: Any, visual_index: Any, image_embeds: Any, deepstack: Any,
                    position_ids: Any, past_length: Any, logit_index: Any,
                    cache: tuple[Any, ...]) -> tuple[Any, Any, Any]:
            h, new_kv = self._body(input_ids, visual_index, image_embeds, deepstack,
                                   position_ids, past_length, cache)
            return self._head(h, logit_index, new_kv)

        def _head(self, h: Any, logit_index: Any, new_kv: Any) -> tuple[Any, Any, Any]:
            # The head on the chosen chunk positions only: the last one in prefill, every one
            # when verifying a draft (format 2). A plain Gather, no data-dependent shapes.
            rows = self.norm(h[0].index_select(0, logit_index))  # (K, H)
            # W @ h^T reads the (V, H) weight as stored: a tied embedding/lm_head table stays
            # one initializer (h @ W^T would be folded into a transposed copy by the exporter).
            logits = torch.matmul(self.lm_head.weight, rows.t()).t().float()  # (K, V)
            return logits, torch.argmax(logits, dim=-1), new_kv

        def _body(self, input_ids: Any, visual_index: Any, image_embeds: Any, deepstack: Any,
                  position_ids: Any, past_length: Any, cache: tuple[Any, ...]) -> tuple[Any, Any]:
            text = self.embed_tokens(input_ids)  # (1, S, H)
            # Plain Gathers (no GatherND): bank row 0 is zeros, so text positions read zeros.
            vis = nn.functional.embedding(visual_index, image_embeds).to(text.dtype)
            h = torch.where((visual_index > 0)[..., None], vis, text)
            ds = (None if deepstack is None  # (K, S, H)
                  else deepstack.index_select(1, visual_index[0]).to(text.dtype))
            cos, sin = self.rotary_emb(h, position_ids)  # (1, S, hd) each
            seq, slots = input_ids.shape[1], cache[0].shape[2]
            mask = self._mask(seq, slots, past_length, input_ids.device)
            new_kv = []
            for i, layer in enumerate(self.layers):
                h, k, v = self._layer(layer, h, cos, sin, cache[2 * i], cache[2 * i + 1], mask)
                new_kv.append(torch.stack([k, v]))
                if ds is not None and i < self.num_deepstack:
                    h = h + ds[i][None]
            return h, torch.stack(new_kv)

    class DecoderForExportV1(DecoderForExport):
        """Format 1 decoder (logits of the last position only), for compatibility tests."""

        def forward(self, input_ids: Any, visual_index: Any, image_embeds: Any, deepstack: Any,
                    position_ids: Any, past_length: Any,
                    cache: tuple[Any, ...]) -> tuple[Any, Any, Any]:
            h, new_kv = self._body(input_ids, visual_index, image_embeds, deepstack,
                                   position_ids, past_length, cache)
            last = self.norm(h[:, -1])  # (1, H)
            logits = torch.matmul(self.lm_head.weight, last.t()).t().float()  # (1, V)
            return logits, torch.argmax(logits, dim=-1), new_kv

    return VisionForExport, DecoderForExport, DecoderForExportV1


@functools.cache
def qwen25_wrapper_classes() -> tuple[type, type]:
    """
    Return ``(Qwen25VisionForExport, Qwen25DecoderForExport)`` for Qwen2.5-VL; defined lazily
    to keep torch optional.
    """
    import torch
    from torch import nn

    _, decoder_cls, _ = wrapper_classes()


    class Qwen25VisionForExport(nn.Module):
        """
        Per-frame pixels -> merged image embeddings (grid order), frames as the batch axis.

        Inputs besides ``pixel_values (F, P, patch_dim)`` come from
        :func:`procvlm_ros.core.backends.qwen25vl_inputs.vision_geometry`: ``rope_pos (P, 2)``
        and ``window_ids (P,)`` in window order, ``window_index`` / ``reverse_index (P/4,)``.
        Window blocks attend where the window ids are equal; full-attention blocks attend over
        the frame (every frame is its own batch row, so no mask is needed there).
        """

        def __init__(self, visual: Any) -> None:
            super().__init__()
            self.visual = visual
            cfg = visual.config
            self.num_heads = int(cfg.num_heads)
            self.head_dim = int(cfg.hidden_size) // self.num_heads
            self.full_blocks = {int(i) for i in visual.fullatt_block_indexes}
            self.unit = int(visual.spatial_merge_unit)

        def _attention(self, attn: Any, x: Any, cos: Any, sin: Any, mask: Any) -> Any:
            return frame_attention(attn, x, cos, sin, self.num_heads, self.head_dim, mask)

        def forward(self, pixel_values: Any, rope_pos: Any, window_index: Any,
                    reverse_index: Any, window_ids: Any) -> Any:
            v = self.visual
            frames, patches, _ = pixel_values.shape
            proj = v.patch_embed.proj  # Conv3d with stride == kernel: a linear layer on patches
            weight = proj.weight.reshape(proj.weight.shape[0], -1)
            x = torch.matmul(pixel_values.to(weight.dtype), weight.t())  # (F, P, D)
            if proj.bias is not None:
                x = x + proj.bias
            tokens = patches // self.unit
            # Window order: merged tokens regrouped window by window (HF permutes the same way).
            x = x.reshape(frames, tokens, self.unit, -1).index_select(1, window_index)
            x = x.reshape(frames, patches, -1)
            cos, sin = v.rotary_pos_emb(x, rope_pos)  # (P, hd) each, float32, window order
            cos, sin = cos[None, None].float(), sin[None, None].float()
            neg = torch.finfo(torch.float32).min
            window_mask = torch.where(window_ids[:, None] == window_ids[None, :], 0.0, neg)
            window_mask = window_mask.to(torch.float32)[None, None]  # (1, 1, P, P)
            for i, blk in enumerate(v.blocks):
                mask = None if i in self.full_blocks else window_mask
                x = x + self._attention(blk.attn, blk.norm1(x), cos, sin, mask)
                x = x + blk.mlp(blk.norm2(x))
            embeds = v.merger(x.reshape(frames * patches, -1)).reshape(frames, tokens, -1)
            return embeds.index_select(1, reverse_index)  # back to grid order

    class Qwen25DecoderForExport(decoder_cls):  # type: ignore[misc,valid-type]
        """The format-2 decoder without deepstack: Qwen2-style layers, M-RoPE from the host."""

        def __init__(self, model: Any) -> None:
            super().__init__(model)
            self.head_dim = int(self.layers[0].self_attn.head_dim)

        def forward(self, input_ids: Any, visual_index: Any, image_embeds: Any,
                    position_ids: Any, past_length: Any, logit_index: Any,
                    cache: tuple[Any, ...]) -> tuple[Any, Any, Any]:
            h, new_kv = self._body(input_ids, visual_index, image_embeds, None, position_ids,
                                   past_length, cache)
            return self._head(h, logit_index, new_kv)

    return Qwen25VisionForExport, Qwen25DecoderForExport
