"""Supervision end to end: monitor, a fake HIL manager and a probe in three processes."""

import math
import subprocess
import sys

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from procvlm_msgs.msg import Intervention, Progress
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Bool
from visualization_msgs.msg import Marker

# A stand-in for an external HIL manager: prints every SetBool request it gets.
FAKE_HIL = """
import sys, rclpy
from rclpy.executors import ExternalShutdownException
from std_srvs.srv import SetBool
rclpy.init()
node = rclpy.create_node('fake_hil_manager')
def on_call(req, resp):
    print(f'CALL data={req.data}', flush=True)
    resp.success, resp.message = True, 'operator paged'
    return resp
node.create_service(SetBool, '/hil/request_intervention', on_call)
print('READY', flush=True)
try:
    rclpy.spin(node)
except (KeyboardInterrupt, ExternalShutdownException):
    pass
"""
# Scripted model values (percent), one per window: rise, plateau (stall), resume, finish.
VALUES = [10, 30] + [31, 32, 31, 30, 32] * 3 + [60, 80, 97, 98, 99, 99, 99, 99]
PARAMS = {'backend': 'scripted', 'task': 'stack the cups', 'window_size': 2,
          'sample_period_s': 0.0, 'stall_window_s': 1.5, 'stall_min_delta': 0.05,
          'regression_threshold': 0.5, 'done_threshold': 0.95, 'done_consecutive': 2,
          'annotated_image_rate_hz': 20.0, 'marker_frame_id': 'table',
          'diagnostics_period_s': 0.5, 'hil_service': '/hil/request_intervention',
          'hil_service_type': 'set_bool', 'stale_after_s': 30.0,
          'scripted_outputs': [f'1. keep going\nTherefore <progress>{v}%</progress>.'
                               for v in VALUES]}


@pytest.fixture
def fake_hil(ros_env):
    hil = subprocess.Popen([sys.executable, '-c', FAKE_HIL], env=ros_env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield hil
    if hil.poll() is None:  # never leave the helper process behind
        hil.kill()
        hil.wait()


def test_one_intervention_per_stall_done_latched_and_views(probe, start_monitor, helpers,
                                                           fake_hil):
    hil = fake_hil
    assert hil.stdout.readline().strip() == 'READY'
    monitor = start_monitor(PARAMS)
    progress, interventions, images, markers, diags = [], [], [], [], []
    n = probe.node
    n.create_subscription(Progress, 'progress', progress.append, 100)
    n.create_subscription(Intervention, 'intervention', interventions.append, 100)
    n.create_subscription(Image, 'progress/image', images.append, 10)
    n.create_subscription(Marker, 'progress/marker', markers.append, 100)
    n.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    pub = n.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 15.0)
    frames = helpers.frames(1, h=120, w=160)
    evaluated = 0
    snapshots = {}  # value -> annotated image seen right after it
    for i in range(200):  # one frame every 0.15 s until the whole script was evaluated
        pub.publish(helpers.image_msg(frames[0], 10**9 * 40 + i * 150_000_000))
        probe.spin_for(0.15)
        answered = [m for m in progress if m.status == Progress.STATUS_OK]
        evaluated = len(answered)
        if answered and images:
            snapshots.setdefault(round(answered[-1].value, 2), images[-1])
        if evaluated >= len(VALUES):
            break
    probe.spin_for(1.0)
    hil.terminate()
    hil_out = hil.communicate(timeout=10)[0]
    assert evaluated >= len(VALUES), monitor.log()

    # Exactly one stall raised and cleared; the value flickered inside the hysteresis band.
    stalls = [(m.reason, m.active) for m in interventions
              if m.reason == Intervention.REASON_STALLED]
    assert stalls == [(Intervention.REASON_STALLED, True),
                      (Intervention.REASON_STALLED, False)], monitor.log()
    raised = next(m for m in interventions if m.active)
    assert raised.task == 'stack the cups' and 0.29 < raised.value < 0.33
    assert raised.stalled_for_s > 1.5 and list(raised.remaining_actions) == ['keep going']
    assert any(m.stalled and m.stalled_for_s > 1.5 for m in progress)
    # Done latched at the end, also on the latched done topic for late subscribers.
    ok = [m for m in progress if m.status == Progress.STATUS_OK]
    first_done = next(i for i, m in enumerate(ok) if m.done)
    assert ok[first_done].value >= 0.95 and all(m.done for m in ok[first_done:])
    latched = []
    qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     reliability=ReliabilityPolicy.RELIABLE)
    n.create_subscription(Bool, 'done', latched.append, qos)
    assert probe.spin_until(lambda: latched, 10.0) and latched[-1].data is True
    # The HIL manager got a raise and a clear.
    assert hil_out.split() == ['CALL', 'data=True', 'CALL', 'data=False'], hil_out

    # Annotated image: the camera's size, and it changes with progress.
    assert images and (images[-1].height, images[-1].width) == (120, 160)
    low = min(snapshots)
    high = max(snapshots)
    assert high - low > 0.5
    a = np.frombuffer(snapshots[low].data, np.uint8).reshape(120, 160, 3)
    b = np.frombuffer(snapshots[high].data, np.uint8).reshape(120, 160, 3)
    strip = slice(84, 120)  # the progress strip at the bottom
    assert np.abs(a[strip].astype(int) - b[strip].astype(int)).sum() > 1000
    assert np.array_equal(a[:80], b[:80])  # the camera image above it is untouched
    # rviz marker in the configured frame, with the task and a done headline at the end.
    texts = [m for m in markers if m.type == Marker.TEXT_VIEW_FACING]
    assert texts[-1].header.frame_id == 'table' and 'stack the cups' in texts[-1].text
    assert 'DONE' in texts[-1].text
    bars = [m for m in markers if m.type == Marker.CUBE]
    assert math.isclose(bars[-1].scale.x, 0.99, rel_tol=1e-3)
    # Diagnostics with input rate and latency percentiles.
    statuses = {s.name.split(': ')[-1]: {kv.key: kv.value for kv in s.values}
                for s in diags[-1].status}
    assert float(statuses['camera input']['frame_rate_hz']) > 2.0
    assert statuses['inference']['windows_evaluated'] != '0'
    assert not math.isnan(float(statuses['inference']['latency_p95_s']))
    assert monitor.alive()
