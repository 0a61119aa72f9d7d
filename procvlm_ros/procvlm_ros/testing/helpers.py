"""Small helpers the tests share: synthetic moving frames and cheap checkpoint copies."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np


def moving_frames(n: int, h: int = 48, w: int = 64, *, background: int = 40,
                  brighten: int = 9, speed: int = 2, top: int = 10,
                  colour: tuple[int, int, int] = (250, 30, 30)) -> list[np.ndarray]:
    """
    ``n`` RGB frames: a 20-pixel-high block of ``colour`` sliding right by ``speed`` pixels a
    frame over a grey background that brightens by ``brighten`` a frame.
    """
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), background + brighten * i, np.uint8)
        img[top:top + 20, 2 + speed * i:14 + speed * i] = colour
        frames.append(img)
    return frames


def link_copy(src: Path, dst: Path, skip: Collection[str] = ()) -> Path:
    """Copy a checkpoint folder as symlinks (cheap), leaving out the relative paths in skip."""
    dst.mkdir(parents=True)
    for path in src.rglob('*'):
        rel = path.relative_to(src)
        if path.is_dir() or str(rel) in skip:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).symlink_to(path)
    return dst
