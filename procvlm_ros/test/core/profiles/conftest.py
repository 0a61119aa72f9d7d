"""Fixtures of the profile tests: a recording ``ask`` and plain test images."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends.base import GenerationResult


class Asker:
    """An ``ask`` callable answering from a list, recording every call (messages, images)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list, list, object]] = []
        self.prefixes: list[str] = []

    def __call__(self, messages, images, keys, draft, prefix=''):
        self.calls.append((messages, list(images), keys))
        self.prefixes.append(prefix)
        text = self.answers.pop(0)
        return GenerationResult(text=text, generated_tokens=len(text.split()), prompt_tokens=0,
                                latency_s=0.5)


def image(value: int, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.full((h, w, 3), value, np.uint8))


@pytest.fixture
def asker():
    """``asker('answer 1', 'answer 2')`` -> a recording ``ask`` callable."""
    return Asker


@pytest.fixture
def img():
    """``img(value, w, h)`` -> a flat RGB PIL image."""
    return image
