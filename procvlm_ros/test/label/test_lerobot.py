"""
procvlm-label on LeRobot v3 datasets.

The released ``lerobot`` (0.4.4) cannot be installed beside the main venv's torch 2.13 (it
pins torch<2.11 and imports torchvision, which does not load there), so most tests lay the
dataset out by hand in LeRobot's v3 format (meta/info.json, meta/episodes, meta/tasks, data/,
episodes concatenated in one mp4). ``test_with_lerobot_api`` builds it with LeRobot's own API
and loads the ``--write-dataset`` copy with it; it runs where lerobot imports, i.e. in
``.venv-lerobot`` (``make venv-lerobot``), into which the main venv's run hands it
(``test_with_lerobot_api_in_lerobot_venv``).
"""

import importlib.util
import json
import os
from pathlib import Path
import re
import subprocess

import numpy as np
import pytest

from procvlm_ros.label import cli
from procvlm_ros.label.writers import read_frame_signals
from procvlm_ros.synth import generate_episode

from .conftest import MODEL_ARGS, SEED

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')
pytestmark = pytest.mark.slow
KEY = 'observation.images.top'
FAST = ['--stride', '4', '--max-frames', '16']


def _write_v3(root, episodes, *, drop_video_of=None):
    """LeRobot v3.0 layout (the fields LeRobotDatasetMetadata reads)."""
    from procvlm_ros.media.video import write_video
    from procvlm_ros.synth.export import VIDEO_OPTIONS

    fps = int(episodes[0].fps)
    frames, rows, data = [], [], {'index': [], 'episode_index': [], 'frame_index': [],
                                  'timestamp': [], 'task_index': []}
    tasks = sorted({e.task.sentence for e in episodes})
    start = 0
    for i, e in enumerate(episodes):
        n = e.num_frames
        row = {'episode_index': i, 'tasks': [e.task.sentence], 'length': n,
               'data/chunk_index': 0, 'data/file_index': 0,
               'dataset_from_index': start, 'dataset_to_index': start + n,
               f'videos/{KEY}/chunk_index': 0, f'videos/{KEY}/file_index': 0,
               f'videos/{KEY}/from_timestamp': start / fps,
               f'videos/{KEY}/to_timestamp': (start + n) / fps,
               'meta/episodes/chunk_index': 0, 'meta/episodes/file_index': 0}
        if i == drop_video_of:
            row[f'videos/{KEY}/chunk_index'] = None
        rows.append(row)
        frames += [e.frame(f) for f in range(n)]
        data['index'] += range(start, start + n)
        data['episode_index'] += [i] * n
        data['frame_index'] += range(n)
        data['timestamp'] += [f / fps for f in range(n)]
        data['task_index'] += [tasks.index(e.task.sentence)] * n
        start += n
    h, w = frames[0].shape[:2]
    info = {'codebase_version': 'v3.0', 'robot_type': None, 'total_episodes': len(episodes),
            'total_frames': start, 'total_tasks': len(tasks), 'chunks_size': 1000,
            'data_files_size_in_mb': 100, 'video_files_size_in_mb': 500, 'fps': fps,
            'splits': {'train': f'0:{len(episodes)}'},
            'data_path': 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet',
            'video_path': 'videos/{video_key}/chunk-{chunk_index:03d}/'
                          'file-{file_index:03d}.mp4',
            'features': {KEY: {'dtype': 'video', 'shape': [h, w, 3],
                               'names': ['height', 'width', 'channels']},
                         **{k: {'dtype': 'int64' if k != 'timestamp' else 'float32',
                                'shape': [1], 'names': None} for k in data}}}
    (root / 'meta' / 'episodes' / 'chunk-000').mkdir(parents=True)
    (root / 'meta' / 'info.json').write_text(json.dumps(info, indent=1))
    pq.write_table(pa.Table.from_pylist(rows),
                   root / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet')
    pq.write_table(pa.table({'task_index': range(len(tasks)), 'task': tasks}),
                   root / 'meta' / 'tasks.parquet')
    (root / 'data' / 'chunk-000').mkdir(parents=True)
    pq.write_table(pa.table(data), root / 'data' / 'chunk-000' / 'file-000.parquet')
    video = root / 'videos' / KEY / 'chunk-000' / 'file-000.mp4'
    video.parent.mkdir(parents=True)
    write_video(video, frames, fps, options=VIDEO_OPTIONS)
    return root


@pytest.fixture(scope='module')
def episodes():
    pytest.importorskip('torch')
    return [generate_episode(SEED, i, kind, fps=2.0)
            for i, kind in enumerate(['success', 'fail', 'stall'])]


def test_lerobot_episode_frames_come_from_the_right_offsets(episodes, tmp_path):
    from procvlm_ros.label.sources import discover, open_episode

    root = _write_v3(tmp_path / 'ds', episodes)
    specs = discover(root, 'lerobot')  # the only video key is picked
    assert [s.task for s in specs] == [e.task.sentence for e in episodes]
    for spec, episode in zip(specs, episodes):
        source = open_episode(spec)
        assert source.total_frames == episode.num_frames
        picks = [0, episode.num_frames // 2, episode.num_frames - 1]
        got = list(source.read(picks))
        assert [f.index for f in got] == picks
        for frame, i in zip(got, picks):
            # H.264 at crf 18: the decoded frame is close to this episode's frame i ...
            err = np.abs(frame.image.astype(int) - episode.frame(i).astype(int)).mean()
            assert err < 3.0, (spec.episode_id, i, err)
        other = episodes[(episodes.index(episode) + 1) % len(episodes)]
        # ... and not to another episode's (a wrong offset would pass the check above).
        assert np.abs(got[0].image.astype(int) - other.frame(0).astype(int)).mean() > 3.0


def test_label_lerobot_dataset_and_sidecar(episodes, tmp_path):
    root = _write_v3(tmp_path / 'ds', episodes)
    out = tmp_path / 'out'
    assert cli.main(['run', '--lerobot', str(root), '--camera-key', KEY, '--out', str(out),
                     *FAST, *MODEL_ARGS]) == 0
    table, descriptors, provenance = read_frame_signals(out / 'frame_signals' /
                                                        'progress.parquet')
    assert descriptors['progress']['bounds'] == [0.0, 1.0]
    _check_frame_signals_contract(table)
    meta = table.schema.metadata
    assert json.loads(meta[b'lerobot.reward_scoring.episode_indices']) == [0, 1, 2]
    assert pq.ParquetFile(out / 'frame_signals' / 'progress.parquet').num_row_groups == 3
    starts = np.cumsum([0] + [min(16, e.num_frames) for e in episodes])
    data = table.to_pydict()
    full_starts = np.cumsum([0] + [e.num_frames for e in episodes])
    for i, episode in enumerate(episodes):
        rows = [j for j, ep in enumerate(data['episode_index']) if ep == i]
        assert len(rows) == starts[i + 1] - starts[i]
        # global index = the dataset's index of that frame (dataset_from_index + frame_index)
        assert [data['index'][j] for j in rows] == [full_starts[i] + data['frame_index'][j]
                                                    for j in rows]
        result = json.loads((out / 'episodes' / f'episode_{i:06d}.json').read_text())
        assert result['task'] == episode.task.sentence
        np.testing.assert_allclose([data['progress'][j] for j in rows],
                                   result['frames']['progress'])


def _check_frame_signals_contract(table):
    """LeRobot's frame-signal rules (format, reserved columns, ordering, descriptors, bounds)."""
    meta = table.schema.metadata
    key = b'lerobot.reward_scoring.'
    assert meta[key + b'format'] == b'lerobot.frame_signals'
    assert meta[key + b'schema_version'] == b'1'
    assert isinstance(json.loads(meta[key + b'provenance']), dict)
    selection = json.loads(meta[key + b'episode_indices'])
    assert selection == sorted(set(selection))
    descriptors = json.loads(meta[key + b'descriptors'])
    reserved = ['index', 'episode_index', 'frame_index']
    assert set(table.column_names) - set(reserved) == set(descriptors)
    for name in reserved:
        assert pa.types.is_int64(table[name].type) and table[name].null_count == 0
    index = np.asarray(table['index'])
    episode = np.asarray(table['episode_index'])
    frame = np.asarray(table['frame_index'])
    assert np.all(np.diff(index) > 0)
    order = list(dict.fromkeys(episode.tolist()))
    assert order == sorted(order) and set(order) <= set(selection)
    for ep in order:
        mask = episode == ep
        assert np.all(frame[mask] >= 0) and np.all(np.diff(frame[mask]) > 0)
        assert np.unique(index[mask] - frame[mask]).size == 1
    for name, d in descriptors.items():
        assert set(d) == {'description', 'unit', 'direction', 'comparison_scope',
                          'missing_values', 'bounds'}
        assert d['description'].strip() and d['direction'] in {'higher', 'lower', 'none'}
        assert d['comparison_scope'] in {'episode', 'task', 'dataset', 'global', 'none'}
        assert d['missing_values'] in {'forbidden', 'nan'}
        column = table[name]
        assert column.null_count == 0
        assert (pa.types.is_boolean(column.type) or pa.types.is_integer(column.type)
                or pa.types.is_floating(column.type))
        values = np.asarray(column)
        if values.dtype.kind == 'f':
            assert np.isfinite(values).all()
        if d['bounds'] is not None:
            assert d['bounds'][0] <= values.min() and values.max() <= d['bounds'][1]


def test_lerobot_bad_inputs(episodes, tmp_path, capsys):
    root = _write_v3(tmp_path / 'ds', episodes, drop_video_of=1)
    assert cli.main(['run', '--lerobot', str(root), '--camera-key', 'observation.images.wrist',
                     '--out', str(tmp_path / 'o1'), *FAST, *MODEL_ARGS]) == 1
    assert "camera key 'observation.images.wrist' is not a video feature" in \
        capsys.readouterr().err
    assert cli.main(['run', '--lerobot', str(root), '--out', str(tmp_path / 'o2'), *FAST,
                     *MODEL_ARGS]) == 1
    err = capsys.readouterr().err
    assert '1 episode(s) failed' in err and 'episode_000001: no video for camera' in err
    assert sorted(p.stem for p in (tmp_path / 'o2' / 'episodes').glob('*.json')) == [
        'episode_000000', 'episode_000002']
    assert cli.main(['run', '--lerobot', 'nobody/nothing-here', '--out',
                     str(tmp_path / 'o3'), *MODEL_ARGS]) == 1
    assert "cannot fetch LeRobot dataset 'nobody/nothing-here'" in capsys.readouterr().err


LEROBOT_VENV = Path(__file__).resolve().parents[3] / '.venv-lerobot'
# Set by .ci/run: a missing .venv-lerobot (or lerobot in it) fails instead of skipping.
REQUIRE_LEROBOT = os.environ.get('PROCVLM_REQUIRE_LEROBOT') == '1'
# Set for the run in .venv-lerobot: there test_with_lerobot_api imports lerobot, never skips.
_IN_LEROBOT_VENV = 'PROCVLM_LEROBOT_SUBPROCESS'


def _lerobot_python():
    return Path(os.environ.get('PROCVLM_LEROBOT_PYTHON', LEROBOT_VENV / 'bin' / 'python'))


@pytest.mark.skipif(importlib.util.find_spec('lerobot') is not None,
                    reason='lerobot imports here: test_with_lerobot_api runs in this process')
def test_with_lerobot_api_in_lerobot_venv():
    """From the main venv: run test_with_lerobot_api under .venv-lerobot's Python."""
    python = _lerobot_python()
    if not python.exists():
        message = f'{python} missing; make venv-lerobot (scripts/setup_lerobot_venv.sh)'
        if REQUIRE_LEROBOT:
            pytest.fail(message)
        pytest.skip(message)
    test = f'{Path(__file__).resolve()}::test_with_lerobot_api'
    proc = subprocess.run(
        [str(python), '-m', 'pytest', test, '-q', '-rs', '-p', 'no:cacheprovider',
         '--timeout', '900'], cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, _IN_LEROBOT_VENV: '1'}, capture_output=True, text=True,
        timeout=1200, check=False)
    assert proc.returncode == 0 and re.search(r'^1 passed in ', proc.stdout, re.M), \
        f'{python} -m pytest {test}: exit {proc.returncode}\n{proc.stdout[-8000:]}' \
        f'\n{proc.stderr[-4000:]}'


def _import_lerobot(module):
    if os.environ.get(_IN_LEROBOT_VENV) == '1':
        return importlib.import_module(module)
    return pytest.importorskip(module, reason='runs in .venv-lerobot: '
                               'test_with_lerobot_api_in_lerobot_venv')


def test_with_lerobot_api(episodes, tmp_path):
    """
    A dataset made with LeRobot's API; label it; the sidecar lines up with the dataset as LeRobot
    loads it; ``--write-dataset`` (LeRobot's ``dataset_tools.add_features``) gives a dataset that
    LeRobot loads, whose ``progress``/``reward`` equal the labels on every frame.
    """
    lerobot_dataset = _import_lerobot('lerobot.datasets.lerobot_dataset')
    torch = pytest.importorskip('torch')
    root = tmp_path / 'ds'
    h, w = episodes[0].frame(0).shape[:2]
    ds = lerobot_dataset.LeRobotDataset.create(
        repo_id='local/synth', fps=2, root=root, use_videos=True,
        features={KEY: {'dtype': 'video', 'shape': [h, w, 3],
                        'names': ['height', 'width', 'channels']}})
    for e in episodes:
        for i in range(e.num_frames):
            ds.add_frame({KEY: e.frame(i), 'task': e.task.sentence})
        ds.save_episode()
    ds.finalize()
    source = lerobot_dataset.LeRobotDataset('local/synth', root=root)
    total = sum(e.num_frames for e in episodes)
    assert source.meta.total_episodes == len(episodes) and len(source) == total

    out, added_root = tmp_path / 'out', tmp_path / 'with_progress'
    assert cli.main(['run', '--lerobot', str(root), '--out', str(out), '--stride', '4',
                     '--write-dataset', str(added_root), *MODEL_ARGS]) == 0
    results = [json.loads((out / 'episodes' / f'episode_{i:06d}.json').read_text())
               for i in range(len(episodes))]
    assert [r['task'] for r in results] == [e.task.sentence for e in episodes]
    progress = np.concatenate([r['frames']['progress'] for r in results]).astype(np.float32)
    reward = np.concatenate([r['frames']['reward'] for r in results]).astype(np.float32)
    assert progress.shape == (total,)

    # lerobot 0.4.4 has no frame_signals reader: check the contract, and that every sidecar row
    # names the frame LeRobot's own loader has at that index.
    table, _, _ = read_frame_signals(out / 'frame_signals' / 'progress.parquet')
    _check_frame_signals_contract(table)
    rows = source.hf_dataset.with_format(None).to_dict()  # LeRobot's data as columns
    for name in ('index', 'episode_index', 'frame_index'):
        assert table[name].to_pylist() == [int(v) for v in rows[name]], name
    np.testing.assert_allclose(np.asarray(table['progress']), progress, atol=1e-6)

    # LeRobot's RA-BC weighting reads the progress as it reads its SARM tool's output.
    rabc = _import_lerobot('lerobot.utils.rabc').RABCWeights(
        out / 'frame_signals' / 'rabc_progress.parquet', chunk_size=4, head_mode='dense',
        device=torch.device('cpu'))
    assert len(rabc.progress_lookup) == total
    index = np.asarray(table['index'])
    ends = {int(e): int(index[np.asarray(table['episode_index']) == e].max())
            for e in set(table['episode_index'].to_pylist())}
    for i in (0, 3, total - 1):
        future = min(int(index[i]) + 4, ends[int(table['episode_index'][i].as_py())])
        assert rabc._compute_delta(int(index[i])) == pytest.approx(
            progress[future] - progress[i], abs=1e-6)
    weights, _ = rabc.compute_batch_weights({'index': torch.as_tensor(index[:8])})
    assert weights.shape == (8,) and bool(torch.isfinite(weights).all())

    added = lerobot_dataset.LeRobotDataset('local/synth_progress', root=added_root)
    for name in ('progress', 'reward'):
        assert added.meta.features[name] == {'dtype': 'float32', 'shape': (1,), 'names': None}
    assert added.meta.total_episodes == len(episodes) and len(added) == total
    new_rows = added.hf_dataset.with_format(None).to_dict()
    np.testing.assert_array_equal(np.asarray(new_rows['progress'], dtype=np.float32), progress)
    np.testing.assert_array_equal(np.asarray(new_rows['reward'], dtype=np.float32), reward)
    for name in ('index', 'episode_index', 'frame_index', 'task_index', 'timestamp'):
        assert new_rows[name] == rows[name], name
    for r, e in zip(results, episodes):  # items as training sees them (video decoded)
        start = int(r['dataset_from_index'])
        for i in (0, 3, e.num_frames - 1):
            item, before = added[start + i], source[start + i]
            assert int(item['episode_index']) == r['index'] and int(item['frame_index']) == i
            assert item['task'] == e.task.sentence
            assert float(item['progress']) == pytest.approx(r['frames']['progress'][i],
                                                            abs=1e-6)
            assert float(item['reward']) == pytest.approx(r['frames']['reward'][i], abs=1e-6)
            assert item[KEY].shape == (3, h, w)
            assert torch.equal(item[KEY], before[KEY])
