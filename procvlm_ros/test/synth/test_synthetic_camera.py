"""The synthetic_camera node, started as a separate process, publishes the generated episode."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

if os.environ.get('PROCVLM_REQUIRE_ROS') == '1':
    import rclpy
else:
    rclpy = pytest.importorskip('rclpy')
pytest.importorskip('sensor_msgs.msg')

from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, QoSProfile  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Float32, String  # noqa: E402

from procvlm_ros.synth.episode import generate_episode  # noqa: E402

FPS = 5.0


@pytest.fixture
def domain_id():
    return 10 + (os.getpid() * 53 + 17) % 200


def test_publishes_episode_frames_ground_truth_and_task(domain_id, tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_LOCALHOST_ONLY='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOG_DIR=str(tmp_path / 'log'),
               PYTHONUNBUFFERED='1')
    episode = generate_episode(4, 2, 'success', 'push', fps=FPS)
    frames = [episode.frame(i) for i in range(episode.num_frames)]
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node('probe', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    images, truths, tasks = [], [], []
    node.create_subscription(Image, 'image', images.append, qos_profile_sensor_data)
    node.create_subscription(Float32, 'ground_truth', lambda m: truths.append(m.data), 50)
    node.create_subscription(String, 'task', lambda m: tasks.append(m.data), QoSProfile(
        depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    log = (tmp_path / 'camera.log').open('w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'procvlm_ros.ros.synthetic_camera', '--ros-args',
         '-p', 'kind:=success', '-p', 'task_kind:=push', '-p', 'seed:=4', '-p', 'index:=2',
         '-p', f'fps:={FPS}', '-p', 'exit_when_done:=true', '-p', 'start_delay_s:=1.0'],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 20 + episode.num_frames / FPS
        while proc.poll() is None and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        for _ in range(20):  # messages still in flight
            executor.spin_once(timeout_sec=0.05)
        assert proc.poll() == 0, (tmp_path / 'camera.log').read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        log.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert tasks == [episode.task.sentence]
    assert len(images) >= episode.num_frames // 2, 'most frames arrive on loopback'
    received = [np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
                for m in images]
    assert all(m.encoding == 'rgb8' and (m.width, m.height) == (160, 120) for m in images)
    # Every received frame is the episode frame of its position, in order.
    positions = []
    for rgb in received:
        matches = [i for i, f in enumerate(frames) if np.array_equal(rgb, f)]
        assert matches, 'a published frame is not a frame of the episode'
        positions.append(matches[0])
    assert positions == sorted(positions) and positions[-1] == episode.num_frames - 1
    # Ground truth arrives reliably, one value per frame, in order.
    assert np.allclose(truths, episode.progress.astype(np.float32))
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images]
    assert np.median(np.diff(stamps)) == pytest.approx(1 / FPS, rel=0.2)
