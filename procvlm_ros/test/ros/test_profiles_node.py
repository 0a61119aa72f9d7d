"""
The monitor node serving each task profile, in its own process, over real ROS 2 messages.

Node-logic tests: the ``scripted`` backend replays canned answers written in each profile's
public format (VLAC delta, R2R action, ViGoRL grounded answer), so what is checked is the
node's plumbing (parameters, profile, messages, the query service) and the profiles' parsing,
not a model. The last test runs a real tiny random Qwen3-VL checkpoint through the query.
"""

from __future__ import annotations

import math
import time

from procvlm_msgs.msg import NavigationAction, Progress
from procvlm_msgs.srv import QueryFrame
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import ImageMarker

BASE = {'backend': 'scripted', 'window_size': 2, 'sample_period_s': 0.0,
        'stale_after_s': 30.0, 'stall_window_s': 600.0, 'status_period_s': 0.2,
        'publish_model_output': True}
QUERY = '/procvlm_monitor/query'


def _publisher(probe, monitor, topic='image'):
    pub = probe.node.create_publisher(Image, topic, 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0), monitor.log()
    return pub


def _subscribe(probe, msg_type, topic, sink):
    return probe.node.create_subscription(msg_type, topic, sink.append, 50)


def _matched(probe, monitor, *subs):
    # The node publishes once per answer: wait until its publishers reach the probe.
    def count(sub):
        if hasattr(sub, 'get_publisher_count'):  # Jazzy and later
            return sub.get_publisher_count()
        return probe.node.count_publishers(sub.topic_name)

    assert probe.spin_until(lambda: all(count(s) > 0 for s in subs), 20.0), monitor.log()


def _send(probe, pub, helpers, n, *, start_s=100.0, period_s=0.2, h=48, w=64):
    stamps = []
    for i, rgb in enumerate(helpers.frames(n, h=h, w=w, seed=int(start_s))):
        stamp = int((start_s + i * period_s) * 1e9)
        pub.publish(helpers.image_msg(rgb, stamp, frame_id='front_camera'))
        stamps.append(stamp)
        probe.spin_for(period_s)
    return stamps


def _ns(stamp):
    return stamp.sec * 10**9 + stamp.nanosec


def _wait_exit(monitor, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while monitor.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return monitor.stop()


def test_pairwise_critic_publishes_accumulated_progress(probe, start_monitor, helpers):
    # VLAC answers: bare signed deltas in percentage points, accumulated v + (100 - v) * c / 100.
    monitor = start_monitor(dict(BASE, profile='pairwise_critic', task='stack the cups',
                                 scripted_outputs=['20', '25', '-10']))
    got: list[Progress] = []
    sub = _subscribe(probe, Progress, 'progress', got)
    pub = _publisher(probe, monitor)
    _matched(probe, monitor, sub)
    _send(probe, pub, helpers, 5)
    assert probe.spin_until(lambda: len([m for m in got if m.status == Progress.STATUS_OK]) >= 3,
                            20.0), monitor.log()
    ok = [m for m in got if m.status == Progress.STATUS_OK]
    assert [round(m.value, 4) for m in ok[:3]] == [0.2, 0.4, 0.34]
    assert ok[0].model_output == '20' and ok[0].task == 'stack the cups'
    assert ok[0].backend == 'scripted' and ok[0].header.frame_id == 'front_camera'
    assert monitor.alive()


def test_pairwise_critic_done_answer_reaches_the_supervisor(probe, start_monitor, helpers):
    # 0 -> 60 -> 84: at 80 the done query is asked ('1': yes), the value becomes 100 and the
    # supervisor's own done rule (two estimates >= 0.95) latches done, as for ProcVLM.
    monitor = start_monitor(dict(BASE, profile='pairwise_critic', task='stack the cups',
                                 scripted_outputs=['60', '60', '1']))
    got: list[Progress] = []
    done: list[Bool] = []
    subs = (_subscribe(probe, Progress, 'progress', got), _subscribe(probe, Bool, 'done', done))
    pub = _publisher(probe, monitor)
    _matched(probe, monitor, *subs)
    _send(probe, pub, helpers, 5)
    assert probe.spin_until(lambda: any(m.done for m in got), 20.0), monitor.log()
    ok = [m for m in got if m.status == Progress.STATUS_OK]
    assert [round(m.value, 4) for m in ok[:3]] == [0.6, 1.0, 1.0]
    assert ok[1].model_output == '60\n1'  # the critic answer, then the done answer
    assert probe.spin_until(lambda: done and done[-1].data, 5.0)
    assert monitor.alive()


def test_navigation_publishes_actions_with_increasing_steps(probe, start_monitor, helpers):
    # R2R: the reply starts with 'Action: ' (the authors' prefix); the model continues it.
    answers = ['Move', 'Left', 'I am lost.', 'Stop']
    monitor = start_monitor(dict(BASE, profile='navigation_action',
                                 task='walk past the sofa and stop at the door',
                                 scripted_outputs=answers))
    actions: list[NavigationAction] = []
    progress: list[Progress] = []
    subs = (_subscribe(probe, NavigationAction, 'navigation/action', actions),
            _subscribe(probe, Progress, 'progress', progress))
    pub = _publisher(probe, monitor)
    _matched(probe, monitor, *subs)
    # Status is reported on progress as for every profile (NaN value).
    assert probe.spin_until(lambda: any(
        m.status == Progress.STATUS_WAITING_FOR_FRAMES for m in progress), 10.0), monitor.log()
    stamps = _send(probe, pub, helpers, 6)
    assert probe.spin_until(lambda: len(actions) >= 4, 20.0), monitor.log()
    first, second, lost, stop = actions[:4]
    assert (first.action, first.step, first.status) == (
        NavigationAction.MOVE, 0, NavigationAction.STATUS_OK)
    assert (second.action, second.step) == (NavigationAction.LEFT, 1)
    assert first.raw_answer == 'Action: Move'
    assert first.instruction == 'walk past the sofa and stop at the door'
    assert _ns(first.header.stamp) in stamps and first.header.frame_id == 'front_camera'
    assert _ns(first.frame_stamps[-1]) == _ns(first.header.stamp)
    # An answer without an action is reported, and is no step: the next action takes its index.
    assert (lost.status, lost.action, lost.step) == (NavigationAction.STATUS_NO_ACTION, '', 2)
    assert lost.raw_answer == 'Action: I am lost.' and lost.status_message
    assert (stop.action, stop.step, stop.status) == (
        NavigationAction.STOP, 2, NavigationAction.STATUS_OK)
    # The history grows with the steps taken (window of 2: one previous frame at most).
    assert [len(a.frame_stamps) for a in actions[:4]] == [2, 2, 2, 2]
    # No progress values for a navigation model.
    assert not [m for m in progress if m.status == Progress.STATUS_OK]
    assert all(math.isnan(m.value) for m in progress)
    # A new episode (~/reset) restarts the steps.
    assert probe.call(Trigger, '/procvlm_monitor/reset', Trigger.Request()).success
    n_before = len(actions)
    _send(probe, pub, helpers, 2, start_s=200.0)
    assert probe.spin_until(lambda: len(actions) > n_before, 20.0), monitor.log()
    restarted = actions[n_before]
    assert restarted.episode == first.episode + 1 and restarted.step == 0
    assert len({(s.sec, s.nanosec) for s in restarted.frame_stamps}) == 1  # no old frames
    assert monitor.stop() == 0


# ViGoRL turns in the model's pixel space. A 100x50 camera frame is 112x56 for the model
# (Qwen2.5-VL geometry: sides rounded to 28), so camera = model * (100/112, 50/56).
ZOOM = ('<think>The mug may be near (56, 28).</think>\n<tool_call>\n{"name": '
        '"search_coordinate", "arguments": {"coordinate": [56, 28]}}\n</tool_call>')
FINAL = '<think>In the crop it is at (84, 42).</think><answer>The mug is at (28, 14).</answer>'


def _xy(points):
    return [(round(p.x, 6), round(p.y, 6)) for p in points]


def test_query_before_any_frame_then_answers_with_camera_points_and_markers(
        probe, start_monitor, helpers):
    monitor = start_monitor(dict(BASE, profile='grounded_query', task='kitchen',
                                 scripted_outputs=[ZOOM, FINAL]))
    markers: list[ImageMarker] = []
    texts: list[String] = []
    subs = (_subscribe(probe, ImageMarker, '/procvlm_monitor/query/markers', markers),
            _subscribe(probe, String, '/procvlm_monitor/query/answer', texts))
    early = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='where is the mug?'))
    assert not early.success
    assert 'no camera frame' in early.message or 'loading' in early.message, early.message
    pub = _publisher(probe, monitor)
    _matched(probe, monitor, *subs)
    stamps = _send(probe, pub, helpers, 2, h=50, w=100)
    empty = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='  '))
    assert not empty.success and 'empty' in empty.message

    res = probe.call(QueryFrame, QUERY, QueryFrame.Request(question='where is the mug?'),
                     timeout_s=30.0)
    assert res.success, (res.message, monitor.log())
    assert res.answer == 'The mug is at (28, 14).'
    assert res.header.frame_id == 'front_camera' and _ns(res.header.stamp) == stamps[-1]
    assert _xy(res.points) == [(50.0, 25.0), (75.0, 37.5), (25.0, 12.5)]
    assert list(res.point_labels) == ['think', 'think', 'answer']
    assert res.zoomed and _xy([res.zoom_point]) == [(50.0, 25.0)]
    assert list(res.raw_answers) == [ZOOM, FINAL]
    assert probe.spin_until(lambda: markers and texts, 10.0), monitor.log()
    marker = markers[-1]
    assert marker.type == ImageMarker.POINTS and marker.header.frame_id == 'front_camera'
    assert _xy(marker.points) == _xy(res.points)
    assert texts[-1].data == res.answer
    assert monitor.stop() == 0  # SIGINT: the helper node and its thread stop cleanly
    assert 'Traceback' not in monitor.log(), monitor.log()


def test_query_without_zoom_turns_reports_no_answer(probe, start_monitor, helpers):
    # grounded_zoom false: the tool call ends the query; no final answer, no markers. The node
    # is namespaced and renamed: the service and its helper node follow.
    monitor = start_monitor(dict(BASE, profile='grounded_query', task='kitchen',
                                 grounded_zoom=False, scripted_outputs=[ZOOM, FINAL]),
                            extra_args=['-r', '__ns:=/arm', '-r', '__node:=vlm'])
    markers: list[ImageMarker] = []
    sub = _subscribe(probe, ImageMarker, '/arm/vlm/query/markers', markers)
    pub = _publisher(probe, monitor, '/arm/image')
    _matched(probe, monitor, sub)
    _send(probe, pub, helpers, 1, h=50, w=100)
    res = probe.call(QueryFrame, '/arm/vlm/query',
                     QueryFrame.Request(question='where is the mug?'), timeout_s=30.0)
    assert not res.success and not res.zoomed and res.answer == ''
    assert list(res.raw_answers) == [ZOOM] and 'answer' in res.message, res.message
    assert _xy(res.points) == [(50.0, 25.0)]  # the reasoning's point still comes back
    probe.spin_for(0.5)
    assert not markers
    assert ('vlm_query', '/arm') in probe.node.get_node_names_and_namespaces()
    assert monitor.alive()


def test_bad_profile_refuses_to_start_with_a_clear_error(start_monitor):
    monitor = start_monitor(dict(BASE, profile='telepathy', scripted_outputs=['x'],
                                 task='stack'))
    assert _wait_exit(monitor) == 2
    log = monitor.log()
    assert 'invalid configuration' in log and 'profile' in log and 'telepathy' in log, log
    # A setting the profile refuses is as clear (the profile is built before anything starts).
    monitor = start_monitor(dict(BASE, profile='pairwise_critic', scripted_outputs=['1'],
                                 task='stack', critic_reference_path='/nonexistent/demo'))
    assert _wait_exit(monitor) == 2
    log = monitor.log()
    assert 'invalid configuration' in log and '/nonexistent/demo' in log, log


def test_profile_and_trust_remote_code_are_read_only(probe, start_monitor):
    monitor = start_monitor(dict(BASE, scripted_outputs=['<progress>5%</progress>'],
                                 task='stack'))
    params = [Parameter(name='profile', value=ParameterValue(
                  type=ParameterType.PARAMETER_STRING, string_value='navigation_action')),
              Parameter(name='trust_remote_code', value=ParameterValue(
                  type=ParameterType.PARAMETER_BOOL, bool_value=True))]
    for p in params:
        result = probe.call(SetParameters, '/procvlm_monitor/set_parameters',
                            SetParameters.Request(parameters=[p])).results[0]
        assert not result.successful and 'read-only' in result.reason.lower(), result.reason
    assert monitor.stop() == 0


@pytest.mark.slow  # builds a tiny checkpoint; 45-60 s on a loaded 2-core machine
def test_tiny_qwen3_vl_answers_a_query_like_a_local_monitor(probe, start_monitor, helpers,
                                                            tmp_path):
    """A real (tiny, random) Qwen3-VL checkpoint behind ~/query: turns equal a local run."""
    from procvlm_ros.core.backends import create_backend
    from procvlm_ros.core.config import BackendConfig, ProfileConfig, WindowConfig
    from procvlm_ros.core.monitor import Monitor
    from procvlm_ros.core.profiles.registry import profile_from_config
    from procvlm_ros.core.types import Frame
    from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

    model = build_tiny_checkpoint(tmp_path / 'tiny', seed=3)
    backend_params = {'backend': 'transformers', 'model': str(model), 'device': 'cpu',
                      'dtype': 'fp32', 'attn_implementation': 'eager', 'max_new_tokens': 8}
    monitor = start_monitor(dict(backend_params, profile='grounded_query', task='kitchen',
                                 grounded_max_turns=1, window_size=2, sample_period_s=0.0,
                                 status_period_s=0.2))
    pub = _publisher(probe, monitor)
    rgb = helpers.frames(1, h=48, w=64, seed=11)[0]
    stamp = 77 * 10**9
    request = QueryFrame.Request(question='What is on the table?')

    def answered():
        pub.publish(helpers.image_msg(rgb, stamp, frame_id='front_camera'))
        res = probe.call(QueryFrame, QUERY, request, timeout_s=60.0)
        return res if res.raw_answers else None

    res = None
    deadline = time.monotonic() + 75.0
    while res is None and time.monotonic() < deadline:  # the model loads first
        res = answered()
        if res is None:
            probe.spin_for(0.5)
    assert res is not None, monitor.log()
    assert (_ns(res.header.stamp), res.header.frame_id) == (stamp, 'front_camera')
    assert res.inference_time_s > 0 and len(res.raw_answers) == 1

    profile = profile_from_config(ProfileConfig(profile='grounded_query', grounded_max_turns=1),
                                  model=str(model))
    local = Monitor(create_backend(BackendConfig(**backend_params)), profile=profile,
                    window=WindowConfig(window_size=2, sample_period_s=0.0), task='kitchen')
    try:
        assert local.load(), local.load_error
        local.offer(Frame(rgb, stamp, 'front_camera'), stamp)
        expected = local.ask_latest(request.question, stamp)
    finally:
        local.close()
    assert list(res.raw_answers) == list(expected.answer.result.raw)
    assert res.answer == expected.answer.result.answer
    assert monitor.alive()
