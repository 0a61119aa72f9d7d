"""Helpers the profiles share: message parts, placeholder rendering, tolerant number reading."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import math
import re
from typing import Any

from PIL import Image

# What an image part looks like when a chat is written as one string (the public prompt
# formats write their images as this placeholder: VLAC's ``<image>``, ViGoRL's ``<image>``).
IMAGE_PLACEHOLDER = '<image>'

# A signed decimal number, optionally with an exponent ("1e3"); words like nan/inf are read by
# the callers separately so that they can say why the value was refused.
NUMBER = re.compile(r'[+\-\u2212]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+\-]?\d+)?')
_NON_FINITE = re.compile(r'[+\-]?\b(?:nan|inf|infinity)\b', re.IGNORECASE)


def text_part(text: str) -> dict[str, Any]:
    return {'type': 'text', 'text': text}


def image_part(image: Image.Image | None = None) -> dict[str, Any]:
    return {'type': 'image', 'image': image} if image is not None else {'type': 'image'}


def interleave(pieces: Iterable[str | Image.Image]) -> list[dict[str, Any]]:
    """Content parts from strings and images in order; adjacent strings join, empty ones drop."""
    parts: list[dict[str, Any]] = []
    for piece in pieces:
        if isinstance(piece, Image.Image):
            parts.append(image_part(piece))
        elif piece and parts and parts[-1]['type'] == 'text':
            parts[-1] = text_part(parts[-1]['text'] + piece)
        elif piece:
            parts.append(text_part(piece))
    return parts


def render_placeholders(messages: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """
    ``(role, text)`` per message with every image part written as ``<image>``.

    This is the form the public prompt formats are written in; the goldens compare against it,
    independent of any checkpoint's chat template.
    """
    out = []
    for message in messages:
        content = message['content']
        if isinstance(content, str):
            out.append((message['role'], content))
            continue
        text = ''.join(IMAGE_PLACEHOLDER if p['type'] == 'image' else p['text'] for p in content)
        out.append((message['role'], text))
    return out


def count_images(messages: Sequence[dict[str, Any]]) -> int:
    return sum(1 for m in messages if not isinstance(m['content'], str)
               for p in m['content'] if p['type'] == 'image')


def first_number(text: str) -> tuple[float | None, list[str]]:
    """
    The first finite number in ``text`` and notes on anything suspicious.

    Never raises: no number, a non-finite one (``nan``, ``inf``, ``1e999``) or an unreadable
    one gives None with a note; more than one number is noted (the first is used).
    """
    notes: list[str] = []
    numbers = list(NUMBER.finditer(text))
    non_finite = _NON_FINITE.search(text)
    if non_finite and (not numbers or non_finite.start() < numbers[0].start()):
        return None, [f'answer holds a non-finite value {non_finite.group(0)!r}']
    if not numbers:
        return None, ['answer holds no number']
    if len(numbers) > 1:
        notes.append(f'answer holds {len(numbers)} numbers; the first is used')
    token = numbers[0].group(0).replace('\u2212', '-')
    try:
        value = float(token)
    except ValueError:  # pragma: no cover - the pattern only matches float syntax
        return None, [*notes, f'unreadable number {token!r}']
    if not math.isfinite(value):
        return None, [*notes, f'number {token[:40]!r} is not finite']
    return value, notes


def resize_exact(image: Image.Image, size: tuple[int, int],
                 resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """``image`` at exactly ``size`` (width, height); the same object when it already is."""
    if image.size == size:
        return image
    return image.convert('RGB').resize(size, resample)
