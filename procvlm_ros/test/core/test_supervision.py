import math

import pytest

from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.supervision import EpisodeSupervisor, Reason, SupervisionConfig
from procvlm_ros.core.types import ProgressEstimate, Status

S = 1_000_000_000


def est(percent, status=Status.OK, text='', actions=()):
    return ProgressEstimate(status=status, percent=percent, parsed_percent=percent,
                            progress_source='model', remaining_actions=tuple(actions),
                            model_output=text, status_message='boom' if status == 5 else '')


def run(sup, values, t0=0.0, dt=1.0):
    """Feed values one per dt seconds; return (states, events)."""
    states, events = [], []
    for i, v in enumerate(values):
        st = sup.update(est(v), int((t0 + i * dt) * S))
        states.append(st)
        events.extend(st.events)
    return states, events


def cfg(**kw):
    base = dict(stall_min_delta=0.05, stall_window_s=5.0, regression_threshold=0.2,
                done_threshold=0.95, done_consecutive=2, done_hold_s=0.0)
    base.update(kw)
    return SupervisionConfig(**base)


def test_no_stall_during_steady_progress():
    sup = EpisodeSupervisor(cfg())
    states, events = run(sup, [i * 4.0 for i in range(20)], dt=2.0)  # +4 % every 2 s
    assert not any(s.stalled for s in states) and events == []


def test_stall_after_window_once_then_clears_when_progress_resumes():
    sup = EpisodeSupervisor(cfg())
    states, events = run(sup, [10, 20] + [22] * 10 + [30], dt=1.0)
    stalled = [i for i, s in enumerate(states) if s.stalled]
    # last rise at t=1 s; window 5 s -> stalled from t=7 s (elapsed 6 > 5) until the rise at 12
    assert stalled == [7, 8, 9, 10, 11]
    assert [(e.reason, e.active) for e in events] == [(Reason.STALLED, True),
                                                      (Reason.STALLED, False)]
    assert states[9].stalled_for_s == pytest.approx(8.0)
    assert events[0].value == pytest.approx(0.22) and events[0].episode_time_s == 7.0


def test_flicker_below_delta_does_not_spam():
    sup = EpisodeSupervisor(cfg())
    values = [20] * 8 + [23, 21, 24, 20, 23, 22, 24, 21]  # never +5 over the stall value
    _, events = run(sup, values)
    assert [(e.reason, e.active) for e in events] == [(Reason.STALLED, True)]


def test_stall_detected_by_tick_without_estimates():
    sup = EpisodeSupervisor(cfg())
    sup.update(est(40), 0)
    assert not sup.tick(5 * S).stalled
    st = sup.tick(6 * S)
    assert st.stalled and st.events[0].reason is Reason.STALLED


def test_regression_once_with_hysteresis():
    sup = EpisodeSupervisor(cfg(stall_window_s=100))
    states, events = run(sup, [10, 30, 50, 50, 25, 20, 28, 35, 45, 50])
    assert [(e.reason, e.active) for e in events] == [(Reason.REGRESSED, True),
                                                      (Reason.REGRESSED, False)]
    assert [s.regressed for s in states].index(True) == 5  # second estimate below 30 %
    assert 'below its peak 50%' in events[0].message
    assert events[1].value == pytest.approx(0.45)  # within threshold/2 of the peak


def test_one_misread_frame_is_not_a_regression():
    # A single low frame, and a single high frame followed by the true values: neither raises
    # (regression_consecutive 2); with 1 the low frame alone does.
    values = [10, 30, 50, 50, 20, 52, 55, 90, 56, 57, 58]
    _, events = run(EpisodeSupervisor(cfg(stall_window_s=100)), values)
    assert events == []
    _, events = run(EpisodeSupervisor(cfg(stall_window_s=100, regression_consecutive=1)),
                    values)
    assert [(e.reason, e.active) for e in events][0] == (Reason.REGRESSED, True)


def test_done_latches_until_reset():
    sup = EpisodeSupervisor(cfg())
    states, _ = run(sup, [50, 96, 90, 97, 99, 40, 10])
    assert [s.done for s in states] == [False, False, False, False, True, True, True]
    assert [s.done_now for s in states].count(True) == 1
    # Done episodes do not stall or regress.
    assert not sup.tick(100 * S).stalled
    sup.reset(200 * S)
    assert not sup.done and math.isnan(sup.tick(201 * S).value)


def test_done_needs_hold_time():
    sup = EpisodeSupervisor(cfg(done_consecutive=2, done_hold_s=3.0))
    states, _ = run(sup, [96, 97, 98, 99, 99], dt=1.0)
    assert [s.done for s in states] == [False, False, False, True, True]


def test_done_from_text_option():
    text = 'Image shows the final result.\nTherefore, <progress>80%</progress>.'
    off = EpisodeSupervisor(cfg(done_consecutive=1))
    assert not off.update(est(80, text=text), 0).done
    on = EpisodeSupervisor(cfg(done_consecutive=1, done_from_text=True))
    assert on.update(est(80, text=text), 0).done
    fresh = EpisodeSupervisor(cfg(done_consecutive=1, done_from_text=True))
    assert not fresh.update(est(80, text='The following actions are required: \n1. lift'),
                            0).done


def test_stale_camera_raise_and_clear():
    sup = EpisodeSupervisor(cfg(), stale_after_s=2.0)
    sup.frame_received(0)
    assert sup.tick(2 * S).events == ()
    ev = sup.tick(3 * S).events
    assert [(e.reason, e.active) for e in ev] == [(Reason.STALE_INPUT, True)]
    assert sup.tick(4 * S).events == ()  # once per stale episode
    sup.frame_received(5 * S)
    assert [(e.reason, e.active) for e in sup.tick(5 * S).events] == [
        (Reason.STALE_INPUT, False)]


def test_model_error_after_consecutive_failures_keeps_value():
    sup = EpisodeSupervisor(cfg(model_error_count=2))
    sup.update(est(30), 0)
    assert sup.update(est(None, Status.ERROR), S).events == ()
    st = sup.update(est(None, Status.ERROR), 2 * S)
    assert st.events[0].reason is Reason.MODEL_ERROR and st.events[0].message == 'boom'
    assert st.value == pytest.approx(0.3)
    assert not sup.update(est(31), 3 * S).events[0].active


def test_smoothing_optional_and_raw_kept():
    sup = EpisodeSupervisor(cfg(smoothing_alpha=0.5, stall_window_s=100))
    states, _ = run(sup, [0, 100, 100])
    assert [s.raw_value for s in states] == [0.0, 1.0, 1.0]
    assert [s.value for s in states] == pytest.approx([0.0, 0.5, 0.75])
    plain = EpisodeSupervisor(cfg(stall_window_s=100))
    assert run(plain, [0, 100])[0][1].value == 1.0


def test_carried_none_values_do_not_move_state():
    sup = EpisodeSupervisor(cfg())
    st = sup.update(est(None, Status.CARRIED_FORWARD), 0)
    assert math.isnan(st.value) and not st.stalled


@pytest.mark.parametrize('kw', [{'stall_window_s': 0}, {'done_threshold': 1.5},
                                {'done_consecutive': 0}, {'smoothing_alpha': -0.1}])
def test_invalid_config(kw):
    with pytest.raises(ConfigError):
        SupervisionConfig(**kw)
