"""
A live camera playing a generated synthetic episode: ``sensor_msgs/Image`` (rgb8) on ``image``.

The episode is ``procvlm_ros.synth.generate_episode(seed, index, kind, task_kind, fps)``, so the
same parameters always show the same scene, and its ground truth is known: with
``publish_ground_truth`` the true progress of each published frame goes out on
``ground_truth`` (``std_msgs/Float32``, 0-1) with the same timing, so a demo can show truth
beside the estimate. The task sentence is published once on ``task`` (``std_msgs/String``,
transient local) and logged. Frames are stamped with the node clock at publication, as a
camera driver would stamp them.

After the last frame the camera keeps publishing the final frame (a real camera does not stop)
unless ``loop`` restarts the episode or ``exit_when_done`` ends the process. Frames go out
from a timer while the node spins, so its parameter services answer (``ros2 param``).
"""

from __future__ import annotations

import sys

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, Header, String

from procvlm_ros.ros.standalone import spin_node
from procvlm_ros.ros.views import rgb_to_image_msg
from procvlm_ros.synth.episode import DEFAULT_FPS, EPISODE_KINDS, generate_episode
from procvlm_ros.synth.scene import ALL_TASK_KINDS


class SyntheticCamera(Node):
    def __init__(self) -> None:
        super().__init__('synthetic_camera')
        kind = self.declare_parameter('kind', 'stall').value
        task_kind = self.declare_parameter('task_kind', '').value
        seed = int(self.declare_parameter('seed', 0).value)
        index = int(self.declare_parameter('index', 0).value)
        fps = float(self.declare_parameter('fps', DEFAULT_FPS).value)
        self.loop = bool(self.declare_parameter('loop', False).value)
        self.exit_when_done = bool(self.declare_parameter('exit_when_done', False).value)
        self.start_delay_s = float(self.declare_parameter('start_delay_s', 0.0).value)
        self.frame_id = self.declare_parameter('frame_id', 'camera').value
        publish_gt = bool(self.declare_parameter('publish_ground_truth', True).value)
        if kind not in EPISODE_KINDS:
            raise ValueError(f'kind must be one of {EPISODE_KINDS}, got {kind!r}')
        if task_kind and task_kind not in ALL_TASK_KINDS:
            raise ValueError(
                f'task_kind must be empty or one of {ALL_TASK_KINDS}, got {task_kind!r}')
        if not fps > 0:
            raise ValueError(f'fps must be > 0, got {fps}')
        self.episode = generate_episode(seed, index, kind, task_kind or None, fps=fps)
        self.progress = self.episode.progress
        self.period = 1.0 / fps
        self.pub = self.create_publisher(Image, 'image', qos_profile_sensor_data)
        self.gt_pub = self.create_publisher(Float32, 'ground_truth', 10) if publish_gt else None
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.task_pub = self.create_publisher(String, 'task', latched)
        self.task_pub.publish(String(data=self.episode.task.sentence))
        stalls = ', '.join(f'{iv.start / fps:.1f}-{iv.end / fps:.1f} s ({iv.cause})'
                           for iv in self.episode.stall_intervals) or 'none'
        self.get_logger().info(
            f'{self.episode.episode_id} seed {seed} [{kind}/{self.episode.task.kind}] '
            f'"{self.episode.task.sentence}": {self.episode.num_frames} frames '
            f'{self.episode.width}x{self.episode.height} at {fps:g} Hz; stalls: {stalls}')
        self.finished = Future()  # done after the last frame with exit_when_done
        self._next = 0
        self._frame_timer = None
        self._delay_timer = None
        if self.start_delay_s > 0:
            self._delay_timer = self.create_timer(self.start_delay_s, self._start)
        else:
            self._start()

    def publish_frame(self, i: int) -> None:
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        self.pub.publish(rgb_to_image_msg(self.episode.frame(i), header))
        if self.gt_pub is not None:
            self.gt_pub.publish(Float32(data=float(self.progress[i])))

    def _start(self) -> None:
        if self._delay_timer is not None:
            self._delay_timer.cancel()  # one shot
        self._frame_timer = self.create_timer(self.period, self._tick)
        self._tick()  # the first frame at once, the next ones every period

    def _tick(self) -> None:
        last = self.episode.num_frames - 1
        if self._next > last:
            if self.loop:
                self._next = 0
            elif self.exit_when_done:  # one period after the last frame, as a camera would
                self._frame_timer.cancel()
                self.finished.set_result(True)
                return
        self.publish_frame(min(self._next, last))  # past the end: the final frame again
        self._next = min(self._next + 1, last + 1)


def main(args: list[str] | None = None) -> int:
    return spin_node(SyntheticCamera, 'synthetic_camera', args)


if __name__ == '__main__':
    sys.exit(main())
