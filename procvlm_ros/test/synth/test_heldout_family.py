"""The held-out drawer family (issue 10): new objects and actions, never drawn at random."""

import numpy as np
import pytest

from procvlm_ros.synth import scene
from procvlm_ros.synth.episode import EPISODE_KINDS, generate_episode
from procvlm_ros.synth.export import episode_plan


@pytest.mark.parametrize('kind', EPISODE_KINDS)
def test_drawer_episodes_generate(kind):
    ep = generate_episode(4242, 3, kind, 'drawer')
    assert ep.task.kind == 'drawer'
    assert ep.task.num_actions == 4
    assert 'drawer' in ep.task.sentence
    frame = ep.frame(ep.num_frames // 2)
    assert frame.shape == (scene.HEIGHT, scene.WIDTH, 3)
    if kind == 'success':
        assert ep.success and ep.progress[-1] == 1.0


def test_drawer_opens_and_ball_ends_inside():
    ep = generate_episode(4242, 0, 'success', 'drawer')
    task = ep.task
    start = scene.state_at(task, scene.Pose(0.0))
    opened = scene.state_at(task, scene.Pose(2.0))
    end = scene.state_at(task, scene.Pose(4.0))
    moved = abs(opened.positions[0][0] - start.positions[0][0])
    assert moved == pytest.approx(scene.PULL)
    tray_x, tray_y = end.positions[0]
    ball_x, ball_y = end.positions[1]
    assert abs(ball_x - tray_x) < scene.TRAY_W / 2
    assert abs(ball_y - tray_y) < scene.TRAY_H / 2
    # The frames show it: the opened scene differs from the closed one.
    closed_img = scene.render(task, scene.Pose(0.0), ep.style)
    open_img = scene.render(task, scene.Pose(2.0), ep.style)
    assert np.count_nonzero(np.any(closed_img != open_img, axis=-1)) > 200


def test_drawer_is_held_out_of_random_draws_and_defaults():
    assert 'drawer' not in scene.TASK_KINDS
    assert 'drawer' in scene.HELDOUT_TASK_KINDS
    rng = np.random.default_rng(0)
    assert {scene.make_task(rng).kind for _ in range(200)} == set(scene.TASK_KINDS)
    assert all(t != 'drawer' for _, t in episode_plan(24))
    assert {t for _, t in episode_plan(8, task_kinds=('drawer',))} == {'drawer'}
    with pytest.raises(ValueError, match='drawer'):
        scene.make_task(rng, 'sort')
