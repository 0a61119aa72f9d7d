"""One window in, one ProgressEstimate out: preprocessing, backend call, parsing, fallback."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
import logging

import numpy as np
from PIL import Image

from procvlm_ros.core import image as image_ops
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.core.profiles import TaskProfile
from procvlm_ros.core.profiles.procvlm_progress import ProcVlmProgressProfile
from procvlm_ros.core.prompt import validate_task
from procvlm_ros.core.types import Frame, ProgressEstimate, Status

_LOG = logging.getLogger(__name__)


class ProgressEstimator:
    """
    Runs windows through a backend and keeps the per-episode carry-forward state.

    The official fallback reuses the last parsed value when an answer has no parsable tag,
    starting from 0.0. Offline scoring keeps that start (``initial_percent=0.0``); the live
    node starts from ``None`` so nothing is published as progress before the model said so.
    """

    def __init__(self, backend: Backend, task: str, *, jpeg_roundtrip: bool = True,
                 pre_resize_patch_size: int = 14, initial_percent: float | None = None,
                 cache_size: int = 64, profile: TaskProfile | None = None) -> None:
        self.backend = backend
        # The profile builds the query and reads the answer; default: the official ProcVLM one.
        self.profile = profile or ProcVlmProgressProfile(
            getattr(getattr(backend, '_cfg', None), 'prompt_layout', 'images_first'))
        self._state = self.profile.initial_state()
        self._task = validate_task(task)
        self._jpeg = jpeg_roundtrip
        self._patch = pre_resize_patch_size
        self._initial = initial_percent
        self._last_percent = initial_percent
        self._episode = 0
        self._cache: OrderedDict[Hashable, Image.Image] = OrderedDict()
        self._cache_size = cache_size

    @property
    def task(self) -> str:
        return self._task

    @property
    def last_percent(self) -> float | None:
        return self._last_percent

    def new_episode(self, task: str | None = None) -> None:
        """Forget the progress history (and switch task); validates the task first."""
        if task is not None:
            self._task = validate_task(task)
        self._last_percent = self._initial
        self._state = self.profile.initial_state()
        self._episode += 1
        self._cache.clear()

    def prepare(self, frame: Frame, key: Hashable | None = None) -> Image.Image:
        """JPEG q95 round trip and qwen-vl-utils pre-resize, cached per frame key."""
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        rgb = image_ops.jpeg_roundtrip(frame.image) if self._jpeg else frame.image
        prepared = image_ops.qwen_vl_pre_resize(Image.fromarray(np.ascontiguousarray(rgb)),
                                                self._patch)
        if key is not None:
            self._cache[key] = prepared
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return prepared

    def estimate(self, frames: Sequence[Frame],
                 keys: Sequence[Hashable] | None = None) -> ProgressEstimate:
        """Evaluate one window with this estimator's own carry-forward state."""
        estimate = self.evaluate(frames, keys, task=self._task,
                                 previous_percent=self._last_percent, episode=self._episode,
                                 profile_state=self._state)
        self._last_percent = estimate.percent
        self._state = estimate.profile_state
        return estimate

    def evaluate(self, frames: Sequence[Frame], keys: Sequence[Hashable] | None = None, *,
                 task: str, previous_percent: float | None, episode: int = 0,
                 draft_token_ids: Sequence[int] | None = None,
                 profile_state: object = None) -> ProgressEstimate:
        """
        Evaluate one window (oldest first) without touching any episode state.

        The caller owns the carry-forward value (``previous_percent``), the profile's episode
        state (``profile_state``, returned updated in the estimate) and the episode, so an
        answer that arrives after its episode ended cannot leak into the next one. Never
        raises for model or input trouble: failures come back as ``Status.ERROR``.
        """
        stamps = tuple(f.stamp_ns for f in frames)
        indices = tuple(f.index for f in frames)

        def ask(messages: list[dict[str, object]], images: Sequence[Image.Image],
                image_keys: Sequence[object] | None,
                draft: Sequence[int] | None, prefix: str = '') -> GenerationResult:
            return self.backend.generate(GenerationRequest(
                images=list(images), task=task,
                frame_keys=tuple(image_keys) if image_keys is not None else None,
                draft_token_ids=draft, messages=messages, assistant_prefix=prefix))

        try:
            keyed = keys if keys is not None else [None] * len(frames)
            images = [self.prepare(f, k) for f, k in zip(frames, keyed)]
            answer = self.profile.run(
                ask, images, tuple(keys) if keys is not None else None, task, profile_state,
                previous_percent=previous_percent,
                draft=draft_token_ids if self.profile.drafts_from_previous else None)
        except ProcVlmError as e:
            return self._failure(f'{type(e).__name__}: {e}', stamps, indices,
                                 previous_percent, episode, profile_state)
        except Exception as e:  # noqa: BLE001 - a model bug must not kill the caller's loop
            _LOG.exception('unexpected backend failure')
            return self._failure(f'unexpected {type(e).__name__}: {e}', stamps, indices,
                                 previous_percent, episode, profile_state)

        last = answer.last
        percent = answer.percent if answer.percent is not None else previous_percent
        status = Status.OK if answer.ok else Status.CARRIED_FORWARD
        return ProgressEstimate(
            status=status, percent=percent, parsed_percent=answer.percent,
            progress_source='model' if answer.percent is not None else 'previous',
            remaining_actions=answer.remaining_actions, reasoning=answer.reasoning,
            model_output=answer.text, status_message='; '.join(answer.notes),
            frame_stamps_ns=stamps, frame_indices=indices,
            inference_time_s=answer.latency_s or last.latency_s,
            generated_tokens=answer.generated_tokens or last.generated_tokens, episode=episode,
            timings=dict(last.timings), token_ids=tuple(last.token_ids),
            decoder_passes=last.decoder_passes,
            draft_tokens_accepted=last.draft_tokens_accepted,
            result=answer.result, profile_state=answer.state, profile=self.profile.name)

    @staticmethod
    def _failure(message: str, stamps: tuple[int, ...], indices: tuple[int, ...],
                 previous_percent: float | None, episode: int,
                 profile_state: object) -> ProgressEstimate:
        return ProgressEstimate(
            status=Status.ERROR, percent=previous_percent, parsed_percent=None,
            progress_source='previous', status_message=message, frame_stamps_ns=stamps,
            frame_indices=indices, episode=episode, profile_state=profile_state)
