import numpy as np
import pytest

from procvlm_ros.core.sampling import build_uniform_indices, window_positions


def test_every_frame_when_short():
    assert build_uniform_indices(10, 512) == list(range(10))


def test_uniform_subsample_rounds_half_to_even():
    idx = build_uniform_indices(1000, 512)
    assert len(idx) == 512 and idx[0] == 0 and idx[-1] == 999
    assert idx == sorted(set(idx))
    expected = [int(i) for i in np.round(np.linspace(0, 999, 512))]
    assert idx == expected
    # 5 frames -> 4 samples: linspace 0,1.333,2.667,4 -> 0,1,3,4
    assert build_uniform_indices(5, 4) == [0, 1, 3, 4]
    # np.round(2.5) == 2 (banker's rounding): linspace(0, 5, 3) = 0, 2.5, 5
    assert build_uniform_indices(6, 3) == [0, 2, 5]


@pytest.mark.parametrize(('total', 'max_frames', 'expected'), [
    (10, 3, [0, 1, 2]), (10, 0, []), (10, -4, []), (3, 100, [0, 1, 2])])
def test_max_frames_limits_source(total, max_frames, expected):
    assert build_uniform_indices(total, 512, max_frames) == expected


def test_degenerate_counts():
    assert build_uniform_indices(0, 512) == []
    assert build_uniform_indices(7, 1) == [0]
    assert build_uniform_indices(7, 0) == [0]  # clamped to at least one, as official


def test_window_front_padding_matches_official_examples():
    assert window_positions(0, 8) == [0] * 8
    assert window_positions(1, 8) == [0] * 7 + [1]
    assert window_positions(2, 8) == [0] * 6 + [1, 2]
    assert window_positions(9, 8) == list(range(2, 10))
    assert window_positions(5, 1) == [5]
    assert window_positions(3, 0) == [3]  # official max(1, window_size)
