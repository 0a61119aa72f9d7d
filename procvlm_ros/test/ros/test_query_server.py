"""
``~/query`` plumbing in one process with a stand-in Monitor (node logic, no model).

The answer is computed on an "inference thread" while the node's own executor keeps running,
refusals come back at once, and a stopping server answers a waiting client instead of hanging.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from procvlm_msgs.srv import QueryFrame
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from visualization_msgs.msg import ImageMarker

from procvlm_ros.core.monitor import BackendState
from procvlm_ros.core.profiles.results import GroundedAnswer, GroundedPoint
from procvlm_ros.core.types import Frame
from procvlm_ros.ros.profile_io import QueryServer

STAMP = 42 * 10**9 + 5
QUERY = '/procvlm_monitor/query'


class FakeMonitor:
    def __init__(self, delay_s=0.0):
        self.backend_state = BackendState.READY
        self.load_error = ''
        self.frame = None
        self.delay_s = delay_s
        self.asked = []

    def view(self):
        return SimpleNamespace(latest_frame=self.frame)

    def ask_latest(self, question, now_ns):
        self.asked.append((question, threading.current_thread().name))
        if question == 'crash':
            raise RuntimeError('model bug')
        time.sleep(self.delay_s)
        answer = GroundedAnswer(answer='left of the cup',
                                points=(GroundedPoint(3.0, 4.5, 'cup'),), raw=('raw',))
        interpretation = SimpleNamespace(ok=True, result=answer, notes=(), text='raw',
                                         latency_s=self.delay_s,
                                         last=SimpleNamespace(latency_s=0.0))
        return SimpleNamespace(answer=interpretation, frame=self.frame, episode=0,
                               question=question, frame_age_s=0.0)


class Rig:
    def __init__(self, probe, monitor):
        self.node = Node('procvlm_monitor', context=probe.context)
        self.ticks = 0
        self.node.create_timer(0.05, self._tick)
        self.executor = SingleThreadedExecutor(context=probe.context)
        self.executor.add_node(self.node)
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.server = QueryServer(self.node, monitor, self.wake.set)
        self.threads = [threading.Thread(target=self._spin, daemon=True),
                        threading.Thread(target=self._infer, name='infer', daemon=True)]
        for t in self.threads:
            t.start()

    def _tick(self):
        self.ticks += 1

    def _spin(self):
        while not self.stop.is_set():
            self.executor.spin_once(timeout_sec=0.05)

    def _infer(self):
        while not self.stop.is_set():
            if self.wake.wait(0.05):
                self.wake.clear()
                self.server.serve_pending(time.monotonic_ns)

    def close(self):
        self.server.close()
        self.stop.set()
        for t in self.threads:
            t.join(5.0)
        self.executor.shutdown()
        self.node.destroy_node()


def test_refusals_answer_and_markers_without_blocking_the_node(probe):
    monitor = FakeMonitor(delay_s=1.0)
    rig = Rig(probe, monitor)
    markers = []
    probe.node.create_subscription(ImageMarker, '/procvlm_monitor/query/markers',
                                   markers.append, 10)
    try:
        monitor.backend_state = BackendState.LOADING
        res = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='q'))
        assert not res.success and 'loading' in res.message
        monitor.backend_state = BackendState.READY
        res = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='q'))
        assert not res.success and res.message == 'no camera frame received yet'
        monitor.frame = Frame(image=None, stamp_ns=STAMP, frame_id='cam')
        ticks = rig.ticks
        res = probe.call(QueryFrame, QUERY,
                         QueryFrame.Request(question=' where? '))
        assert res.success, res.message
        assert rig.ticks - ticks >= 10  # the node's executor ran during the 1 s inference
        assert monitor.asked == [('where?', 'infer')]
        assert res.answer == 'left of the cup' and list(res.point_labels) == ['cup']
        assert [(p.x, p.y) for p in res.points] == [(3.0, 4.5)]
        assert (res.header.stamp.sec, res.header.stamp.nanosec, res.header.frame_id) == (
            42, 5, 'cam')
        assert probe.spin_until(lambda: markers, 5.0)
        assert markers[0].type == ImageMarker.POINTS and markers[0].header.frame_id == 'cam'
    finally:
        rig.close()


def test_a_waiting_query_is_refused_when_the_server_stops(probe):
    monitor = FakeMonitor()
    monitor.frame = Frame(image=None, stamp_ns=STAMP, frame_id='cam')
    rig = Rig(probe, monitor)
    rig.stop.set()  # no inference thread: the query waits
    rig.threads[1].join(5.0)
    client = probe.node.create_client(QueryFrame, QUERY)
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(QueryFrame.Request(question='q'))
    probe.spin_for(0.5)
    threading.Timer(0.2, rig.server.close).start()
    probe.executor.spin_until_future_complete(future, timeout_sec=10.0)
    assert future.done() and not future.result().success
    assert 'shutting down' in future.result().message
    rig.threads[0].join(5.0)
    rig.executor.shutdown()
    rig.node.destroy_node()


def test_an_unexpected_failure_answers_and_the_next_query_still_works(probe):
    monitor = FakeMonitor()
    monitor.frame = Frame(image=None, stamp_ns=STAMP, frame_id='cam')
    rig = Rig(probe, monitor)
    try:
        bad = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='crash'))
        assert not bad.success and bad.message == 'internal error: RuntimeError: model bug'
        good = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='ok'))
        assert good.success and rig.threads[1].is_alive()
    finally:
        rig.close()
