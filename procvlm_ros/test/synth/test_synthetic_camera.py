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
         '-p', f'fps:={FPS}', '-p', 'exit_when_done:=true', '-p', 'start_delay_s:=2.5'],
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
    # Ground truth arrives reliably, one value per frame, in order, from the first frame
    # published after discovery (loopback discovery takes 0.15-3 s; the start delay covers most).
    n = len(truths)
    assert n >= episode.num_frames - 2 * FPS, f'{n} of {episode.num_frames} values arrived'
    assert np.allclose(truths, episode.progress[-n:].astype(np.float32))
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images]
    assert np.median(np.diff(stamps)) == pytest.approx(1 / FPS, rel=0.2)


def get_parameters(executor, node, service, names, timeout_s=15.0):
    """What ``ros2 param get`` does: rcl_interfaces/srv/GetParameters on <node>/get_parameters."""
    from rcl_interfaces.srv import GetParameters

    client = node.create_client(GetParameters, service)
    try:
        assert client.wait_for_service(timeout_sec=timeout_s), f'{service} not available'
        future = client.call_async(GetParameters.Request(names=names))
        executor.spin_until_future_complete(future, timeout_sec=timeout_s)
        assert future.done(), f'{service} did not answer within {timeout_s} s'
        return future.result().values
    finally:
        node.destroy_client(client)


def test_parameter_services_answer_while_publishing_and_loop(domain_id, tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_LOCALHOST_ONLY='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOG_DIR=str(tmp_path / 'log'),
               PYTHONUNBUFFERED='1')
    fps = 10.0
    episode = generate_episode(1, 0, 'fail', 'push', fps=fps)  # a short one (~9 s)
    frames = [episode.frame(i) for i in range(episode.num_frames)]
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    node = Node('probe', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    positions, frame_ids = [], set()

    def on_image(m):
        rgb = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
        positions.append(next(i for i, f in enumerate(frames) if np.array_equal(rgb, f)))
        frame_ids.add(m.header.frame_id)

    node.create_subscription(Image, 'image', on_image, qos_profile_sensor_data)
    log = (tmp_path / 'camera.log').open('w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'procvlm_ros.ros.synthetic_camera', '--ros-args',
         '-p', 'kind:=fail', '-p', 'task_kind:=push', '-p', 'seed:=1', '-p', 'index:=0',
         '-p', f'fps:={fps}', '-p', 'loop:=true', '-p', 'frame_id:=cam3'],
        env=env, stdout=log, stderr=subprocess.STDOUT)

    def restarted():
        return any(b < a for a, b in zip(positions, positions[1:]))

    try:
        end = time.monotonic() + 20
        while len(positions) < 3 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert positions, 'the camera publishes'
        # What `ros2 param get` asks, answered while the frame timer runs.
        values = get_parameters(executor, node, '/synthetic_camera/get_parameters',
                                ['fps', 'loop', 'kind', 'frame_id'])
        assert values[0].double_value == fps and values[1].bool_value is True
        assert [v.string_value for v in values[2:]] == ['fail', 'cam3']
        # The episode plays to its end and restarts (loop).
        end = time.monotonic() + 10 + 2 * episode.num_frames / fps
        while not restarted() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        assert restarted(), positions
        assert proc.poll() is None, 'the camera keeps running with loop'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, (tmp_path / 'camera.log').read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert frame_ids == {'cam3'}
    wrap = next(k for k in range(1, len(positions)) if positions[k] < positions[k - 1])
    assert positions[wrap - 1] == episode.num_frames - 1 and positions[wrap] <= 1


def test_bad_parameter_is_a_clear_refusal(domain_id, tmp_path):
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_LOCALHOST_ONLY='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOG_DIR=str(tmp_path / 'log'))
    res = subprocess.run([sys.executable, '-m', 'procvlm_ros.ros.synthetic_camera', '--ros-args',
                          '-p', 'kind:=nope'], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert 'kind must be one of' in res.stderr and 'Traceback' not in res.stderr
