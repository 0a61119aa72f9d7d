"""Small helpers the tests share: synthetic moving frames and cheap checkpoint copies."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np


def moving_frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    """``n`` RGB frames: a red block sliding right over a background that brightens."""
    frames = []
    for i in range(n):
        img = np.full((h, w, 3), 40 + 9 * i, np.uint8)
        img[10:30, 2 + 2 * i:14 + 2 * i] = (250, 30, 30)
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
