"""pairwise_critic: VLAC's prompts verbatim, delta parsing, accumulation, done query, state."""

import math

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig, ProfileConfig, WindowConfig
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.monitor import Monitor
from procvlm_ros.core.profiles import make_profile, profile_from_config
from procvlm_ros.core.profiles.common import render_placeholders
from procvlm_ros.core.profiles.pairwise_critic import (
    accumulate,
    CriticState,
    load_reference_frames,
    PairwiseCriticProfile,
    parse_delta,
    parse_done,
)
from procvlm_ros.core.profiles.results import CriticStep
from procvlm_ros.core.types import Frame, Status

# InternRobotics/VLAC evo_vlac: GAC_model's 'v3' template, its default system prompt and the
# 'task_done' template, written out independently of the profile.
VLAC_SYSTEM = ('You are a visual-language assistant designed to interpret spatial and '
               'task-related information from images and text. Provide precise, context-aware '
               'responses and actionable guidance to assist in achieving task objectives.')
VLAC_V3 = ('Image-1: <image>\nImage-2: <image>\nCompare two images and evaluate whether the '
           'second image is closer to achieving task objectives compared to the first image. + '
           'score means the second image is closer, - score means the first image is closer\n'
           'Response the relative progressing of target task follow <score>. The target task '
           'is: <task> {} </task> <score>')
VLAC_V3_THINK = ('0% <image>\nThis image is the trajectory beginning of the following two '
                 'images\n' + VLAC_V3)
VLAC_DONE = ('The 1 means yes, the 0 means no. Check if the robot has completed its task: '
             '<task> {} </task> <done>')
TASK = 'put the cup on the plate'


def vlac_trajectory_example(n, task):
    text = f'<trajectory> <task> {task} </task>:'
    for k in range(n):
        text += f' {int(k / (n - 1) * 100)}% <image>\n'
    return text + '</trajectory>'


def test_critic_prompt_is_vlac_v3_with_its_system_prompt(asker, img):
    profile = PairwiseCriticProfile()
    ask = asker('5')
    profile.run(ask, [img(0), img(10), img(20)], None, TASK, None, previous_percent=None)
    messages, images, _ = ask.calls[0]
    assert render_placeholders(messages) == [('system', VLAC_SYSTEM),
                                             ('user', VLAC_V3.format(TASK))]
    # earlier frame first, each resized to 448x448 (VLAC's LANCZOS square resize)
    assert [i.size for i in images] == [(448, 448)] * 2
    assert [int(np.asarray(i)[0, 0, 0]) for i in images] == [10, 20]
    parts = messages[1]['content']
    assert [p['type'] for p in parts] == ['text', 'image', 'text', 'image', 'text']
    assert [p['image'] for p in parts if p['type'] == 'image'] == images


def test_reference_prompt_is_vlac_trajectory_example_then_v3_think(asker, img, tmp_path):
    for i in range(7):  # a demonstration as an image folder; names sort as the order
        img(30 * i, 32, 24).save(tmp_path / f'f{i:02d}.png')
    profile = PairwiseCriticProfile(reference_path=str(tmp_path), reference_frames=3)
    ask = asker('5', '7')
    state = None
    for window in ([img(1), img(2)], [img(2), img(3)]):
        state = profile.run(ask, window, None, TASK, state, previous_percent=None).state
    messages, images, _ = ask.calls[1]
    expected = vlac_trajectory_example(3, TASK) + VLAC_V3_THINK.format(TASK)
    assert render_placeholders(messages)[1] == ('user', expected)
    assert expected.startswith('<trajectory> <task> put the cup on the plate </task>: 0% <image>'
                               '\n 50% <image>\n 100% <image>\n</trajectory>0% <image>\n')
    # reference frames (VLAC subsampling 0, 3, 6 of 7), the episode's first frame, the pair
    assert [int(np.asarray(i)[0, 0, 0]) for i in images] == [0, 90, 180, 1, 2, 3]


def test_reference_subsampling_from_a_video_and_errors(tmp_path):
    from procvlm_ros.media.video import write_video

    frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(11)]
    video = write_video(tmp_path / 'demo.mp4', frames, fps=5.0)
    refs = load_reference_frames(video, 6)  # delta = 2: frames 0, 2, 4, 6, 8, 10
    assert len(refs) == 6 and refs[0].size == (48, 32)
    means = [float(np.asarray(r).mean()) for r in refs]
    assert means == pytest.approx([0, 40, 80, 120, 160, 200], abs=4)
    with pytest.raises(ConfigError, match='not found'):
        load_reference_frames(tmp_path / 'none', 3)
    with pytest.raises(ConfigError, match='has 0 frames'):
        load_reference_frames(tmp_path, 3)  # a folder without images
    with pytest.raises(ConfigError, match='has 6 frames'):
        load_reference_frames(write_video(tmp_path / 'short.mp4', frames[:6], fps=5.0), 7)
    with pytest.raises(ConfigError, match='2..11'):
        load_reference_frames(video, 1)
    (tmp_path / 'broken.mp4').write_bytes(b'not a video')
    with pytest.raises(ConfigError):
        load_reference_frames(tmp_path / 'broken.mp4', 3)


def test_done_prompt_is_vlac_task_done_on_the_newest_frame(asker, img):
    profile = PairwiseCriticProfile(done_min_value=10.0)
    ask = asker('50', '1')
    out = profile.run(ask, [img(1), img(2)], None, TASK, None, previous_percent=None)
    messages, images, _ = ask.calls[1]
    assert render_placeholders(messages) == [('system', VLAC_SYSTEM),
                                             ('user', '<image>' + VLAC_DONE.format(TASK))]
    assert len(images) == 1 and int(np.asarray(images[0])[0, 0, 0]) == 2
    assert out.result.done is True and out.result.done_score == 1.0
    assert out.text == '50\n1' and out.generated_tokens == 2 and out.latency_s == 1.0


@pytest.mark.parametrize(('text', 'delta', 'note'), [
    ('12.5', 12.5, ''),
    (' -3 ', -3.0, ''),
    ('+7%', 7.0, ''),
    ('\u22125', -5.0, ''),  # unicode minus
    ('<think>first image progressing: 20%</think>4.5', 4.5, ''),
    ('score: 3 (then 4)', 3.0, '2 numbers'),
    ('250', 100.0, 'clamped'),
    ('-1e6', -100.0, 'clamped'),
    ('1e999', None, 'not finite'),
    ('9' * 400, None, 'not finite'),
    ('nan', None, 'non-finite'),
    ('-inf', None, 'non-finite'),
    ('Infinity', None, 'non-finite'),
    ('', None, 'no number'),
    ('the second image is closer', None, 'no number'),
    ('\u4e8c\u5341', None, 'no number'),  # a number in words (Chinese) is not read
])
def test_delta_parsing_table(text, delta, note):
    value, notes = parse_delta(text)
    assert value == delta
    assert note in ' '.join(notes)


@pytest.mark.parametrize(('text', 'score'), [
    ('1', 1.0), ('0', 0.0), ('0.93', 0.93), ('yes', 1.0), ('No.', 0.0), ('7', 1.0),
    ('-2', 0.0), ('nan', None), ('maybe', None),
])
def test_done_parsing_table(text, score):
    assert parse_done(text)[0] == score


@pytest.mark.parametrize(('rule', 'value', 'delta', 'expected'), [
    ('simple', 0.0, 50.0, 50.0),
    ('simple', 50.0, -50.0, 25.0),  # simple: the same formula for falls
    ('simple', 100.0, -30.0, 100.0),  # 100 is absorbing
    ('simple', 20.0, -100.0, -60.0),  # below 0 before the profile's clamp
    ('asymmetric', 50.0, 20.0, 60.0),
    ('asymmetric', 50.0, -50.0, 0.0),  # 100 - max(50, 1) / 50 * 100
    ('asymmetric', 99.5, -10.0, 100 - 1.0 / 90 * 100),  # max(100 - v, 1.0)
    ('mix', 60.0, -10.0, 100 - 40 / 90 * 100),
    ('mix', 60.0, -90.0, 10.0),  # floor of 10 above 50
    ('mix', 40.0, -10.0, 36.0),  # v * (1 + c / 100) at or below 50
])
def test_accumulation_follows_vlac(rule, value, delta, expected):
    assert accumulate(value, delta, rule) == pytest.approx(expected)
    assert math.isfinite(accumulate(value, -100.0, rule))  # no division by zero


def test_values_accumulate_and_anchor_advances(asker, img):
    profile = PairwiseCriticProfile(image_size=0, done_min_value=1000)
    ask = asker('50', 'garbage', '50', '-300')
    state = profile.initial_state()
    outs = []
    frames = [img(i) for i in range(6)]
    for end in (2, 4, 5, 6):  # the loop fell behind: windows end at frames 1, 3, 4, 5
        out = profile.run(ask, frames[:end], None, TASK, state, previous_percent=None)
        outs.append(out)
        state = out.state
    assert [o.percent for o in outs] == [50.0, None, 75.0, 50.0]
    assert [o.ok for o in outs] == [True, False, True, True]
    assert outs[1].result == CriticStep(delta=None, value=50.0, raw='garbage')
    assert outs[3].notes == ('delta -300 outside [-100, 100]; clamped',)
    # pairs: (0, 1) first; after the failure the anchor stays at 1, so (1, 4) spans the gap
    pairs = [[int(np.asarray(i)[0, 0, 0]) for i in call[1]] for call in ask.calls]
    assert pairs == [[0, 1], [1, 3], [1, 4], [4, 5]]
    assert state.steps == 3 and state.windows == 4 and state.value == 50.0
    low = profile.run(asker('-100'), frames[:2], None, TASK, CriticState(value=20.0),
                      previous_percent=None)
    assert low.percent == 0.0 and low.notes == ('accumulated value -60.00 clamped to 0',)


def test_done_query_by_value_by_count_sticky_and_setting_the_value(asker, img):
    profile = PairwiseCriticProfile(done_min_value=60, done_every=2, done_threshold=0.9)
    ask = asker('10', '10', '0.5', '60', '0.95', '5', '0')
    state, results = None, []
    for _ in range(4):
        out = profile.run(ask, [img(1), img(2)], None, TASK, state, previous_percent=None)
        state = out.state
        results.append(out.result)
    # window 1: 10 (no done); 2: 19 (asked by count: 0.5 is no); 3: 67.6 by value (0.95 yes ->
    # 100); 4: done already said, not asked again
    assert [r.done for r in results] == [None, False, True, None]
    assert [r.value for r in results] == pytest.approx([10, 19, 100, 100])
    assert results[2].done_raw == '0.95' and state.done
    assert ask.answers == ['0']  # the last scripted answer was never needed

    keep = PairwiseCriticProfile(done_min_value=0, done_sets_value=False)
    out = keep.run(asker('10', '1'), [img(1), img(2)], None, TASK, None, previous_percent=None)
    assert out.result.done is True and out.percent == 10.0
    odd = keep.run(asker('10', 'perhaps'), [img(1), img(2)], None, TASK, None,
                   previous_percent=None)
    assert odd.result.done is None and odd.ok and 'done query' in ' '.join(odd.notes)


def test_profile_options_from_config_and_bad_options(tmp_path):
    cfg = ProfileConfig(profile='pairwise_critic', critic_accumulation='mix',
                        critic_done_every=3, critic_image_size=0)
    profile = profile_from_config(cfg)
    assert isinstance(profile, PairwiseCriticProfile)
    assert (profile.accumulation, profile.done_every, profile.image_size) == ('mix', 3, 0)
    with pytest.raises(ConfigError, match='accumulation'):
        make_profile('pairwise_critic', accumulation='sum')
    with pytest.raises(ConfigError, match='not found'):
        profile_from_config(ProfileConfig(profile='pairwise_critic',
                                          critic_reference_path=str(tmp_path / 'no')))
    with pytest.raises(ConfigError):
        ProfileConfig(critic_done_threshold=2.0)


def frame(i, value):
    return Frame(np.full((48, 64, 3), value, np.uint8), stamp_ns=(i + 1) * 10**9, index=i)


def test_through_the_monitor_value_is_progress_and_resets_with_the_episode():
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=(
        '40', '20', 'bad', '10')))
    monitor = Monitor(backend, window=WindowConfig(window_size=4, sample_period_s=0.0),
                      task=TASK, profile=make_profile('pairwise_critic', done_min_value=1000))
    assert monitor.load()
    out = []
    for i in range(3):
        monitor.offer(frame(i, 10 * i), (i + 1) * 10**9)
        out.append(monitor.step((i + 1) * 10**9))
    assert [o.estimate.percent for o in out] == pytest.approx([40, 52, 52])
    assert [o.estimate.status for o in out] == [Status.OK, Status.OK, Status.CARRIED_FORWARD]
    assert out[1].state.value == pytest.approx(0.52)  # the supervisor sees the value
    assert out[1].estimate.result.delta == 20.0 and out[1].estimate.profile == 'pairwise_critic'
    monitor.new_episode(4 * 10**9)
    monitor.offer(frame(3, 99), 5 * 10**9)
    fresh = monitor.step(5 * 10**9).estimate
    assert fresh.percent == 10.0 and fresh.profile_state.steps == 1  # from 0 again
    assert isinstance(fresh.profile_state, CriticState)


def test_state_of_another_kind_starts_a_fresh_episode(asker, img):
    out = PairwiseCriticProfile().run(asker('10'), [img(1)], None, TASK, 'junk',
                                      previous_percent=None)
    assert out.percent == 10.0 and isinstance(out.state, CriticState)
    assert isinstance(out.state.anchor, Image.Image)


def test_done_is_asked_even_when_the_delta_is_unreadable(asker, img):
    profile = PairwiseCriticProfile(done_every=1)
    out = profile.run(asker('???', '1'), [img(1), img(2)], None, TASK, None,
                      previous_percent=None)
    assert out.ok and out.percent == 100.0 and out.result.delta is None and out.result.done
    assert out.state.anchor is None and out.state.steps == 0  # the pair is asked again
    out = profile.run(asker('???', 'perhaps'), [img(1), img(2)], None, TASK, None,
                      previous_percent=None)
    assert not out.ok and out.percent is None and out.text == '???\nperhaps'
