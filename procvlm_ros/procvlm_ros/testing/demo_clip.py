"""
A rendered table-top clip (a gripper stacks three blocks) used as the demo camera stream.

Plain numpy drawing: no assets, deterministic, any size. It is a stand-in scene for demos and
tests, not a benchmark of visual realism.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_COLOURS = ((220, 60, 50), (60, 160, 70), (50, 90, 210))
_TABLE = (170, 140, 100)
_WALL = (225, 225, 230)


def _rect(img: np.ndarray, cx: float, cy: float, w: float, h: float, colour: tuple) -> None:
    H, W = img.shape[:2]
    x0, x1 = int(max(cx - w / 2, 0)), int(min(cx + w / 2, W))
    y0, y1 = int(max(cy - h / 2, 0)), int(min(cy + h / 2, H))
    img[y0:y1, x0:x1] = colour


def stacking_frames(seconds: float = 12.0, fps: float = 10.0, width: int = 320,
                    height: int = 240) -> Iterator[np.ndarray]:
    """Yield RGB frames: each block is carried from the left onto a stack on the right."""
    n = int(seconds * fps)
    block = height / 8
    table_y = height * 0.75
    starts = [(width * (0.15 + 0.12 * i), table_y - block / 2) for i in range(3)]
    stack_x = width * 0.75
    for t in range(n):
        phase = 3 * t / max(n - 1, 1)  # 0..3: block k moves during [k, k+1)
        img = np.empty((height, width, 3), np.uint8)
        img[:] = _WALL
        img[int(table_y):] = _TABLE
        gripper = (width / 2, height * 0.15)
        for k, (sx, sy) in enumerate(starts):
            tx, ty = stack_x, table_y - block / 2 - k * block
            a = float(np.clip(phase - k, 0.0, 1.0))
            lift = np.sin(np.pi * a) * height * 0.25  # arc over the table
            x, y = sx + (tx - sx) * a, sy + (ty - sy) * a - lift
            _rect(img, x, y, block, block, _COLOURS[k])
            if 0.0 < a < 1.0:
                gripper = (x, y - block)
        gx, gy = gripper
        _rect(img, gx, gy / 2, block * 0.25, gy, (90, 90, 90))  # arm from the top
        _rect(img, gx, gy, block * 1.3, block * 0.3, (40, 40, 40))  # fingers
        yield img
