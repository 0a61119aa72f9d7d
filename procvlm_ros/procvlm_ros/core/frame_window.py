"""Live sliding window of sparsely sampled frames (bounded, thread-safe)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import threading

from procvlm_ros.core.types import Frame


@dataclass(frozen=True)
class WindowSnapshot:
    """
    The frames of one window, oldest first, padded at the front with the episode's first frame.

    :param version: Increments with every accepted frame; a worker compares it to skip windows it
        has already evaluated.
    :param keys: ``(episode, sequence)`` per frame; stable identities for per-frame caches.
    """

    frames: tuple[Frame, ...]
    keys: tuple[tuple[int, int], ...]
    version: int
    episode: int


class FrameWindow:
    """
    Keeps the last ``window_size`` sampled frames of the current episode.

    ``offer`` decides by header stamp whether a frame is kept (at most one per
    ``sample_period_s``), so the window spans ``window_size * sample_period_s`` seconds
    whatever the camera rate. Memory is bounded by ``window_size`` frames.
    """

    def __init__(self, window_size: int, sample_period_s: float) -> None:
        self._size = int(window_size)
        self._period_ns = int(round(sample_period_s * 1e9))
        self._lock = threading.Lock()
        self._frames: deque[tuple[int, Frame]] = deque(maxlen=self._size)
        self._last_kept_ns: int | None = None
        self._sequence = 0
        self._version = 0
        self._episode = 0
        self.last_arrival_ns: int | None = None

    @property
    def episode(self) -> int:
        return self._episode

    def offer(self, frame: Frame, arrival_ns: int) -> bool:
        """Keep ``frame`` if it is at least one sample period after the last kept one."""
        with self._lock:
            self.last_arrival_ns = arrival_ns
            last = self._last_kept_ns
            # A stamp that jumps backwards (bag loop, sim reset) restarts the spacing.
            if last is not None and 0 <= frame.stamp_ns - last < self._period_ns:
                return False
            self._last_kept_ns = frame.stamp_ns
            self._sequence += 1
            self._version += 1
            self._frames.append((self._sequence, frame))
            return True

    def snapshot(self) -> WindowSnapshot | None:
        """Return the current window, or None before the first frame of the episode."""
        with self._lock:
            if not self._frames:
                return None
            items = list(self._frames)
            version, episode = self._version, self._episode
        padded = [items[0]] * (self._size - len(items)) + items
        return WindowSnapshot(
            frames=tuple(f for _, f in padded),
            keys=tuple((episode, seq) for seq, _ in padded),
            version=version, episode=episode)

    def new_episode(self) -> int:
        """Drop every frame and start a new episode; return its number."""
        with self._lock:
            self._frames.clear()
            self._last_kept_ns = None
            self._version += 1
            self._episode += 1
            return self._episode

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
