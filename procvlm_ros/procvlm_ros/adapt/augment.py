"""
Training augmentations of ``procvlm-adapt train`` that keep the text true to the images.

- ``mirror``: flip every image left-right and swap the words ``left`` and ``right``.
- ``shift``: move every image of a window sideways by 1/16 or 1/8 of its width (the edge
  column repeated into the gap), as the objects of another episode stand elsewhere; the words
  stay.
- ``colour``: reorder the RGB channels and rename the basic hue words by the same reorder.
  A hue word names the channels that are high in that colour (red = R, yellow = R + G,
  purple/magenta = R + B, ...), so a channel reorder maps each hue word onto another one:
  with R and G swapped, a red ball becomes a green ball in the pixels *and* in the task and
  answer. Renaming matters: with the pixels reordered but the words kept, the adapter learns
  to write the demonstration's colour words whatever the task says (measured, README).

None of them is in the official recipe; all are off by default (the `demo` preset too).
"""

from __future__ import annotations

import random
import re
from typing import Any

from procvlm_ros.core.errors import ConfigError

AUGMENTS = ('mirror', 'colour', 'shift')
SHIFTS = (-0.125, -0.0625, 0.0625, 0.125)  # fractions of the image width
IDENTITY = (0, 1, 2)
CHANNEL_ORDERS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
# Hue words -> the channels that are high in that colour (R 0, G 1, B 2).
HUE_CHANNELS: dict[str, frozenset[int]] = {
    'red': frozenset({0}), 'green': frozenset({1}), 'blue': frozenset({2}),
    'yellow': frozenset({0, 1}), 'cyan': frozenset({1, 2}), 'purple': frozenset({0, 2}),
    'magenta': frozenset({0, 2}),
}
# The word written for a channel set (purple, not magenta: the demo tasks' word).
_HUE_NAME = {channels: name for name, channels in reversed(list(HUE_CHANNELS.items()))}
_HUE_WORD = re.compile(r'\b(' + '|'.join(HUE_CHANNELS) + r')\b', re.IGNORECASE)
_SIDE_WORD = re.compile(r'\b(left|right)\b', re.IGNORECASE)


def parse_augments(spec: str) -> list[str]:
    """``'mirror,colour'`` -> names, checked against ``AUGMENTS``."""
    names = [a.strip() for a in spec.split(',') if a.strip()]
    unknown = sorted(set(names) - set(AUGMENTS))
    if unknown:
        raise ConfigError(f'unknown augment {unknown}; choose from {AUGMENTS}')
    return names


def permute_channels(pixel_values: Any, order: tuple[int, ...]) -> Any:
    """
    Reorder the RGB channels of Qwen-VL patch rows (``C x T x P x P`` each, channel-major):
    output channel ``c`` is input channel ``order[c]``.

    Equal to reordering the image's channels before the processor when its normalisation mean
    and std are the same for the three channels (``check_channel_symmetry``).
    """
    n, width = pixel_values.shape
    return pixel_values.reshape(n, 3, width // 3)[:, list(order)].reshape(n, width)


def hue_renaming(order: tuple[int, ...]) -> dict[str, str]:
    """
    The hue word each hue word becomes when output channel ``c`` shows input channel
    ``order[c]``: a colour high on channels S is afterwards high on ``{c: order[c] in S}``.
    """
    return {word: _HUE_NAME[frozenset(c for c in range(3) if order[c] in channels)]
            for word, channels in HUE_CHANNELS.items()}


def rename_hues(text: str, order: tuple[int, ...]) -> str:
    """``text`` with every hue word renamed for channel ``order`` (capitals kept)."""
    if tuple(order) == IDENTITY:
        return text
    names = hue_renaming(order)
    return _HUE_WORD.sub(lambda m: _same_case(m.group(0), names[m.group(0).lower()]), text)


def swap_sides(text: str) -> str:
    """``left`` <-> ``right`` (capitals kept): the words of a left-right mirrored scene."""
    other = {'left': 'right', 'right': 'left'}
    return _SIDE_WORD.sub(lambda m: _same_case(m.group(0), other[m.group(0).lower()]), text)


def random_channel_order(rng: random.Random) -> tuple[int, ...]:
    """The original order half of the time, otherwise one of the five others."""
    if rng.random() < 0.5:
        return IDENTITY
    return rng.choice(CHANNEL_ORDERS)


def random_shift(rng: random.Random) -> float:
    """No shift half of the time, otherwise one of ``SHIFTS``."""
    if rng.random() < 0.5:
        return 0.0
    return rng.choice(SHIFTS)


def shift_image(image: Any, fraction: float) -> Any:
    """A PIL image moved right by ``fraction`` of its width (left if negative), the edge
    column repeated into the gap, the size kept."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image)
    dx = int(round(fraction * pixels.shape[1]))
    if dx == 0:
        return image
    moved = np.roll(pixels, dx, axis=1)
    if dx > 0:
        moved[:, :dx] = pixels[:, :1]
    else:
        moved[:, dx:] = pixels[:, -1:]
    return Image.fromarray(moved)


def check_channel_symmetry(processor: Any) -> None:
    """:raises ConfigError: If the processor normalises the three channels differently."""
    ip = getattr(processor, 'image_processor', None)
    mean, std = getattr(ip, 'image_mean', None), getattr(ip, 'image_std', None)
    if not mean or not std or len(set(mean)) != 1 or len(set(std)) != 1:
        raise ConfigError('augment colour needs the same normalisation mean and std on the '
                          f'three channels; the processor has mean {mean}, std {std}')


def _same_case(original: str, word: str) -> str:
    if original.isupper() and len(original) > 1:
        return word.upper()
    return word.capitalize() if original[:1].isupper() else word
