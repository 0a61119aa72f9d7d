"""
The interface every inference backend implements (transformers, ONNX Runtime, TensorRT).

The base class owns what every backend needs the same way (Polygraphy's runner pattern): one
lock, so ``close()`` never pulls a model from under a running ``generate()``; the loaded check;
the wall time of each call; and wrapping of unexpected runtime exceptions into
:class:`BackendError` with context. Subclasses implement ``_load``, ``_generate`` and ``_close``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
import threading
import time
from typing import Any, ClassVar, TypeVar

from PIL import Image

from procvlm_ros.core.errors import BackendError, ProcVlmError

_B = TypeVar('_B', bound='Backend')


@dataclass(frozen=True)
class GenerationRequest:
    """
    One query: a window of frames (oldest first) and the task sentence.

    :param images: RGB images exactly as the model should see them (after the JPEG round trip
        and the qwen-vl-utils pre-resize, when those are enabled).
    :param task: Task sentence substituted into the prompt template.
    :param frame_keys: Optional stable identity per image (e.g. ``(episode, seq)``), so a backend
        may cache per-frame vision features across overlapping windows.
    :param draft_token_ids: Token ids of an earlier answer (the previous window's) that a
        backend may verify as a speculative draft; the output must not depend on it.
    :param messages: The chat built by a task profile (system prompt, text, image parts in the
        order of ``images``); the backend applies the checkpoint's chat template to it. None:
        the ProcVLM query for ``task`` (the ``procvlm_progress`` profile's messages).
    :param assistant_prefix: Text that starts the assistant's reply (after the template's
        generation prompt), e.g. ``Action: `` as the R2R authors do; the answer returned is
        what the model wrote after it.
    """

    images: Sequence[Image.Image]
    task: str
    frame_keys: Sequence[Any] | None = None
    draft_token_ids: Sequence[int] | None = None
    messages: Sequence[dict[str, Any]] | None = None
    assistant_prefix: str = ''

    def chat(self, prompt_layout: str = 'images_first') -> list[dict[str, Any]]:
        """The messages to render: the profile's, else the ProcVLM query for ``task``."""
        if self.messages is not None:
            return list(self.messages)
        # Imported here: the profiles import this module.
        from procvlm_ros.core.profiles.procvlm_progress import ProcVlmProgressProfile
        return ProcVlmProgressProfile(prompt_layout).messages(self.images, self.task)


@dataclass
class GenerationResult:
    """Decoded answer of one query and what it cost."""

    text: str
    generated_tokens: int
    prompt_tokens: int
    latency_s: float = 0.0  # filled by Backend.generate()
    # Value-head percentage (sigmoid(z) * 100, calibration applied) when the head ran, else None.
    value_head_percent: float | None = None
    token_ids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # Sequential decoder passes after the prefill, and draft tokens the model accepted.
    decoder_passes: int = 0
    draft_tokens_accepted: int = 0


class Backend(abc.ABC):
    """
    A model that turns a window of images plus a task into text.

    Use as a context manager (``with create_backend(cfg) as backend: ...``) or call ``load()``
    and ``close()``; ``close()`` is idempotent and waits for a running ``generate()``.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False

    def __enter__(self: _B) -> _B:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Import the runtime, read weights or engines; BackendUnavailableError on failure."""
        with self._lock:
            if self._loaded:
                return
            self._load()
            self._loaded = True

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one query; raise BackendError (with context) on any failure."""
        with self._lock:
            if not self._loaded:
                raise BackendError(f'{type(self).__name__} is not loaded: call load() first')
            start = time.perf_counter()
            try:
                result = self._generate(request)
            except ProcVlmError:
                raise
            except Exception as e:  # runtime errors carry their own detail
                raise BackendError(
                    f'{self.name} inference failed on {len(request.images)} images: '
                    f'{type(e).__name__}: {e}') from e
            result.latency_s = time.perf_counter() - start
            return result

    def close(self) -> None:
        """Release memory and runtime objects; idempotent."""
        with self._lock:
            if not self._loaded:
                return
            self._loaded = False
            self._close()

    @abc.abstractmethod
    def _load(self) -> None:
        """Load; raise BackendUnavailableError with a clear message on failure."""

    @abc.abstractmethod
    def _generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one query (called with the lock held, only while loaded)."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release what ``_load`` acquired (called with the lock held, only while loaded)."""
