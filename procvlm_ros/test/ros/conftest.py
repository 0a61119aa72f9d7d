"""Fixtures for tests that run real rclpy nodes in separate processes."""

import array
import itertools
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

# Where the ROS stack is required (CI), a missing import is a failure, not a skip.
if os.environ.get('PROCVLM_REQUIRE_ROS') == '1':
    import procvlm_msgs.msg  # noqa: F401
    import rclpy
else:
    rclpy = pytest.importorskip('rclpy')
    pytest.importorskip('procvlm_msgs.msg')

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402

# Fast DDS accepts domain ids up to 232. Each test gets a fresh domain, so a node left over from
# one test cannot talk to the next; the start depends on the process id so that test sessions
# running side by side on one machine do not share domains either.
_DOMAINS = itertools.count(int(os.environ.get('TEST_ROS_DOMAIN_BASE', (os.getpid() * 37) % 200)))


@pytest.fixture
def domain_id():
    return 10 + next(_DOMAINS) % 200


@pytest.fixture
def ros_env(domain_id, tmp_path):
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_LOCALHOST_ONLY='1', ROS_LOG_DIR=str(tmp_path / 'roslog'),
               PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    return env


class Probe:
    """An in-test node with its own context and executor."""

    def __init__(self, domain_id):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = Node('probe', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate, timeout_s):
        end = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)
        return predicate()

    def spin_for(self, seconds):
        self.spin_until(lambda: False, seconds)

    def call(self, srv_type, name, request, timeout_s=15.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout_s), f'service {name} not available'
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        assert future.done(), f'service {name} did not answer'
        return future.result()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def probe(domain_id):
    p = Probe(domain_id)
    yield p
    p.close()


class MonitorProcess:
    """The monitor node started as users start it: entry point + ``--ros-args --params-file``."""

    def __init__(self, params, env, workdir, extra_args=()):
        self.params_file = Path(workdir) / 'params.yaml'
        self.params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
        self.log_path = Path(workdir) / 'monitor.log'
        self._log = self.log_path.open('w')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'procvlm_ros.ros.monitor_node', '--ros-args',
             '--params-file', str(self.params_file), *extra_args],
            env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self):
        return self.log_path.read_text()

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout_s=15):
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_monitor(ros_env, tmp_path):
    started = []

    def start(params, extra_args=()):
        # Most tests stamp frames with small synthetic times (30 s, 50 s, ...): switch the
        # arrival-age check off for them unless a test sets it (test_bad_input checks it).
        params = {'max_stamp_age_s': 0.0, **params}
        workdir = tmp_path / f'monitor{len(started)}'
        workdir.mkdir()
        m = MonitorProcess(params, ros_env, workdir, extra_args)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def image_msg(rgb, stamp_ns, encoding='rgb8', frame_id='camera'):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = frame_id
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = encoding
    msg.step = rgb.shape[1] * (rgb.shape[2] if rgb.ndim == 3 else 1)
    msg.data = array.array('B', np.ascontiguousarray(rgb).tobytes())
    return msg


def make_frames(n, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def helpers():
    from types import SimpleNamespace

    return SimpleNamespace(image_msg=image_msg, frames=make_frames)
