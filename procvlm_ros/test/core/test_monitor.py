"""The core monitor loop with injected time: episodes, the door, runtime settings, statuses."""

from __future__ import annotations

from collections.abc import Callable
import threading

import numpy as np
import pytest

from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.config import WindowConfig
from procvlm_ros.core.errors import BackendUnavailableError, ConfigError
from procvlm_ros.core.monitor import Admission, BackendState, Monitor
from procvlm_ros.core.supervision import Reason, SupervisionConfig
from procvlm_ros.core.types import Frame, Status

S = 1_000_000_000
T0 = 1_000 * S  # a plausible node clock


def tagged(p: float) -> str:
    return f'The following actions are required:\n1. wipe\n<progress>{p}%</progress>'


class Probe(Backend):
    """Answers from a list (or a function of the request); can run a hook mid-inference."""

    name = 'probe'

    def __init__(self, answers: list[str] | Callable[[GenerationRequest], str] | None = None,
                 fail_load: bool = False) -> None:
        super().__init__()
        self.answers = answers if answers is not None else [tagged(50)]
        self.fail_load = fail_load
        self.requests: list[GenerationRequest] = []
        self.during: Callable[[], None] | None = None
        self.calls = 0

    def _load(self) -> None:
        if self.fail_load:
            raise BackendUnavailableError('checkpoint /x has no config.json')

    def _generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        if callable(self.answers):
            text = self.answers(request)
        else:
            text = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return GenerationResult(text=text, generated_tokens=3, prompt_tokens=10,
                                token_ids=[self.calls, 7, 8], decoder_passes=3)

    def _close(self) -> None:
        pass


def frame(t_s: float, h: int = 32, w: int = 32, index: int = 0) -> Frame:
    return Frame(image=np.full((h, w, 3), index % 255, np.uint8), stamp_ns=T0 + int(t_s * S),
                 index=index)


def make(answers=None, *, task='wipe the table', window=None, supervision=None, load=True,
         **kwargs) -> tuple[Monitor, Probe]:
    backend = Probe(answers)
    monitor = Monitor(backend, window=window or WindowConfig(window_size=4, sample_period_s=1.0),
                      supervision=supervision, task=task, **kwargs)
    if load:
        assert monitor.load()
    return monitor, backend


def at(t_s: float) -> int:
    return T0 + int(t_s * S)


def test_a_window_becomes_an_estimate_with_the_supervisor_state():
    monitor, backend = make([tagged(30)])
    assert monitor.offer(frame(0.0), at(0.0)).admission is Admission.KEPT
    out = monitor.step(at(0.1))
    assert out.estimate is not None and out.estimate.percent == 30.0
    assert out.state.value == pytest.approx(0.3)
    assert out.episode == 0 and out.estimate.episode == 0 and out.task == 'wipe the table'
    assert out.newest.stamp_ns == at(0.0)
    # The same window is not evaluated twice.
    assert monitor.step(at(0.2)).estimate is None and backend.calls == 1


def test_statuses_before_estimates_loading_no_task_waiting_stale():
    backend = Probe()
    monitor = Monitor(backend, task='')
    out = monitor.step(at(0))
    assert out.status is Status.LOADING and monitor.backend_state is BackendState.UNLOADED
    assert monitor.load()
    assert monitor.step(at(1)).status is Status.ERROR  # no task
    monitor.new_episode(at(1), task='wipe')
    assert monitor.step(at(2)).status is Status.WAITING_FOR_FRAMES
    monitor.offer(frame(2.0), at(2.0))
    assert monitor.step(at(2.1)).estimate is not None
    out = monitor.step(at(9.0))
    assert out.status is Status.STALE_INPUT and 'no frame for 7.0 s' in out.message
    assert [e.reason for e in out.events] == [Reason.STALE_INPUT]


def test_failed_load_is_an_error_status_naming_the_problem():
    monitor = Monitor(Probe(), task='x')
    monitor.backend.fail_load = True
    assert not monitor.load()
    out = monitor.step(at(0))
    assert out.status is Status.ERROR and 'has no config.json' in out.message


def test_unchanged_status_is_repeated_at_the_status_period_only():
    monitor, _ = make(status_period_s=1.0)
    assert monitor.step(at(0.0)).status is Status.WAITING_FOR_FRAMES
    assert monitor.step(at(0.5)).status is None
    assert monitor.step(at(1.0)).status is Status.WAITING_FOR_FRAMES


def test_reset_during_inference_drops_the_old_answer_and_its_carry_forward():
    # The leak: the old task's 80 % became the new task's CARRIED_FORWARD value.
    monitor, backend = make([tagged(80), 'no tag at all'])
    monitor.offer(frame(0.0), at(0.0))
    backend.during = lambda: monitor.new_episode(at(0.05), task='fold the towel')
    out = monitor.step(at(0.1))
    assert out.dropped and out.estimate is None and monitor.episode == 1
    monitor.offer(frame(1.0), at(1.0))
    out = monitor.step(at(1.1))
    assert out.estimate.status is Status.CARRIED_FORWARD
    assert out.estimate.percent is None and np.isnan(out.state.value)
    assert out.estimate.episode == 1 and out.task == 'fold the towel'
    assert backend.requests[-1].task == 'fold the towel'
    assert monitor.stats(at(2)).dropped_answers == 1


def test_old_episode_frames_never_reach_a_new_episode_window():
    monitor, backend = make([tagged(10)], window=WindowConfig(window_size=4, sample_period_s=0))
    for i in range(3):
        monitor.offer(frame(i * 0.1, index=i + 1), at(i * 0.1))
    monitor.new_episode(at(0.3))
    monitor.offer(frame(0.4, index=99), at(0.4))
    monitor.step(at(0.5))
    request = backend.requests[-1]
    assert {k[0] for k in request.frame_keys} == {1}  # cache keys carry the new episode


def test_reset_while_loading_counts_once_and_estimates_carry_that_episode():
    backend = Probe([tagged(40)])
    monitor = Monitor(backend, task='wipe')
    assert monitor.new_episode(at(0)) == 1
    assert monitor.new_episode(at(0)) == 2
    monitor.load()
    monitor.offer(frame(1.0), at(1.0))
    out = monitor.step(at(1.1))
    assert out.estimate.episode == 2 == out.episode == monitor.episode


def test_a_storm_of_resets_keeps_one_episode_counter():
    monitor, backend = make(lambda r: tagged(50), window=WindowConfig(window_size=2,
                                                                      sample_period_s=0))
    stop = threading.Event()
    answered: list[int] = []

    def storm() -> None:
        for _ in range(300):
            answered.append(monitor.new_episode(at(0)))
        stop.set()

    thread = threading.Thread(target=storm)
    thread.start()
    published = []
    t = 0.0
    while not stop.is_set() or t < 0.05:
        t += 0.001
        monitor.offer(frame(t), at(t))
        out = monitor.step(at(t))
        if out.estimate is not None:
            published.append((out.estimate.episode, out.episode))
    thread.join()
    assert answered == list(range(1, 301)) and monitor.episode == 300
    assert all(e == o for e, o in published)
    assert [e for e, _ in published] == sorted(e for e, _ in published)
    monitor.offer(frame(t + 1), at(t + 1))
    assert monitor.step(at(t + 1)).estimate.episode == 300


def test_empty_or_huge_task_is_refused_and_changes_nothing():
    monitor, _ = make()
    with pytest.raises(ConfigError):
        monitor.new_episode(at(0), task='   ')
    with pytest.raises(ConfigError):
        monitor.new_episode(at(0), task='x' * 100_000)
    assert monitor.episode == 0 and monitor.task == 'wipe the table'


def test_runtime_stale_after_reaches_the_supervisor():
    # The issue: stale_after_s set to 2 s at runtime changed the status but not the supervisor.
    monitor, _ = make(stale_after_s=5.0)
    monitor.offer(frame(0.0), at(0.0))
    monitor.step(at(0.1))
    monitor.configure(stale_after_s=2.0)
    out = monitor.step(at(4.0))
    assert out.status is Status.STALE_INPUT
    assert [(e.reason, e.active) for e in out.events] == [(Reason.STALE_INPUT, True)]


def test_supervision_thresholds_retune_at_runtime():
    monitor, _ = make(lambda r: tagged(20),
                      supervision=SupervisionConfig(stall_window_s=30.0), stale_after_s=100.0)
    events = []
    for t in range(0, 12):
        monitor.offer(frame(float(t)), at(t))
        events += monitor.step(at(t)).events
        if t == 4:
            monitor.configure(supervision=SupervisionConfig(stall_window_s=5.0))
    stalled = [e for e in events if e.reason is Reason.STALLED and e.active]
    assert len(stalled) == 1 and 5.0 < stalled[0].episode_time_s <= 7.0


def test_window_size_is_read_only_at_runtime():
    monitor, _ = make()
    with pytest.raises(Exception, match='read-only'):
        monitor.configure(window=WindowConfig(window_size=16))


@pytest.mark.parametrize(('stamp_s', 'why'), [
    (None, 'zero'), (-5.0, 'negative'), (1e6, 'ahead of the node clock'),
    (-60.0, 'older than the node clock')])
def test_bad_stamps_are_rejected_at_the_door(stamp_s, why):
    monitor, backend = make()
    if stamp_s is None:
        bad = Frame(image=np.zeros((32, 32, 3), np.uint8), stamp_ns=0)
    elif stamp_s < -10:
        bad = frame(stamp_s)
    elif stamp_s < 0:
        bad = Frame(image=np.zeros((32, 32, 3), np.uint8), stamp_ns=int(stamp_s * S))
    else:
        bad = frame(stamp_s)
    verdict = monitor.offer(bad, at(0))
    assert verdict.admission is Admission.REJECTED and why in verdict.message
    out = monitor.step(at(0.1))
    assert out.status is Status.WAITING_FOR_FRAMES and why in out.message
    assert backend.calls == 0 and monitor.stats(at(0.1)).frames_rejected == 1


def test_out_of_order_frames_are_rejected_and_windows_stay_in_time_order():
    monitor, backend = make(lambda r: tagged(50),
                            window=WindowConfig(window_size=4, sample_period_s=0))
    rng = np.random.default_rng(0)
    stamps = np.cumsum(rng.uniform(0.01, 0.05, 200))
    stamps[::7] -= 0.3  # late deliveries, less than time_jump_back_s behind
    for i, t in enumerate(stamps):
        monitor.offer(frame(float(t), index=i), at(float(stamps.max())))
        monitor.step(at(float(stamps.max())))
    assert monitor.stats(at(20)).frames_rejected > 0
    for request in backend.requests:
        keys = [k[1] for k in request.frame_keys]
        assert keys == sorted(keys)
    assert monitor.stats(at(20)).time_jumps == 0


def test_time_jump_back_starts_a_new_episode_by_default():
    monitor, _ = make(window=WindowConfig(window_size=4, sample_period_s=0))
    monitor.offer(frame(100.0), at(100.0))
    monitor.step(at(100.0))
    verdict = monitor.offer(frame(3.0), at(3.0))  # bag looped (with its /clock)
    assert verdict.admission is Admission.NEW_EPISODE and monitor.episode == 1
    out = monitor.step(at(3.1))
    assert out.estimate.episode == 1 and out.estimate.frame_stamps_ns == (at(3.0),) * 4


def test_time_jump_back_can_reject_until_time_passes_the_newest_stamp():
    window = WindowConfig(window_size=4, sample_period_s=0, on_time_jump_back='reject')
    monitor, _ = make(window=window)
    monitor.offer(frame(50.0), at(50.0))
    verdict = monitor.offer(frame(3.0), at(3.0))
    assert verdict.admission is Admission.REJECTED and 'time jumped back 47.0 s' in verdict.message
    assert monitor.offer(frame(50.5), at(50.5)).admission is Admission.KEPT
    assert monitor.episode == 0


def test_a_repeated_stamp_is_skipped_not_rejected():
    monitor, _ = make(window=WindowConfig(window_size=4, sample_period_s=0))
    assert monitor.offer(frame(1.0), at(1.0)).admission is Admission.KEPT
    assert monitor.offer(frame(1.0), at(1.0)).admission is Admission.SKIPPED
    assert monitor.stats(at(1)).frames_rejected == 0


def test_clock_checks_are_off_for_files():
    monitor, _ = make(live=False)
    assert monitor.offer(frame(-900.0), at(0)).admission is Admission.KEPT  # 900 s old


@pytest.mark.parametrize(('h', 'w'), [(3, 4000), (4000, 3), (1, 1), (0, 10)])
def test_frames_the_model_cannot_take_are_rejected_at_the_door(h, w):
    monitor, backend = make(lambda r: tagged(50), stale_after_s=100.0)
    image = np.zeros((h, w, 3), np.uint8)
    for i in range(20):
        verdict = monitor.offer(Frame(image=image, stamp_ns=at(i * 0.5)), at(i * 0.5))
        assert verdict.admission is Admission.REJECTED
        out = monitor.step(at(i * 0.5))
        assert out.estimate is None and not any(
            e.reason is Reason.MODEL_ERROR for e in out.events)
    assert backend.calls == 0
    # Valid frames still go through afterwards; the camera never looked stale.
    monitor.offer(frame(11.0), at(11.0))
    assert monitor.step(at(11.0)).estimate.status is Status.OK


def test_rejected_frames_keep_the_camera_alive_and_are_reported():
    monitor, _ = make(stale_after_s=2.0)
    monitor.offer(frame(0.0), at(0.0))
    monitor.step(at(0.0))
    for i in range(1, 10):
        monitor.reject('unsupported encoding yuv422', at(i))
        out = monitor.step(at(i))
        assert out.status in (Status.ERROR, None)
        assert not any(e.reason is Reason.STALE_INPUT for e in out.events)
    out = monitor.step(at(9.5))
    stats = monitor.stats(at(9.5))
    assert stats.frames_rejected == 9 and 'yuv422' in stats.last_rejection


def test_sparse_sampling_keeps_one_frame_per_period_and_predicts_it_from_the_stamp():
    monitor, backend = make(lambda r: tagged(50))
    kept = 0
    for i in range(90):  # 30 Hz for 3 s
        t = i / 30
        verdict = monitor.check_stamp(at(t), at(t))
        if verdict.admission is Admission.KEPT:
            kept += monitor.offer(frame(t), at(t)).admission is Admission.KEPT
        else:
            monitor.note_skipped(at(t))
    assert kept == 3
    stats = monitor.stats(at(3))
    assert stats.frames_received == 90 and stats.frames_kept == 3
    assert stats.input_rate_hz == pytest.approx(30, rel=0.05)


def test_model_errors_are_statuses_and_raise_one_intervention():
    monitor, _ = make(['!'] * 10, supervision=SupervisionConfig(model_error_count=3),
                      window=WindowConfig(window_size=2, sample_period_s=0))
    monitor.backend.answers = lambda r: (_ for _ in ()).throw(RuntimeError('cuda oom'))
    raised = []
    for i in range(5):
        monitor.offer(frame(i * 0.1), at(i * 0.1))
        out = monitor.step(at(i * 0.1))
        assert out.estimate.status is Status.ERROR and 'cuda oom' in out.estimate.status_message
        raised += [e for e in out.events if e.active]
    assert [e.reason for e in raised] == [Reason.MODEL_ERROR]


def test_the_previous_answer_is_the_next_draft_and_a_new_episode_clears_it():
    monitor, backend = make(lambda r: tagged(50), speculation=True,
                            window=WindowConfig(window_size=2, sample_period_s=0))
    monitor.offer(frame(0.0), at(0.0))
    monitor.step(at(0.0))
    monitor.offer(frame(0.1), at(0.1))
    monitor.step(at(0.1))
    assert backend.requests[0].draft_token_ids is None
    assert list(backend.requests[1].draft_token_ids) == [1, 7, 8]
    monitor.new_episode(at(0.2))
    monitor.offer(frame(0.3), at(0.3))
    monitor.step(at(0.3))
    assert backend.requests[2].draft_token_ids is None
    assert monitor.stats(at(1)).decoder_passes == 9


def test_history_and_view_follow_the_episode():
    monitor, _ = make(lambda r: tagged(10 * len(r.images)), stale_after_s=100.0)
    for t in range(3):
        monitor.offer(frame(float(t)), at(t))
        monitor.step(at(t))
    view = monitor.view()
    assert len(view.history) == 3 and view.latest_frame.stamp_ns == at(2)
    monitor.new_episode(at(3))
    view = monitor.view()
    assert view.history == () and view.last_estimate is None and view.episode == 1
