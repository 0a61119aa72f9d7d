"""The monitor node in its own process, driven over real ROS 2 topics and services."""

import math
import time

import numpy as np
from procvlm_msgs.msg import Progress
from procvlm_msgs.srv import SetTask
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Float32, Float64
from std_srvs.srv import Trigger

from procvlm_ros.core.image import rgb_to_jpeg

ANSWERS = [
    'The following actions are required: \n1. grasp the cup\n2. lift it\n'
    'Therefore, the estimated progress is <progress>20.00%</progress>.',
    'I am not sure what I see.',
    'Therefore, the estimated progress is <progress>60%</progress>.',
]
SCRIPTED = {'backend': 'scripted', 'scripted_outputs': ANSWERS, 'task': 'stack the cups',
            'window_size': 3, 'sample_period_s': 0.0, 'stale_after_s': 2.0,
            'status_period_s': 0.2, 'publish_model_output': True}


class Collector:
    def __init__(self, probe, ns='/'):
        self.progress, self.values, self.rewards = [], [], []
        n = probe.node
        n.create_subscription(Progress, ns + 'progress', self.progress.append, 50)
        n.create_subscription(Float32, ns + 'progress/value', self.values.append, 50)
        n.create_subscription(Float64, ns + 'reward', self.rewards.append, 50)

    def with_status(self, status):
        return [m for m in self.progress if m.status == status]


def publish_frames(probe, pub, helpers, n, start_s=100.0, period_s=0.2, **kw):
    stamps = []
    for i, rgb in enumerate(helpers.frames(n, seed=int(start_s))):
        stamp = int((start_s + i * period_s) * 1e9)
        pub.publish(helpers.image_msg(rgb, stamp, **kw))
        stamps.append(stamp)
        probe.spin_for(period_s)
    return stamps


def wait_for_subscriber(probe, pub):
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 15.0), 'no subscriber'


def test_scripted_sequence_values_topics_and_carry_forward(probe, start_monitor, helpers):
    monitor = start_monitor(SCRIPTED)
    got = Collector(probe)
    from sensor_msgs.msg import Image
    pub = probe.node.create_publisher(Image, 'image', 10)
    wait_for_subscriber(probe, pub)
    stamps = publish_frames(probe, pub, helpers, 6)
    assert probe.spin_until(lambda: len(got.with_status(Progress.STATUS_OK)) >= 2, 15.0), (
        monitor.log())
    answers = [m for m in got.progress
               if m.status in (Progress.STATUS_OK, Progress.STATUS_CARRIED_FORWARD)]
    first = answers[0]
    assert first.task == 'stack the cups' and first.backend == 'scripted'
    assert math.isclose(first.value, 0.2, rel_tol=1e-6)
    assert list(first.remaining_actions) == ['grasp the cup', 'lift it']
    assert first.model_output == ANSWERS[0]
    # The header carries the newest frame's stamp; the window is 3 frames, oldest first.
    newest = first.header.stamp.sec * 10**9 + first.header.stamp.nanosec
    assert newest in stamps
    window = [s.sec * 10**9 + s.nanosec for s in first.frame_stamps]
    assert len(window) == 3 and window[-1] == newest and window == sorted(window)
    # The second answer has no tag: official carry-forward of the last value.
    second = answers[1]
    assert second.status == Progress.STATUS_CARRIED_FORWARD
    assert math.isclose(second.value, 0.2, rel_tol=1e-6)
    assert math.isclose(second.raw_value, 0.2, rel_tol=1e-6)  # unsmoothed, carried forward
    assert 'no <progress>' in second.status_message
    assert any(math.isclose(m.value, 0.6, rel_tol=1e-6) for m in answers[2:])
    assert got.values and math.isclose(got.values[0].data, 0.2, rel_tol=1e-6)
    assert got.rewards and math.isclose(got.rewards[0].data, 0.2, rel_tol=1e-6)
    # The camera stops: the monitor says so instead of going quiet.
    assert probe.spin_until(lambda: got.with_status(Progress.STATUS_STALE_INPUT), 10.0), (
        monitor.log())
    assert monitor.alive()


def test_set_task_reset_and_bad_images(probe, start_monitor, helpers):
    monitor = start_monitor(SCRIPTED)
    got = Collector(probe)
    from sensor_msgs.msg import Image
    pub = probe.node.create_publisher(Image, 'image', 10)
    wait_for_subscriber(probe, pub)

    bad = helpers.image_msg(helpers.frames(1)[0], 10**9)
    bad.data = bad.data[:100]  # shorter than step * height
    weird = helpers.image_msg(helpers.frames(1)[0], 10**9)
    weird.encoding = 'yuv_from_mars'

    def rejected(text):
        # Best-effort delivery right after discovery can drop a message: keep sending.
        pub.publish(bad)
        pub.publish(weird)
        return any(text in m.status_message for m in got.progress)

    assert probe.spin_until(lambda: rejected('rejected frame'), 10.0), monitor.log()
    assert probe.spin_until(lambda: rejected('yuv_from_mars'), 10.0), monitor.log()
    assert not got.with_status(Progress.STATUS_OK)  # nothing was evaluated from bad frames
    assert monitor.alive()

    refused = probe.call(SetTask, '/procvlm_monitor/set_task', SetTask.Request(task='   '))
    assert not refused.success and 'non-empty' in refused.message
    ok = probe.call(SetTask, '/procvlm_monitor/set_task', SetTask.Request(task='fold towel'))
    assert ok.success
    publish_frames(probe, pub, helpers, 3)
    assert probe.spin_until(lambda: any(
        m.task == 'fold towel' and m.status == Progress.STATUS_OK for m in got.progress), 15.0)
    episode = max(m.episode for m in got.progress)
    assert episode == 1

    reset = probe.call(Trigger, '/procvlm_monitor/reset', Trigger.Request())
    assert reset.success
    n_before = len(got.progress)
    publish_frames(probe, pub, helpers, 2, start_s=200.0)
    assert probe.spin_until(lambda: any(
        m.episode == 2 and m.status in (Progress.STATUS_OK, Progress.STATUS_CARRIED_FORWARD)
        for m in got.progress[n_before:]), 15.0)
    # After a reset the window restarts: the first window is the new frame repeated.
    first_new = next(m for m in got.progress[n_before:] if m.episode == 2 and m.frame_stamps)
    assert len({(s.sec, s.nanosec) for s in first_new.frame_stamps}) == 1
    assert monitor.alive()


def test_compressed_input_and_namespace(probe, start_monitor, helpers):
    params = dict(SCRIPTED, input_type='compressed')
    monitor = start_monitor(params, extra_args=['-r', '__ns:=/arm'])
    got = Collector(probe, ns='/arm/')
    pub = probe.node.create_publisher(CompressedImage, '/arm/image/compressed', 10)
    wait_for_subscriber(probe, pub)
    for i, rgb in enumerate(helpers.frames(3)):
        msg = CompressedImage(format='jpeg', data=rgb_to_jpeg(rgb, 90))
        msg.header.stamp.sec = 50 + i
        pub.publish(msg)
        probe.spin_for(0.2)
    assert probe.spin_until(lambda: got.with_status(Progress.STATUS_OK), 15.0), monitor.log()
    assert got.with_status(Progress.STATUS_OK)[0].header.stamp.sec in (50, 51, 52)
    corrupt = CompressedImage(format='jpeg', data=b'\xff\xd8 not really a jpeg')
    corrupt.header.stamp.sec = 60

    def rejected():
        pub.publish(corrupt)
        return any('rejected frame' in m.status_message for m in got.progress)

    assert probe.spin_until(rejected, 10.0), monitor.log()
    assert monitor.alive()


def test_missing_checkpoint_publishes_error_status(probe, start_monitor, tmp_path):
    monitor = start_monitor({'backend': 'transformers', 'model': str(tmp_path / 'nowhere'),
                             'task': 'stack', 'status_period_s': 0.2})
    got = Collector(probe)
    assert probe.spin_until(lambda: got.with_status(Progress.STATUS_ERROR), 30.0), monitor.log()
    err = got.with_status(Progress.STATUS_ERROR)[-1]
    assert 'cannot load' in err.status_message and 'nowhere' in err.status_message
    assert math.isnan(err.value)
    assert monitor.alive()


def test_invalid_parameter_refuses_to_start(start_monitor):
    monitor = start_monitor(dict(SCRIPTED, window_size=0))
    deadline = time.monotonic() + 30
    while monitor.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert monitor.stop() == 2
    assert 'window_size' in monitor.log()


def test_no_task_publishes_error_until_set(probe, start_monitor, helpers):
    monitor = start_monitor(dict(SCRIPTED, task=''))
    got = Collector(probe)
    assert probe.spin_until(lambda: any('no task' in m.status_message
                                        for m in got.with_status(Progress.STATUS_ERROR)), 15.0)
    assert probe.call(SetTask, '/procvlm_monitor/set_task', SetTask.Request(task='pour')).success
    from sensor_msgs.msg import Image
    pub = probe.node.create_publisher(Image, 'image', 10)
    wait_for_subscriber(probe, pub)
    publish_frames(probe, pub, helpers, 2)
    assert probe.spin_until(lambda: any(m.task == 'pour' and m.status == Progress.STATUS_OK
                                        for m in got.progress), 15.0), monitor.log()
    assert np.isfinite(got.with_status(Progress.STATUS_OK)[0].value)


def test_tiny_model_node_matches_local_reference(probe, start_monitor, helpers, tmp_path):
    """Real transformers backend in the node; its answer equals a local run on the same window."""
    from sensor_msgs.msg import Image

    from procvlm_ros.core.backends import create_backend
    from procvlm_ros.core.config import BackendConfig
    from procvlm_ros.core.estimator import ProgressEstimator
    from procvlm_ros.core.types import Frame
    from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

    model = build_tiny_checkpoint(tmp_path / 'tiny', seed=5)
    backend_params = {'backend': 'transformers', 'model': str(model), 'device': 'cpu',
                      'dtype': 'fp32', 'attn_implementation': 'eager', 'max_new_tokens': 10}
    monitor = start_monitor(dict(backend_params, task='wipe the table', window_size=3,
                                 sample_period_s=0.5, publish_model_output=True,
                                 status_period_s=0.2))
    got = Collector(probe)
    pub = probe.node.create_publisher(Image, 'image', 10)
    wait_for_subscriber(probe, pub)
    frames = helpers.frames(8, seed=9)
    sent = {}
    answered = (Progress.STATUS_OK, Progress.STATUS_CARRIED_FORWARD)

    def windows():
        return [m for m in got.progress if m.status in answered and len(m.frame_stamps) == 3
                and len({(s.sec, s.nanosec) for s in m.frame_stamps}) == 3]

    i = 0
    # Frames every 0.25 s of stamp time until two full windows: the second one was decoded with
    # the first one's answer as the speculative draft (speculation is on by default).
    while len(windows()) < 2 and i < 400:
        stamp = 10**9 * 30 + i * 250_000_000
        sent[stamp] = frames[i % len(frames)]
        pub.publish(helpers.image_msg(sent[stamp], stamp))
        probe.spin_for(0.1)
        i += 1
    assert len(windows()) >= 2, monitor.log()
    msg = windows()[-1]
    assert 1 <= msg.decoder_passes <= msg.generated_tokens
    stamps = [s.sec * 10**9 + s.nanosec for s in msg.frame_stamps]
    # sample_period_s 0.5 with frames every 0.25 s: every other frame is kept.
    assert all(b - a >= 500_000_000 for a, b in zip(stamps, stamps[1:]))
    assert msg.backend == 'transformers' and msg.generated_tokens > 0
    assert msg.inference_time_s > 0 and msg.capture_to_publish_s > 0
    local_backend = create_backend(BackendConfig(**backend_params))
    with local_backend:
        est = ProgressEstimator(local_backend, 'wipe the table')
        local = est.estimate([Frame(sent[s], s) for s in stamps])
    assert msg.model_output == local.model_output
    assert monitor.alive()
