"""Sliding window of sparsely sampled frames (bounded; the Monitor owns its locking)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from procvlm_ros.core.types import Frame


@dataclass(frozen=True)
class WindowSnapshot:
    """
    The frames of one window, oldest first, padded at the front with the episode's first frame.

    :param sequences: Per frame, its position among the frames kept this episode (1-based);
        with the episode number it is a stable identity for per-frame caches.
    :param version: Increments with every kept frame and every clear; a worker compares it to
        skip windows it has already evaluated.
    """

    frames: tuple[Frame, ...]
    sequences: tuple[int, ...]
    version: int


class FrameWindow:
    """
    Keeps the last ``window_size`` sampled frames.

    ``due`` decides by header stamp whether a frame would be kept (at most one per
    ``sample_period_s``), so the window spans ``window_size * sample_period_s`` seconds whatever
    the camera rate, and a caller can skip decoding frames that would not be kept. Stamps must
    increase (the Monitor rejects the others at the door). Memory: ``window_size`` frames.
    """

    def __init__(self, window_size: int, sample_period_s: float) -> None:
        self._size = max(1, int(window_size))
        self._period_ns = int(round(sample_period_s * 1e9))
        self._frames: deque[tuple[int, Frame]] = deque(maxlen=self._size)
        self._last_kept_ns: int | None = None
        self._sequence = 0
        self._version = 0

    @property
    def size(self) -> int:
        return self._size

    def due(self, stamp_ns: int) -> bool:
        """Whether a frame with this stamp is at least one sample period after the last kept."""
        last = self._last_kept_ns
        # Period 0 keeps every frame, whatever its stamp (files: order is the truth).
        return self._period_ns == 0 or last is None or stamp_ns - last >= self._period_ns

    @property
    def last_kept_ns(self) -> int | None:
        return self._last_kept_ns

    @property
    def period_ns(self) -> int:
        return self._period_ns

    def offer(self, frame: Frame) -> bool:
        """Keep ``frame`` if it is due; return whether it was kept."""
        if not self.due(frame.stamp_ns):
            return False
        self._last_kept_ns = frame.stamp_ns
        self._sequence += 1
        self._version += 1
        self._frames.append((self._sequence, frame))
        return True

    def snapshot(self) -> WindowSnapshot | None:
        """Return the current window, or None when no frame was kept since the last clear."""
        if not self._frames:
            return None
        items = list(self._frames)
        padded = [items[0]] * (self._size - len(items)) + items
        return WindowSnapshot(frames=tuple(f for _, f in padded),
                              sequences=tuple(s for s, _ in padded), version=self._version)

    def clear(self) -> None:
        """Drop every frame; spacing restarts with the next frame."""
        self._frames.clear()
        self._last_kept_ns = None
        self._sequence = 0
        self._version += 1

    def __len__(self) -> int:
        return len(self._frames)
