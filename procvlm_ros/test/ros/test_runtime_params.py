"""Runtime parameters reach every consumer; read-only ones are refused; QoS follows the camera."""

from __future__ import annotations

import time

from procvlm_msgs.msg import Intervention, Progress
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

FLAT = ('The following actions are required: \n1. wipe\n'
        'Therefore, the estimated progress is <progress>30%</progress>.')
PARAMS = {'backend': 'scripted', 'scripted_outputs': [FLAT], 'task': 'wipe the table',
          'window_size': 2, 'sample_period_s': 0.0, 'stale_after_s': 30.0,
          'stall_window_s': 600.0, 'status_period_s': 0.2}


def _double(name, value):
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                     double_value=float(value)))


def _int(name, value):
    return Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_INTEGER,
                                                     integer_value=int(value)))


def _set(probe, *params):
    return probe.call(SetParameters, '/procvlm_monitor/set_parameters',
                      SetParameters.Request(parameters=list(params))).results


def _stream(probe, pub, helpers, seconds, period=0.1):
    frames = helpers.frames(2)
    clock = probe.node.get_clock()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        pub.publish(helpers.image_msg(frames[i % 2], clock.now().nanoseconds))
        probe.spin_for(period)
        i += 1


def test_stale_and_stall_settings_change_the_running_supervisor(probe, start_monitor, helpers):
    monitor = start_monitor(dict(PARAMS, max_stamp_age_s=10.0))
    events: list[Intervention] = []
    probe.node.create_subscription(Intervention, 'intervention', events.append, 50)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    _stream(probe, pub, helpers, 1.5)
    # The issue: stale_after_s set at runtime changed the status but not the supervisor.
    assert all(r.successful for r in _set(probe, _double('stale_after_s', 2.0))), monitor.log()
    probe.spin_for(4.0)  # a 4 s dropout
    stale = [e for e in events if e.reason == Intervention.REASON_STALE_INPUT and e.active]
    assert len(stale) == 1, (events, monitor.log())
    # Stall thresholds are retunable like Nav2's progress checker: a flat 30 % now stalls.
    assert all(r.successful for r in _set(probe, _double('stall_window_s', 1.0)))
    _stream(probe, pub, helpers, 3.0)
    stalled = [e for e in events if e.reason == Intervention.REASON_STALLED and e.active]
    assert len(stalled) == 1, (events, monitor.log())
    assert monitor.stop() == 0


def test_read_only_parameters_say_so_and_are_refused(probe, start_monitor):
    monitor = start_monitor(PARAMS)
    result = _set(probe, _int('window_size', 16))[0]
    assert not result.successful and 'read-only' in result.reason.lower(), result.reason
    described = probe.call(DescribeParameters, '/procvlm_monitor/describe_parameters',
                           DescribeParameters.Request(names=['window_size', 'stall_window_s',
                                                             'stale_after_s'])).descriptors
    assert [d.read_only for d in described] == [True, False, False]
    bad = _set(probe, _double('stall_window_s', -1.0))[0]
    assert not bad.successful
    assert monitor.stop() == 0


def test_auto_reliability_matches_a_best_effort_camera(probe, start_monitor, helpers):
    monitor = start_monitor(PARAMS)  # qos_reliability: auto (the default)
    got: list[Progress] = []
    probe.node.create_subscription(Progress, 'progress', got.append, 50)
    # A reliable subscriber would never match this publisher (sensor-data QoS).
    pub = probe.node.create_publisher(Image, 'image', QoSProfile(
        depth=2, reliability=ReliabilityPolicy.BEST_EFFORT))
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0), monitor.log()
    _stream(probe, pub, helpers, 2.0)
    assert any(m.status == Progress.STATUS_OK for m in got), monitor.log()
    assert 'best effort' in monitor.log()
    assert monitor.stop() == 0
