"""
The live progress monitor node.

Threading: image callbacks only convert and store into a bounded window; one worker timer, in
its own mutually exclusive callback group, loads the backend and always evaluates the newest
window (windows that went by during an inference are dropped, never queued). Services run in a
third group, so ``~/reset`` and ``~/set_task`` answer while a window is being evaluated.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any

from builtin_interfaces.msg import Time
from procvlm_msgs.msg import Progress
from procvlm_msgs.srv import SetTask
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32, Float64
from std_srvs.srv import Trigger

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends.base import Backend
from procvlm_ros.core.config import BackendConfig, MonitorConfig, WindowConfig
from procvlm_ros.core.errors import ConfigError, ProcVlmError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.frame_window import FrameWindow
from procvlm_ros.core.prompt import validate_task
from procvlm_ros.core.types import ProgressEstimate, Status
from procvlm_ros.ros import conversions
from procvlm_ros.ros.params import declare_config, validate_update

WORKER_PERIOD_S = 0.02
# Live answers are short; the official offline default (4096) would let a runaway generation
# block the monitor for minutes, so the node defaults lower (parameter max_new_tokens).
NODE_MAX_NEW_TOKENS = 512


class MonitorNode(Node):
    """Subscribes to a camera, publishes ``Progress`` for the task it is given."""

    def __init__(self, backend: Backend | None = None, **kwargs: Any) -> None:
        super().__init__('procvlm_monitor', **kwargs)
        self.monitor = declare_config(self, MonitorConfig)
        self.window_cfg = declare_config(self, WindowConfig)
        self.backend_cfg = declare_config(self, BackendConfig,
                                          {'max_new_tokens': NODE_MAX_NEW_TOKENS})
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._backend = backend if backend is not None else create_backend(self.backend_cfg)
        self._estimator: ProgressEstimator | None = None
        self._load_error = ''
        self._task = ''
        self._lock = threading.Lock()
        self._window = FrameWindow(self.window_cfg.window_size, self.window_cfg.sample_period_s)
        self._sequence = 0
        self._evaluated_version = -1
        self._last_inference = 0.0
        self._last_status_pub = 0.0
        self._last_estimate: ProgressEstimate | None = None
        self._input_error = ''
        self._input_error_log = 0.0
        self._set_initial_task(self.monitor.task)

        self._pub = self.create_publisher(Progress, 'progress', 10)
        self._pub_value = self.create_publisher(Float32, 'progress/value', 10)
        self._pub_reward = self.create_publisher(Float64, 'reward', 10)
        reliability = (ReliabilityPolicy.RELIABLE if self.monitor.qos_reliability == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.monitor.qos_depth,
                         reliability=reliability)
        input_group = MutuallyExclusiveCallbackGroup()
        if self.monitor.input_type == 'compressed':
            self._sub = self.create_subscription(CompressedImage, 'image/compressed',
                                                 self._on_compressed, qos,
                                                 callback_group=input_group)
        else:
            self._sub = self.create_subscription(Image, 'image', self._on_image, qos,
                                                 callback_group=input_group)
        service_group = MutuallyExclusiveCallbackGroup()
        self.create_service(SetTask, '~/set_task', self._on_set_task,
                            callback_group=service_group)
        self.create_service(Trigger, '~/reset', self._on_reset, callback_group=service_group)
        self._worker = self.create_timer(WORKER_PERIOD_S, self._work,
                                         callback_group=MutuallyExclusiveCallbackGroup())
        self.get_logger().info(
            f'backend={self.backend_cfg.backend} model={self.backend_cfg.model!r} '
            f'window={self.window_cfg.window_size}x{self.window_cfg.sample_period_s}s '
            f'input={self.get_topic_name(self.monitor.input_type)}')

    # ---------------------------------------------------------------- input (callbacks)
    def get_topic_name(self, input_type: str) -> str:
        name = 'image/compressed' if input_type == 'compressed' else 'image'
        return self.resolve_topic_name(name)

    def _on_image(self, msg: Image) -> None:
        self._accept(conversions.image_msg_to_frame, msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._accept(conversions.compressed_msg_to_frame, msg)

    def _accept(self, convert: Any, msg: Any) -> None:
        now = self.get_clock().now().nanoseconds
        self._sequence += 1
        try:
            frame = convert(msg, now, self._sequence, max_pixels=self.monitor.max_image_pixels)
        except ProcVlmError as e:
            self._input_error = f'rejected frame: {e}'
            if time.monotonic() - self._input_error_log > 5.0:
                self._input_error_log = time.monotonic()
                self.get_logger().warning(self._input_error)
            self._window.last_arrival_ns = now  # the camera is alive, only its data is bad
            return
        self._input_error = ''
        self._window.offer(frame, now)

    # ---------------------------------------------------------------- services
    def _set_initial_task(self, task: str) -> None:
        try:
            self._task = validate_task(task)
        except ConfigError:
            self._task = ''

    def _on_set_task(self, request: SetTask.Request, response: SetTask.Response) -> Any:
        try:
            task = validate_task(request.task)
        except ConfigError as e:
            response.success, response.message = False, str(e)
            return response
        with self._lock:
            self._task = task
            self._new_episode()
        response.success, response.message = True, f'task set; episode {self._window.episode}'
        self.get_logger().info(f'task: {task!r} (episode {self._window.episode})')
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        with self._lock:
            self._new_episode()
        response.success, response.message = True, f'episode {self._window.episode} started'
        return response

    def _new_episode(self) -> None:
        self._window.new_episode()
        self._last_estimate = None
        if self._estimator is not None:
            self._estimator.new_episode(self._task or None)

    def _on_set_parameters(self, params: list[Any]) -> Any:
        self.monitor, result = validate_update(self.monitor, params)
        return result

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        if self._estimator is None:
            if not self._load_error:
                self._load()
            if self._estimator is None:
                self._publish_status(Status.ERROR, self._load_error)
                return
        if not self._task:
            self._publish_status(Status.ERROR,
                                 'no task: set the task parameter or call ~/set_task')
            return
        snapshot = self._window.snapshot()
        if snapshot is None:
            self._publish_status(Status.WAITING_FOR_FRAMES,
                                 self._input_error or 'waiting for frames')
            return
        age = self._input_age_s()
        if age > self.monitor.stale_after_s:
            self._publish_status(Status.STALE_INPUT, f'no frame for {age:.1f} s')
            return
        if snapshot.version == self._evaluated_version:
            if self._input_error:
                # Frames keep arriving but are unusable: say so, do not go quiet.
                self._publish_status(Status.ERROR, self._input_error)
            return
        if time.monotonic() - self._last_inference < self.monitor.min_inference_period_s:
            return
        self._evaluated_version = snapshot.version
        self._last_inference = time.monotonic()
        estimate = self._estimator.estimate(snapshot.frames, snapshot.keys)
        with self._lock:
            if snapshot.episode != self._window.episode:
                return  # reset or task change during inference: this answer is for the old one
            self._last_estimate = estimate
        if estimate.status is Status.ERROR:
            self.get_logger().error(f'inference failed: {estimate.status_message}')
        self._publish(estimate, snapshot.frames[-1])

    def _load(self) -> None:
        self._publish_status(Status.LOADING, f'loading {self.backend_cfg.backend} backend')
        start = time.monotonic()
        try:
            self._backend.load()
        except ProcVlmError as e:
            self._load_error = f'cannot load backend: {e}'
            self.get_logger().error(self._load_error)
            return
        self._estimator = ProgressEstimator(
            self._backend, self._task or 'unset', jpeg_roundtrip=self.window_cfg.jpeg_roundtrip,
            pre_resize_patch_size=self.backend_cfg.pre_resize_patch_size,
            cache_size=2 * self.window_cfg.window_size)
        self.get_logger().info(f'backend ready in {time.monotonic() - start:.1f} s')

    def _input_age_s(self) -> float:
        last = self._window.last_arrival_ns
        if last is None:
            return math.inf
        return (self.get_clock().now().nanoseconds - last) / 1e9

    # ---------------------------------------------------------------- output
    def _publish(self, estimate: ProgressEstimate, newest: Any) -> None:
        fields = conversions.progress_fields(
            estimate, task=self._task, backend=self._backend.name,
            publish_model_output=self.monitor.publish_model_output)
        if estimate.status is Status.OK and self._input_error:
            fields['status_message'] = self._input_error
        msg = self._progress_msg(fields)
        msg.header.stamp = Time(**dict(zip(('sec', 'nanosec'),
                                           conversions.ns_to_stamp(newest.stamp_ns))))
        msg.header.frame_id = newest.frame_id
        now = self.get_clock().now().nanoseconds
        msg.capture_to_publish_s = float((now - newest.stamp_ns) / 1e9)
        self._pub.publish(msg)
        if not math.isnan(msg.value):
            self._pub_value.publish(Float32(data=msg.value))
            self._pub_reward.publish(Float64(data=float(msg.value)))

    def _publish_status(self, status: Status, message: str) -> None:
        now = time.monotonic()
        if now - self._last_status_pub < self.monitor.status_period_s:
            return
        self._last_status_pub = now
        last = self._last_estimate
        msg = self._progress_msg({
            'task': self._task, 'episode': self._window.episode, 'status': int(status),
            'status_message': message, 'backend': self._backend.name,
            'value': float(last.value) if last else math.nan, 'raw_value': math.nan,
            'remaining_actions': list(last.remaining_actions) if last else []})
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)

    @staticmethod
    def _progress_msg(fields: dict[str, Any]) -> Progress:
        stamps = fields.pop('frame_stamps', [])
        msg = Progress(**fields)
        msg.frame_stamps = [Time(sec=s, nanosec=n) for s, n in stamps]
        return msg

    def close(self) -> None:
        self._backend.close()


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = MonitorNode()
        executor = MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        executor.spin()
    except (ConfigError, ProcVlmError) as e:
        # Invalid parameters: refuse to start with one clear line.
        print(f'procvlm monitor: invalid configuration: {e}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
