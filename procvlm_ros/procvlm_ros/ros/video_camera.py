"""
Play a video file as a live camera: ``sensor_msgs/Image`` (rgb8) on ``image`` at the video's rate.

Used by the demo and by anyone who wants to watch the monitor on a recorded clip. Frames are
stamped with the node clock at publication, as a camera driver would stamp them. A timer
publishes while the node spins, so its parameter services answer (``ros2 param``). Without
``loop`` the process ends one period after the last frame.
"""

from __future__ import annotations

from collections.abc import Iterator
import sys

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.task import Future
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from procvlm_ros.core.types import Frame
from procvlm_ros.media.video import probe_video, read_video_frames
from procvlm_ros.ros.standalone import spin_node
from procvlm_ros.ros.views import rgb_to_image_msg


class VideoCamera(Node):
    def __init__(self) -> None:
        super().__init__('video_camera')
        self.path = self.declare_parameter('video_path', '').value
        rate = float(self.declare_parameter('rate_hz', 0.0).value)
        self.loop = bool(self.declare_parameter('loop', True).value)
        self.frame_id = self.declare_parameter('frame_id', 'camera').value
        if not self.path:
            raise ValueError('parameter video_path is empty: set it to a video file')
        info = probe_video(self.path)
        self.period = 1.0 / (rate if rate > 0 else info.fps)
        self.pub = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.get_logger().info(f'{self.path}: {info.frame_count} frames '
                               f'{info.width}x{info.height} at {1 / self.period:.1f} Hz')
        self.finished = Future()  # done at the end of the video without loop
        self._frames: Iterator[Frame] | None = None
        self._timer = self.create_timer(self.period, self._tick)
        self._tick()  # the first frame at once, the next ones every period

    def _next_frame(self) -> Frame | None:
        if self._frames is None:
            self._frames = iter(read_video_frames(self.path, None))
        return next(self._frames, None)

    def _tick(self) -> None:
        frame = self._next_frame()
        if frame is None:  # end of the video
            self._close_frames()
            frame = self._next_frame() if self.loop else None
            if frame is None:
                self._timer.cancel()
                self.finished.set_result(True)
                return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        self.pub.publish(rgb_to_image_msg(frame.image, header))

    def _close_frames(self) -> None:
        close = getattr(self._frames, 'close', None)  # a generator holds the open container
        if close is not None:
            close()
        self._frames = None

    def destroy_node(self) -> None:
        self._close_frames()
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    return spin_node(VideoCamera, 'video_camera', args)


if __name__ == '__main__':
    sys.exit(main())
