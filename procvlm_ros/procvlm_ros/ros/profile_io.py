"""
What the node publishes and serves for the profiles that do not publish ``Progress``.

- ``action`` (navigation_action): :class:`ActionOutput` publishes one
  ``procvlm_msgs/NavigationAction`` per evaluated window on ``navigation/action``.
- ``answer`` (grounded_query): :class:`QueryServer` serves ``~/query``
  (``procvlm_msgs/QueryFrame``) on the newest frame, publishes the cited points as a
  ``visualization_msgs/ImageMarker`` (POINTS, camera pixels) on ``~/query/markers`` and the
  answer text on ``~/query/answer``.

Threading of ``~/query``: a query takes as long as an inference, and the node's executor must
keep taking frames and answering other services meanwhile. The service therefore lives on a
small helper node (``<node>_query``, same namespace, same context) spun by its own executor in
its own thread; its callback hands the question to the node's inference thread (where the
model was loaded: CUDA and TensorRT state is per thread) and waits for the answer. An
``async`` callback on the node's executor would not block it either, but rclpy futures are
polled, and rclpy's events executor polls a pending one in a busy loop for the whole inference.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
import threading
from typing import Any

from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from procvlm_msgs.msg import NavigationAction
from procvlm_msgs.srv import QueryFrame
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import ColorRGBA, Header, String
from visualization_msgs.msg import ImageMarker

from procvlm_ros.core.config import BackendConfig, ProfileConfig
from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.core.monitor import BackendState, Monitor, StepOutput
from procvlm_ros.core.profiles import TaskProfile
from procvlm_ros.core.profiles.registry import profile_from_config
from procvlm_ros.core.profiles.results import GroundedAnswer
from procvlm_ros.ros import profile_conversions
from procvlm_ros.ros.conversions import ns_to_stamp

ACTION_TOPIC = 'navigation/action'
QUERY_SERVICE = '~/query'
MARKER_TOPIC = '~/query/markers'
ANSWER_TOPIC = '~/query/answer'
_POLL_S = 0.1  # how often a waiting query looks whether the node is stopping


def make_node_profile(profile_cfg: ProfileConfig, backend_cfg: BackendConfig) -> TaskProfile:
    """
    The node's task profile from its parameters.

    ``procvlm_progress`` takes the backend's ``prompt_layout``, as the estimator's default
    profile does, so the ProcVLM query is the same whether or not a profile was configured;
    the checkpoint directory gives navigation_action its shipped system prompt and
    grounded_query its image geometry.

    :raises ConfigError: For options the profile refuses.
    """
    return profile_from_config(profile_cfg, model=backend_cfg.model,
                               prompt_layout=backend_cfg.prompt_layout)


def header_of(stamp_ns: int, frame_id: str) -> Header:
    sec, nanosec = ns_to_stamp(stamp_ns)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


class ActionOutput:
    """One ``NavigationAction`` per evaluated window; the step index restarts per episode."""

    def __init__(self, node: Node) -> None:
        self._pub = node.create_publisher(NavigationAction, ACTION_TOPIC, 10)
        self._episode = -1
        self._next_step = 0

    def publish(self, out: StepOutput, backend: str) -> NavigationAction | None:
        estimate, newest = out.estimate, out.newest
        if estimate is None or newest is None:
            return None
        if estimate.episode != self._episode:
            self._episode, self._next_step = estimate.episode, 0
        fields = profile_conversions.navigation_fields(
            estimate, task=out.task, backend=backend, next_step=self._next_step)
        ok = fields['status'] == profile_conversions.ACTION_OK
        self._next_step = fields['step'] + 1 if ok else fields['step']
        stamps = fields.pop('frame_stamps')
        msg = NavigationAction(**fields)
        msg.frame_stamps = [Time(sec=s, nanosec=n) for s, n in stamps]
        msg.header = header_of(newest.stamp_ns, newest.frame_id)
        self._pub.publish(msg)
        return msg


@dataclass
class _Query:
    question: str
    done: threading.Event = field(default_factory=threading.Event)
    response: Any = None


class QueryServer:
    """
    ``~/query``: questions about the newest frame, answered on the inference thread.

    :param node: The monitor node (its name, namespace, context and publishers).
    :param monitor: Answers with ``Monitor.ask_latest``.
    :param wake: Called when a question is queued (wakes the inference thread).
    :param serving: Whether the inference thread is alive to answer (a waiting query is
        refused when it is not).
    """

    def __init__(self, node: Node, monitor: Monitor, wake: Callable[[], None],
                 serving: Callable[[], bool] = lambda: True) -> None:
        self._monitor = monitor
        self._wake = wake
        self._serving = serving
        self._node = node
        self._pending: deque[_Query] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._pub_markers = node.create_publisher(ImageMarker, MARKER_TOPIC, 10)
        self._pub_answer = node.create_publisher(String, ANSWER_TOPIC, 10)
        # No global arguments: a `-r __node:=...` for the monitor must not rename this one
        # into a duplicate; the service gets the monitor's resolved (remapped) name.
        self._helper = Node(f'{node.get_name()}_query', namespace=node.get_namespace(),
                            context=node.context, use_global_arguments=False,
                            start_parameter_services=False)
        self.service_name = node.resolve_service_name(QUERY_SERVICE)
        self._helper.create_service(QueryFrame, self.service_name, self._on_query)
        self._executor = SingleThreadedExecutor(context=node.context)
        self._executor.add_node(self._helper)
        self._thread = threading.Thread(target=self._spin, name='procvlm_query', daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ service thread
    def _spin(self) -> None:
        try:
            while not self._stopping.is_set():
                self._executor.spin_once(timeout_sec=_POLL_S)
        except ExternalShutdownException:
            pass

    def _on_query(self, request: QueryFrame.Request, response: QueryFrame.Response) -> Any:
        refusal = self._refusal(request.question)
        if refusal:
            response.success, response.message = False, refusal
            return response
        query = _Query(request.question.strip())
        with self._lock:
            self._pending.append(query)
        self._wake()
        while not query.done.wait(_POLL_S):
            if self._stopping.is_set():
                response.success, response.message = False, 'node is shutting down'
                return response
            if not self._serving():
                response.success, response.message = False, 'the inference thread has stopped'
                return response
        return query.response

    def _refusal(self, question: str) -> str:
        state = self._monitor.backend_state
        if state in (BackendState.UNLOADED, BackendState.LOADING):
            return 'the model is still loading; ask again when the node reports no LOADING status'
        if state is BackendState.FAILED:
            return f'the model failed to load: {self._monitor.load_error}'
        if not question.strip():
            return 'question must not be empty'
        if self._monitor.view().latest_frame is None:
            return 'no camera frame received yet'
        return ''

    # ------------------------------------------------------------ inference thread
    def serve_pending(self, now_ns: Callable[[], int]) -> None:
        """Answer every queued question (called by the inference thread)."""
        while True:
            with self._lock:
                if not self._pending:
                    return
                query = self._pending.popleft()
            try:
                query.response = self._answer(query, now_ns())
            except Exception as e:  # noqa: BLE001 - one bad query must not stop the thread
                message = f'internal error: {type(e).__name__}: {e}'
                self._node.get_logger().error(f'query {query.question!r}: {message}')
                query.response = QueryFrame.Response(success=False, message=message)
            finally:
                query.done.set()

    def _answer(self, query: _Query, now_ns: int) -> QueryFrame.Response:
        response = QueryFrame.Response()
        try:
            out = self._monitor.ask_latest(query.question, now_ns)
        except ProcVlmError as e:
            response.success, response.message = False, str(e)
            return response
        interpretation, frame = out.answer, out.frame
        response.header = header_of(frame.stamp_ns, frame.frame_id)
        answer = interpretation.result
        if not isinstance(answer, GroundedAnswer):
            response.success = False
            response.message = '; '.join(interpretation.notes) or 'the model gave no answer'
            response.raw_answers = [interpretation.text] if interpretation.text else []
            return response
        fields = profile_conversions.query_fields(
            answer, inference_time_s=interpretation.latency_s or interpretation.last.latency_s)
        response.answer = fields['answer']
        response.points = [Point(**p) for p in fields['points']]
        response.point_labels = fields['point_labels']
        response.zoomed = fields['zoomed']
        response.zoom_point = Point(**fields['zoom_point'])
        response.raw_answers = fields['raw_answers']
        response.inference_time_s = fields['inference_time_s']
        # Without a final <answer> (turn limit, zoom off) the reasoning and points still come
        # back, but the query did not succeed; the profile's notes say why.
        response.success = bool(interpretation.ok)
        response.message = '; '.join(interpretation.notes) or (
            f'{len(answer.points)} point(s)' + (', zoomed' if answer.zoomed else ''))
        if response.success:
            self._publish(response, answer)
        return response

    def _publish(self, response: QueryFrame.Response, answer: GroundedAnswer) -> None:
        self._pub_answer.publish(String(data=response.answer))
        self._pub_markers.publish(points_marker(response.header, answer))

    # ------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Refuse waiting queries, stop the service thread and destroy the helper node."""
        self._stopping.set()
        self._thread.join(5.0)
        self._executor.shutdown(timeout_sec=1.0)
        self._helper.destroy_node()


def points_marker(header: Header, answer: GroundedAnswer, *, scale: float = 8.0) -> ImageMarker:
    """The answer's cited points as one POINTS ImageMarker (pixels of the answered frame)."""
    colour = ColorRGBA(r=1.0, g=0.2, b=0.2, a=1.0)
    marker = ImageMarker(header=header, ns='procvlm_query', id=0, type=ImageMarker.POINTS,
                         action=ImageMarker.ADD, scale=scale, outline_color=colour,
                         filled=1, fill_color=colour)
    marker.points = [Point(**p) for p in profile_conversions.marker_points(answer)]
    marker.outline_colors = [colour] * len(marker.points)
    return marker
