"""procvlm-label on a folder of videos and a folder of bags with the demo model."""

import json

import numpy as np
import pytest

from procvlm_ros.label import cli
from procvlm_ros.label.writers import read_frame_signals, RESERVED_COLUMNS
from procvlm_ros.synth.export import STAMP_BASE_NS

from .conftest import FAST, MODEL_ARGS

pytestmark = pytest.mark.slow


def _results(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / 'episodes').glob('*.json')}


def test_video_folder(dataset, tmp_path, capsys):
    out = tmp_path / 'out'
    code = cli.main(['run', '--videos', str(dataset), '--out', str(out), *FAST, *MODEL_ARGS])
    assert code == 0, capsys.readouterr().err
    results = _results(out)
    assert sorted(results) == [f'episode_000{i}__video' for i in range(3)]
    for result in results.values():
        gt = json.loads((dataset / result['episode_id'].split('__')[0] /
                         'ground_truth.json').read_text())
        assert result['task'] == gt['task']  # task from ground_truth.json beside the video
        n = result['num_frames']
        assert n == min(24, gt['num_frames'])
        frames = result['frames']
        assert all(len(frames[k]) == n for k in ('progress', 'reward', 'advantage', 'done'))
        # scored every 4th frame; the others interpolated between them
        sampled = result['sampled']['frame_index']
        assert sampled == list(range(0, n, 4))
        np.testing.assert_allclose(np.asarray(frames['progress'])[sampled],
                                   result['sampled']['progress'])
        mid = (sampled[0] + sampled[1]) // 2
        expected_mid = np.interp(mid, sampled[:2], result['sampled']['progress'][:2])
        assert frames['progress'][mid] == pytest.approx(expected_mid)
        p = np.asarray(frames['progress'])
        np.testing.assert_allclose(frames['reward'][1:], np.clip(np.diff(p), -0.05, 0.10)
                                   + np.r_[np.zeros(n - 2), 1.0 if p[-1] > 0.95 else 0.0])
        records = [json.loads(line) for line in
                   (out / 'records' / f"{result['episode_id']}.jsonl").read_text().splitlines()]
        assert [r['frame_index'] for r in records] == sampled
        assert {'video_path', 'task', 'sample_index', 'timestamp_sec', 'window_frame_indices',
                'progress', 'parsed_progress', 'progress_source', 'reasoning',
                'model_output'} <= set(records[0])
        assert result['summary']['windows'] == len(sampled)
    # The demo model knows these episodes: progress rises within the first 12 s.
    success = results['episode_0000__video']['sampled']['progress']
    assert max(success) > success[0]
    table, descriptors, provenance = read_frame_signals(out / 'frame_signals' /
                                                        'progress.parquet')
    assert table.column_names[:3] == list(RESERVED_COLUMNS)
    assert set(descriptors) == {'progress', 'reward', 'advantage', 'done', 'scored'}
    assert table.num_rows == sum(r['num_frames'] for r in results.values())
    assert table['index'].to_pylist() == list(range(table.num_rows))
    assert provenance['tool'] == 'procvlm-label'
    assert not list((out / 'frame_signals').glob('.*parts'))  # parts published, then dropped
    # select: keeps everything when asked to, marks ceil(30 % of 3) = 1 top episode, plots
    assert cli.main(['select', '--out', str(out), '--keep-failed', '--keep-stalled',
                     '--horizon', '5']) == 0
    selection = json.loads((out / 'selection.json').read_text())
    assert selection['kept'] == 3 and selection['horizon'] == 5
    assert sum(row['top'] for row in selection['rows']) == 1
    best = selection['rows'][0]
    assert best['rank'] == 1 and best['mean_advantage'] == max(
        row['mean_advantage'] for row in selection['rows'])
    assert (out / 'selection.png').stat().st_size > 10_000
    # default filters drop episodes the supervisor never saw done
    assert cli.main(['select', '--out', str(out), '--selection', str(tmp_path / 's.json'),
                     '--plot', str(tmp_path / 's.png')]) == 0
    strict = json.loads((tmp_path / 's.json').read_text())
    assert strict['kept'] == sum(r['summary']['done'] and not r['summary']['stalled']
                                 for r in results.values())


def test_video_folder_records_equal_procvlm_infer(dataset, tmp_path):
    """Stride 1: the same windows and values as procvlm-infer on that video."""
    torch = pytest.importorskip('torch')
    from procvlm_ros.demo_model import CHECKPOINT_DIR
    from procvlm_ros.offline import infer_progress_from_video

    video = dataset / 'episode_0000' / 'video.mp4'
    task = json.loads((dataset / 'episode_0000' / 'ground_truth.json').read_text())['task']
    (tmp_path / 'one').mkdir()
    (tmp_path / 'one' / 'video.mp4').symlink_to(video)
    out = tmp_path / 'out'
    assert cli.main(['run', '--videos', str(tmp_path / 'one'), '--task', task, '--out',
                     str(out), '--max-frames', '10', *MODEL_ARGS]) == 0
    labelled = [json.loads(line) for line in (out / 'records' / 'video.jsonl').read_text()
                .splitlines()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the labeller ran (--torch-threads 1)
    try:
        official = infer_progress_from_video(
            video_path=video, task=task, model_path=str(CHECKPOINT_DIR), torch_dtype='fp32',
            device='cpu', max_new_tokens=256, max_frames=10, plot=False, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    strip = ('video_path',)
    assert [{k: v for k, v in r.items() if k not in strip} for r in labelled] == [
        {k: v for k, v in r.items() if k not in strip} for r in official]


def test_bag_folder_writes_progress_mcap_stamped_like_the_camera(dataset, tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    out = tmp_path / 'out'
    code = cli.main(['run', '--bags', str(dataset), '--out', str(out), *FAST, *MODEL_ARGS])
    assert code == 0
    results = _results(out)
    assert sorted(results) == [f'episode_000{i}__bag' for i in range(3)]
    for result in results.values():
        mcap = dataset / result['episode_id'].split('__')[0] / 'bag.progress.mcap'
        with mcap.open('rb') as f:
            messages = list(make_reader(f, decoder_factories=[DecoderFactory()])
                            .iter_decoded_messages())
        sampled = result['sampled']['frame_index']
        assert len(messages) == len(sampled)
        for (schema, channel, message, decoded), frame in zip(messages, sampled):
            assert (schema.name, schema.encoding) == ('procvlm_msgs/msg/Progress', 'ros2msg')
            assert (channel.topic, channel.message_encoding) == ('/progress', 'cdr')
            stamp = STAMP_BASE_NS + round(frame * 1e9 / 2.0)  # synth bags: 2 fps from base
            assert message.log_time == stamp
            assert decoded.header.stamp.sec * 10**9 + decoded.header.stamp.nanosec == stamp
            assert decoded.task == result['task']
            assert len(decoded.frame_stamps) == 8
        values = [m[3].value for m in messages]
        np.testing.assert_allclose(values, result['sampled']['progress'], rtol=1e-6)
    # A rerun finds nothing to do and does not take the .progress.mcap files for bags.
    assert cli.main(['run', '--bags', str(dataset), '--out', str(out), *FAST,
                     *MODEL_ARGS]) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['labelled'] == 3 and summary['this_run']['labelled'] == 0


def test_bad_inputs_fail_per_episode_with_reasons(dataset, tmp_path, capsys):
    videos = tmp_path / 'videos'
    for i in (0, 1):
        (videos / f'good{i}').mkdir(parents=True)
        (videos / f'good{i}' / 'clip.mp4').symlink_to(dataset / f'episode_000{i}' / 'video.mp4')
        (videos / f'good{i}' / 'task.txt').write_text('Stack the blocks.\n')
    (videos / 'broken').mkdir()
    (videos / 'broken' / 'clip.mp4').write_bytes(b'not a video at all' * 100)
    (videos / 'broken' / 'task.txt').write_text('Stack the blocks.')
    (videos / 'untasked').mkdir()
    (videos / 'untasked' / 'clip.mp4').symlink_to(dataset / 'episode_0002' / 'video.mp4')
    out = tmp_path / 'out'
    args = ['run', '--videos', str(videos), '--out', str(out), '--stride', '4',
            '--max-frames', '8', *MODEL_ARGS]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert '2 episode(s) failed' in err
    assert 'broken__clip: cannot open' in err
    assert 'untasked__clip: no task text' in err
    assert sorted(_results(out)) == ['good0__clip', 'good1__clip']
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['labelled'] == 2 and set(summary['failed']) == {'broken__clip',
                                                                   'untasked__clip'}
    assert not (out / 'frame_signals').exists()  # published only when every episode is in
    # The failures are retried (and fail again); finished episodes are not redone.
    before = (out / 'episodes' / 'good0__clip.json').stat().st_mtime_ns
    assert cli.main(args) == 1
    assert (out / 'episodes' / 'good0__clip.json').stat().st_mtime_ns == before
    assert json.loads((out / 'summary.json').read_text())['this_run']['labelled'] == 0


def test_missing_image_topic_and_empty_dataset(dataset, tmp_path, capsys):
    code = cli.main(['run', '--bags', str(dataset), '--image-topic', '/no/such/topic',
                     '--out', str(tmp_path / 'out'), *FAST, *MODEL_ARGS])
    assert code == 1
    err = capsys.readouterr().err
    assert '3 episode(s) failed' in err and '/no/such/topic' in err
    (tmp_path / 'empty').mkdir()
    assert cli.main(['run', '--videos', str(tmp_path / 'empty'), '--out',
                     str(tmp_path / 'out2'), *MODEL_ARGS]) == 1
    assert 'no episodes found' in capsys.readouterr().err


def test_changed_settings_do_not_mix_with_an_earlier_run(dataset, tmp_path, capsys):
    out = tmp_path / 'out'
    (tmp_path / 'empty').mkdir()
    args = ['run', '--videos', str(dataset), '--out', str(out), '--max-frames', '4',
            '--stride', '4', *MODEL_ARGS]
    assert cli.main(args) == 0
    assert cli.main([*args, '--horizon', '10']) == 1
    assert 'other settings' in capsys.readouterr().err
