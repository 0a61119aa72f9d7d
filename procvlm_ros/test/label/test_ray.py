"""procvlm-label on a local Ray cluster (2 CPU workers) equals the single-process run."""

import json
import os
import signal

import numpy as np
import pytest

from procvlm_ros.label import cli
from procvlm_ros.synth.export import write_dataset

from .conftest import MODEL_ARGS, SEED

ray = pytest.importorskip('ray')
pytestmark = pytest.mark.slow
EPISODES = 12  # every (kind, task kind) pair once
SHORT = ['--stride', '4', '--max-frames', '16']  # 4 windows per episode


@pytest.fixture(scope='module')
def twelve(tmp_path_factory):
    pytest.importorskip('torch')
    root = tmp_path_factory.mktemp('ray') / 'ds'
    write_dataset(root, EPISODES, SEED)
    return root


@pytest.fixture(scope='module')
def local_results(twelve, tmp_path_factory):
    out = tmp_path_factory.mktemp('ray_local') / 'out'
    assert cli.main(['run', '--videos', str(twelve), '--out', str(out), *SHORT,
                     *MODEL_ARGS]) == 0
    return _load(out)


@pytest.fixture(scope='module')
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={'env_vars': {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}})
    yield
    ray.shutdown()


def _load(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / 'episodes').glob('*.json')}


def _assert_same(got, want):
    assert sorted(got) == sorted(want) and len(want) == EPISODES
    for key, result in want.items():
        other = got[key]
        for column in ('progress', 'reward', 'advantage', 'done'):
            np.testing.assert_array_equal(other['frames'][column], result['frames'][column],
                                          err_msg=f'{key} {column}')
        assert other['sampled']['frame_index'] == result['sampled']['frame_index']
        assert other['summary']['stall_intervals'] == result['summary']['stall_intervals']


def test_ray_equals_single_process(twelve, local_results, cluster, tmp_path):
    out = tmp_path / 'out'
    # The cluster started above is joined ('auto' when Ray is already initialised here).
    assert cli.main(['run', '--videos', str(twelve), '--out', str(out), *SHORT, *MODEL_ARGS,
                     '--ray-address', 'auto', '--workers', '2']) == 0
    _assert_same(_load(out), local_results)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['this_run']['mode'] == 'ray' and summary['this_run']['workers'] == 2


def test_killed_actor_every_episode_labelled_once(twelve, local_results, cluster, tmp_path):
    from procvlm_ros.label import runner
    from procvlm_ros.label.sources import discover
    from procvlm_ros.label.store import LabelStore

    args = cli.build_parser().parse_args(['run', '--videos', str(twelve), '--out',
                                          str(tmp_path / 'out'), *SHORT, *MODEL_ARGS])
    settings, options = cli._settings(args), cli._backend_options(args)
    store = LabelStore(tmp_path / 'out', {'test': 'kill'})
    store.open()
    specs = discover(twelve, 'videos')
    pids, writes, killed = [], [], []

    def on_actors(actors):
        pids.extend(ray.get([a.pid.remote() for a in actors]))

    def handle(outcome):
        assert outcome['ok'], outcome
        store.write_result(outcome['result'])
        writes.append(outcome['episode_id'])
        if len(writes) == 2 and not killed:  # mid-run: the actor has queued episodes
            os.kill(pids[1], signal.SIGKILL)
            killed.append(pids[1])

    stats = runner.run_ray(specs, options, settings, handle, workers=2, torch_threads=1,
                           show_progress=False, on_actors=on_actors)
    assert killed
    assert sorted(writes) == sorted(s.episode_id for s in specs)  # each exactly once
    assert stats['labelled'] == EPISODES and not stats['failures']
    _assert_same(_load(tmp_path / 'out'), local_results)
