"""
What the ONNX Runtime and TensorRT backends share: the reference's prompt and token layout,
per-frame vision caching, preallocated buffers and the greedy loop.

- The prompt is rendered exactly as the reference backend renders it (checkpoint chat template,
  ``procedural_c`` prompt, ``prompt_layout``); each ``<|image_pad|>`` is expanded to the frame's
  visual token count and the text is tokenized by the exported tokenizer.
- Frames are preprocessed one by one with the exported image processor; frames already in the
  :class:`VisionCache` are neither preprocessed nor encoded again.
- M-RoPE positions and the bank row of each visual token are computed on the host, and so are
  the vision graph's grid-dependent inputs of the export's model family (``model.family``:
  Qwen3-VL or Qwen2.5-VL, :mod:`family_inputs`); everything else is one code path.
- Each request views the preallocated KV buffer with capacity ``C`` = prompt +
  ``max_new_tokens`` rounded up to 64 (at most ``max_context``); the decoder reads it by pointer
  and only the new K/V rows are written back, so the cache is never copied or reallocated.
- Prefill runs in chunks of at most ``prefill_chunk`` tokens, then greedy decoding with the
  reference's stop rules. With a draft (the previous window's answer) and a format-2 export,
  each decoder pass verifies up to ``speculation_max_draft`` draft tokens (:mod:`speculation`);
  only the accepted positions' K/V rows are written into the cache, so the next pass
  overwrites the slots of rejected ones.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
import logging
from pathlib import Path
import time
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from procvlm_ros.core.backends import qwen3vl_inputs as qin
from procvlm_ros.core.backends import speculation as spec
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.backends.family_inputs import family_inputs
from procvlm_ros.core.backends.frame_features import frame_features
from procvlm_ros.core.backends.graph_runtime import Buffers, Dims, GraphRuntime, LoadedExport
from procvlm_ros.core.backends.greedy import GreedySettings, penalised_argmax
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.core.backends.vision_cache import VisionCache
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendError, BackendUnavailableError

_LOG = logging.getLogger(__name__)
CONTEXT_ROUND = 64  # KV capacity granularity: a stable C keeps runtime bindings reusable
MAX_PHASES = 16  # decoder shapes whose bindings are kept (prefill chunks, decode, verify sizes)


class ExportedBackend(Backend):
    """
    Base of the backends that run ``procvlm-export`` graphs or engines.

    :param config: Backend parameters; ``engine_dir`` (or ``model``) names the export folder.
    """

    name: ClassVar[str] = 'exported'

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        self._cfg = config
        self._s: LoadedExport | None = None
        self._stats_cache = VisionCache(0, 0)  # statistics survive close()
        self._phases: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        self.step_times: list[float] = []  # per decoder pass of the last generate(), seconds
        self._told_plain = False  # "speculation off" is logged once
        self._graph_s = 0.0  # time inside run_decoder during the decode passes (host cost: rest)
        self._heads: tuple[int, int] | None = None  # (seq, heads) staged in the heads buffer
        self._steps = np.arange(0, dtype=np.int64)  # 0, 1, ...: head indices, text positions
        # Benchmarks only: generate exactly max_new_tokens (eos does not stop the loop).
        self.ignore_eos = False

    # ------------------------------------------------------------ load / close
    @abc.abstractmethod
    def _open_runtime(self, manifest: ExportManifest) -> GraphRuntime:
        """Verify and open the graphs or engines; raise BackendUnavailableError."""

    def export_folder(self) -> Path:
        """The folder holding ``manifest.json``: ``engine_dir``, else ``model``."""
        folder = self._cfg.engine_dir.strip() or self._cfg.model.strip()
        if not folder:
            raise BackendUnavailableError(
                f'{self.name} backend: engine_dir is empty; set it to a procvlm-export folder '
                '(procvlm-export onnx --model CHECKPOINT --out DIR)')
        return Path(folder).expanduser()

    def _load(self) -> None:
        """Read the manifest, the graphs or engines and the tokenizer; allocate every buffer."""
        cfg = self._cfg
        if cfg.enable_value_head:
            raise BackendUnavailableError(
                f'enable_value_head is on but the value head is not exported; the {self.name} '
                'backend would return the generated number instead. Use the transformers '
                'backend for the value head')
        manifest = ExportManifest.read(self.export_folder())
        greedy = GreedySettings.from_manifest(
            manifest.generation, manifest.tokens.get('eos_token_ids') or [],
            cfg.max_new_tokens, cfg.temperature)
        if cfg.dtype not in ('auto', manifest.dtype):
            _LOG.info('dtype %s ignored: the exported graphs are %s', cfg.dtype,
                         manifest.dtype)
        dims = Dims.from_manifest(manifest)
        family = family_inputs(manifest.family, manifest.model)
        runtime = self._open_runtime(manifest)  # cheapest refusals first (files, engines)
        try:
            from procvlm_ros.core.backends.hf_processor import load_processor
            processor, _ = load_processor(manifest.folder, cfg.min_pixels, cfg.max_pixels)
            cache = VisionCache(dims.cache_frames, dims.tokens_per_frame)
            cache.hits, cache.misses = self._stats_cache.hits, self._stats_cache.misses
            buf = Buffers(runtime.arrays, dims, cache.bank_rows, family.vision_inputs)
        except BaseException:
            runtime.close()
            raise
        self._s = LoadedExport(runtime, manifest, processor, greedy, cache, buf, dims,
                               int(manifest.tokens['image_token_id']), family)
        self._stats_cache = cache
        self._steps = np.arange(dims.chunk, dtype=np.int64)
        self._heads = None
        _LOG.debug('%s loaded export %s (%s)', self.name, manifest.export_id, manifest.folder)

    def _close(self) -> None:
        """Release the runtime, buffers and cached frames."""
        if self._s is not None:
            self._s.runtime.close()
            self._s.cache.clear()
        self._s = None
        self._phases.clear()
        self._heads = None

    def clear_cache(self) -> None:
        """Forget every cached frame (statistics are kept)."""
        with self._lock:
            self._stats_cache.clear()

    def cache_stats(self) -> dict[str, float]:
        """Vision-cache statistics since construction: hits, misses, hit_rate, entries, ..."""
        return self._stats_cache.stats()

    @property
    def manifest(self) -> ExportManifest | None:
        return self._s.manifest if self._s is not None else None

    # ------------------------------------------------------------ generate
    def _generate(self, request: GenerationRequest) -> GenerationResult:
        s = self._s
        assert s is not None  # the base class calls this only while loaded
        t0 = time.perf_counter()
        images = list(request.images)
        self._check_window(s, images, request.frame_keys)
        entries, vision_s, encoded = frame_features(s, images, request.frame_keys)
        ids = self._tokenize(s, request, [e.tokens for e in entries])
        positions, delta = s.family.rope_index(ids, s.image_token_id,
                                               [e.grid for e in entries], s.dims.merge)
        vis = qin.visual_index(ids, s.image_token_id,
                               [s.cache.first_row(e.slot) for e in entries],
                               [e.tokens for e in entries])
        slots = self._capacity(s, ids.size)
        t1 = time.perf_counter()
        token = self._prefill(s, ids, vis, positions, slots)
        t2 = time.perf_counter()
        tokens, stats = self._decode(s, token, ids, delta, slots, request.draft_token_ids)
        t3 = time.perf_counter()
        text = s.processor.batch_decode(
            [tokens], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
        return GenerationResult(
            text=text, generated_tokens=len(tokens), prompt_tokens=int(ids.size),
            token_ids=tokens,
            timings={'preprocess_s': t1 - t0 - vision_s, 'vision_s': vision_s,
                     'prefill_s': t2 - t1, 'decode_s': t3 - t2,
                     'vision_frames_encoded': float(encoded),
                     'vision_frames_reused': float(len(images) - encoded),
                     'vision_cache_hit_rate': s.cache.stats()['hit_rate'],
                     'decoder_graph_s': self._graph_s},
            decoder_passes=stats.decoder_passes,
            draft_tokens_accepted=stats.draft_tokens_accepted)

    @staticmethod
    def _check_window(s: LoadedExport, images: list[Image.Image],
                      keys: Sequence[Any] | None) -> None:
        if not images:
            raise BackendError('the window has no frames')
        if len(images) > s.dims.max_frames:
            raise BackendError(
                f'window has {len(images)} frames but export {s.manifest.export_id} was sized '
                f'for at most {s.dims.max_frames} (max_frames); re-export with --max-frames '
                f'{len(images)} or use a smaller window_size')
        if keys is not None and len(keys) != len(images):
            raise BackendError(f'{len(keys)} frame_keys for {len(images)} images')

    @staticmethod
    def _capacity(s: LoadedExport, prompt_len: int) -> int:
        if prompt_len >= s.dims.max_context:
            raise BackendError(
                f'prompt of {prompt_len} tokens does not fit max_context {s.dims.max_context} '
                f'of export {s.manifest.export_id}; re-export with a larger --max-context')
        need = prompt_len + s.greedy.max_new_tokens
        return min(s.dims.max_context, -(-need // CONTEXT_ROUND) * CONTEXT_ROUND)

    def _tokenize(self, s: LoadedExport, request: GenerationRequest,
                  tokens: list[int]) -> npt.NDArray[np.int64]:
        """The reference's chat string with each image placeholder expanded, tokenized."""
        proc = s.processor
        text = proc.apply_chat_template(request.chat(self._cfg.prompt_layout), tokenize=False,
                                        add_generation_prompt=True)
        text = str(text[0] if isinstance(text, list) else text) + request.assistant_prefix
        expanded = qin.expand_image_placeholders(text, proc.image_token, tokens)
        return np.asarray(proc.tokenizer(expanded)['input_ids'], dtype=np.int64)

    # ------------------------------------------------------------ decoder
    def _run_chunk(self, s: LoadedExport, start: int, ids: npt.NDArray[np.int64],
                   vis: npt.NDArray[np.int64], pos: npt.NDArray[np.int64], slots: int,
                   heads: int = 1) -> tuple[Any, Any, Any]:
        """
        Feed ``len(ids)`` tokens at cache slots ``start...``; the head runs on the last
        ``heads`` of them. Returns ``(outputs, cache view, new K/V view)``; the caller writes the
        K/V rows it keeps into the cache (:meth:`_commit`).
        """
        b, seq = s.buf, int(ids.size)
        b.ids.host[:seq], b.vis.host[:seq] = ids, vis
        b.pos.host[:3 * seq] = pos.reshape(-1)
        return self._execute(s, start, seq, slots, heads)

    def _run_text(self, s: LoadedExport, start: int, tokens: Sequence[int], first_pos: int,
                  slots: int) -> tuple[Any, Any, Any]:
        """A decode/verify pass: text tokens at consecutive positions, every position's head."""
        b, seq = s.buf, len(tokens)
        if seq == 1:  # the common case without numpy temporaries
            b.ids.host[0] = tokens[0]
            b.vis.host[0] = 0
            b.pos.host[:3] = first_pos
        else:
            b.ids.host[:seq] = tokens
            b.vis.host[:seq] = 0
            pos = b.pos.host[:3 * seq].reshape(3, seq)
            np.add(self._steps[:seq], first_pos, out=pos[0])
            pos[1:] = pos[0]
        return self._execute(s, start, seq, slots, seq if s.dims.per_position else 1)

    def _execute(self, s: LoadedExport, start: int, seq: int, slots: int,
                 heads: int) -> tuple[Any, Any, Any]:
        """Push the staged inputs and run the decoder with the bindings of this shape."""
        a, b = s.runtime.arrays, s.buf
        phase = (seq, slots, heads)
        bindings = self._phases.get(phase)
        if bindings is None:
            if len(self._phases) >= MAX_PHASES:  # chunk shapes vary; keep the recent ones
                self._phases.pop(next(iter(self._phases)))
            bindings = self._phases[phase] = b.decoder_bindings(seq, slots, heads)
        inputs, outputs, kv, new = bindings
        b.past.host[0] = start
        a.push(b.ids, seq)
        a.push(b.vis, seq)
        a.push(b.pos, 3 * seq)
        a.push(b.past, 1)
        if s.dims.per_position and self._heads != (seq, heads):  # rewritten on change only
            b.heads.host[:heads] = self._steps[seq - heads:seq]
            a.push(b.heads, heads)
            self._heads = (seq, heads)
        t0 = time.perf_counter()
        s.runtime.run_decoder(inputs, outputs, phase)
        self._graph_s += time.perf_counter() - t0
        return outputs, kv, new

    @staticmethod
    def _commit(s: LoadedExport, kv: Any, new: Any, start: int, count: int) -> None:
        """Write the first ``count`` new K/V rows into cache slots ``start...``."""
        s.runtime.arrays.copy(kv[:, :, :, :, start:start + count], new[:, :, :, :, :count])

    @staticmethod
    def _chooser(s: LoadedExport, outputs: dict[str, Any], seen: list[int],
                 draft: Sequence[int]) -> Any:
        """``predict(i)``: greedy id at head position ``i`` (repetition penalty applied)."""
        if not s.greedy.needs_logits:  # the graph's argmax; tolist() copies (and syncs CUDA)
            return outputs['next_token'].tolist().__getitem__
        logits = s.runtime.arrays.to_host(outputs['logits'])
        penalty = s.greedy.repetition_penalty
        return lambda i: penalised_argmax(logits[i].copy(), seen + list(draft[:i]), penalty)

    def _prefill(self, s: LoadedExport, ids: npt.NDArray[np.int64], vis: npt.NDArray[np.int64],
                 positions: npt.NDArray[np.int64], slots: int) -> int:
        outputs: dict[str, Any] = {}
        for start in range(0, ids.size, s.dims.chunk):
            end = min(ids.size, start + s.dims.chunk)
            outputs, kv, new = self._run_chunk(s, start, ids[start:end], vis[start:end],
                                               positions[:, start:end], slots)
            self._commit(s, kv, new, start, end - start)
        return int(self._chooser(s, outputs, ids.tolist(), ())(0))

    def _max_draft(self, s: LoadedExport, source: Sequence[int] | None) -> int:
        """Draft ids per pass: 0 when speculation is off, impossible or has no source."""
        if not (self._cfg.speculation and source):
            return 0
        if not s.dims.per_position:
            if not self._told_plain:
                _LOG.info('speculation off: export %s is format %d, whose decoder returns only '
                          'the last position; re-export with procvlm-export onnx for drafts',
                          s.manifest.export_id, s.manifest.format_version)
                self._told_plain = True
            return 0
        return min(self._cfg.speculation_max_draft, s.dims.max_verify - 1)

    def _decode(self, s: LoadedExport, first: int, ids: npt.NDArray[np.int64], delta: int,
                slots: int, source: Sequence[int] | None = None
                ) -> tuple[list[int], spec.SpeculationStats]:
        g = s.greedy
        self.step_times = []
        self._graph_s = 0.0
        seen = ids.tolist() if g.needs_logits else []
        pending: list[Any] = []
        max_draft = self._max_draft(s, source)

        def run_pass(tokens: list[int], draft: list[int]) -> Any:
            slot = ids.size + len(tokens) - 1
            if slot >= slots:
                raise BackendError(
                    f'generation reached max_context {slots} of export '
                    f'{s.manifest.export_id} after {len(tokens)} tokens without eos (prompt '
                    f'{ids.size} tokens); re-export with a larger --max-context or lower '
                    'max_new_tokens')
            t0 = time.perf_counter()
            feed = [tokens[-1], *draft] if draft else tokens[-1:]
            outputs, kv, new = self._run_text(s, slot, feed, slot + delta, slots)
            pending[:] = [t0, kv, new, slot]
            return self._chooser(s, outputs, seen + tokens if g.needs_logits else seen, draft)

        def commit(kept: int) -> None:
            t0, kv, new, slot = pending
            self._commit(s, kv, new, slot, kept)
            self.step_times.append(time.perf_counter() - t0)

        return spec.speculative_greedy(
            first, source if max_draft else None, max_draft, g.max_new_tokens,
            lambda t: not self.ignore_eos and g.is_stop(t), run_pass, commit,
            stop_ids=() if self.ignore_eos else g.eos_token_ids, room=slots - ids.size)
