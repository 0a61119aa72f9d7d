"""Annotation files, the scripted ``procvlm-adapt annotate`` path and the dataset writer."""

import json
from pathlib import Path

import pytest
import yaml

from procvlm_ros.adapt import annotation as ann
from procvlm_ros.adapt.cli import main as adapt_main
from procvlm_ros.adapt.dataset import (
    answer_text,
    build_dataset,
    monitor_history,
    read_qa_pairs,
    sample_history,
    WindowPlan,
)
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.prompt import build_prompt
from procvlm_ros.core.types import Frame
from procvlm_ros.media.rosbag import write_image_bag
from procvlm_ros.media.video import write_video
from procvlm_ros.testing.helpers import moving_frames

TASK = 'open the drawer'
TIMES = [i * 0.5 for i in range(10)]  # 10 frames at 2 fps


def make(stages, done=True, **kw):
    return ann.from_dict({'task': TASK, 'done': done, 'stages': stages, **kw})


def test_frames_and_timestamps_resolve_like_the_official_page():
    a = make([{'description': 'reach', 'end_frame': 3}, {'description': 'pull', 'end_s': 2.6}])
    # 2.6 s -> the last frame at or before it: frame 5 (2.5 s); a Done tail covers 6..9.
    assert ann.resolve_sub_tasks(a, TIMES) == [['reach', 3], ['pull', 5], ['Done', 9]]
    b = make([['reach', 4], ['pull', 9]], done=False)  # the official [desc, end] pairs
    assert ann.resolve_sub_tasks(b, TIMES) == [['reach', 4], ['pull', 9]]
    c = make([['reach', 4]], done=False)
    assert ann.resolve_sub_tasks(c, TIMES)[-1] == ['Not Done', 9]


@pytest.mark.parametrize(('stages', 'message'), [
    ([['a', 4], ['b', 4]], 'stages overlap'),
    ([['a', 5], ['b', 3]], 'stages overlap'),
    ([['a', 10]], r'outside the demonstration \(frames 0..9\)'),
    ([{'description': 'a', 'end_s': 4.6}], r'outside the demonstration \(0..4.500 s\)'),
    ([['a', 0]], 'must end after frame 0'),
    ([['/delete', 4]], 'nothing is left'),
])
def test_bad_stages_are_refused(stages, message):
    with pytest.raises(ConfigError, match=message):
        ann.resolve_sub_tasks(make(stages), TIMES)


@pytest.mark.parametrize(('data', 'message'), [
    ({'done': True, 'stages': [['a', 1]]}, 'task is missing'),
    ({'task': TASK, 'done': 'yes', 'stages': [['a', 1]]}, 'done must be true or false'),
    ({'task': TASK, 'done': True, 'stages': []}, 'non-empty list'),
    ({'task': TASK, 'done': True, 'stages': [{'description': 'a'}]}, 'exactly one of'),
    ({'task': TASK, 'done': True, 'stages': [{'description': 'a', 'end_frame': 1.5}]},
     'must be an integer'),
    ({'task': TASK, 'done': False, 'success_cutoff': 1.5, 'stages': [['a', 1]]},
     r'success_cutoff must be a number in \[0, 1\]'),
    ({'task': TASK, 'done': True, 'stages': [['a', 1]], 'colour': 'red'}, 'unknown keys'),
])
def test_bad_files_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        ann.from_dict(data)


def test_empty_demonstration_is_refused():
    with pytest.raises(ConfigError, match='no frames'):
        ann.resolve_sub_tasks(make([['a', 1]]), [])


def test_round_trip_yaml_and_json(tmp_path):
    a = make([{'description': 'reach', 'end_frame': 3}, {'description': 'pull', 'end_s': 2.5}],
             done=False, success_cutoff=0.6, source='clip.mp4')
    for name in ('a.yaml', 'a.json'):
        back = ann.load(ann.save(a, tmp_path / name))
        assert back == a
        assert back.source_path() == tmp_path / 'clip.mp4'


def frames(n=12, h=48, w=64):
    return moving_frames(n, h, w, background=60, brighten=0, speed=4)


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / 'demo clip.mp4', frames(), fps=2.0)


def test_scripted_annotate_then_dataset(tmp_path, video, capsys):
    stages = tmp_path / 'stages.yaml'
    stages.write_text(yaml.safe_dump({'task': TASK, 'done': True, 'reason': 'ball inside',
                                      'stages': [{'description': 'reach the knob', 'end_s': 1.5},
                                                 {'description': 'pull it open',
                                                  'end_frame': 7}]}))
    assert adapt_main(['annotate', '--source', str(video), '--out', str(tmp_path / 'ann'),
                       '--stages', str(stages)]) == 0
    saved = ann.load(tmp_path / 'ann')
    assert saved.source == str(video) and saved.stages[0].end_s == 1.5
    assert adapt_main(['dataset', str(tmp_path / 'ann'), '--out', str(tmp_path / 'data')]) == 0
    meta = json.loads((tmp_path / 'data' / 'dataset.json').read_text())
    demo = meta['demonstrations'][0]
    assert demo['sub_tasks'] == [['reach the knob', 3], ['pull it open', 7], ['Done', 11]]
    progress = demo['progress']
    assert progress[:1] == [0.0] and progress[8:] == [1.0] * 4  # the Done tail
    assert all(b >= a for a, b in zip(progress, progress[1:]))
    rows = [json.loads(line) for line in
            (tmp_path / 'data' / 'qa_pairs.jsonl').read_text().splitlines()]
    # 8 unfinished frames + the 4 finished ones, each three times.
    assert len(rows) == 8 + 4 * 3
    prompt = build_prompt(TASK)
    for row in rows:
        human, gpt = row['conversations'][0], row['conversations'][1]
        assert (human['from'], gpt['from']) == ('human', 'gpt')
        assert human['value'] == '<image>\n' * len(row['image']) + prompt
        numbers = [int(Path(rel).stem) for rel in row['image']]  # consecutive, up to 17
        assert numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) <= 17
        for rel in row['image']:
            assert rel.startswith('images/open_the_drawer/demo_clip_')
            assert (tmp_path / 'data' / rel).is_file()
    first = rows[0]['conversations'][1]['value']
    assert first == ('The following actions are required: \n1. reach the knob\n2. pull it open\n'
                     'Therefore, the estimated progress is <progress>0.00%</progress>.')
    finished = [r for r in rows if '100%' in r['conversations'][1]['value']]
    assert finished[0]['conversations'][1]['value'] == (
        'Image shows the final result. Reason: ball inside.\n'
        'Therefore, the estimated progress is <progress>100%</progress>.')
    assert len(read_qa_pairs(tmp_path / 'data')) == len(rows)
    # Same inputs and seed: the same data set, byte for byte.
    build_dataset([tmp_path / 'ann'], tmp_path / 'again')
    assert (tmp_path / 'again' / 'qa_pairs.jsonl').read_bytes() == (
        tmp_path / 'data' / 'qa_pairs.jsonl').read_bytes()


def test_not_done_is_scaled_and_deleted_frames_dropped(tmp_path, video):
    a = ann.from_dict({'task': TASK, 'done': False, 'success_cutoff': 0.5,
                       'source': str(video),
                       'stages': [['reach', 2], ['/delete', 4], ['pull', 11]]})
    ann.save(a, tmp_path / 'a.yaml')
    meta = build_dataset([tmp_path / 'a.yaml'], tmp_path / 'data')
    demo = meta['demonstrations'][0]
    assert demo['kept_frames'] == 12 - 2
    assert max(demo['progress']) <= 0.5
    assert demo['progress'][-1] > 0.4  # 0.5 x the last frame's (unscaled, < 1) label
    texts = [json.loads(line)['conversations'][1]['value'] for line in
             (tmp_path / 'data' / 'qa_pairs.jsonl').read_text().splitlines()]
    assert all('100%' not in t for t in texts)
    assert len(texts) == 10


def test_bag_source_topics(tmp_path):
    bag = tmp_path / 'bag'
    write_image_bag(bag, (Frame(img, 1_000_000_000 + i * 500_000_000, 'cam', i)
                          for i, img in enumerate(frames(6))), '/cam/image')
    stages = tmp_path / 's.yaml'
    stages.write_text(yaml.safe_dump({'task': TASK, 'done': True,
                                      'stages': [{'description': 'go', 'end_s': 1.0}]}))
    out = tmp_path / 'ann'
    assert adapt_main(['annotate', '--source', str(bag), '--out', str(out), '--stages',
                       str(stages)]) == 0
    saved = ann.load(out)
    assert saved.image_topic == '/cam/image'
    assert adapt_main(['annotate', '--source', str(bag), '--image_topic', '/nope', '--out',
                       str(tmp_path / 'x'), '--stages', str(stages)]) == 2


def test_cli_reports_overlaps(tmp_path, video, capsys):
    stages = tmp_path / 'stages.json'
    stages.write_text(json.dumps({'task': TASK, 'done': True,
                                  'stages': [['a', 5], ['b', 5]]}))
    assert adapt_main(['annotate', '--source', str(video), '--out', str(tmp_path / 'o'),
                       '--stages', str(stages)]) == 2
    assert 'stages overlap' in capsys.readouterr().err
    assert not Path(tmp_path / 'o' / 'annotation.yaml').exists()


def test_monitor_windows_are_the_windows_inference_builds():
    from procvlm_ros.core.sampling import window_positions

    times = [i * 0.5 for i in range(30)]
    for i in range(30):  # period 0: exactly the offline/official inference windows
        assert monitor_history(times, i) == window_positions(i, 8)
    # The node keeps frames >= sample_period_s apart: 1 s at 2 fps is every other frame.
    assert monitor_history(times, 20, 8, 1.0) == [6, 8, 10, 12, 14, 16, 18, 20]
    assert monitor_history(times, 3, 4, 1.0) == [0, 0, 1, 3]
    # Uneven stamps: each slot takes the newest frame at least a period older.
    jitter = [0.0, 0.4, 0.9, 1.0, 1.45, 2.2, 2.3]
    assert monitor_history(jitter, 6, 3, 1.0) == [0, 3, 6]
    assert monitor_history(times, 5, 1) == [5]


def test_dataset_with_monitor_windows(tmp_path, video, capsys):
    a = ann.from_dict({'task': TASK, 'done': True, 'source': str(video),
                       'stages': [['reach', 3], ['pull', 7]]})
    ann.save(a, tmp_path / 'a.yaml')
    assert adapt_main(['dataset', str(tmp_path / 'a.yaml'), '--out', str(tmp_path / 'd'),
                       '--windows', 'monitor', '--sample_period_s', '1.0',
                       '--window_size', '4']) == 0
    meta = json.loads((tmp_path / 'd' / 'dataset.json').read_text())
    assert (meta['windows'], meta['window_size'], meta['sample_period_s']) == ('monitor', 4, 1.0)
    rows = [json.loads(line) for line in
            (tmp_path / 'd' / 'qa_pairs.jsonl').read_text().splitlines()]
    assert len(rows) == 8 + 4 * 3  # the same samples as the official variety
    for row in rows:
        frames_of = [int(Path(rel).stem) for rel in row['image']]
        assert len(frames_of) == 4
        current = frames_of[-1]  # the video is 2 fps: 1 s is two frames
        assert frames_of == [max(current - 2 * k, 0) for k in (3, 2, 1, 0)]
        assert row['conversations'][0]['value'] == '<image>\n' * 4 + build_prompt(TASK)
    for bad, message in ((['--windows', 'monitor', '--window_size', '0'], 'window_size'),
                         (['--sample_period_s', '-1'], 'sample_period_s')):
        assert adapt_main(['dataset', str(tmp_path / 'a.yaml'), '--out',
                           str(tmp_path / 'bad'), *bad]) == 2
        assert message in capsys.readouterr().err


def test_more_window_draws_per_frame(tmp_path, video):
    a = ann.from_dict({'task': TASK, 'done': True, 'source': str(video),
                       'stages': [['reach', 3], ['pull', 7]]})
    ann.save(a, tmp_path / 'a.yaml')
    one = build_dataset([tmp_path / 'a.yaml'], tmp_path / 'one')
    three = build_dataset([tmp_path / 'a.yaml'], tmp_path / 'three', windows=WindowPlan(draws=3))
    assert (one['samples'], three['samples']) == (8 + 4 * 3, 3 * (8 + 4 * 3))
    rows = [json.loads(line) for line in
            (tmp_path / 'three' / 'qa_pairs.jsonl').read_text().splitlines()]
    by_answer_and_frame = {}
    for row in rows:
        key = (row['conversations'][1]['value'], row['image'][-1])
        by_answer_and_frame.setdefault(key, []).append(len(row['image']))
    assert all(len(v) % 3 == 0 for v in by_answer_and_frame.values())
    # independent draws: some frame gets windows of different lengths
    assert any(len(set(v)) > 1 for v in by_answer_and_frame.values())
    with pytest.raises(ConfigError, match='draws'):
        build_dataset([tmp_path / 'a.yaml'], tmp_path / 'zero', windows=WindowPlan(draws=0))


def test_window_variety_and_answers():
    import random

    rng = random.Random(0)
    sizes = [len(sample_history(rng, 30)) for _ in range(2000)]
    single = sizes.count(1) / len(sizes)
    assert 0.26 < single < 0.34
    assert set(sizes) - {1} == set(range(5, 18))
    assert sample_history(random.Random(3), 2)[0] == 0 or len(sample_history(
        random.Random(3), 2)) == 1
    assert answer_text(0.4567, ['a', 'b']).endswith('<progress>45.67%</progress>.')
    assert answer_text(1.0, []) == ('Image shows the final result.\nTherefore, the estimated '
                                    'progress is <progress>100%</progress>.')
