"""
The live progress monitor node.

Threading: image callbacks only convert and store into a bounded window; one worker timer, in
its own mutually exclusive callback group, loads the backend and always evaluates the newest
window (windows that went by during an inference are dropped, never queued), then runs the
episode supervisor and publishes. Services and diagnostics run in a third group, so ``~/reset``
and ``~/set_task`` answer while a window is being evaluated.
"""

from __future__ import annotations

from collections import deque
import math
import sys
import threading
import time
from typing import Any

from builtin_interfaces.msg import Time
from procvlm_msgs.msg import Intervention, Progress
from procvlm_msgs.srv import SetTask
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float32, Float64, Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from procvlm_ros.core.annotate import overlay_progress, status_line
from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends.base import Backend
from procvlm_ros.core.config import BackendConfig, MonitorConfig, WindowConfig
from procvlm_ros.core.errors import ConfigError, ProcVlmError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.frame_window import FrameWindow
from procvlm_ros.core.prompt import validate_task
from procvlm_ros.core.supervision import (
    EpisodeSupervisor,
    InterventionEvent,
    SupervisionConfig,
    SupervisorState,
)
from procvlm_ros.core.types import Frame, ProgressEstimate, Status
from procvlm_ros.ros import conversions, views
from procvlm_ros.ros.hil import HilServiceCaller
from procvlm_ros.ros.params import declare_config, validate_update

WORKER_PERIOD_S = 0.02
# Live answers are short; the official offline default (4096) would let a runaway generation
# block the monitor for minutes, so the node defaults lower (parameter max_new_tokens).
NODE_MAX_NEW_TOKENS = 512
HISTORY_POINTS = 4096  # curve points kept per episode for progress/image


class MonitorNode(Node):
    """Subscribes to a camera, publishes ``Progress`` for the task it is given."""

    def __init__(self, backend: Backend | None = None, **kwargs: Any) -> None:
        super().__init__('procvlm_monitor', **kwargs)
        self.monitor = declare_config(self, MonitorConfig)
        self.window_cfg = declare_config(self, WindowConfig)
        self.backend_cfg = declare_config(self, BackendConfig,
                                          {'max_new_tokens': NODE_MAX_NEW_TOKENS})
        self.supervision_cfg = declare_config(self, SupervisionConfig)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._backend = backend if backend is not None else create_backend(self.backend_cfg)
        self._estimator: ProgressEstimator | None = None
        self._load_error = ''
        self._task = ''
        self._lock = threading.Lock()
        self._window = FrameWindow(self.window_cfg.window_size, self.window_cfg.sample_period_s)
        self._supervisor = EpisodeSupervisor(self.supervision_cfg, self.monitor.stale_after_s)
        self._supervisor.reset(self._now())
        self._state: SupervisorState | None = None
        self._history: deque[tuple[float, float]] = deque(maxlen=HISTORY_POINTS)
        self._sequence = 0
        self._evaluated_version = -1
        self._last_inference = 0.0
        self._last_status_pub = 0.0
        self._last_image_pub = 0.0
        self._last_estimate: ProgressEstimate | None = None
        self._latest_frame: Frame | None = None
        self._input_error = ''
        self._input_error_log = 0.0
        self._stats = {'frames': 0, 'rejected': 0, 'windows': 0, 'errors': 0}
        self._arrivals: deque[float] = deque(maxlen=300)
        self._latency = views.RollingStats()
        self._set_initial_task(self.monitor.task)
        self._create_interfaces()
        self.get_logger().info(
            f'backend={self.backend_cfg.backend} model={self.backend_cfg.model!r} '
            f'window={self.window_cfg.window_size}x{self.window_cfg.sample_period_s}s '
            f'input={self._input_topic()}')

    def _create_interfaces(self) -> None:
        m = self.monitor
        self._pub = self.create_publisher(Progress, 'progress', 10)
        self._pub_value = self.create_publisher(Float32, 'progress/value', 10)
        self._pub_reward = self.create_publisher(Float64, 'reward', 10)
        self._pub_intervention = self.create_publisher(Intervention, 'intervention', 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self._pub_done = self.create_publisher(Bool, 'done', latched)
        self._pub_image = self.create_publisher(Image, 'progress/image', 2)
        self._pub_marker = self.create_publisher(Marker, 'progress/marker', 10)
        reliability = (ReliabilityPolicy.RELIABLE if m.qos_reliability == 'reliable'
                       else ReliabilityPolicy.BEST_EFFORT)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=m.qos_depth,
                         reliability=reliability)
        input_group = MutuallyExclusiveCallbackGroup()
        if m.input_type == 'compressed':
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
        self._hil = (HilServiceCaller(self, m.hil_service, m.hil_service_type, m.hil_timeout_s,
                                      callback_group=service_group) if m.hil_service else None)
        if m.diagnostics_period_s > 0:
            from diagnostic_msgs.msg import DiagnosticArray

            self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self.create_timer(m.diagnostics_period_s, self._publish_diagnostics,
                              callback_group=service_group)
        self._publish_done(False)
        self._worker = self.create_timer(WORKER_PERIOD_S, self._work,
                                         callback_group=MutuallyExclusiveCallbackGroup())

    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _input_topic(self) -> str:
        name = 'image/compressed' if self.monitor.input_type == 'compressed' else 'image'
        return self.resolve_topic_name(name)

    # ---------------------------------------------------------------- input (callbacks)
    def _on_image(self, msg: Image) -> None:
        self._accept(conversions.image_msg_to_frame, msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._accept(conversions.compressed_msg_to_frame, msg)

    def _accept(self, convert: Any, msg: Any) -> None:
        now = self._now()
        self._sequence += 1
        self._arrivals.append(time.monotonic())
        try:
            frame = convert(msg, now, self._sequence, max_pixels=self.monitor.max_image_pixels)
        except ProcVlmError as e:
            self._stats['rejected'] += 1
            self._input_error = f'rejected frame: {e}'
            if time.monotonic() - self._input_error_log > 5.0:
                self._input_error_log = time.monotonic()
                self.get_logger().warning(self._input_error)
            self._window.last_arrival_ns = now  # the camera is alive, only its data is bad
            return
        self._stats['frames'] += 1
        self._input_error = ''
        self._latest_frame = frame
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
        self._state = None
        self._history.clear()
        self._supervisor.reset(self._now())
        if self._estimator is not None:
            self._estimator.new_episode(self._task or None)
        self._publish_done(False)

    def _on_set_parameters(self, params: list[Any]) -> Any:
        self.monitor, result = validate_update(self.monitor, params)
        return result

    # ---------------------------------------------------------------- worker
    def _work(self) -> None:
        try:
            self._work_once()
        except Exception as e:  # noqa: BLE001 - a bug here must not kill the monitor
            self.get_logger().error(f'worker failed: {type(e).__name__}: {e}',
                                    throttle_duration_sec=5.0)
            self._last_status_pub = 0.0
            self._publish_status(Status.ERROR, f'internal error: {type(e).__name__}: {e}')

    def _work_once(self) -> None:
        self._supervise_tick()
        self._maybe_publish_image()
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
        newest = snapshot.frames[-1]
        with self._lock:
            if snapshot.episode != self._window.episode:
                return  # reset or task change during inference: this answer is for the old one
            self._last_estimate = estimate
            state = self._supervisor.update(estimate, self._now())
            self._state = state
            if not math.isnan(state.value):
                self._history.append((newest.stamp_ns / 1e9, state.value))
        self._stats['windows'] += 1
        if estimate.status is Status.ERROR:
            self._stats['errors'] += 1
            self.get_logger().error(f'inference failed: {estimate.status_message}')
        else:
            self._latency.add(estimate.inference_time_s)
        self._publish(estimate, state, newest)
        self._publish_events(state.events)
        if state.done_now:
            self.get_logger().info(f'task done: {self._task!r} (episode {estimate.episode})')

    def _supervise_tick(self) -> None:
        with self._lock:
            if self._window.last_arrival_ns is not None:
                self._supervisor.frame_received(self._window.last_arrival_ns)
            state = self._supervisor.tick(self._now())
            if self._state is not None or state.events:
                self._state = state
        self._publish_events(state.events)

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
        return math.inf if last is None else (self._now() - last) / 1e9

    # ---------------------------------------------------------------- output
    def _publish(self, estimate: ProgressEstimate, state: SupervisorState, newest: Frame) -> None:
        fields = conversions.progress_fields(
            estimate, task=self._task, backend=self._backend.name,
            publish_model_output=self.monitor.publish_model_output)
        fields.update(conversions.supervision_fields(state))
        if estimate.status is Status.OK and self._input_error:
            fields['status_message'] = self._input_error
        msg = self._progress_msg(fields)
        msg.header = self._header(newest.stamp_ns, newest.frame_id)
        msg.capture_to_publish_s = float((self._now() - newest.stamp_ns) / 1e9)
        self._pub.publish(msg)
        if not math.isnan(msg.value):
            self._pub_value.publish(Float32(data=msg.value))
            self._pub_reward.publish(Float64(data=float(msg.value)))
        self._publish_done(state.done)
        self._publish_marker(msg)

    def _publish_status(self, status: Status, message: str) -> None:
        now = time.monotonic()
        if now - self._last_status_pub < self.monitor.status_period_s:
            return
        self._last_status_pub = now
        last, state = self._last_estimate, self._state
        fields = {'task': self._task, 'episode': self._window.episode, 'status': int(status),
                  'status_message': message, 'backend': self._backend.name,
                  'value': math.nan, 'raw_value': math.nan,
                  'remaining_actions': list(last.remaining_actions) if last else []}
        if state is not None:
            fields.update(conversions.supervision_fields(state))
        msg = self._progress_msg(fields)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)
        self._publish_marker(msg)

    def _publish_events(self, events: tuple[InterventionEvent, ...]) -> None:
        for event in events:
            msg = Intervention(task=self._task, episode=self._window.episode,
                               **conversions.intervention_fields(event))
            msg.header = self._header(event.stamp_ns, self._frame_id())
            self._pub_intervention.publish(msg)
            text = f'({event.reason.name.lower()}): {event.message}'
            # rclpy forbids one logging call site from changing severity between calls.
            if event.active:
                self.get_logger().warning(f'intervention requested {text}')
            else:
                self.get_logger().info(f'intervention cleared {text}')
            if self._hil is not None:
                self._hil.notify(event.active, event.message)

    def _publish_done(self, done: bool) -> None:
        self._pub_done.publish(Bool(data=bool(done)))

    def _publish_marker(self, msg: Progress) -> None:
        headline, colour = status_line(msg.value, _STATUS_NAMES.get(msg.status, ''), msg.done,
                                       msg.stalled, msg.stalled_for_s)
        header = Header(stamp=msg.header.stamp, frame_id=self.monitor.marker_frame_id)
        for marker in views.progress_markers(header, value=msg.value, task=self._task,
                                             headline=headline, colour=colour,
                                             scale=self.monitor.marker_scale):
            self._pub_marker.publish(marker)

    def _maybe_publish_image(self) -> None:
        rate = self.monitor.annotated_image_rate_hz
        frame = self._latest_frame
        if rate <= 0 or frame is None or self._pub_image.get_subscription_count() == 0:
            return
        if time.monotonic() - self._last_image_pub < 1.0 / rate:
            return
        self._last_image_pub = time.monotonic()
        with self._lock:
            history, state, last = list(self._history), self._state, self._last_estimate
        value = state.value if state else math.nan
        rgb = overlay_progress(
            frame.image, history, value=value,
            status=_STATUS_NAMES.get(int(last.status), '') if last else 'WAITING_FOR_FRAMES',
            done=bool(state and state.done), stalled=bool(state and state.stalled),
            stalled_for_s=state.stalled_for_s if state else 0.0,
            remaining_actions=last.remaining_actions if last else ())
        self._pub_image.publish(views.rgb_to_image_msg(
            rgb, self._header(frame.stamp_ns, frame.frame_id)))

    def _publish_diagnostics(self) -> None:
        now_mono = time.monotonic()
        recent = [t for t in self._arrivals if now_mono - t <= 10.0]
        rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        age = self._input_age_s()
        stale = age > self.monitor.stale_after_s
        camera_level = 2 if stale and math.isfinite(age) else (1 if not math.isfinite(age) else 0)
        camera_msg = ('stale' if camera_level == 2 else 'no frames yet' if camera_level == 1
                      else 'ok')
        last = self._last_estimate
        model_level = 2 if self._load_error or (last and last.status is Status.ERROR) else (
            1 if self._estimator is None or (last and last.status != Status.OK) else 0)
        state = ('error' if self._load_error else 'loading' if self._estimator is None
                 else 'ready')
        name = self.get_fully_qualified_name()
        statuses = [
            views.diagnostic_status(f'{name}: camera input', name, camera_level, camera_msg, [
                ('topic', self._input_topic()), ('frame_rate_hz', rate),
                ('last_frame_age_s', age), ('frames_received', self._stats['frames']),
                ('frames_rejected', self._stats['rejected']),
                ('last_rejection', self._input_error)]),
            views.diagnostic_status(f'{name}: inference', name, model_level, state, [
                ('backend', self._backend.name), ('model', self.backend_cfg.model),
                ('task', self._task), ('episode', self._window.episode),
                ('windows_evaluated', self._stats['windows']),
                ('inference_errors', self._stats['errors']),
                ('latency_p50_s', self._latency.percentile(50)),
                ('latency_p95_s', self._latency.percentile(95)),
                ('vision_cache_hit_rate',
                 last.timings.get('vision_cache_hit_rate', math.nan) if last else math.nan),
                ('last_status', _STATUS_NAMES.get(int(last.status), '') if last else ''),
                ('last_error', self._load_error or (
                    last.status_message if last and last.status is Status.ERROR else ''))]),
        ]
        self._pub_diag.publish(views.diagnostics_msg(self.get_clock().now().to_msg(), statuses))

    def _frame_id(self) -> str:
        return self._latest_frame.frame_id if self._latest_frame else ''

    @staticmethod
    def _header(stamp_ns: int, frame_id: str) -> Header:
        sec, nanosec = conversions.ns_to_stamp(stamp_ns)
        return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    @staticmethod
    def _progress_msg(fields: dict[str, Any]) -> Progress:
        stamps = fields.pop('frame_stamps', [])
        msg = Progress(**fields)
        msg.frame_stamps = [Time(sec=s, nanosec=n) for s, n in stamps]
        return msg

    def close(self) -> None:
        self._backend.close()


_STATUS_NAMES = {int(s): s.name for s in Status}


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    executor = MultiThreadedExecutor(num_threads=3)
    try:
        node = MonitorNode()
        executor.add_node(node)
        executor.spin()
    except (ConfigError, ProcVlmError) as e:
        # Invalid parameters: refuse to start with one clear line.
        print(f'procvlm monitor: invalid configuration: {e}', file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Let in-flight callbacks finish before the node they use is destroyed.
        executor.shutdown(timeout_sec=10.0)
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
