"""Synthetic episodes: determinism, ground truth that follows the procedure, rendering."""

import json

import numpy as np
import pytest

from procvlm_ros.synth import scene
from procvlm_ros.synth.episode import EPISODE_KINDS, generate_episode
from procvlm_ros.synth.scene import Pose, TASK_KINDS

COMBOS = [(kind, task, seed) for kind in EPISODE_KINDS for task in TASK_KINDS
          for seed in (0, 1, 2)]


def _episode(kind, task, seed):
    return generate_episode(seed, 100 + seed, kind, task)


def test_same_seed_same_episode_and_frames():
    a = generate_episode(7, 3, 'stall', 'stack')
    b = generate_episode(7, 3, 'stall', 'stack')
    assert a.poses == b.poses
    assert json.dumps(a.ground_truth()) == json.dumps(b.ground_truth())
    for i in (0, a.num_frames // 2, a.num_frames - 1):
        assert np.array_equal(a.frame(i), b.frame(i))


def test_other_seed_or_index_other_episode():
    a = generate_episode(7, 3, 'success')
    assert generate_episode(8, 3, 'success').ground_truth()['frames'] != \
        a.ground_truth()['frames']
    assert generate_episode(7, 4, 'success').ground_truth()['frames'] != \
        a.ground_truth()['frames']


@pytest.mark.parametrize(('kind', 'task', 'seed'), COMBOS)
def test_ground_truth_invariants(kind, task, seed):
    ep = _episode(kind, task, seed)
    progress = ep.progress
    k = ep.task.num_actions
    assert ep.task.kind == task
    assert progress[0] == 0.0
    assert np.all((progress >= 0.0) & (progress <= 1.0))
    assert np.array_equal(ep.done, progress >= 1.0)
    for i in range(ep.num_frames):
        remaining = ep.remaining_actions(i)
        # The action under way and those after it: K - floor(progress * K) of them.
        assert len(remaining) == k - int(np.floor(progress[i] * k + 1e-9))
        assert remaining == list(ep.task.action_texts[k - len(remaining):])
        assert (len(remaining) == 0) == bool(ep.done[i])
    for iv in ep.stall_intervals:
        assert 0 <= iv.start < iv.end < ep.num_frames
        assert np.ptp(progress[iv.start:iv.end + 1]) == 0.0, 'ground truth moves in a stall'


@pytest.mark.parametrize('task', TASK_KINDS)
def test_success_is_monotone_and_ends_exactly_done(task):
    for seed in range(4):
        ep = _episode('success', task, seed)
        progress = ep.progress
        assert np.all(np.diff(progress) >= 0.0)
        assert progress[-1] == 1.0 and ep.success
        first_done = int(np.argmax(ep.done))
        assert np.all(ep.done[first_done:]) and not np.any(ep.done[:first_done])
        assert first_done < ep.num_frames - 1, 'the finished scene is shown for a while'
        assert progress[first_done - 1] < 1.0


def test_fail_never_done_and_stops():
    for task in TASK_KINDS:
        for seed in range(4):
            ep = _episode('fail', task, seed)
            assert ep.progress.max() < 1.0 and not ep.done.any()
            (iv,) = ep.stall_intervals
            assert iv.cause == 'stopped' and iv.end == ep.num_frames - 1
            assert ep.progress[iv.start] > 0.0


def test_stall_has_flat_interval_then_finishes():
    causes = set()
    for task in TASK_KINDS:
        for seed in range(4):
            ep = _episode('stall', task, seed)
            (iv,) = ep.stall_intervals
            causes.add(iv.cause)
            assert (iv.end - iv.start) / ep.fps >= 5.0, 'a stall lasts seconds'
            assert ep.success and np.all(np.diff(ep.progress) >= 0.0)
            assert ep.stalled[iv.start:iv.end + 1].all()
            assert ep.stalled.sum() == iv.end - iv.start + 1
            if iv.cause == 'retry':  # the gripper visibly moves while progress is flat
                frames = [ep.frame(i) for i in range(iv.start, iv.end + 1)]
                assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    assert causes == {'pause', 'retry'}


def test_regress_drops_inside_its_interval():
    for task in TASK_KINDS:
        for seed in range(4):
            ep = _episode('regress', task, seed)
            (iv,) = ep.regress_intervals
            drops = np.flatnonzero(np.diff(ep.progress) < 0) + 1
            assert drops.size > 0
            assert np.all((drops > iv.start) & (drops <= iv.end))
            assert ep.progress[iv.end] < ep.progress[iv.start]


def test_progress_is_procedural_not_time():
    ep = generate_episode(3, 5, 'stall', 'bin')
    k = ep.task.num_actions
    # Each pose's progress is its procedure coordinate / K, whatever the frame's time.
    assert np.allclose(ep.progress, [p.s / k for p in ep.poses])
    # Same procedure coordinate, same scene (up to the visual perturbations): render a pose
    # twice at different times of the episode and compare without noise.
    s = ep.poses[ep.stall_intervals[0].start].s
    a = scene.render(ep.task, Pose(s), ep.style)
    b = scene.render(ep.task, Pose(s), ep.style)
    assert np.array_equal(a, b)
    # Action boundaries are where each action's path ends: the gripper is there.
    for i, action in enumerate(ep.task.actions):
        state = scene.state_at(ep.task, Pose(float(i + 1) - 1e-12))
        assert np.allclose(state.gripper, action.path[-1], atol=1e-6)


def test_frames_render_and_move():
    ep = generate_episode(1, 0, 'success', 'push')
    frames = list(ep.frames())
    assert len(frames) == ep.num_frames
    assert all(f.shape == (scene.HEIGHT, scene.WIDTH, 3) and f.dtype == np.uint8
               for f in frames)
    changes = [np.abs(a.astype(int) - b).mean() for a, b in zip(frames, frames[1:])]
    assert max(changes) > 1.0


def test_unknown_kinds_are_refused():
    with pytest.raises(ValueError, match='episode kind'):
        generate_episode(0, 0, 'wobble')
    with pytest.raises(ValueError, match='task kind'):
        generate_episode(0, 0, 'success', 'juggle')
    with pytest.raises(ValueError, match='fps'):
        generate_episode(0, 0, 'success', fps=0.0)


def test_fps_changes_frame_count_not_ground_truth_shape():
    slow = generate_episode(2, 0, 'success', 'stack', fps=2.0)
    fast = generate_episode(2, 0, 'success', 'stack', fps=4.0)
    assert slow.task == fast.task
    assert fast.num_frames > 1.5 * slow.num_frames
    assert fast.progress[-1] == slow.progress[-1] == 1.0
