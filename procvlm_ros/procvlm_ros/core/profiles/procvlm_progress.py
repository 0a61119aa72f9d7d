"""``procvlm_progress``: the official ProcVLM query, unchanged (procvlm-reference.md 1.5-1.7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from procvlm_ros.core.parsing import parse_answer
from procvlm_ros.core.profiles.base import Ask, Interpretation, TaskProfile
from procvlm_ros.core.prompt import build_messages, build_prompt


class ProcVlmProgressProfile(TaskProfile):
    """
    Window of frames + task -> remaining actions and ``<progress>XX%</progress>``.

    :param prompt_layout: ``images_first`` (official transformers path) or ``text_first``
        (official vLLM path).
    """

    name: ClassVar[str] = 'procvlm_progress'
    publishes: ClassVar[str] = 'progress'
    drafts_from_previous: ClassVar[bool] = True

    def __init__(self, prompt_layout: str = 'images_first') -> None:
        self.prompt_layout = prompt_layout

    def messages(self, images: Sequence[Image.Image], task: str) -> list[dict[str, Any]]:
        """The single user turn of the official code (no system message)."""
        return build_messages(list(images), build_prompt(task), layout=self.prompt_layout)

    def run(self, ask: Ask, images: Sequence[Image.Image], keys: Sequence[Any] | None,
            task: str, state: Any, *, previous_percent: float | None,
            draft: Sequence[int] | None = None) -> Interpretation:
        result = ask(self.messages(images, task), images, keys, draft)
        parsed = parse_answer(result.text)
        return Interpretation(
            percent=parsed.percent, result=parsed, state=state, ok=parsed.percent is not None,
            text=result.text, last=result, remaining_actions=parsed.remaining_actions,
            reasoning=parsed.reasoning, notes=tuple(parsed.notes),
            generated_tokens=result.generated_tokens, latency_s=result.latency_s)
