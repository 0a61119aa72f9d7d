"""Episode discovery and task lookup (no model)."""

import json

import numpy as np
import pytest

from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.core.types import Frame
from procvlm_ros.label.sources import discover, EpisodeError, open_episode
from procvlm_ros.media.rosbag import write_image_bag


def _bag(path, storage='sqlite3', n=3):
    frames = (Frame(np.zeros((4, 6, 3), np.uint8), 10**18 + i * 10**8, 'cam', i)
              for i in range(n))
    return write_image_bag(path, frames, '/cam', storage=storage)


def test_bag_discovery_skips_outputs_and_temporary_files(tmp_path):
    root = tmp_path / 'runs'
    _bag(root / 'a' / 'bag')
    _bag(root / 'b' / 'rec', storage='mcap')
    (root / 'a' / 'task.txt').write_text('open the drawer\n')
    (root / 'a' / 'bag.progress.mcap').write_bytes(b'ours')  # an earlier run's output
    _bag(root / 'a' / '.bag.progress.mcap.tmpbag', storage='mcap')  # a killed run's temp
    single = _bag(tmp_path / 'x', storage='mcap')
    (root / 'c').mkdir()
    next(single.glob('*.mcap')).rename(root / 'c' / 'single.mcap')  # a lone .mcap file
    _bag(root / 'out' / 'bag')  # inside the output folder
    specs = discover(root, 'bags', exclude=root / 'out')
    assert [s.episode_id for s in specs] == ['a__bag', 'b__rec', 'c__single']
    assert [s.task for s in specs] == ['open the drawer', None, None]
    assert open_episode(specs[0]).total_frames == 3
    with pytest.raises(EpisodeError, match='no task text for b__rec'):
        open_episode(specs[1])
    flagged = discover(root, 'bags', task='sort the parts', exclude=root / 'out')
    assert {s.task for s in flagged} == {'sort the parts'}
    assert open_episode(flagged[2]).total_frames == 3


def test_video_discovery_reads_ground_truth_task(tmp_path):
    (tmp_path / 'e1').mkdir()
    (tmp_path / 'e1' / 'clip.MP4').write_bytes(b'')
    (tmp_path / 'e1' / 'ground_truth.json').write_text(json.dumps({'task': 'push the box'}))
    (tmp_path / 'notes.txt').write_text('not a video')
    specs = discover(tmp_path, 'videos')
    assert [(s.episode_id, s.task, s.kind) for s in specs] == [('e1__clip', 'push the box',
                                                                'video')]
    with pytest.raises(EpisodeError, match='cannot open'):
        open_episode(specs[0])  # empty file


def test_dataset_level_errors(tmp_path):
    with pytest.raises(ProcVlmError, match='dataset folder not found'):
        discover(tmp_path / 'missing', 'videos')
    with pytest.raises(ProcVlmError, match='unknown dataset kind'):
        discover(tmp_path, 'images')
    with pytest.raises(ProcVlmError, match='not a LeRobot dataset'):
        discover(tmp_path, 'lerobot')
