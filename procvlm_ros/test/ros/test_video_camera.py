"""video_camera plays a video file as a live sensor_msgs/Image stream."""

import signal
import subprocess
import sys

import numpy as np
import pytest
from rcl_interfaces.srv import GetParameters
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from procvlm_ros.media.video import write_video


def test_video_camera_publishes_frames_in_order(probe, ros_env, tmp_path):
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)]
    video = write_video(tmp_path / 'c.mp4', frames, fps=20.0)
    got = []
    probe.node.create_subscription(Image, 'image', got.append, qos_profile_sensor_data)
    proc = subprocess.Popen([sys.executable, '-m', 'procvlm_ros.ros.video_camera', '--ros-args',
                             '-p', f'video_path:={video}', '-p', 'frame_id:=cam7'],
                            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert probe.spin_until(lambda: len(got) >= 15, 20.0)
    finally:
        proc.terminate()  # SIGTERM: a clean exit
        assert proc.wait(timeout=15) == 0, proc.stdout.read()
    assert all((m.width, m.height, m.encoding) == (64, 48, 'rgb8') for m in got)
    assert got[0].header.frame_id == 'cam7'
    means = [np.frombuffer(m.data, np.uint8).mean() for m in got]
    assert max(means) - min(means) > 100  # the clip's brightness ramp arrives
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))


def start_camera(video, env, *params):
    args = [x for p in (f'video_path:={video}', *params) for x in ('-p', p)]
    return subprocess.Popen([sys.executable, '-m', 'procvlm_ros.ros.video_camera', '--ros-args',
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_parameter_services_answer_while_publishing(probe, ros_env, tmp_path):
    video = write_video(tmp_path / 'c.mp4', [np.full((48, 64, 3), 9 * i, np.uint8)
                                             for i in range(10)], fps=20.0)
    got = []
    probe.node.create_subscription(Image, 'image', got.append, qos_profile_sensor_data)
    proc = start_camera(video, ros_env, 'rate_hz:=25.0')
    try:
        assert probe.spin_until(lambda: len(got) >= 3, 20.0)
        # What `ros2 param get /video_camera rate_hz` asks.
        res = probe.call(GetParameters, '/video_camera/get_parameters',
                         GetParameters.Request(names=['rate_hz', 'loop', 'video_path']))
        assert res.values[0].double_value == 25.0 and res.values[1].bool_value is True
        assert res.values[2].string_value == str(video)
        n = len(got)
        assert probe.spin_until(lambda: len(got) >= n + 3, 10.0), 'still publishing'
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean exit
        assert proc.wait(timeout=15) == 0, proc.stdout.read()


def test_without_loop_plays_once_and_exits(probe, ros_env, tmp_path):
    frames = [np.full((48, 64, 3), 25 * i, np.uint8) for i in range(8)]
    video = write_video(tmp_path / 'c.mp4', frames, fps=20.0)
    got = []
    probe.node.create_subscription(Image, 'image', got.append, qos_profile_sensor_data)
    # Publishing starts before the probe is discovered: wait for the probe first.
    probe.spin_for(0.5)
    proc = start_camera(video, ros_env, 'loop:=false', 'rate_hz:=4.0')
    try:
        assert probe.spin_until(lambda: proc.poll() is not None, 30.0)
        probe.spin_for(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.wait(timeout=15) == 0, proc.stdout.read()
    means = [np.frombuffer(m.data, np.uint8).mean() for m in got]
    assert got and len(got) <= len(frames)
    assert means == sorted(means) and means[-1] == pytest.approx(25 * 7, abs=3)


def test_missing_video_is_a_clear_refusal(ros_env, tmp_path):
    res = subprocess.run([sys.executable, '-m', 'procvlm_ros.ros.video_camera', '--ros-args',
                          '-p', f'video_path:={tmp_path / "none.mp4"}'], env=ros_env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and 'none.mp4' in res.stderr and 'Traceback' not in res.stderr
