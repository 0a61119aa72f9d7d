"""
The monitor loop, ROS-free: frames in, what to publish out, with all episode state in one place.

window -> estimator -> supervisor -> status. The node, the offline scorer and the evaluation use
this class; they only move data in and out. Time is passed in (``now_ns``), so every scenario
(reset during inference, storms of resets, stale cameras, time jumps) is a fast unit test.

Threading: ``offer``/``reject``/``new_episode``/``configure`` may be called from any thread
while ``step`` runs the model in another; one lock guards the episode state and is never held
during inference. An answer is committed only if its episode is still the current one, so a
reset or task change during inference drops it by construction.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
import enum
import math
import threading
from typing import Any

import numpy as np

from procvlm_ros.core import image as image_ops
from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.config import WindowConfig
from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.frame_window import FrameWindow
from procvlm_ros.core.profiles import Interpretation, TaskProfile
from procvlm_ros.core.prompt import validate_task
from procvlm_ros.core.supervision import (
    EpisodeSupervisor,
    InterventionEvent,
    SupervisionConfig,
    SupervisorState,
)
from procvlm_ros.core.types import Frame, ProgressEstimate, Status

NS = 1_000_000_000
HISTORY_POINTS = 4096  # (time, value) curve points kept per episode
_ARRIVALS = 300  # arrival times kept for the input-rate estimate
_LATENCIES = 200  # inference latencies kept for the percentiles


class BackendState(enum.Enum):
    UNLOADED = 'unloaded'
    LOADING = 'loading'
    READY = 'ready'
    FAILED = 'failed'
    CLOSED = 'closed'


class Admission(enum.Enum):
    """What the door did with a frame (or a frame's stamp, before decoding)."""

    KEPT = 'kept'  # entered the window
    SKIPPED = 'skipped'  # valid, but not due (sparse sampling) or a repeated stamp
    REJECTED = 'rejected'  # invalid: counted, and said in the status
    NEW_EPISODE = 'new_episode'  # time jumped back: a new episode began with this frame


@dataclass(frozen=True)
class StampVerdict:
    admission: Admission
    message: str = ''


@dataclass(frozen=True)
class StepOutput:
    """
    What the caller should publish after one ``step``.

    :param estimate: A window's committed estimate (publish a Progress with it), or None.
    :param status: Set when a status message is due instead (LOADING, WAITING_FOR_FRAMES,
        STALE_INPUT, ERROR); None when there is nothing to say this step.
    :param state: The supervisor's state (value, done, stalled, ...) after this step.
    :param events: Intervention events raised or cleared in this step, in order.
    """

    episode: int
    task: str
    estimate: ProgressEstimate | None = None
    status: Status | None = None
    message: str = ''
    state: SupervisorState | None = None
    events: tuple[InterventionEvent, ...] = ()
    newest: Frame | None = None
    dropped: bool = False  # an answer arrived for an episode that had ended

    @property
    def done_now(self) -> bool:
        return bool(self.state is not None and self.state.done_now)


@dataclass(frozen=True)
class MonitorStats:
    """Counters and rates for diagnostics (a consistent copy)."""

    frames_received: int
    frames_kept: int
    frames_rejected: int
    last_rejection: str
    windows: int
    errors: int
    dropped_answers: int
    time_jumps: int
    input_rate_hz: float
    last_frame_age_s: float
    latency_p50_s: float
    latency_p95_s: float
    decoder_passes: int
    draft_tokens_accepted: int


@dataclass(frozen=True)
class QueryOutput:
    """
    The answer to one question about the newest frame (:meth:`Monitor.ask_latest`).

    :param answer: The profile's interpretation: ``result`` is a ``GroundedAnswer`` (points in
        pixels of ``frame``), ``ok`` False when no answer could be read (``notes`` say why),
        ``text`` every turn's answer.
    :param frame: The frame asked about (its stamp and frame id go on the reply and markers).
    :param frame_age_s: ``now_ns`` minus the frame's stamp, in seconds.
    """

    episode: int
    question: str
    frame: Frame
    answer: Interpretation
    frame_age_s: float


class Monitor:
    """
    Owns the live monitoring loop for one camera and one task at a time.

    :param backend: Any :class:`Backend`; the monitor loads it in :meth:`load` and closes it.
    :param window: Window size, sampling period, JPEG round trip and the stamp rules.
    :param supervision: Stall/regression/done thresholds.
    :param task: Initial task ('' = none yet: ``step`` reports an error until one is set).
    :param stale_after_s: No frame for this long -> STALE_INPUT (and an intervention).
    :param min_inference_period_s: Minimum time between two inferences.
    :param status_period_s: Repeat period of unchanged status messages.
    :param pre_resize_patch_size: qwen-vl-utils pre-resize patch (0 = none).
    :param max_image_pixels: Frames larger than this are refused at the door.
    :param initial_percent: Carry-forward start: None live (nothing before the model speaks),
        0.0 offline (the official records).
    :param live: Check stamps at the door (zero, negative, against the clock, out of order,
        time jumps). Off for files, whose frame order is the truth and whose stamps may start
        at zero.
    :param speculation: Pass the previous answer of the episode to the backend as a draft.
    :param estimator: Use this estimator (its backend and preprocessing settings) instead of
        building one.
    :param profile: The task profile (what is asked, what the answer means); default the
        official ProcVLM progress query. Ignored when ``estimator`` is given.
    """

    def __init__(self, backend: Backend, *, window: WindowConfig | None = None,
                 supervision: SupervisionConfig | None = None, task: str = '',
                 stale_after_s: float = 5.0, min_inference_period_s: float = 0.0,
                 status_period_s: float = 1.0, pre_resize_patch_size: int = 14,
                 max_image_pixels: int = image_ops.DEFAULT_MAX_PIXELS,
                 initial_percent: float | None = None, live: bool = True,
                 speculation: bool = False, estimator: ProgressEstimator | None = None,
                 profile: TaskProfile | None = None) -> None:
        self.backend = backend
        self._window_cfg = window or WindowConfig()
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # one step at a time
        self._backend_state = BackendState.UNLOADED
        self._load_error = ''
        self._estimator = estimator or ProgressEstimator(
            backend, 'unset', jpeg_roundtrip=self._window_cfg.jpeg_roundtrip,
            pre_resize_patch_size=pre_resize_patch_size,
            cache_size=2 * self._window_cfg.window_size, profile=profile)
        self._window = FrameWindow(self._window_cfg.window_size,
                                   self._window_cfg.sample_period_s)
        self._supervisor = EpisodeSupervisor(supervision, stale_after_s)
        self._stale_after_s = stale_after_s
        self._min_period_ns = int(min_inference_period_s * NS)
        self._status_period_ns = int(status_period_s * NS)
        self._max_pixels = int(max_image_pixels)
        self._initial = initial_percent
        self._live = live
        self.speculation = speculation
        self._task = validate_task(task) if task.strip() else ''
        self._episode = 0
        self._history: deque[tuple[float, float]] = deque(maxlen=HISTORY_POINTS)
        self._arrivals: deque[int] = deque(maxlen=_ARRIVALS)
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        self._counts = dict.fromkeys(
            ('received', 'kept', 'rejected', 'windows', 'errors', 'dropped', 'jumps',
             'passes', 'accepted'), 0)
        self._started = False
        self._reset_episode_state(None)

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> bool:
        """Load the backend (blocking); False with :attr:`load_error` set when it fails."""
        with self._lock:
            if self._backend_state in (BackendState.READY, BackendState.CLOSED):
                return self._backend_state is BackendState.READY
            self._backend_state = BackendState.LOADING
        try:
            self.backend.load()
        except ProcVlmError as e:
            with self._lock:
                self._backend_state, self._load_error = BackendState.FAILED, str(e)
            return False
        with self._lock:
            self._backend_state = BackendState.READY
        return True

    def close(self) -> None:
        """Close the backend (waits for a running inference); idempotent."""
        with self._lock:
            self._backend_state = BackendState.CLOSED
        self.backend.close()

    @property
    def backend_state(self) -> BackendState:
        return self._backend_state

    @property
    def load_error(self) -> str:
        return self._load_error

    @property
    def profile(self) -> TaskProfile:
        """The task profile every window is asked and interpreted with."""
        return self._estimator.profile

    # ------------------------------------------------------------------ configuration
    def configure(self, *, window: WindowConfig | None = None,
                  supervision: SupervisionConfig | None = None,
                  stale_after_s: float | None = None,
                  min_inference_period_s: float | None = None,
                  status_period_s: float | None = None) -> None:
        """Apply runtime-settable values; every consumer sees them from the next call on."""
        with self._lock:
            if window is not None:
                fixed = ('window_size', 'sample_period_s', 'jpeg_roundtrip')
                if any(getattr(window, f) != getattr(self._window_cfg, f) for f in fixed):
                    raise ProcVlmError(f'{", ".join(fixed)} are read-only at runtime')
                self._window_cfg = window
            if supervision is not None or stale_after_s is not None:
                self._supervisor.configure(supervision or self._supervisor.config,
                                           stale_after_s)
            if stale_after_s is not None:
                self._stale_after_s = stale_after_s
            if min_inference_period_s is not None:
                self._min_period_ns = int(min_inference_period_s * NS)
            if status_period_s is not None:
                self._status_period_ns = int(status_period_s * NS)

    # ------------------------------------------------------------------ episodes
    @property
    def task(self) -> str:
        return self._task

    @property
    def episode(self) -> int:
        return self._episode

    def new_episode(self, now_ns: int, task: str | None = None) -> int:
        """
        Start a new episode (optionally with a new task) and return its number.

        :raises ConfigError: If ``task`` is given but empty or too long (nothing changes).
        """
        checked = validate_task(task) if task is not None else None
        with self._lock:
            if checked is not None:
                self._task = checked
            self._episode += 1
            self._reset_episode_state(now_ns)
            return self._episode

    def _reset_episode_state(self, now_ns: int | None) -> None:
        # None: the episode starts at the first time the loop sees (construction has no clock).
        self._episode_start_pending = now_ns is None
        self._window.clear()
        self._percent = self._initial  # carry-forward value of this episode
        self._draft: tuple[int, ...] = ()
        self._profile_state = self._estimator.profile.initial_state()
        self._newest_stamp: int | None = None
        self._last_estimate: ProgressEstimate | None = None
        self._state: SupervisorState | None = None
        self._history.clear()
        self._supervisor.reset(now_ns or 0)
        if self._started:
            # The camera is as alive as it was: keep the stale clock running across episodes.
            self._supervisor.frame_received(self._last_arrival)
        self._evaluated_version = -1
        self._last_inference_ns: int | None = None
        self._last_status: tuple[Status, str] | None = None
        self._last_status_ns = 0

    # ------------------------------------------------------------------ input (any thread)
    def check_stamp(self, stamp_ns: int, now_ns: int) -> StampVerdict:
        """
        The stamp part of the door, cheap enough to run before a frame is decoded.

        Returns KEPT when a frame with this stamp would enter the window. Counts nothing;
        :meth:`offer` and :meth:`reject` do.
        """
        with self._lock:
            return self._check_stamp(stamp_ns, now_ns)

    def _check_stamp(self, stamp_ns: int, now_ns: int) -> StampVerdict:
        cfg = self._window_cfg
        if not self._live:
            return StampVerdict(Admission.KEPT if self._window.due(stamp_ns)
                                else Admission.SKIPPED)
        if stamp_ns <= 0:
            return StampVerdict(Admission.REJECTED, f'header stamp is {_fmt_stamp(stamp_ns)}: '
                                'the camera driver does not stamp its frames')
        ahead = (stamp_ns - now_ns) / NS
        if ahead > cfg.max_stamp_future_s:
            return StampVerdict(Admission.REJECTED, f'header stamp is {ahead:.1f} s ahead '
                                'of the node clock (camera clock not synchronised?)')
        age = -ahead
        if cfg.max_stamp_age_s > 0 and age > cfg.max_stamp_age_s:
            return StampVerdict(Admission.REJECTED, f'header stamp is {age:.1f} s older '
                                'than the node clock (playing a bag? use --clock and '
                                'use_sim_time:=true)')
        newest = self._newest_stamp
        if newest is not None and stamp_ns <= newest:
            back = (newest - stamp_ns) / NS
            if stamp_ns == newest:
                return StampVerdict(Admission.SKIPPED)
            if back <= cfg.time_jump_back_s:
                return StampVerdict(Admission.REJECTED,
                                    f'frame stamped {back:.3f} s before the newest one '
                                    '(out of order)')
            if cfg.on_time_jump_back == 'reject':
                return StampVerdict(Admission.REJECTED, f'time jumped back {back:.1f} s; '
                                    'frames are dropped until it passes the newest stamp again')
            return StampVerdict(Admission.NEW_EPISODE, f'time jumped back {back:.1f} s: '
                                'new episode')
        if not self._window.due(stamp_ns):
            return StampVerdict(Admission.SKIPPED)
        return StampVerdict(Admission.KEPT)

    def next_due_ns(self) -> int | None:
        """
        The stamp from which the window keeps a frame again; None when any frame is due.

        Never more than half of ``stale_after_s`` after the last kept frame, so a caller that
        stops frames before this stamp (a DDS content filter) never makes the camera look stale.
        """
        with self._lock:
            last = self._window.last_kept_ns
            if last is None or self._window.period_ns == 0 or not self._live:
                return None
            gap = min(self._window.period_ns, int(self._stale_after_s * NS / 2))
            return last + gap

    def offer(self, frame: Frame, now_ns: int) -> StampVerdict:
        """Take one decoded frame through the door; returns what happened to it."""
        geometry = _geometry_problem(frame.image, self._max_pixels)
        with self._lock:
            self._arrived(now_ns)
            if geometry:
                return self._rejected(geometry)
            verdict = self._check_stamp(frame.stamp_ns, now_ns)
            if verdict.admission is Admission.REJECTED:
                return self._rejected(verdict.message)
            if verdict.admission is Admission.SKIPPED:
                return verdict
            if verdict.admission is Admission.NEW_EPISODE:
                self._episode += 1
                self._counts['jumps'] += 1
                self._reset_episode_state(now_ns)
            self._input_error = ''
            self._newest_stamp = frame.stamp_ns
            self._latest_frame = frame
            self._window.offer(frame)  # due: checked with the stamp above
            self._counts['kept'] += 1
            return verdict

    def note_skipped(self, now_ns: int) -> None:
        """A valid frame the caller did not decode because its stamp was not due."""
        with self._lock:
            self._arrived(now_ns)

    def reject(self, message: str, now_ns: int) -> StampVerdict:
        """A message that could not become a frame (bad encoding, corrupt data, ...)."""
        with self._lock:
            self._arrived(now_ns)
            return self._rejected(message)

    def _start_clock(self, now_ns: int) -> None:
        if self._episode_start_pending:
            self._episode_start_pending = False
            self._supervisor.reset(now_ns)

    def _arrived(self, now_ns: int) -> None:
        self._start_clock(now_ns)
        # The camera is alive even when its data is bad: stale input is about arrivals.
        self._started = True
        self._last_arrival = now_ns
        self._arrivals.append(now_ns)
        self._counts['received'] += 1
        self._supervisor.frame_received(now_ns)

    def _rejected(self, message: str) -> StampVerdict:
        self._counts['rejected'] += 1
        self._input_error = f'rejected frame: {message}'
        return StampVerdict(Admission.REJECTED, message)

    # ------------------------------------------------------------------ the loop (one thread)
    def step(self, now_ns: int) -> StepOutput:
        """
        Advance the loop: supervise, then evaluate the newest window if it is new.

        Blocks for one inference at most; never raises for model or input trouble.
        """
        with self._step_lock:
            with self._lock:
                self._start_clock(now_ns)
                tick = self._supervisor.tick(now_ns)
                if self._state is not None or tick.events:
                    self._state = tick
                plan = self._plan(now_ns)
                if not isinstance(plan, _Plan):
                    return self._status_output(plan, now_ns, tick)
            estimate = self._estimator.evaluate(
                plan.frames, plan.keys, task=plan.task, previous_percent=plan.previous,
                episode=plan.episode, draft_token_ids=plan.draft or None,
                profile_state=plan.profile_state)
            return self._commit(plan, estimate, now_ns, tick.events)

    def _plan(self, now_ns: int) -> _Plan | tuple[Status, str] | None:
        if self._backend_state is BackendState.FAILED:
            return Status.ERROR, f'cannot load backend: {self._load_error}'
        if self._backend_state is not BackendState.READY:
            return Status.LOADING, f'loading {self.backend.name} backend'
        if not self._estimator.profile.runs_windows:
            return self._query_only_status(now_ns)
        if not self._task:
            return Status.ERROR, 'no task: set the task parameter or call ~/set_task'
        snapshot = self._window.snapshot()
        if snapshot is None:
            return Status.WAITING_FOR_FRAMES, self._input_error or 'waiting for frames'
        age = self._input_age_s(now_ns)
        if age > self._stale_after_s:
            return Status.STALE_INPUT, f'no frame for {age:.1f} s'
        if snapshot.version == self._evaluated_version:
            # Frames keep arriving but are unusable: say so, do not go quiet.
            return (Status.ERROR, self._input_error) if self._input_error else None
        last = self._last_inference_ns
        if last is not None and now_ns - last < self._min_period_ns:
            return None
        self._evaluated_version = snapshot.version
        self._last_inference_ns = now_ns
        keys = tuple((self._episode, s) for s in snapshot.sequences)
        return _Plan(self._episode, self._task, snapshot.frames, keys, self._percent,
                     self._draft if self.speculation else (), self._profile_state)

    def _query_only_status(self, now_ns: int) -> tuple[Status, str] | None:
        # A profile that answers on request (ask_latest): no windows, only the input's health.
        if self._latest_frame is None:
            return Status.WAITING_FOR_FRAMES, self._input_error or 'waiting for frames'
        age = self._input_age_s(now_ns)
        if age > self._stale_after_s:
            return Status.STALE_INPUT, f'no frame for {age:.1f} s'
        return (Status.ERROR, self._input_error) if self._input_error else None

    # ------------------------------------------------------------------ questions (any thread)
    def ask_latest(self, question: str, now_ns: int) -> QueryOutput:
        """
        Ask the profile's question about the newest accepted frame (grounded_query profile).

        Runs outside the window loop and may be called from any thread (a service callback):
        the backend's own lock serialises it with the loop's inference, so it waits for a
        running window at most. The frame is prepared as the loop prepares frames (JPEG round
        trip, pre-resize) but not cached (the cache belongs to the loop).

        :raises ProcVlmError: When the profile answers no questions, the question is empty,
            the backend is not loaded, no frame has arrived yet, or inference fails.
        """
        profile = self._estimator.profile
        answer = getattr(profile, 'answer', None)
        if profile.publishes != 'answer' or answer is None:
            raise ProcVlmError(f'the {profile.name} profile answers no questions; use the '
                               'grounded_query profile')
        if not isinstance(question, str) or not question.strip():
            raise ProcVlmError('question must be a non-empty sentence')
        with self._lock:
            if self._backend_state is BackendState.FAILED:
                raise ProcVlmError(f'cannot load backend: {self._load_error}')
            if self._backend_state is not BackendState.READY:
                raise ProcVlmError(f'{self.backend.name} backend is not loaded '
                                   f'({self._backend_state.value})')
            frame, episode = self._latest_frame, self._episode
        if frame is None:
            raise ProcVlmError('no camera frame yet: nothing to ask about')
        question = question.strip()

        def ask(messages: list[dict[str, Any]], images: Sequence[Any],
                keys: Sequence[Any] | None, draft: Sequence[int] | None,
                prefix: str = '') -> GenerationResult:
            return self.backend.generate(GenerationRequest(
                images=list(images), task=question, messages=messages, assistant_prefix=prefix))

        height, width = frame.image.shape[:2]
        interpretation = answer(ask, self._estimator.prepare(frame), question,
                                frame_size=(int(width), int(height)))
        return QueryOutput(episode=episode, question=question, frame=frame,
                           answer=interpretation, frame_age_s=(now_ns - frame.stamp_ns) / NS)

    def _commit(self, plan: _Plan, estimate: ProgressEstimate, now_ns: int,
                tick_events: tuple[InterventionEvent, ...]) -> StepOutput:
        with self._lock:
            if plan.episode != self._episode:
                self._counts['dropped'] += 1
                return StepOutput(episode=self._episode, task=self._task, events=tick_events,
                                  state=self._state, dropped=True)
            self._counts['windows'] += 1
            if estimate.status is Status.ERROR:
                self._counts['errors'] += 1
            else:
                self._latencies.append(estimate.inference_time_s)
                self._percent = estimate.percent
                self._draft = estimate.token_ids
                self._profile_state = estimate.profile_state
                self._counts['passes'] += estimate.decoder_passes
                self._counts['accepted'] += estimate.draft_tokens_accepted
            if estimate.status is Status.OK and self._input_error:
                estimate = replace(estimate, status_message=self._input_error)
            self._last_estimate = estimate
            state = self._supervisor.update(estimate, now_ns)
            self._state = state
            newest = plan.frames[-1]
            if not math.isnan(state.value):
                self._history.append((newest.stamp_ns / NS, state.value))
            self._last_status = None
            return StepOutput(episode=plan.episode, task=plan.task, estimate=estimate,
                              state=state, events=tick_events + state.events, newest=newest)

    def _status_output(self, status: tuple[Status, str] | None, now_ns: int,
                       tick: SupervisorState) -> StepOutput:
        out = StepOutput(episode=self._episode, task=self._task, events=tick.events,
                         state=self._state)
        if status is None:
            return out
        due = (status != self._last_status
               or now_ns - self._last_status_ns >= self._status_period_ns)
        if not due:
            return out
        self._last_status, self._last_status_ns = status, now_ns
        return replace(out, status=status[0], message=status[1])

    def _input_age_s(self, now_ns: int) -> float:
        return (now_ns - self._last_arrival) / NS if self._started else math.inf

    # ------------------------------------------------------------------ views (any thread)
    def view(self) -> MonitorView:
        """A consistent copy of what displays need (curve, state, last estimate, frame)."""
        with self._lock:
            return MonitorView(episode=self._episode, task=self._task,
                               history=tuple(self._history), state=self._state,
                               last_estimate=self._last_estimate,
                               latest_frame=self._latest_frame)

    def stats(self, now_ns: int) -> MonitorStats:
        with self._lock:
            arrivals = list(self._arrivals)
            recent = [t for t in arrivals if now_ns - t <= 10 * NS]
            span = (recent[-1] - recent[0]) / NS if len(recent) > 1 else 0.0
            latencies = np.array(self._latencies, dtype=np.float64)
            c = self._counts
            return MonitorStats(
                frames_received=c['received'], frames_kept=c['kept'],
                frames_rejected=c['rejected'], last_rejection=self._input_error,
                windows=c['windows'], errors=c['errors'], dropped_answers=c['dropped'],
                time_jumps=c['jumps'],
                input_rate_hz=(len(recent) - 1) / span if span > 0 else 0.0,
                last_frame_age_s=self._input_age_s(now_ns),
                latency_p50_s=float(np.percentile(latencies, 50)) if latencies.size else math.nan,
                latency_p95_s=float(np.percentile(latencies, 95)) if latencies.size else math.nan,
                decoder_passes=c['passes'], draft_tokens_accepted=c['accepted'])

    def stale(self, now_ns: int) -> bool:
        with self._lock:
            return self._started and self._input_age_s(now_ns) > self._stale_after_s

    _latest_frame: Frame | None = None
    _input_error = ''
    _last_arrival = 0


@dataclass(frozen=True)
class MonitorView:
    episode: int
    task: str
    history: tuple[tuple[float, float], ...]
    state: SupervisorState | None
    last_estimate: ProgressEstimate | None
    latest_frame: Frame | None


@dataclass(frozen=True)
class _Plan:
    episode: int
    task: str
    frames: tuple[Frame, ...]
    keys: Sequence[Hashable]
    previous: float | None
    draft: tuple[int, ...]
    profile_state: Any = None


def _geometry_problem(image: np.ndarray, max_pixels: int) -> str:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return f'expected an (H, W, 3) uint8 RGB frame, got {image.dtype} {image.shape}'
    try:
        image_ops.check_geometry(int(image.shape[0]), int(image.shape[1]), max_pixels)
    except ProcVlmError as e:
        return str(e)
    return ''


def _fmt_stamp(stamp_ns: int) -> str:
    return 'zero' if stamp_ns == 0 else f'negative ({stamp_ns / NS:.3f} s)'
