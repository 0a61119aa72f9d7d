"""
What the ONNX Runtime and TensorRT backends share: the reference's prompt and token layout,
per-frame vision caching, preallocated buffers and the greedy loop.

- The prompt is rendered exactly as the reference backend renders it (checkpoint chat template,
  ``procedural_c`` prompt, ``prompt_layout``); each ``<|image_pad|>`` is expanded to the frame's
  visual token count and the text is tokenized by the exported tokenizer.
- Frames are preprocessed one by one with the exported image processor; frames already in the
  :class:`VisionCache` are neither preprocessed nor encoded again.
- M-RoPE positions and the bank row of each visual token are computed on the host.
- Each request views the preallocated KV buffer with capacity ``C`` = prompt +
  ``max_new_tokens`` rounded up to 64 (at most ``max_context``); the decoder reads it by pointer
  and only the new K/V rows are written back, so the cache is never copied or reallocated.
- Prefill runs in chunks of at most ``prefill_chunk`` tokens, then greedy decoding with the
  reference's stop rules.
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
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.backends.frame_features import frame_features
from procvlm_ros.core.backends.graph_runtime import Buffers, Dims, GraphRuntime, LoadedExport
from procvlm_ros.core.backends.greedy import GreedySettings, penalised_argmax
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.core.backends.vision_cache import VisionCache
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendError, BackendUnavailableError
from procvlm_ros.core.prompt import build_messages, build_prompt

_LOG = logging.getLogger(__name__)
CONTEXT_ROUND = 64  # KV capacity granularity: a stable C keeps runtime bindings reusable


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
        self._phases: dict[tuple[int, int], tuple[Any, ...]] = {}
        self.step_times: list[float] = []  # per decode step of the last generate(), seconds
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
        runtime = self._open_runtime(manifest)  # cheapest refusals first (files, engines)
        try:
            from procvlm_ros.core.backends.transformers_backend import load_processor
            processor, _ = load_processor(manifest.folder, cfg.min_pixels, cfg.max_pixels)
            cache = VisionCache(dims.cache_frames, dims.tokens_per_frame)
            cache.hits, cache.misses = self._stats_cache.hits, self._stats_cache.misses
            buf = Buffers(runtime.arrays, dims, cache.bank_rows)
        except BaseException:
            runtime.close()
            raise
        self._s = LoadedExport(runtime, manifest, processor, greedy, cache, buf, dims,
                          int(manifest.tokens['image_token_id']))
        self._stats_cache = cache
        _LOG.debug('%s loaded export %s (%s)', self.name, manifest.export_id, manifest.folder)

    def _close(self) -> None:
        """Release the runtime, buffers and cached frames."""
        if self._s is not None:
            self._s.runtime.close()
            self._s.cache.clear()
        self._s = None
        self._phases.clear()

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
        ids = self._tokenize(s, request.task, images, [e.tokens for e in entries])
        positions, delta = qin.rope_index(ids, s.image_token_id, [e.grid for e in entries],
                                          s.dims.merge)
        vis = qin.visual_index(ids, s.image_token_id,
                               [s.cache.first_row(e.slot) for e in entries],
                               [e.tokens for e in entries])
        slots = self._capacity(s, ids.size)
        t1 = time.perf_counter()
        token = self._prefill(s, ids, vis, positions, slots)
        t2 = time.perf_counter()
        tokens = self._decode(s, token, ids, delta, slots)
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
                     'vision_cache_hit_rate': s.cache.stats()['hit_rate']})

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

    def _tokenize(self, s: LoadedExport, task: str, images: list[Image.Image],
                  tokens: list[int]) -> npt.NDArray[np.int64]:
        """The reference's chat string with each image placeholder expanded, tokenized."""
        proc = s.processor
        messages = build_messages(images, build_prompt(task), layout=self._cfg.prompt_layout)
        text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = str(text[0] if isinstance(text, list) else text)
        expanded = qin.expand_image_placeholders(text, proc.image_token, tokens)
        return np.asarray(proc.tokenizer(expanded)['input_ids'], dtype=np.int64)

    # ------------------------------------------------------------ decoder
    def _run_chunk(self, s: LoadedExport, start: int, ids: npt.NDArray[np.int64],
                   vis: npt.NDArray[np.int64], pos: npt.NDArray[np.int64], slots: int) -> None:
        """Feed ``len(ids)`` tokens at cache slots ``start...``; their K/V go into the cache."""
        a, b, seq = s.runtime.arrays, s.buf, int(ids.size)
        phase = (seq, slots)
        if phase not in self._phases:
            if len(self._phases) >= 4:  # prefill chunk shapes vary; keep the recent few
                self._phases.pop(next(iter(self._phases)))
            self._phases[phase] = b.decoder_bindings(seq, slots)
        inputs, outputs, kv, new = self._phases[phase]
        b.ids.host[:seq], b.vis.host[:seq] = ids, vis
        b.pos.host[:3 * seq] = pos.reshape(-1)
        b.past.host[0] = start
        for staged, count in ((b.ids, seq), (b.vis, seq), (b.pos, 3 * seq), (b.past, 1)):
            a.push(staged, count)
        s.runtime.run_decoder(inputs, outputs, phase)
        a.copy(kv[:, :, :, :, start:start + seq], new)

    @staticmethod
    def _next_token(s: LoadedExport, seen: Sequence[int]) -> int:
        if not s.greedy.needs_logits:
            return s.runtime.arrays.item(s.buf.next)  # the graph's argmax
        logits = s.runtime.arrays.to_host(s.buf.logits)
        return penalised_argmax(logits, seen, s.greedy.repetition_penalty)

    def _prefill(self, s: LoadedExport, ids: npt.NDArray[np.int64], vis: npt.NDArray[np.int64],
                 positions: npt.NDArray[np.int64], slots: int) -> int:
        for start in range(0, ids.size, s.dims.chunk):
            end = min(ids.size, start + s.dims.chunk)
            self._run_chunk(s, start, ids[start:end], vis[start:end], positions[:, start:end],
                            slots)
        return self._next_token(s, ids.tolist())

    def _decode(self, s: LoadedExport, token: int, ids: npt.NDArray[np.int64], delta: int,
                slots: int) -> list[int]:
        g = s.greedy
        tokens = [token]
        zero = np.zeros(1, np.int64)
        self.step_times = []
        seen = ids.tolist() + tokens if g.needs_logits else []
        while len(tokens) < g.max_new_tokens and (self.ignore_eos or not g.is_stop(token)):
            slot = ids.size + len(tokens) - 1
            if slot >= slots:
                raise BackendError(
                    f'generation reached max_context {slots} of export '
                    f'{s.manifest.export_id} after {len(tokens)} tokens without eos (prompt '
                    f'{ids.size} tokens); re-export with a larger --max-context or lower '
                    'max_new_tokens')
            t0 = time.perf_counter()
            pos = np.full((3, 1), slot + delta, np.int64)
            self._run_chunk(s, slot, np.array([token], np.int64), zero, pos, slots)
            token = self._next_token(s, seen)
            self.step_times.append(time.perf_counter() - t0)
            tokens.append(token)
            if g.needs_logits:
                seen.append(token)
        return tokens
