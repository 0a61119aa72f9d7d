"""procvlm-infer --profile: the records each task profile writes (scripted, then a tiny model)."""

import json
import subprocess
import sys

import pytest

from procvlm_ros.cli import infer
from procvlm_ros.core.config import ProfileConfig
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.media.video import write_video
from procvlm_ros.offline import infer_progress_from_video
from procvlm_ros.testing.helpers import moving_frames
from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

TASK = 'stack the blocks'
OFFICIAL_KEYS = ['video_path', 'task', 'sample_index', 'frame_index', 'timestamp_sec',
                 'window_frame_indices', 'progress', 'parsed_progress', 'progress_source',
                 'reasoning', 'model_output', 'decoder_passes', 'draft_tokens_accepted']
NAVIGATION_KEYS = ['video_path', 'task', 'sample_index', 'frame_index', 'timestamp_sec',
                   'window_frame_indices', 'action', 'step', 'status_message', 'model_output']
QUERY_KEYS = ['video_path', 'task', 'sample_index', 'frame_index', 'timestamp_sec', 'question',
              'answer', 'points', 'zoomed', 'zoom_point', 'model_size', 'frame_size', 'notes',
              'model_output']


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp('vid') / 'clip.mp4', moving_frames(6), fps=5.0)


def scripted(video, tmp_path, profile, answers, *extra):
    out = tmp_path / f'{profile}.jsonl'
    rc = infer.main(['--video_path', str(video), '--task', TASK, '--quiet', '--no_plot',
                     '--output_path', str(out), '--backend', 'scripted', '--window_size', '3',
                     '--profile', profile, *extra, '--scripted_outputs', *answers])
    return rc, out


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pairwise_critic_rows_are_official_plus_delta_and_done(video, tmp_path, capsys):
    rc, out = scripted(video, tmp_path, 'pairwise_critic',
                       ['20', 'no idea', '50', '1', '10'],
                       '--critic_done_min_value', '50')
    assert rc == 0, capsys.readouterr().err
    records = rows(out)
    assert [list(r) for r in records] == [OFFICIAL_KEYS + ['delta', 'done', 'done_score']] * 6
    # 20 -> 20; unreadable -> carried; 50 -> 60 and the done query says 1 -> 100; then
    # the done is sticky and 100 absorbs
    assert [r['progress'] for r in records] == [20.0, 20.0, 100.0, 100.0, 100.0, 100.0]
    assert [r['delta'] for r in records] == [20.0, None, 50.0, 10.0, 20.0, None]
    assert [r['done'] for r in records] == [None, None, True, None, None, None]
    assert records[1]['progress_source'] == 'previous'
    assert records[2]['model_output'] == '50\n1'


def test_navigation_rows_have_action_and_step(video, tmp_path, capsys):
    rc, out = scripted(video, tmp_path, 'navigation_action',
                       ['Action: Move', 'Action: Left', 'Action: Fly'],
                       '--navigation_move_possible', 'off')
    assert rc == 0, capsys.readouterr().err
    records = rows(out)
    assert [list(r) for r in records] == [NAVIGATION_KEYS] * 6
    assert [(r['action'], r['step']) for r in records] == [
        ('', 0), ('Left', 0), ('', 1), ('', 1), ('Left', 1), ('', 2)]
    assert 'Move was not offered' in records[0]['status_message']
    assert not out.with_suffix('.png').exists()


def test_grounded_rows_answer_the_question_about_every_frame(video, tmp_path, capsys):
    rc, out = scripted(video, tmp_path, 'grounded_query',
                       ['<think>block (28, 28)</think><answer>red</answer>'],
                       '--question', 'Where is the red block?')
    assert rc == 0, capsys.readouterr().err
    records = rows(out)
    assert [list(r) for r in records] == [QUERY_KEYS] * 6
    assert {r['answer'] for r in records} == {'red'}
    # 64x48 frames: pre-resize 56x56, Qwen2.5-VL geometry keeps 56x56; back to frame pixels
    assert records[0]['model_size'] == [56, 56] and records[0]['frame_size'] == [64, 48]
    assert records[0]['points'] == [[32.0, 24.0, 'think']]
    assert [r['frame_index'] for r in records] == list(range(6))


def test_grounded_needs_a_question(video, tmp_path, capsys):
    rc, _ = scripted(video, tmp_path, 'grounded_query', ['x'])
    assert rc == 2 and 'needs a question (--question)' in capsys.readouterr().err
    with pytest.raises(ConfigError, match='needs a question'):
        infer_progress_from_video(video_path=video, task=TASK, backend='scripted',
                                  scripted_outputs=('x',),
                                  profile=ProfileConfig(profile='grounded_query'))


def test_procvlm_progress_profile_is_the_default_path(video, tmp_path, capsys):
    answers = ['<progress>10%</progress>', 'none']
    rc, named = scripted(video, tmp_path, 'procvlm_progress', answers)
    assert rc == 0, capsys.readouterr().err
    default = tmp_path / 'default.jsonl'
    assert infer.main(['--video_path', str(video), '--task', TASK, '--quiet', '--no_plot',
                       '--output_path', str(default), '--backend', 'scripted',
                       '--window_size', '3', '--scripted_outputs', *answers]) == 0
    assert named.read_text() == default.read_text()
    assert infer.default_output('/d/clip.mp4', 'pairwise_critic').name == 'clip_progress.jsonl'
    assert infer.default_output('/d/clip.mp4', 'grounded_query').name == (
        'clip_grounded_query.jsonl')


# ---------------------------------------------------------------------------- tiny model
@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', seed=3)


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'procvlm_ros.cli.infer', '--quiet',
                           '--no_plot', *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(('profile', 'extra', 'keys'), [
    ('pairwise_critic', ['--critic_done_every', '1'],
     OFFICIAL_KEYS + ['delta', 'done', 'done_score']),
    ('navigation_action', [], NAVIGATION_KEYS),
    ('grounded_query', ['--question', 'Where is the red block?', '--grounded_max_turns', '2'],
     QUERY_KEYS),
])
def test_each_profile_runs_a_real_tiny_qwen3_vl(profile, extra, keys, model_dir, video,
                                                tmp_path):
    out = tmp_path / f'{profile}.jsonl'
    res = run_cli('--video_path', str(video), '--task', TASK, '--model_path', str(model_dir),
                  '--output_path', str(out), '--torch_dtype', 'fp32', '--device', 'cpu',
                  '--attn_implementation', 'eager', '--max_new_tokens', '6',
                  '--max_sampled_frames', '3', '--window_size', '3', '--profile', profile,
                  *extra)
    assert res.returncode == 0, res.stderr
    records = rows(out)
    assert [list(r) for r in records] == [keys] * 3
    assert all(r['model_output'] for r in records)  # the model answered every window
    if profile == 'pairwise_critic':  # a random model writes no number: value carried from 0
        for r in records:
            assert r['progress'] == 0.0 or r['parsed_progress'] == r['progress']
    if profile == 'grounded_query':  # the tiny processor's geometry: 64x64 at most 16384 px
        assert records[0]['model_size'] == [64, 64] and records[0]['frame_size'] == [64, 48]
