"""Plain data types shared by the core, the node and the offline tools."""

from __future__ import annotations

from dataclasses import dataclass, field
import enum
import math
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Frame:
    """
    One camera frame as the core sees it.

    :param image: ``H x W x 3`` ``uint8`` RGB array (C-contiguous).
    :param stamp_ns: Capture time in nanoseconds (header stamp for ROS, PTS-derived offline).
    :param frame_id: Camera frame id, copied to outputs.
    :param index: Source frame index offline, arrival sequence number live.
    """

    image: np.ndarray
    stamp_ns: int
    frame_id: str = ''
    index: int = -1


class Status(enum.IntEnum):
    """Meaning of an estimate; values equal the ``procvlm_msgs/Progress`` STATUS_* constants."""

    OK = 0
    CARRIED_FORWARD = 1
    WAITING_FOR_FRAMES = 2
    STALE_INPUT = 3
    LOADING = 4
    ERROR = 5


@dataclass(frozen=True)
class ProgressEstimate:
    """
    Result of one window.

    Percentages (0-100) follow the official ProcVLM records; ``value`` is the fraction [0, 1]
    that ROS messages carry.
    """

    status: Status
    percent: float | None
    parsed_percent: float | None
    progress_source: str
    remaining_actions: tuple[str, ...] = ()
    reasoning: str = ''
    model_output: str = ''
    status_message: str = ''
    frame_stamps_ns: tuple[int, ...] = ()
    frame_indices: tuple[int, ...] = ()
    inference_time_s: float = 0.0
    generated_tokens: int = 0
    episode: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    token_ids: tuple[int, ...] = ()  # generated ids: the next window's speculative draft
    decoder_passes: int = 0
    draft_tokens_accepted: int = 0
    # The task profile's typed result (ParsedAnswer, critic step, action, ...), its episode
    # state after this window (the Monitor keeps it only while the episode is current), and
    # the profile's name.
    result: Any = None
    profile_state: Any = None
    profile: str = 'procvlm_progress'

    @property
    def value(self) -> float:
        """Progress as a fraction in [0, 1]; NaN when there is none yet."""
        return math.nan if self.percent is None else self.percent / 100.0

    @property
    def raw_value(self) -> float:
        """This window's own parsed value as a fraction; NaN when nothing parsed."""
        return math.nan if self.parsed_percent is None else self.parsed_percent / 100.0
