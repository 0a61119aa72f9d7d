"""
procvlm-label joins an existing Ray cluster: ``ray start --head`` (its own process tree, as a
user would start it) reached with ``--ray-address ray://...`` (Ray Client) and ``auto``.
"""

import contextlib
import json
import os
from pathlib import Path
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pytest

from procvlm_ros.demo_model import CHECKPOINT_DIR
from procvlm_ros.label import cli
from procvlm_ros.synth.export import write_dataset

from .conftest import MODEL_ARGS, SEED
from .test_ray import _load, SHORT

ray = pytest.importorskip('ray')
pytestmark = pytest.mark.slow
EPISODES = 4
BIN = Path(sys.executable).parent
OFFLINE = {'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}
MARKER = 'PROCVLM_TEST_RAY_CLUSTER'  # in the env of every process of our cluster


@pytest.fixture(scope='module')
def episodes(tmp_path_factory):
    pytest.importorskip('torch')
    root = tmp_path_factory.mktemp('ray_cluster') / 'ds'
    write_dataset(root, EPISODES, SEED)
    return root


@pytest.fixture(scope='module')
def reference(episodes, tmp_path_factory):
    out = tmp_path_factory.mktemp('ray_cluster_local') / 'out'
    assert cli.main(['run', '--videos', str(episodes), '--out', str(out), *SHORT,
                     *MODEL_ARGS]) == 0
    return _load(out)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _listening(port):
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(('127.0.0.1', port)) == 0


@pytest.fixture(scope='module')
def head():
    """
    A 2-CPU head node started with the ``ray`` CLI, as a user starts a cluster.

    Token auth is on (Ray's default for ``ray start``) with a token of our own, so nothing in
    ~/.ray is used. Stopped by its process session, not ``ray stop``: that kills every Ray
    process on the machine, other people's clusters included.
    """
    # Short: Ray's Unix socket paths (temp dir + session + name) must fit 107 bytes.
    temp = tempfile.mkdtemp(prefix='rayc', dir='/tmp')
    gcs, client, dashboard, agent, agent_grpc, metrics = _free_ports(6)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith('RAY_')}
    env.update(OFFLINE, RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=token, **{MARKER: temp})
    cmd = [str(BIN / 'ray'), 'start', '--head', '--block', '--num-cpus', '2',
           '--port', str(gcs), '--include-dashboard=false', '--dashboard-port', str(dashboard),
           '--dashboard-agent-listen-port', str(agent),
           '--dashboard-agent-grpc-port', str(agent_grpc), '--metrics-export-port',
           str(metrics), '--object-store-memory', str(100 * 2**20), '--temp-dir', temp,
           '--disable-usage-stats']
    if _has_grpc():  # Ray Client (ray://) needs ray[client]; without it only 'auto' is tested
        cmd += ['--ray-client-server-port', str(client)]
    log = open(os.path.join(temp, 'start.log'), 'wb')  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(cmd, cwd=temp, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + 120
        while not (_listening(gcs) and (_listening(client) or not _has_grpc())):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail('ray start failed:\n' + Path(temp, 'start.log').read_text()[-3000:])
            time.sleep(0.5)
        yield {'gcs': f'127.0.0.1:{gcs}', 'client': f'ray://127.0.0.1:{client}',
               'gcs_port': gcs, 'token': token, 'cwd': temp}
    finally:
        _stop(proc, temp)
        log.close()


def _has_grpc():
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


def _die_with_parent():
    """If pytest is killed (no teardown), its children get SIGTERM (the head stops its own)."""
    if sys.platform.startswith('linux'):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(proc, marker):
    """SIGTERM to the head's session, a short grace, then SIGKILL whatever of it is left."""
    import psutil

    def ours():
        found = []
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == proc.pid or p.environ().get(MARKER) == marker:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)  # a full graceful stop takes ~30 s here; not needed
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    procs = ours()
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)
    proc.wait(timeout=10)
    left = [p.pid for p in ours()]
    shutil.rmtree(marker, ignore_errors=True)
    assert not left, f'Ray processes of the test cluster left running: {left}'


def _label(head, args, cwd, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith('RAY_')}
    base.update(OFFLINE, RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=head['token'], **env)
    start = time.monotonic()
    # ``args`` last: they override MODEL_ARGS (argparse keeps the last value).
    done = subprocess.run([str(BIN / 'procvlm-label'), 'run', *SHORT, *MODEL_ARGS,
                           '--workers', '2', *args], cwd=cwd, env=base, capture_output=True,
                          text=True, timeout=150, preexec_fn=_die_with_parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _server_logs(head)
    print(f"{args[-1]}: {time.monotonic() - start:.1f} s, joined after "
          f"{done.stderr.count('; retrying')} failed connect(s)")


def _server_logs(head):
    logs = sorted(Path(head['cwd'], 'session_latest', 'logs').glob('ray_client_server*.err'))
    return ''.join(f'\n--- {p.name}\n{p.read_text()[-2000:]}' for p in logs)


def _check(out, reference, head):
    got, want = _load(out), reference
    assert sorted(got) == sorted(want) and len(want) == EPISODES
    for key, result in want.items():
        for column in ('progress', 'reward', 'advantage', 'done'):
            np.testing.assert_array_equal(got[key]['frames'][column], result['frames'][column],
                                          err_msg=f'{key} {column}')
        assert got[key]['sampled']['frame_index'] == result['sampled']['frame_index']
    summary = json.loads((out / 'summary.json').read_text())
    run = summary['this_run']
    assert run['mode'] == 'ray' and run['workers'] == 2
    assert run['labelled'] == EPISODES and not summary['failed']  # each episode once
    assert run['cluster'].endswith(f":{head['gcs_port']}")  # the test's cluster, no other


def test_ray_client_address(episodes, reference, head, tmp_path):
    pytest.importorskip('grpc', reason='Ray Client needs ray[client] (grpcio)')
    # Relative paths from a driver folder that is not the workers' working directory (as
    # with a laptop driving a remote cluster): the workers still find dataset and model.
    driver = tmp_path / 'driver'
    driver.mkdir()
    (driver / 'model').symlink_to(CHECKPOINT_DIR)
    (driver / 'ds').symlink_to(episodes)
    _label(head, ['--videos', 'ds', '--out', 'out', '--model', './model', '--ray-address',
                  head['client']], driver)
    _check(driver / 'out', reference, head)


def test_auto_address(episodes, reference, head, tmp_path):
    out = tmp_path / 'out'
    _label(head, ['--videos', str(episodes), '--out', str(out), '--ray-address', 'auto'],
           tmp_path, RAY_ADDRESS=head['gcs'])
    _check(out, reference, head)


def test_join_retries_a_lost_client_server_and_explains_auth():
    from procvlm_ros.core.errors import ProcVlmError
    from procvlm_ros.label.runner import _join

    calls = []

    def flaky(address, log_to_driver):
        calls.append(address)
        if len(calls) == 1:  # what Ray Client raises when the proxy's server start dies
            raise ConnectionAbortedError('Initialization failure from server:\nRuntimeError: '
                                         'Starting Ray client server failed.')

    _join(SimpleNamespace(init=flaky), 'ray://head:10001')
    assert calls == ['ray://head:10001'] * 2

    def no_token(address, log_to_driver):
        raise ConnectionError('ray client connection timeout')

    with pytest.raises(ProcVlmError, match='RAY_AUTH_MODE=token'):
        _join(SimpleNamespace(init=no_token), 'ray://head:10001')
