"""video_camera plays a video file as a live sensor_msgs/Image stream."""

import subprocess
import sys

import numpy as np
from sensor_msgs.msg import Image

from procvlm_ros.media.video import write_video


def test_video_camera_publishes_frames_in_order(probe, ros_env, tmp_path):
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)]
    video = write_video(tmp_path / 'c.mp4', frames, fps=20.0)
    got = []
    from rclpy.qos import qos_profile_sensor_data
    probe.node.create_subscription(Image, 'image', got.append, qos_profile_sensor_data)
    proc = subprocess.Popen([sys.executable, '-m', 'procvlm_ros.ros.video_camera', '--ros-args',
                             '-p', f'video_path:={video}', '-p', 'frame_id:=cam7'],
                            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        assert probe.spin_until(lambda: len(got) >= 15, 20.0)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert all((m.width, m.height, m.encoding) == (64, 48, 'rgb8') for m in got)
    assert got[0].header.frame_id == 'cam7'
    means = [np.frombuffer(m.data, np.uint8).mean() for m in got]
    assert max(means) - min(means) > 100  # the clip's brightness ramp arrives
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in got]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
