"""
Windows of synthetic episodes at live cadence, for the speculation tests and benchmark.

Window ``i`` holds the frames at ``window_positions(i, 8)`` (each window one sample later than
the last, first frame repeated at the start), each frame JPEG round-tripped and pre-resized as
the estimator does: what the live node feeds the demo model when it keeps every camera frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EpisodeRun:
    """One episode's task and its windows as requests (previous answer not yet attached)."""

    episode_id: str
    task: str
    windows: list[tuple[list[Any], list[tuple[str, int]]]]  # (images, frame keys)


def episode_run(seed: int, index: int, kind: str = 'success', window_size: int = 8,
                max_windows: int = 0) -> EpisodeRun:
    """Every window (or the first ``max_windows``) of synthetic episode ``(seed, index)``."""
    from procvlm_ros.core.sampling import window_positions
    from procvlm_ros.demo_model.dataset import prepare_frame
    from procvlm_ros.synth.episode import generate_episode
    ep = generate_episode(seed, index, kind)
    count = ep.num_frames if not max_windows else min(max_windows, ep.num_frames)
    frames = [prepare_frame(ep.frame(i)) for i in range(count)]
    windows = []
    for w in range(count):
        pos = window_positions(w, window_size)
        windows.append(([frames[p] for p in pos], [(ep.episode_id, p) for p in pos]))
    return EpisodeRun(ep.episode_id, ep.task.sentence, windows)

