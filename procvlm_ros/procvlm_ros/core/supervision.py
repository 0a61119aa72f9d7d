"""
Episode supervision: stall, regression, stale camera, model errors and done, with time passed in.

Stall follows Nav2's SimpleProgressChecker: progress must rise by ``stall_min_delta`` within
``stall_window_s``, else the task is stalled. Each problem raises one intervention event and one
clear event (hysteresis: a stall clears only when progress rises ``stall_min_delta`` above the
value it stalled at; a regression clears only when progress climbs back near its peak), so a
flickering value cannot spam a supervisor. Done needs ``done_consecutive`` estimates at or above
``done_threshold`` spanning at least ``done_hold_s`` (or the model saying it finished, when
``done_from_text``), and stays latched until the next episode.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
import enum
import math
import re
from typing import Any

from procvlm_ros.core.config import param, validate_fields
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.types import ProgressEstimate, Status

NS = 1_000_000_000
# Phrases of a finished answer in the trained format ("Image shows the final result.") and
# common paraphrases; used only when done_from_text is on.
_DONE_TEXT = re.compile(
    r'final result|task (?:is|has been) (?:complete|completed|finished|done)|'
    r'no (?:further|more|remaining) (?:atomic )?(?:actions|steps)', re.IGNORECASE)


def _tunable(description: str, **kwargs: Any) -> dict[str, Any]:
    # Supervision thresholds may be retuned while running, like Nav2's progress checker.
    return param(description, read_only=False, **kwargs)


class Reason(enum.IntEnum):
    """Why an intervention is requested; equals ``procvlm_msgs/Intervention`` REASON_*."""

    STALLED = 0
    REGRESSED = 1
    STALE_INPUT = 2
    MODEL_ERROR = 3


@dataclass(frozen=True)
class SupervisionConfig:
    """Thresholds of the episode logic (all declared node parameters)."""

    stall_min_delta: float = field(default=0.05, metadata=_tunable(
        'Rise in progress (fraction) that counts as moving on.', lo=0.0, hi=1.0))
    stall_window_s: float = field(default=30.0, metadata=_tunable(
        'No rise of stall_min_delta for this long (while not done) means stalled.',
        lo=0.1, hi=86400.0))
    regression_threshold: float = field(default=0.2, metadata=_tunable(
        'Drop below the episode peak (fraction) that counts as a regression; 1 disables.',
        lo=0.0, hi=1.0))
    regression_consecutive: int = field(default=2, metadata=_tunable(
        'Consecutive estimates that far below the peak needed for a regression intervention '
        '(1: the first one; 2 ignores a single misread frame).', lo=1, hi=1000))
    done_threshold: float = field(default=0.95, metadata=_tunable(
        'Progress at or above this counts toward done.', lo=0.0, hi=1.0))
    done_consecutive: int = field(default=2, metadata=_tunable(
        'Consecutive estimates at or above done_threshold needed for done.', lo=1, hi=1000))
    done_hold_s: float = field(default=0.0, metadata=_tunable(
        'Those estimates must also span at least this long.', lo=0.0, hi=3600.0))
    done_from_text: bool = field(default=False, metadata=_tunable(
        'Count an answer saying the task is finished ("final result", no remaining steps) '
        'as an estimate at or above done_threshold.'))
    model_error_count: int = field(default=3, metadata=_tunable(
        'Consecutive failed inferences that raise a model_error intervention.', lo=1, hi=1000))
    smoothing_alpha: float = field(default=0.0, metadata=_tunable(
        'Exponential smoothing of the published value: 0 = off (default), 1 = no memory; '
        'the unsmoothed value stays in Progress.raw_value.', lo=0.0, hi=1.0))

    def __post_init__(self) -> None:
        validate_fields(self)


@dataclass(frozen=True)
class InterventionEvent:
    """An intervention request (``active``) or its clearing."""

    reason: Reason
    active: bool
    stamp_ns: int
    episode_time_s: float
    value: float
    stalled_for_s: float
    remaining_actions: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class SupervisorState:
    """What the supervisor says after an update."""

    value: float  # published value: smoothed when smoothing is on; NaN before any value
    raw_value: float  # the model's value (official carry-forward), before smoothing
    done: bool
    stalled: bool
    stalled_for_s: float
    regressed: bool
    episode_time_s: float
    events: tuple[InterventionEvent, ...] = ()
    done_now: bool = False  # done became true in this update


class EpisodeSupervisor:
    """Feed it estimates and clock ticks; it says done/stalled and emits intervention events."""

    def __init__(self, config: SupervisionConfig | None = None, stale_after_s: float = 5.0):
        if stale_after_s <= 0:
            raise ConfigError('stale_after_s must be > 0')
        self.config = config or SupervisionConfig()
        self.stale_after_s = stale_after_s
        self.reset(0)

    def reset(self, now_ns: int) -> None:
        """Start a new episode (task change, ~/reset)."""
        self._start_ns = now_ns
        self._value = math.nan
        self._raw = math.nan
        self._peak = math.nan
        self._baseline: tuple[float, int] | None = None  # (value, time) of the last rise
        self._done = False
        self._done_streak: list[int] = []
        self._active: dict[Reason, float] = {}  # reason -> value when raised
        self._errors = 0
        self._below_peak = 0  # consecutive estimates more than regression_threshold below
        self._recent: deque[float] = deque(maxlen=self.config.regression_consecutive)
        self._last_frame_ns: int | None = None
        self._remaining: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self._done

    def configure(self, config: SupervisionConfig, stale_after_s: float | None = None) -> None:
        """Apply new thresholds from the next update on; the episode's history is kept."""
        if stale_after_s is not None:
            if stale_after_s <= 0:
                raise ConfigError('stale_after_s must be > 0')
            self.stale_after_s = stale_after_s
        if config.regression_consecutive != self.config.regression_consecutive:
            self._recent = deque(self._recent, maxlen=config.regression_consecutive)
        self.config = config

    def frame_received(self, now_ns: int) -> None:
        self._last_frame_ns = now_ns

    def update(self, estimate: ProgressEstimate, now_ns: int) -> SupervisorState:
        """Take one estimate (any status) at time ``now_ns``."""
        events: list[InterventionEvent] = []
        if estimate.status is Status.ERROR:
            self._errors += 1
            if self._errors >= self.config.model_error_count:
                self._raise(Reason.MODEL_ERROR, now_ns, events, estimate.status_message)
            return self._state(now_ns, events)
        self._errors = 0
        self._clear(Reason.MODEL_ERROR, now_ns, events, 'inference works again')
        if estimate.percent is None:
            return self._state(now_ns, events)
        self._remaining = tuple(estimate.remaining_actions)
        raw = estimate.percent / 100.0
        alpha = self.config.smoothing_alpha
        self._raw = raw
        self._value = raw if alpha <= 0 or math.isnan(self._value) else (
            alpha * raw + (1 - alpha) * self._value)
        done_now = self._update_done(estimate, raw, now_ns)
        self._update_stall(now_ns, events)
        self._update_regression(now_ns, events)
        return self._state(now_ns, events, done_now)

    def tick(self, now_ns: int) -> SupervisorState:
        """Advance time without an estimate: stall and stale-camera checks."""
        events: list[InterventionEvent] = []
        last = self._last_frame_ns
        stale = last is not None and (now_ns - last) / NS > self.stale_after_s
        if stale:
            self._raise(Reason.STALE_INPUT, now_ns, events,
                        f'no camera frame for {(now_ns - last) / NS:.1f} s')
        else:
            self._clear(Reason.STALE_INPUT, now_ns, events, 'camera frames arrive again')
        self._update_stall(now_ns, events)
        return self._state(now_ns, events)

    # ------------------------------------------------------------------ rules
    def _update_done(self, estimate: ProgressEstimate, raw: float, now_ns: int) -> bool:
        if self._done:
            return False
        says_done = self.config.done_from_text and bool(
            _DONE_TEXT.search(estimate.model_output or estimate.reasoning))
        if raw >= self.config.done_threshold or says_done:
            self._done_streak.append(now_ns)
        else:
            self._done_streak.clear()
        streak = self._done_streak
        held = (streak[-1] - streak[0]) / NS >= self.config.done_hold_s if streak else False
        if len(streak) >= self.config.done_consecutive and held:
            self._done = True
            for reason in (Reason.STALLED, Reason.REGRESSED):
                self._active.pop(reason, None)
            return True
        return False

    def _update_stall(self, now_ns: int, events: list[InterventionEvent]) -> None:
        if math.isnan(self._value):
            return
        cfg = self.config
        if self._baseline is None or self._value >= self._baseline[0] + cfg.stall_min_delta:
            self._baseline = (self._value, now_ns)
            self._clear(Reason.STALLED, now_ns, events, 'progress resumed')
            return
        if self._done:
            return
        since = (now_ns - self._baseline[1]) / NS
        if since > cfg.stall_window_s:
            self._raise(Reason.STALLED, now_ns, events,
                        f'progress rose less than {cfg.stall_min_delta:.0%} in {since:.0f} s')

    def _update_regression(self, now_ns: int, events: list[InterventionEvent]) -> None:
        threshold = self.config.regression_threshold
        # The peak only counts values held for regression_consecutive estimates, so a single
        # misread high frame cannot make the estimates after it look like a regression.
        self._recent.append(self._value)
        held = min(self._recent)
        if len(self._recent) == self._recent.maxlen or math.isnan(self._peak):
            self._peak = held if math.isnan(self._peak) else max(self._peak, held)
        if threshold >= 1.0 or self._done:
            return
        drop = self._peak - self._value
        self._below_peak = self._below_peak + 1 if drop > threshold else 0
        if self._below_peak >= self.config.regression_consecutive:
            self._raise(Reason.REGRESSED, now_ns, events,
                        f'progress fell {drop:.0%} below its peak {self._peak:.0%}')
        elif drop <= threshold / 2:
            self._clear(Reason.REGRESSED, now_ns, events, 'progress recovered')

    # ------------------------------------------------------------------ events
    def _raise(self, reason: Reason, now_ns: int, events: list[InterventionEvent],
               message: str) -> None:
        if reason not in self._active:
            self._active[reason] = self._value
            events.append(self._event(reason, True, now_ns, message))

    def _clear(self, reason: Reason, now_ns: int, events: list[InterventionEvent],
               message: str) -> None:
        if self._active.pop(reason, None) is not None:
            events.append(self._event(reason, False, now_ns, message))

    def _event(self, reason: Reason, active: bool, now_ns: int,
               message: str) -> InterventionEvent:
        return InterventionEvent(
            reason=reason, active=active, stamp_ns=now_ns,
            episode_time_s=(now_ns - self._start_ns) / NS, value=self._value,
            stalled_for_s=self._stalled_for(now_ns), remaining_actions=self._remaining,
            message=message)

    def _stalled_for(self, now_ns: int) -> float:
        if Reason.STALLED not in self._active or self._baseline is None:
            return 0.0
        return (now_ns - self._baseline[1]) / NS

    def _state(self, now_ns: int, events: list[InterventionEvent],
               done_now: bool = False) -> SupervisorState:
        return SupervisorState(
            value=self._value, raw_value=self._raw, done=self._done,
            stalled=Reason.STALLED in self._active, stalled_for_s=self._stalled_for(now_ns),
            regressed=Reason.REGRESSED in self._active,
            episode_time_s=(now_ns - self._start_ns) / NS, events=tuple(events),
            done_now=done_now)
