"""Metric functions against hand-computed cases (definitions: core/metrics.py docstring)."""

import math

import pytest

from procvlm_ros.core import metrics


def test_rankdata_averages_ties():
    assert metrics.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert metrics.rankdata([3, 1, 2]).tolist() == [3.0, 1.0, 2.0]


def test_spearman_hand_computed():
    # d = [0, -1, 1, 0]: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # With ties: ranks y = [1, 2.5, 2.5, 4]; Pearson of ranks against [1, 2, 3, 4].
    assert metrics.spearman([1, 2, 3, 4], [5, 7, 7, 9]) == pytest.approx(
        4.5 / math.sqrt(5.0 * 4.5))
    assert math.isnan(metrics.spearman([1, 2, 3], [4, 4, 4]))


def test_voc_sorts_by_ground_truth_stably():
    assert metrics.voc([0.1, 0.2, 0.3], [0.0, 0.5, 1.0]) == pytest.approx(1.0)
    assert metrics.voc([0.3, 0.2, 0.1], [0.0, 0.5, 1.0]) == pytest.approx(-1.0)
    # Sorted by GT the predictions are [0.1, 0.5, 0.9]: perfectly ordered...
    assert metrics.voc([0.9, 0.1, 0.5], [1.0, 0.0, 0.5]) == pytest.approx(1.0)
    # ...while against time they are ranks [3, 1, 2]: rho = 1 - 6 * 6 / (3 * 8) = -0.5.
    assert metrics.voc_time([0.9, 0.1, 0.5]) == pytest.approx(-0.5)
    # GT ties keep their order: predictions [0.2, 0.1, 0.9] -> rho = 1 - 6 * 2 / 24 = 0.5.
    assert metrics.voc([0.2, 0.1, 0.9], [0.5, 0.5, 1.0]) == pytest.approx(0.5)


def test_voc_undefined_is_zero():
    assert metrics.voc([0.4, 0.4, 0.4], [0.0, 0.5, 1.0]) == 0.0
    assert metrics.voc([0.4], [0.0]) == 0.0


def test_kendall_tau_a_skips_ties_in_numerator_only():
    # Pairs: (0,1) concordant, (0,2) concordant, (1,2) discordant: (2 - 1) / 3.
    assert metrics.kendall_tau([1, 3, 2], [1, 2, 3]) == pytest.approx(1 / 3)
    # GT tie between 0 and 1 is skipped, the denominator stays n(n-1)/2 = 3.
    assert metrics.kendall_tau([1, 2, 3], [1, 1, 2]) == pytest.approx(2 / 3)
    assert math.isnan(metrics.kendall_tau([1], [1]))


def test_ccc_offset_and_perfect():
    # Equal variances (1355.56), correlation 1, mean offset 10: 2711.1 / (2711.1 + 100).
    assert metrics.ccc([10, 60, 100], [0, 50, 90]) == pytest.approx(
        2 * 4066.6667 / 3 / (2 * 4066.6667 / 3 + 100), rel=1e-5)
    assert metrics.ccc([0, 50, 90], [0, 50, 90]) == pytest.approx(1.0, abs=1e-9)
    assert metrics.ccc([20, 20, 20], [0, 50, 90]) == 0.0


def test_mae_and_negative_step_rate():
    assert metrics.mae([0.1, 0.5], [0.0, 1.0]) == pytest.approx(0.3)
    # diffs 0.1, -0.05, 0.15, 0.0: one drop in four steps
    assert metrics.negative_step_rate([0.1, 0.2, 0.15, 0.3, 0.3]) == pytest.approx(0.25)
    assert metrics.negative_step_rate([0.1, 0.2, 0.15, 0.3, 0.3], tolerance=0.1) == 0.0
    assert math.isnan(metrics.negative_step_rate([0.5]))
    with pytest.raises(ValueError):
        metrics.mae([0.1, 0.2], [0.1])


def test_done_metrics_hand_computed():
    m = metrics.done_metrics([True, True, False, False, True], [True, False, False, True, True])
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 1)
    assert m.precision == pytest.approx(2 / 3)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (2 - 1) / sqrt(3*3*2*2)
    assert m.mcc == pytest.approx(1 / 6)


def test_done_metrics_without_positives_and_pooling():
    none = metrics.done_metrics([False, False], [False, False])
    assert none.f1 == 1.0 and none.precision == 0.0 and none.recall == 0.0
    assert none.mcc == 0.0
    pooled = metrics.pooled_done_metrics([metrics.done_metrics([True], [True]), none])
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.tn) == (1, 0, 0, 2)


def test_mcc_at_thresholds_both_series():
    m = metrics.mcc_at([96, 94, 100], [100, 100, 50], threshold=95)
    assert (m.tp, m.fp, m.fn, m.tn) == (1, 1, 1, 0)
    assert m.mcc == pytest.approx(-1 / math.sqrt(4))


def test_mean_over_episodes_skips_missing():
    assert metrics.mean_over_episodes([0.5, None, float('nan'), 1.0]) == pytest.approx(0.75)
    assert math.isnan(metrics.mean_over_episodes([None]))


def test_alarm_times_are_rising_edges():
    flags = [(3, True), (0, True), (1, True), (2, False), (4, False)]
    assert metrics.alarm_times(flags) == [0.0, 3.0]


def test_stall_detection_delay_and_false_alarms():
    flags = [(5, False), (12, False), (14, True), (16, True), (22, False), (30, True),
             (31, False)]
    report = metrics.stall_detection([(10, 20)], flags, grace_s=2.0)
    assert report.delays == (4.0,)
    assert report.detected == 1 and report.missed == 0
    assert report.false_alarms == (30.0,)
    assert report.duration_s == 26.0
    assert report.false_alarms_per_hour == pytest.approx(3600 / 26)
    assert report.detected_within(4.0) == 1 and report.detected_within(3.9) == 0


def test_stall_detection_grace_and_misses():
    late = [(0, False), (21, True), (25, False)]
    assert metrics.stall_detection([(10, 20)], late).delays == (None,)
    assert metrics.stall_detection([(10, 20)], late).false_alarms == (21.0,)
    with_grace = metrics.stall_detection([(10, 20)], late, grace_s=2.0)
    assert with_grace.delays == (11.0,) and with_grace.false_alarms == ()
    missed = metrics.stall_detection([(10, 20), (40, 50)], [(0, False), (15, True)],
                                     duration_s=60)
    assert missed.delays == (5.0, None) and math.isclose(missed.mean_delay_s, 5.0)
    with pytest.raises(ValueError):
        metrics.stall_detection([(5, 1)], [])
