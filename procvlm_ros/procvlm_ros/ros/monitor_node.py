"""
The live progress monitor node: ROS plumbing around :class:`procvlm_ros.core.monitor.Monitor`.

Threading: the image subscription receives *serialized* messages and reads only the header
stamp of each; a frame is decoded only when the window will keep it (or the annotated view
needs one), so a 30 Hz camera costs almost nothing. One inference thread (not an executor
callback) loads the model and runs ``Monitor.step``: it wakes when a frame enters the window
and at least every ``_TICK_S`` for supervision, and publishes what the step says. Services,
parameters, diagnostics and HIL replies run on the executor and answer during inference.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from typing import Any

from builtin_interfaces.msg import Time
from procvlm_msgs.msg import Intervention, Progress
from procvlm_msgs.srv import SetTask
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Bool, Float32, Float64, Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from procvlm_ros.core import cdr
from procvlm_ros.core import image as image_ops
from procvlm_ros.core.annotate import overlay_progress, status_line
from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends.base import Backend
from procvlm_ros.core.config import BackendConfig, MonitorConfig, ProfileConfig, WindowConfig
from procvlm_ros.core.errors import ConfigError, ProcVlmError
from procvlm_ros.core.monitor import Admission, BackendState, Monitor, StepOutput
from procvlm_ros.core.supervision import InterventionEvent, SupervisionConfig
from procvlm_ros.core.types import Frame, Status
from procvlm_ros.ros import conversions, profile_io, views
from procvlm_ros.ros.hil import HilServiceCaller
from procvlm_ros.ros.params import declare_config, validate_update

# Live answers are short; the official offline default (4096) would let a runaway generation
# block the monitor for minutes, so the node defaults lower (parameter max_new_tokens).
NODE_MAX_NEW_TOKENS = 512
_TICK_S = 0.1  # supervision/status cadence of the inference thread when no frame arrives
_QOS_PROBE_S = 0.5  # how often `auto` reliability looks for the camera publisher
_STATUS_NAMES = {int(s): s.name for s in Status}
# DDS content filter on the input: frames stamped from %0.%1 s on pass (they are due), and so do
# frames stamped before %2 s (a time jump back must reach the door to be seen). Fast DDS applies
# it on the camera's side, so frames the window would skip are never sent to this process.
_INPUT_FILTER = ('header.stamp.sec > %0 OR (header.stamp.sec = %0 AND header.stamp.nanosec >= %1)'
                 ' OR header.stamp.sec < %2')
_PASS_ALL = ('-2147483647', '0', '-2147483647')


class MonitorNode(Node):
    """
    Subscribes to a camera, publishes what the task profile answers for the task it is given.

    ``Progress`` for the progress profiles (procvlm_progress, pairwise_critic); a
    ``NavigationAction`` per window for navigation_action; the ``~/query`` service for
    grounded_query (``profile_io``). Status (loading, no frames, stale input, errors) is
    published as ``Progress`` for every profile.
    """

    def __init__(self, backend: Backend | None = None, **kwargs: Any) -> None:
        super().__init__('procvlm_monitor', **kwargs)
        self.monitor_cfg = declare_config(self, MonitorConfig)
        self.window_cfg = declare_config(self, WindowConfig)
        self.backend_cfg = declare_config(self, BackendConfig,
                                          {'max_new_tokens': NODE_MAX_NEW_TOKENS})
        self.supervision_cfg = declare_config(self, SupervisionConfig)
        self.profile_cfg = declare_config(self, ProfileConfig)
        m = self.monitor_cfg
        self.monitor = Monitor(
            backend if backend is not None else create_backend(self.backend_cfg),
            window=self.window_cfg, supervision=self.supervision_cfg,
            task=_task_or_empty(m.task), stale_after_s=m.stale_after_s,
            min_inference_period_s=m.min_inference_period_s, status_period_s=m.status_period_s,
            pre_resize_patch_size=self.backend_cfg.pre_resize_patch_size,
            max_image_pixels=m.max_image_pixels,
            speculation=self.backend_cfg.speculation and self.backend_cfg.temperature == 0,
            profile=profile_io.make_node_profile(self.profile_cfg, self.backend_cfg))
        self.publishes = self.monitor.profile.publishes
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._view_due = 0.0  # monotonic time the annotated view wants its next frame
        self._view_frame: Frame | None = None
        self._last_image_pub = 0.0
        self._last_reject_log = 0.0
        self._sub: Any = None
        self._filter_params: tuple[str, ...] | None = None
        self._last_delivered_ns: int | None = None
        self._worker = threading.Thread(target=self._run, name='procvlm_inference', daemon=True)
        self._create_interfaces()
        self._worker.start()
        self.get_logger().info(
            f'profile={self.profile_cfg.profile} '
            f'backend={self.backend_cfg.backend} model={self.backend_cfg.model!r} '
            f'window={self.window_cfg.window_size}x{self.window_cfg.sample_period_s}s '
            f'input={self._input_topic()}')

    # ---------------------------------------------------------------- interfaces
    def _create_interfaces(self) -> None:
        m = self.monitor_cfg
        self._pub = self.create_publisher(Progress, 'progress', 10)
        self._pub_value = self.create_publisher(Float32, 'progress/value', 10)
        self._pub_reward = self.create_publisher(Float64, 'reward', 10)
        self._pub_intervention = self.create_publisher(Intervention, 'intervention', 10)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self._pub_done = self.create_publisher(Bool, 'done', latched)
        self._pub_image = self.create_publisher(Image, 'progress/image', 2)
        self._pub_marker = self.create_publisher(Marker, 'progress/marker', 10)
        self._actions = profile_io.ActionOutput(self) if self.publishes == 'action' else None
        self._queries = (profile_io.QueryServer(self, self.monitor, self._wake.set,
                                                self._worker.is_alive)
                         if self.publishes == 'answer' else None)
        self.create_service(SetTask, '~/set_task', self._on_set_task)
        self.create_service(Trigger, '~/reset', self._on_reset)
        self._hil = (HilServiceCaller(self, m.hil_service, m.hil_service_type, m.hil_timeout_s)
                     if m.hil_service else None)
        if m.diagnostics_period_s > 0:
            from diagnostic_msgs.msg import DiagnosticArray

            self._pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self.create_timer(m.diagnostics_period_s, self._publish_diagnostics)
        # While the inference thread is inside a (possibly minutes-long) load, say so.
        self._loading_timer = self.create_timer(m.status_period_s, self._say_loading)
        self._publish_done(False)
        if m.qos_reliability == 'auto':
            self._qos_timer = self.create_timer(_QOS_PROBE_S, self._subscribe_when_published)
        else:
            self._subscribe(m.qos_reliability == 'reliable')

    def _input_topic(self) -> str:
        name = 'image/compressed' if self.monitor_cfg.input_type == 'compressed' else 'image'
        return self.resolve_topic_name(name)

    def _subscribe_when_published(self) -> None:
        # Match the camera: a reliable subscriber never matches a best-effort publisher, and
        # large frames over best effort are lost to fragmentation, so pick per publisher.
        infos = self.get_publishers_info_by_topic(self._input_topic())
        if not infos:
            return
        self._qos_timer.cancel()
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
        self._subscribe(reliable)

    def _subscribe(self, reliable: bool) -> None:
        m = self.monitor_cfg
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=m.qos_depth,
                         reliability=ReliabilityPolicy.RELIABLE if reliable
                         else ReliabilityPolicy.BEST_EFFORT)
        msg_type, callback = ((CompressedImage, self._on_compressed)
                              if m.input_type == 'compressed' else (Image, self._on_image))
        # With sample_period_s 0 every frame is due: a filter would only cost.
        use_filter = m.input_filter and self.window_cfg.sample_period_s > 0
        options = _content_filter_options() if use_filter else {}
        self._sub = self.create_subscription(msg_type, self._input_topic(), callback, qos,
                                             raw=True, **options)
        filtered = bool(options) and self._sub.is_cft_enabled
        self._filter_params = _PASS_ALL if filtered else None
        self.get_logger().info(
            f'subscribed to {self._input_topic()} ({"reliable" if reliable else "best effort"}'
            f'{", frames not due filtered by DDS" if filtered else ""})')

    def _update_input_filter(self) -> None:
        """Move the DDS content filter to the next stamp the window (or the view) will take."""
        if self._filter_params is None or self._sub is None:
            return
        due = self.monitor.next_due_ns()
        rate = self.monitor_cfg.annotated_image_rate_hz
        if (due is not None and rate > 0 and self._last_delivered_ns is not None
                and self._pub_image.get_subscription_count() > 0):
            due = min(due, self._last_delivered_ns + int(1e9 / rate))
        if due is None:
            params = _PASS_ALL
        else:
            sec, nanosec = divmod(due, 1_000_000_000)
            back = int(math.ceil(self.window_cfg.time_jump_back_s)) + 1
            params = (str(sec), str(nanosec), str(sec - back - int(math.ceil(
                self.window_cfg.sample_period_s))))
        if params != self._filter_params:
            self._sub.set_content_filter(_INPUT_FILTER, list(params))
            self._filter_params = params

    # ---------------------------------------------------------------- input (executor)
    def _now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _on_image(self, raw: bytes) -> None:
        self._take(raw, self._decode_image)

    def _on_compressed(self, raw: bytes) -> None:
        self._take(raw, self._decode_compressed)

    def _take(self, raw: bytes, decode: Any) -> None:
        try:
            self._admit(raw, decode)
        finally:
            self._update_input_filter()

    def _admit(self, raw: bytes, decode: Any) -> None:
        now = self._now()
        try:
            stamp = cdr.header_stamp_ns(raw)
        except ProcVlmError as e:
            self._log_rejection(self.monitor.reject(str(e), now).message)
            return
        self._last_delivered_ns = stamp
        verdict = self.monitor.check_stamp(stamp, now)
        want_view = self._view_wanted()
        if verdict.admission is Admission.REJECTED:
            self._log_rejection(self.monitor.reject(verdict.message, now).message)
            return
        if verdict.admission is Admission.SKIPPED and not want_view:
            self.monitor.note_skipped(now)
            return
        try:
            frame = decode(raw, self.monitor_cfg.max_image_pixels)
        except ProcVlmError as e:
            self._log_rejection(self.monitor.reject(str(e), now).message)
            return
        if want_view:
            self._view_frame = frame
        if verdict.admission is Admission.SKIPPED:
            self.monitor.note_skipped(now)
            return
        result = self.monitor.offer(frame, now)
        if result.admission is Admission.REJECTED:
            self._log_rejection(result.message)
        elif result.admission is Admission.NEW_EPISODE:
            self.get_logger().warning(f'{result.message} (episode {self.monitor.episode})')
            self._publish_done(False)
        if result.admission in (Admission.KEPT, Admission.NEW_EPISODE):
            self._wake.set()

    @staticmethod
    def _decode_image(raw: bytes, max_pixels: int) -> Frame:
        f = cdr.parse_image(raw)
        rgb = image_ops.raw_to_rgb(f.data, f.height, f.width, f.step, f.encoding,
                                   f.is_bigendian, max_pixels=max_pixels)
        return Frame(image=rgb, stamp_ns=f.stamp_ns, frame_id=f.frame_id)

    @staticmethod
    def _decode_compressed(raw: bytes, max_pixels: int) -> Frame:
        f = cdr.parse_compressed(raw)
        rgb = image_ops.compressed_to_rgb(f.data, f.format, max_pixels=max_pixels)
        return Frame(image=rgb, stamp_ns=f.stamp_ns, frame_id=f.frame_id)

    def _log_rejection(self, message: str) -> None:
        if time.monotonic() - self._last_reject_log > 5.0:
            self._last_reject_log = time.monotonic()
            self.get_logger().warning(f'rejected frame: {message}')

    def _view_wanted(self) -> bool:
        rate = self.monitor_cfg.annotated_image_rate_hz
        return (rate > 0 and time.monotonic() >= self._view_due
                and self._pub_image.get_subscription_count() > 0)

    # ---------------------------------------------------------------- services, parameters
    def _on_set_task(self, request: SetTask.Request, response: SetTask.Response) -> Any:
        try:
            episode = self.monitor.new_episode(self._now(), task=request.task)
        except ConfigError as e:
            response.success, response.message = False, str(e)
            return response
        self._publish_done(False)
        self._update_input_filter()
        response.success, response.message = True, f'task set; episode {episode}'
        self.get_logger().info(f'task: {self.monitor.task!r} (episode {episode})')
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Any:
        episode = self.monitor.new_episode(self._now())
        self._publish_done(False)
        self._update_input_filter()
        response.success, response.message = True, f'episode {episode} started'
        return response

    def _on_set_parameters(self, params: list[Any]) -> Any:
        # Read-only parameters are refused by rclpy from their descriptors; the others reach
        # every consumer here (the Monitor and this node read the configs on each use).
        results = {}
        monitor_cfg, results['monitor'] = validate_update(self.monitor_cfg, params)
        window_cfg, results['window'] = validate_update(self.window_cfg, params)
        supervision_cfg, results['supervision'] = validate_update(self.supervision_cfg, params)
        backend_cfg, results['backend'] = validate_update(self.backend_cfg, params)
        failed = [r for r in results.values() if not r.successful]
        if failed:
            return failed[0]
        try:
            self.monitor.configure(window=window_cfg, supervision=supervision_cfg,
                                   stale_after_s=monitor_cfg.stale_after_s,
                                   min_inference_period_s=monitor_cfg.min_inference_period_s,
                                   status_period_s=monitor_cfg.status_period_s)
        except (ProcVlmError, ValueError) as e:
            results['monitor'].successful, results['monitor'].reason = False, str(e)
            return results['monitor']
        self.monitor_cfg, self.window_cfg = monitor_cfg, window_cfg
        self.supervision_cfg, self.backend_cfg = supervision_cfg, backend_cfg
        return results['monitor']

    def _say_loading(self) -> None:
        if self.monitor.backend_state in (BackendState.UNLOADED, BackendState.LOADING):
            self._publish_status_now(Status.LOADING,
                                     f'loading {self.backend_cfg.backend} backend')
        else:
            self._loading_timer.cancel()

    # ---------------------------------------------------------------- inference thread
    def _run(self) -> None:
        _name_os_thread('procvlm_infer')
        try:
            self._publish_status_now(Status.LOADING, f'loading {self.backend_cfg.backend} '
                                     'backend')
            start = time.monotonic()
            if self.monitor.load():
                self.get_logger().info(f'backend ready in {time.monotonic() - start:.1f} s')
            elif not self._stopping.is_set():
                self.get_logger().error(f'cannot load backend: {self.monitor.load_error}')
            while not self._stopping.is_set():
                self._wake.wait(_TICK_S)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                if self._queries is not None:
                    self._queries.serve_pending(self._now)
                self._publish(self.monitor.step(self._now()))
                self._maybe_publish_image()
        except Exception as e:  # noqa: BLE001 - a bug must not silently stop the monitor
            if not self._stopping.is_set() and rclpy.ok(context=self.context):
                self.get_logger().error(f'inference thread failed: {type(e).__name__}: {e}')
                self._publish_status_now(Status.ERROR,
                                         f'internal error: {type(e).__name__}: {e}')

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the inference thread; False when it is still inside an inference."""
        self._stopping.set()
        self._wake.set()
        self._worker.join(timeout_s)
        return not self._worker.is_alive()

    # ---------------------------------------------------------------- output
    def _publish(self, out: StepOutput) -> None:
        if out.estimate is not None and self._actions is not None:
            # A navigation step has no progress value: the action, and errors as status.
            self._actions.publish(out, self.monitor.backend.name)
            if out.estimate.status is Status.ERROR:
                self._publish_status_now(Status.ERROR, out.estimate.status_message, out)
        elif out.estimate is not None:
            self._publish_estimate(out)
        elif out.status is not None:
            self._publish_status_now(out.status, out.message, out)
        self._publish_events(out)
        if out.done_now:
            self.get_logger().info(f'task done: {out.task!r} (episode {out.episode})')

    def _publish_estimate(self, out: StepOutput) -> None:
        estimate, state, newest = out.estimate, out.state, out.newest
        if estimate is None or state is None or newest is None:
            return
        fields = conversions.progress_fields(
            estimate, task=out.task, backend=self.monitor.backend.name,
            publish_model_output=self.monitor_cfg.publish_model_output)
        fields.update(conversions.supervision_fields(state))
        msg = _progress_msg(fields)
        msg.header = _header(newest.stamp_ns, newest.frame_id)
        msg.capture_to_publish_s = float((self._now() - newest.stamp_ns) / 1e9)
        self._pub.publish(msg)
        if not math.isnan(msg.value):
            self._pub_value.publish(Float32(data=msg.value))
            self._pub_reward.publish(Float64(data=float(msg.value)))
        self._publish_done(state.done)
        self._publish_marker(msg)

    def _publish_status_now(self, status: Status, message: str,
                            out: StepOutput | None = None) -> None:
        view = self.monitor.view()
        last = view.last_estimate
        fields = {'task': view.task, 'episode': view.episode, 'status': int(status),
                  'status_message': message, 'backend': self.monitor.backend.name,
                  'value': math.nan, 'raw_value': math.nan,
                  'remaining_actions': list(last.remaining_actions) if last else []}
        state = out.state if out is not None else view.state
        if state is not None:
            fields.update(conversions.supervision_fields(state))
        msg = _progress_msg(fields)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)
        self._publish_marker(msg)

    def _publish_events(self, out: StepOutput) -> None:
        for event in out.events:
            self._publish_event(event, out)

    def _publish_event(self, event: InterventionEvent, out: StepOutput) -> None:
        msg = Intervention(task=out.task, episode=out.episode,
                           **conversions.intervention_fields(event))
        frame = self.monitor.view().latest_frame
        msg.header = _header(event.stamp_ns, frame.frame_id if frame else '')
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
        header = Header(stamp=msg.header.stamp, frame_id=self.monitor_cfg.marker_frame_id)
        for marker in views.progress_markers(header, value=msg.value, task=msg.task,
                                             headline=headline, colour=colour,
                                             scale=self.monitor_cfg.marker_scale):
            self._pub_marker.publish(marker)

    def _maybe_publish_image(self) -> None:
        rate = self.monitor_cfg.annotated_image_rate_hz
        if rate <= 0 or self._pub_image.get_subscription_count() == 0:
            return
        view = self.monitor.view()
        frame = self._view_frame or view.latest_frame
        now = time.monotonic()
        if frame is None or now - self._last_image_pub < 1.0 / rate:
            return
        self._last_image_pub = now
        self._view_due = now + 1.0 / rate
        state, last = view.state, view.last_estimate
        rgb = overlay_progress(
            frame.image, list(view.history), value=state.value if state else math.nan,
            status=_STATUS_NAMES.get(int(last.status), '') if last else 'WAITING_FOR_FRAMES',
            done=bool(state and state.done), stalled=bool(state and state.stalled),
            stalled_for_s=state.stalled_for_s if state else 0.0,
            remaining_actions=last.remaining_actions if last else ())
        self._pub_image.publish(views.rgb_to_image_msg(
            rgb, _header(frame.stamp_ns, frame.frame_id)))

    def _publish_diagnostics(self) -> None:
        now = self._now()
        s = self.monitor.stats(now)
        view = self.monitor.view()
        stale = self.monitor.stale(now)
        age = s.last_frame_age_s
        camera_level = 2 if stale else (1 if not math.isfinite(age) else 0)
        camera_msg = {2: 'stale', 1: 'no frames yet', 0: 'ok'}[camera_level]
        last = view.last_estimate
        backend_state = self.monitor.backend_state
        model_level = 2 if backend_state is BackendState.FAILED or (
            last and last.status is Status.ERROR) else (
            1 if backend_state is not BackendState.READY or (last and last.status != Status.OK)
            else 0)
        name = self.get_fully_qualified_name()
        statuses = [
            views.diagnostic_status(f'{name}: camera input', name, camera_level, camera_msg, [
                ('topic', self._input_topic()), ('frame_rate_hz', s.input_rate_hz),
                ('last_frame_age_s', age), ('frames_received', s.frames_received),
                ('frames_kept', s.frames_kept), ('frames_rejected', s.frames_rejected),
                ('time_jumps', s.time_jumps), ('last_rejection', s.last_rejection)]),
            views.diagnostic_status(f'{name}: inference', name, model_level,
                                    backend_state.value, [
                ('backend', self.monitor.backend.name), ('model', self.backend_cfg.model),
                ('task', view.task), ('episode', view.episode),
                ('windows_evaluated', s.windows), ('inference_errors', s.errors),
                ('answers_dropped_by_reset', s.dropped_answers),
                ('latency_p50_s', s.latency_p50_s), ('latency_p95_s', s.latency_p95_s),
                ('decoder_passes', s.decoder_passes),
                ('draft_tokens_accepted', s.draft_tokens_accepted),
                ('vision_cache_hit_rate',
                 last.timings.get('vision_cache_hit_rate', math.nan) if last else math.nan),
                ('last_status', _STATUS_NAMES.get(int(last.status), '') if last else ''),
                ('last_error', self.monitor.load_error or (
                    last.status_message if last and last.status is Status.ERROR else ''))]),
        ]
        self._pub_diag.publish(views.diagnostics_msg(self.get_clock().now().to_msg(), statuses))

    def close(self) -> bool:
        """Stop the inference thread and release the model; False if it could not stop."""
        if self._queries is not None:
            self._queries.close()
        stopped = self.stop()
        if stopped:
            self.monitor.close()
        return stopped


def _task_or_empty(task: str) -> str:
    # An invalid initial task is reported as a status (ERROR: no task) rather than a refusal
    # to start, so ~/set_task can still fix it.
    from procvlm_ros.core.prompt import validate_task

    try:
        return validate_task(task)
    except ConfigError:
        return ''


def _content_filter_options() -> dict[str, Any]:
    try:  # Jazzy and later
        from rclpy.subscription import ContentFilterOptions
    except ImportError:
        return {}
    return {'content_filter_options': ContentFilterOptions(
        filter_expression=_INPUT_FILTER, expression_parameters=list(_PASS_ALL))}


def _name_os_thread(name: str) -> None:
    # Shows in `top -H` / `ps -L` (and lets benchmarks tell input cost from inference cost).
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _header(stamp_ns: int, frame_id: str) -> Header:
    sec, nanosec = conversions.ns_to_stamp(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _progress_msg(fields: dict[str, Any]) -> Progress:
    stamps = fields.pop('frame_stamps', [])
    msg = Progress(**fields)
    msg.frame_stamps = [Time(sec=s, nanosec=n) for s, n in stamps]
    return msg


def make_executor() -> Any:
    """
    rclpy's events executor where it exists (Jazzy and later), else the single-threaded one.

    The events executor dispatches callbacks from C++ without rebuilding a wait set in Python
    for every message, which is most of what a 30 Hz camera costs a Python node; the node's
    callbacks are all short (inference has its own thread), so one thread is enough.
    ``PROCVLM_EXECUTOR=single`` picks the classic executor (benchmarks, bug hunts).
    """
    if os.environ.get('PROCVLM_EXECUTOR', 'events') != 'single':
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # Humble
            pass
        else:
            return EventsExecutor()
    return SingleThreadedExecutor()


def main(args: list[str] | None = None) -> int:
    # Our own SIGINT/SIGTERM handling: rclpy's would invalidate the context at once, while the
    # inference thread may still publish or log; this way the thread stops first, then ROS.
    rclpy.init(args=args if args is not None else sys.argv,
               signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = None
    executor = make_executor()
    code = 0
    try:
        node = MonitorNode()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (ConfigError, ProcVlmError) as e:
        # Invalid parameters: refuse to start with one clear line.
        print(f'procvlm monitor: invalid configuration: {e}', file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stopped = node.close() if node is not None else True
        executor.shutdown(timeout_sec=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if not stopped:
        # The inference thread is inside a model call that cannot be interrupted: leave
        # without waiting for it (and without tearing down torch under its feet).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == '__main__':
    sys.exit(main())

