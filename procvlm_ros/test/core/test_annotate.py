import math

import numpy as np
import pytest

from procvlm_ros.core.annotate import overlay_progress, panel_frame


def frame(h=120, w=160):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), np.uint8)


def test_overlay_keeps_size_and_changes_with_progress():
    rgb = frame()
    hist_low = [(t, 0.1) for t in range(5)]
    hist_high = [(t, t / 4) for t in range(5)]
    low = overlay_progress(rgb, hist_low, value=0.1, remaining_actions=['lift'])
    high = overlay_progress(rgb, hist_high, value=1.0, done=True)
    assert low.shape == rgb.shape and low.dtype == np.uint8
    strip = slice(int(120 * 0.7), 120)
    assert np.abs(low[strip].astype(int) - high[strip].astype(int)).sum() > 1000
    assert np.array_equal(low[:80], rgb[:80])  # only the strip is drawn on
    assert np.array_equal(rgb, frame())  # input untouched


@pytest.mark.parametrize('shape', [(8, 8, 3), (1, 300, 3), (720, 1280, 3)])
def test_overlay_any_size_and_nan(shape):
    out = overlay_progress(np.zeros(shape, np.uint8), [(0, math.nan)], value=math.nan,
                           stalled=True, stalled_for_s=12.0)
    assert out.shape == shape


def test_panel_enlarges_and_adds_panel():
    out = panel_frame(frame(), [(0, 0.2), (1, 0.5)], value=0.5, frame_index=7,
                      reasoning='1. lift\n2. place ' * 40)
    assert out.shape[1] == 960 and out.shape[0] == 720 + 230  # 160x120 -> 960x720, panel 32 %
    bare = panel_frame(frame(), [(0, 0.2), (1, 0.5)], value=0.5, frame_index=7,
                       show_reasoning=False)
    assert not np.array_equal(out, bare)
