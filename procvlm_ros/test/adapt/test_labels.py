"""The official progress formula, checked against values computed by hand."""

import numpy as np
import pytest

from procvlm_ros.adapt.labels import (
    phash,
    phash_similarity,
    planned_actions,
    progress_labels,
)


def const(value):
    return lambda a, b: value


def test_two_segments_and_done_tail_by_hand():
    # Similarity 1 everywhere: every increment is 0.5. Segment a (3 frames): r = [0, .5, .5];
    # b (2 frames): r = [0, 1]. K = 2, T = 5: w_a = clip(6/5) = 1.2, w_b = clip(4/5) = 0.8.
    # dp = [0, .6, .6, 0, .8, 0], total 2.0; p[i] = sum(dp[:i]) / 2.
    p = progress_labels([None] * 6, ['a', 'a', 'a', 'b', 'b', 'Done'], similarity=const(1.0))
    assert p == pytest.approx([0.0, 0.0, 0.3, 0.6, 0.6, 1.0])


def test_increments_follow_image_change_and_weights_are_clipped():
    # One counted segment of 4 frames plus 8 'not done' frames: K = 1, T = 4, w = clip(1) = 1.
    # Similarities 1.0, 0.5, 0.9 -> dphi 0.5, 1.0, 0.6 (sum 2.1).
    sims = iter([1.0, 0.5, 0.9])
    p = progress_labels(list(range(4)) + [0] * 8, ['x'] * 4 + ['Not Done'] * 8,
                        similarity=lambda a, b: next(sims))
    expect = [0.0, 0.0, 0.5 / 2.1, 1.5 / 2.1] + [1.0] * 8
    assert p == pytest.approx(expect)


def test_segment_weight_clip_bounds():
    # a: 1 frame (adds 0), b: 9 frames. K = 2, T = 10: w_a = clip(0.2) = 0.75 (no effect, its
    # only increment is 0), w_b = clip(1.8) = 1.25; b's 8 increments of 1/8 each.
    p = progress_labels([0] * 10, ['a'] + ['b'] * 9, similarity=const(1.0))
    assert p[:3] == pytest.approx([0.0, 0.0, 0.0])
    assert p[3] == pytest.approx(1 / 8)
    assert p[-1] == pytest.approx(7 / 8)  # the frame's own increment is not included


def test_frozen_scene_keeps_rising():
    # The documented weakness: identical frames still add 0.5 each.
    p = progress_labels([0] * 5, ['a'] * 5, similarity=const(1.0))
    assert np.all(np.diff(p[1:]) > 0)


def test_no_counted_segment_gives_zero():
    assert progress_labels([0, 0], ['done', 'done'], similarity=const(1.0)) == [0.0, 0.0]


def test_bad_inputs():
    with pytest.raises(ValueError, match='at least one'):
        progress_labels([], [])
    with pytest.raises(ValueError, match='2 images but 1'):
        progress_labels([0, 0], ['a'])


def test_planned_actions_like_the_annotator():
    plan = planned_actions(['a', 'a', 'b', 'a', 'Done'])
    # Walking back: Done is skipped; 'a' (frame 3) listed; 'b' in front; 'a' already listed.
    assert plan == [['b', 'a'], ['b', 'a'], ['b', 'a'], ['a'], []]


def test_phash_properties():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 200, size=(120, 160, 3), dtype=np.uint8)
    assert phash(img).shape == (8, 8)
    assert phash_similarity(img, img.copy()) == 1.0
    # A uniform brightness offset only moves the DC coefficient: same hash.
    assert phash_similarity(img, img + 40) == 1.0
    # A mirror image flips the sign of odd horizontal frequencies: many bits change.
    assert phash_similarity(img, img[:, ::-1].copy()) < 0.8
    # Different sizes count as identical (official helper).
    assert phash_similarity(img, img[:60]) == 1.0


def test_frames_after_the_last_stage_are_exactly_done():
    # Float sums: the trailing Done frames must equal 1.0 exactly (they become the finished
    # samples); random similarities make the partial sums inexact.
    rng = np.random.default_rng(1)
    sims = iter(rng.uniform(0.6, 1.0, size=100).tolist())
    p = progress_labels([0] * 30, ['a'] * 7 + ['b'] * 11 + ['c'] * 5 + ['Done'] * 7,
                        similarity=lambda a, b: next(sims))
    assert p[23:] == [1.0] * 7 and p[22] < 1.0


def test_stall_aware_labels_stay_flat_on_unchanged_frames():
    # Same segment as above, similarities 1.0, 0.5, 0.9: officially dphi 0.5, 1.0, 0.6;
    # stall-aware the unchanged frame adds 0 -> 0, 1.0, 0.6 (sum 1.6).
    sims = iter([1.0, 0.5, 0.9])
    p = progress_labels(list(range(4)) + [0] * 8, ['x'] * 4 + ['Not Done'] * 8,
                        similarity=lambda a, b: next(sims), stall_aware=True)
    assert p == pytest.approx([0.0, 0.0, 0.0, 1.0 / 1.6] + [1.0] * 8)
