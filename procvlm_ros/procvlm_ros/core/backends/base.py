"""The interface every inference backend implements (transformers, ONNX Runtime, TensorRT)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from PIL import Image

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
    """

    images: Sequence[Image.Image]
    task: str
    frame_keys: Sequence[Any] | None = None


@dataclass
class GenerationResult:
    """Decoded answer of one query and what it cost."""

    text: str
    generated_tokens: int
    prompt_tokens: int
    latency_s: float
    # Value-head percentage (sigmoid(z) * 100, calibration applied) when the head ran, else None.
    value_head_percent: float | None = None
    token_ids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Backend(abc.ABC):
    """A loaded model that turns a window of images plus a task into text."""

    name: ClassVar[str]

    def __enter__(self: _B) -> _B:
        self.load()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def load(self) -> None:
        """Import the runtime, read weights or engines; BackendUnavailableError on failure."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run one query; raise BackendError on failure."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release memory and runtime objects; idempotent."""
