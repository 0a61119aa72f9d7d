"""
Play a video file as a live camera: ``sensor_msgs/Image`` (rgb8) on ``image`` at the video's rate.

Used by the demo and by anyone who wants to watch the monitor on a recorded clip. Frames are
stamped with the node clock at publication, as a camera driver would stamp them.
"""

from __future__ import annotations

import sys
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from procvlm_ros.media.video import probe_video, read_video_frames
from procvlm_ros.ros.standalone import run_blocking_node
from procvlm_ros.ros.views import rgb_to_image_msg


class VideoCamera(Node):
    def __init__(self) -> None:
        super().__init__('video_camera')
        self.path = self.declare_parameter('video_path', '').value
        rate = self.declare_parameter('rate_hz', 0.0).value
        self.loop = self.declare_parameter('loop', True).value
        self.frame_id = self.declare_parameter('frame_id', 'camera').value
        info = probe_video(self.path)
        self.period = 1.0 / (rate if rate > 0 else info.fps)
        self.pub = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.get_logger().info(f'{self.path}: {info.frame_count} frames '
                               f'{info.width}x{info.height} at {1 / self.period:.1f} Hz')

    def run(self) -> None:
        while rclpy.ok():
            next_t = time.monotonic()
            for frame in read_video_frames(self.path, None):
                header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
                self.pub.publish(rgb_to_image_msg(frame.image, header))
                next_t += self.period
                time.sleep(max(0.0, next_t - time.monotonic()))
                if not rclpy.ok():
                    return
            if not self.loop:
                return


def main(args: list[str] | None = None) -> int:
    return run_blocking_node(VideoCamera, args)


if __name__ == '__main__':
    sys.exit(main())
