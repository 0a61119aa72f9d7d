"""procvlm-synth: mp4 / rosbag2 / JSON exports decode back to the generated episodes."""

import json

import numpy as np
import pytest

pytest.importorskip('av')
pytest.importorskip('rosbags')

from procvlm_ros.media.rosbag import (  # noqa: E402
    list_image_topics,
    probe_image_topic,
    read_bag_frames,
)
from procvlm_ros.media.video import probe_video, read_video_frames  # noqa: E402
from procvlm_ros.synth import cli  # noqa: E402
from procvlm_ros.synth.episode import generate_episode  # noqa: E402
from procvlm_ros.synth.export import (  # noqa: E402
    BAG_TOPIC,
    episode_plan,
    list_episode_dirs,
    load_ground_truth,
    STAMP_BASE_NS,
)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp('synth') / 'data'
    code = cli.main(['--out', str(out), '--episodes', '3', '--seed', '11', '--kinds',
                     'success,stall,regress', '--format', 'mp4,bag'])
    assert code == 0
    return out


def test_manifest_and_layout(dataset):
    manifest = json.loads((dataset / 'manifest.json').read_text())
    assert manifest['seed'] == 11
    assert [e['kind'] for e in manifest['episodes']] == ['success', 'stall', 'regress']
    dirs = list_episode_dirs(dataset)
    assert [d.name for d in dirs] == ['episode_0000', 'episode_0001', 'episode_0002']
    for d in dirs:
        assert (d / 'video.mp4').is_file() and (d / 'bag' / 'metadata.yaml').is_file()


def test_ground_truth_file_matches_generator(dataset):
    for index, kind in enumerate(['success', 'stall', 'regress']):
        gt = load_ground_truth(dataset / f'episode_{index:04d}')
        ep = generate_episode(11, index, kind, gt['task_kind'])
        assert gt == json.loads(json.dumps(ep.ground_truth()))
        assert gt['num_frames'] == len(gt['frames']) == ep.num_frames
        assert gt['task'] == ep.task.sentence and gt['fps'] == 2.0


def test_mp4_decodes_to_the_same_frames(dataset):
    gt = load_ground_truth(dataset / 'episode_0001')
    ep = generate_episode(11, 1, 'stall', gt['task_kind'])
    path = dataset / 'episode_0001' / 'video.mp4'
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height) == (ep.num_frames, 160, 120)
    assert info.fps == pytest.approx(2.0)
    frames = list(read_video_frames(path))
    assert len(frames) == ep.num_frames
    for i in (0, ep.num_frames // 2, ep.num_frames - 1):
        diff = np.abs(frames[i].image.astype(int) - ep.frame(i).astype(int)).mean()
        assert diff < 6.0, f'frame {i} differs by {diff:.1f} on average (lossy codec)'


def test_same_seed_writes_the_same_videos(dataset, tmp_path):
    # Training data goes through this encoder: the same seed must give the same bytes (libx264
    # with mbtree did not, run to run).
    again = tmp_path / 'again'
    assert cli.main(['--out', str(again), '--episodes', '3', '--seed', '11', '--kinds',
                     'success,stall,regress']) == 0
    for name in ('episode_0000', 'episode_0001', 'episode_0002'):
        assert (again / name / 'video.mp4').read_bytes() == \
            (dataset / name / 'video.mp4').read_bytes(), name


def test_bag_holds_exact_frames_with_stamps(dataset):
    gt = load_ground_truth(dataset / 'episode_0002')
    ep = generate_episode(11, 2, 'regress', gt['task_kind'])
    bag = dataset / 'episode_0002' / 'bag'
    assert list_image_topics(bag) == {BAG_TOPIC: 'sensor_msgs/msg/Image'}
    assert probe_image_topic(bag, BAG_TOPIC) == ep.num_frames
    frames = list(read_bag_frames(bag, BAG_TOPIC))
    assert len(frames) == ep.num_frames
    for i, frame in enumerate(frames):
        assert frame.stamp_ns == STAMP_BASE_NS + round(i * 0.5e9)
        if i % 7 == 0:
            assert np.array_equal(frame.image, ep.frame(i))


def test_refuses_non_empty_output(dataset, capsys):
    assert cli.main(['--out', str(dataset), '--episodes', '1', '--seed', '1']) == 1
    assert 'not empty' in capsys.readouterr().err


def test_cli_rejects_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(['--out', str(tmp_path / 'x'), '--episodes', '1', '--seed', '1',
                  '--kinds', 'success,wobble'])
    assert cli.main(['--out', str(tmp_path / 'y'), '--episodes', '0', '--seed', '1']) == 2


def test_episode_plan_cycles_kinds_then_tasks():
    plan = episode_plan(12)
    assert len(set(plan)) == 12
    assert plan[:5] == [('success', 'stack'), ('fail', 'stack'), ('stall', 'stack'),
                        ('regress', 'stack'), ('success', 'push')]
    with pytest.raises(ValueError):
        episode_plan(2, kinds=['nope'])
