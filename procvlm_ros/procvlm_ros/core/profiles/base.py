"""The profile interface: messages out, typed result and episode state back."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from PIL import Image

from procvlm_ros.core.backends.base import GenerationResult


class Ask(Protocol):
    """
    One model call: messages, images in message order, frame keys or None, draft ids or
    None, and optional text that starts the assistant's reply (the answer excludes it).
    """

    def __call__(self, messages: list[dict[str, Any]], images: Sequence[Image.Image],
                 keys: Sequence[Any] | None, draft: Sequence[int] | None,
                 prefix: str = '') -> GenerationResult: ...

# What a profile's answers are published as on ROS (and written as offline).
PUBLISHES = ('progress', 'action', 'answer')


@dataclass(frozen=True)
class Interpretation:
    """
    What one window's answer means.

    :param percent: Progress in [0, 100] when the answer gave one (progress profiles), else None.
    :param result: The profile's typed result (e.g. a parsed answer, critic step, action).
    :param state: Episode state after this answer; the caller keeps it only if the episode is
        still current, and passes it back with the next window.
    :param ok: False when the answer could not be parsed (the caller carries forward).
    :param text: The answer text to record (all turns of a multi-turn query).
    :param last: The last model call (tokens, timings, speculation counters).
    """

    percent: float | None
    result: Any
    state: Any
    ok: bool
    text: str
    last: GenerationResult
    remaining_actions: tuple[str, ...] = ()
    reasoning: str = ''
    notes: tuple[str, ...] = ()
    generated_tokens: int = 0
    latency_s: float = 0.0


class TaskProfile(abc.ABC):
    """
    A task for a VLM: build the query, run it through ``ask``, interpret the answer.

    ``run`` may call ``ask`` more than once (a done query after a critic step, a zoom turn
    after a grounded answer). Profiles hold settings only; everything that changes during an
    episode lives in ``state``, which the Monitor owns and resets with the episode.
    """

    name: ClassVar[str]
    publishes: ClassVar[str] = 'progress'
    # The previous answer is a good draft for the next one (temporal speculation).
    drafts_from_previous: ClassVar[bool] = False
    # Windows are evaluated in the Monitor's loop; False: the profile answers on request only
    # (grounded_query: ``Monitor.ask_latest``), and the loop only supervises the input.
    runs_windows: ClassVar[bool] = True

    def initial_state(self) -> Any:
        """Episode state before the first window."""
        return None

    @abc.abstractmethod
    def run(self, ask: Ask, images: Sequence[Image.Image], keys: Sequence[Any] | None,
            task: str, state: Any, *, previous_percent: float | None,
            draft: Sequence[int] | None = None) -> Interpretation:
        """Query the model for one window (oldest frame first) and interpret the answer."""
