"""The offline stall evaluation replays predictions through the node's supervisor."""

from types import SimpleNamespace

import numpy as np
import pytest

from procvlm_ros.core.supervision import Reason, SupervisionConfig
from procvlm_ros.evaluation.supervision import replay, stall_report


def episode(kind, pred, fps=2.0, stalls=()):
    return SimpleNamespace(episode_id=f'e_{kind}', kind=kind, pred=np.asarray(pred, float),
                           times=np.arange(len(pred)) / fps,
                           stall_intervals=[{'start_s': a, 'end_s': b} for a, b in stalls])


CFG = SupervisionConfig(stall_window_s=3.0, stall_min_delta=0.05)


def test_plateau_raises_one_alarm_after_the_window():
    flags, raised = replay([0, 1, 2, 3, 4, 5, 6], [0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.5], CFG)
    # last rise at 1 s, window 3 s -> stalled once more than 3 s passed
    assert raised == [(5.0, Reason.STALLED)]
    assert [f for _, f in flags] == [False] * 5 + [True, False]


def test_report_counts_detections_and_quiet_steady_episodes():
    ramp = np.linspace(0, 1, 40)
    stalled = np.concatenate([np.linspace(0, 0.4, 10), np.full(16, 0.4),
                              np.linspace(0.4, 1, 14)])
    missed = np.linspace(0, 1, 40)  # the model never saw the pause
    report = stall_report([episode('success', ramp), episode('stall', stalled, stalls=[(5, 12.5)]),
                           episode('stall', missed, stalls=[(5, 12.5)])], CFG)
    assert report['stall_episodes'] == 2 and report['stall_detected_rate'] == 0.5
    assert report['stall_in_window_rate'] == 0.5  # 2.5 s after the start, window 3 s
    assert report['steady_no_intervention_rate'] == 1.0
    # Last rise of >= 0.05 at 4.0 s (the ramp climbs 0.044 per frame); alarm once more than 3 s
    # passed, at 7.5 s; the ground-truth stall starts at 5 s.
    assert report['stall_mean_delay_s'] == pytest.approx(2.5)


def test_late_detection_is_not_within_the_window():
    # The estimate keeps rising (0.06 a frame) for 3.5 s into the ground-truth stall (a
    # misread), so the alarm comes 3.5 s + the 3 s window + one frame after the stall started:
    # during the stall, but not within the configured window.
    creep = np.concatenate([np.linspace(0, 0.4, 10), np.linspace(0.46, 0.88, 8),
                            np.full(12, 0.88), np.linspace(0.9, 1, 6)])
    report = stall_report([episode('stall', creep, stalls=[(5, 14.5)])], CFG)
    row = report['rows'][0]
    assert row['alarms_s'] == [12.0] and row['delays_s'] == [7.0]
    assert report['stall_detected_rate'] == 1.0 and report['stall_in_window_rate'] == 0.0


def test_a_regression_alarm_makes_a_steady_episode_noisy():
    # Never flat for the 3 s window, but two estimates 0.3 below the peak: a regression
    # intervention, so the success episode is not "without intervention".
    dip = np.linspace(0, 1, 30)
    dip[15:17] = dip[14] - 0.3
    report = stall_report([episode('success', dip)], CFG)
    row = report['rows'][0]
    assert row['alarms_s'] == [] and row['interventions_s'] == [8.0]
    assert report['steady_no_intervention_rate'] == 0.0


def test_cli_refuses_a_bad_stall_window_before_scoring(tmp_path, capsys):
    from procvlm_ros.evaluation import cli

    code = cli.main(['--episodes', str(tmp_path), '--model', str(tmp_path / 'none'),
                     '--report', str(tmp_path / 'r.json'), '--stall-window-s', '-1'])
    assert code == 1
    assert 'stall_window_s must be >= 0.1' in capsys.readouterr().err
    assert not (tmp_path / 'r.json').exists()
