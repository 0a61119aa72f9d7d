"""
Draw progress on camera frames (Pillow only, ROS-free).

``overlay_progress`` keeps the camera's size (for ``progress/image`` in rviz2 / Foxglove): a
translucent strip at the bottom with the episode's progress curve, the value and status, and
the next remaining actions. ``panel_frame`` follows the official ProcVLM visualiser layout for
offline videos: the frame enlarged to at least 960x540 above a white panel with the curve and
the model's reasoning.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREEN = (46, 160, 67)
FILL = (180, 230, 190)
RED = (220, 50, 47)
ORANGE = (230, 140, 30)
GRID = (200, 200, 200)
# Share of the panel width given to the curve, as in the official visualiser.
CURVE_SHARE = 0.67


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _curve_points(history: Sequence[tuple[float, float]], box: tuple[int, int, int, int]
                  ) -> list[tuple[float, float]]:
    """Map (time, value in [0, 1]) pairs into ``box`` (x0, y0, x1, y1); NaNs are skipped."""
    x0, y0, x1, y1 = box
    pts = [(t, v) for t, v in history if not math.isnan(v)]
    if not pts:
        return []
    t0, t1 = pts[0][0], pts[-1][0]
    span = (t1 - t0) or 1.0
    return [(x0 + (t - t0) / span * (x1 - x0), y1 - min(max(v, 0.0), 1.0) * (y1 - y0))
            for t, v in pts]


def draw_curve(draw: ImageDraw.ImageDraw, history: Sequence[tuple[float, float]],
               box: tuple[int, int, int, int], *, width: int = 2) -> None:
    """Progress polyline with a light fill, grid at 0/25/50/75/100 % and a dot at the end."""
    x0, y0, x1, y1 = box
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y1 - q * (y1 - y0)
        draw.line([(x0, y), (x1, y)], fill=GRID, width=1)
    pts = _curve_points(history, box)
    if len(pts) >= 2:
        draw.polygon([(pts[0][0], y1), *pts, (pts[-1][0], y1)], fill=FILL)
        draw.line(pts, fill=GREEN, width=width)
    if pts:
        px, py = pts[-1]
        r = max(2, width + 1)
        draw.ellipse([px - r, py - r, px + r, py + r], fill=GREEN)


def status_line(value: float, status: str, done: bool, stalled: bool,
                stalled_for_s: float) -> tuple[str, tuple[int, int, int]]:
    """Headline text and its colour."""
    pct = 'n/a' if math.isnan(value) else f'{100 * value:.1f}%'
    if done:
        return f'{pct}  DONE', GREEN
    if stalled:
        return f'{pct}  STALLED {stalled_for_s:.0f}s', RED
    if status not in ('OK', ''):
        return f'{pct}  {status}', ORANGE
    return pct, (255, 255, 255)


def overlay_progress(rgb: np.ndarray, history: Sequence[tuple[float, float]], *,
                     value: float, status: str = 'OK', done: bool = False,
                     stalled: bool = False, stalled_for_s: float = 0.0,
                     remaining_actions: Sequence[str] = ()) -> np.ndarray:
    """Return a copy of ``rgb`` (same size) with the progress strip drawn on it."""
    img = Image.fromarray(np.ascontiguousarray(rgb)).convert('RGBA')
    w, h = img.size
    strip_h = max(12, int(h * 0.3))
    layer = Image.new('RGBA', img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle([0, h - strip_h, w, h], fill=(0, 0, 0, 150))
    pad = max(2, w // 80)
    text_h = max(8, strip_h // 4)
    headline, colour = status_line(value, status, done, stalled, stalled_for_s)
    draw.text((pad, h - strip_h + 1), headline, fill=colour, font=_font(text_h))
    curve_w = int(w * (0.55 if remaining_actions else 1.0)) - 2 * pad
    draw_curve(draw, history, (pad, h - strip_h + text_h + 2, pad + curve_w, h - pad),
               width=max(1, h // 160))
    if remaining_actions:
        small = _font(max(7, text_h * 3 // 4))
        x = pad * 3 + curve_w
        lines = [f'{i + 1}. {a}' for i, a in enumerate(remaining_actions[:3])]
        for i, line in enumerate(lines):
            draw.text((x, h - strip_h + text_h + 2 + i * (text_h + 1)), line,
                      fill=(255, 255, 255), font=small)
    return np.asarray(Image.alpha_composite(img, layer).convert('RGB'))


def panel_frame(rgb: np.ndarray, history: Sequence[tuple[float, float]], *, value: float,
                frame_index: int, reasoning: str = '', min_size: tuple[int, int] = (960, 540),
                panel_ratio: float = 0.32, show_reasoning: bool = True) -> np.ndarray:
    """Official-visualiser layout: enlarged frame above a white curve + reasoning panel."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    scale = max(min_size[0] / img.width, min_size[1] / img.height, 1.0)
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)),
                         Image.Resampling.LANCZOS)
    w, h = img.size
    panel_h = max(190, int(h * panel_ratio))
    out = Image.new('RGB', (w, h + panel_h), 'white')
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    left_w = int(w * (CURVE_SHARE if show_reasoning else 1.0))
    pct = 'n/a' if math.isnan(value) else f'{100 * value:.1f}%'
    draw.text((16, h + 8), f'Progress {pct}', fill=(20, 20, 20), font=_font(22))
    draw.text((16, h + 36), f'Frame {frame_index}', fill=(90, 90, 90), font=_font(15))
    draw_curve(draw, history, (16, h + 62, left_w - 16, h + panel_h - 14), width=3)
    if show_reasoning:
        x = left_w + 8
        draw.text((x, h + 8), 'Reasoning', fill=(20, 20, 20), font=_font(18))
        chars = max(10, (w - x - 8) // 8)
        lines = textwrap.wrap(reasoning.replace('\n', ' '), chars) or ['(none)']
        max_lines = max(1, (panel_h - 40) // 17)
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1][:chars - 1] + '\u2026']
        for i, line in enumerate(lines):
            draw.text((x, h + 36 + 17 * i), line, fill=(40, 40, 40), font=_font(14))
    return np.asarray(out)
