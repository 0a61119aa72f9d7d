"""Reward maths of procvlm-label against hand-computed values."""

import numpy as np
import pytest

from procvlm_ros.label import rewards as rw
from procvlm_ros.label.select import runs, select


def test_interpolate_linear_between_samples_and_held_at_the_ends():
    got = rw.interpolate([1, 3, 6], [0.2, 0.4, 1.0], 8)
    np.testing.assert_allclose(got, [0.2, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_interpolate_rejects_unordered_or_mismatched_samples():
    with pytest.raises(ValueError, match='increasing'):
        rw.interpolate([0, 2, 2], [0.0, 0.1, 0.2], 4)
    with pytest.raises(ValueError, match='matching'):
        rw.interpolate([0, 1], [0.0], 4)


def test_dense_rewards_clip_and_terminal_bonus():
    config = rw.RewardConfig(delta_min=-0.05, delta_max=0.10, terminal_bonus=1.0,
                             terminal_threshold=0.95)
    # deltas: 0.05, 0.25 -> 0.10, -0.20 -> -0.05, 0.86 -> 0.10; final 0.96 > 0.95 -> +1
    got = rw.dense_rewards([0.0, 0.05, 0.30, 0.10, 0.96], config)
    np.testing.assert_allclose(got, [0.0, 0.05, 0.10, -0.05, 1.10])


def test_no_terminal_bonus_at_or_below_the_threshold():
    config = rw.RewardConfig(terminal_threshold=0.95)
    np.testing.assert_allclose(rw.dense_rewards([0.9, 0.95], config), [0.0, 0.05])


def test_advantage_is_the_sum_of_the_next_horizon_rewards():
    r = [0.0, 1.0, 2.0, 3.0, 4.0]
    # A[t] = r[t+1] + r[t+2] (horizon 2), truncated at the end
    np.testing.assert_allclose(rw.advantages(r, 2), [3.0, 5.0, 7.0, 4.0, 0.0])
    np.testing.assert_allclose(rw.advantages(r, 50), [10.0, 9.0, 7.0, 4.0, 0.0])


def test_top_fraction_marks_exactly_ceil_k_n_with_stable_ties():
    mask = rw.top_fraction_mask([0.1, 0.5, 0.5, 0.2, 0.9, 0.0, 0.3], 0.3)  # ceil(2.1) = 3
    assert mask.tolist() == [False, True, True, False, True, False, False]
    assert rw.top_fraction_mask([1.0, 1.0, 1.0], 0.34).tolist() == [True, True, False]
    assert not rw.top_fraction_mask([1.0, 2.0], 0.0).any()


def test_monotonicity_and_self_consistency():
    assert rw.monotonicity([0.0, 0.1, 0.1, 0.05, 0.2]) == 0.75
    assert rw.self_consistency([0.0, 0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert rw.self_consistency([0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    # ranks [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] -> Pearson = 4.5 / sqrt(4.5 * 5)
    assert rw.self_consistency([0.0, 0.5, 0.5, 1.0]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert rw.self_consistency([0.4, 0.4]) == 0.0


def test_bad_reward_settings_are_refused():
    with pytest.raises(ValueError, match='delta_min'):
        rw.RewardConfig(delta_min=0.2, delta_max=0.1)
    with pytest.raises(ValueError, match='horizon'):
        rw.RewardConfig(horizon=0)


def test_runs_of_a_mask():
    assert runs(np.array([1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)) == [[0, 2], [4, 5], [6, 8]]
    assert runs(np.zeros(3, dtype=bool)) == []


def _result(episode_id, index, rewards, done=True, stalled=False):
    return {'episode_id': episode_id, 'index': index, 'path': episode_id, 'task': 't',
            'frames': {'reward': rewards},
            'summary': {'done': done, 'stalled': stalled, 'final_progress': 1.0 if done else .5}}


def test_select_ranks_filters_and_marks_top_frames():
    results = [_result('a', 0, [0.0, 0.1, 0.1, 0.0]),      # adv (h=1): .1 .1 0 0 mean .05
               _result('b', 1, [0.0, 0.0, 0.2, 0.0]),      # adv: 0 .2 0 0 mean .05
               _result('c', 2, [0.0, 0.3, 0.3, 0.3]),      # adv: .3 .3 .3 0 mean .225
               _result('d', 3, [0.0, 1.0, 1.0, 1.0], done=False),
               _result('e', 4, [0.0, 1.0, 1.0, 1.0], stalled=True)]
    sel = select(results, top_percent=30, horizon=1)
    rows = {row['episode_id']: row for row in sel['rows']}
    assert rows['d']['excluded_because'] == 'not done'
    assert rows['e']['excluded_because'] == 'stalled'
    assert sel['kept'] == 3
    # c first; a and b tie on mean advantage -> dataset order
    assert [rows[k]['rank'] for k in 'cab'] == [1, 2, 3]
    assert [rows[k]['top'] for k in 'cab'] == [True, False, False]  # ceil(0.9) = 1
    # 12 kept frames, ceil(3.6) = 4 positives: c's three 0.3 values, then b's 0.2
    assert rows['c']['positive_frames'] == [[0, 3]]
    assert rows['b']['positive_frames'] == [[1, 2]]
    assert rows['a']['positive_frames'] == []
    kept_all = select(results, top_percent=30, horizon=1, keep_failed=True, keep_stalled=True)
    assert kept_all['kept'] == 5
