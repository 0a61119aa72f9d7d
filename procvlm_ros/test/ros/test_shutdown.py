"""SIGINT/SIGTERM at any moment (loading, inference, publishing): exit 0, nothing on stderr."""

from __future__ import annotations

import re
import signal
import time

from procvlm_msgs.msg import Progress
import pytest
from sensor_msgs.msg import Image

from procvlm_ros.demo_model import CHECKPOINT_DIR

ERROR_TEXT = re.compile(r'Traceback|\[ERROR\]|RCLError|never retrieved|exception|missing, '
                        r'corrupt|failed', re.IGNORECASE)
DEMO = {'backend': 'transformers', 'model': str(CHECKPOINT_DIR), 'device': 'cpu',
        'dtype': 'fp32', 'task': 'stack the red block on the blue block', 'window_size': 8,
        'sample_period_s': 0.0, 'max_new_tokens': 64, 'stale_after_s': 30.0,
        'annotated_image_rate_hz': 5.0, 'status_period_s': 0.05}
SCRIPTED = {'backend': 'scripted', 'scripted_outputs': ['<progress>10%</progress>'],
            'task': 'wipe', 'window_size': 4, 'sample_period_s': 0.0,
            'status_period_s': 0.05, 'diagnostics_period_s': 0.2}


def stop_with(monitor, sig):
    monitor.proc.send_signal(sig)
    try:
        code = monitor.proc.wait(timeout=30)
    finally:
        monitor.stop()
    return code


def stream(probe, pub, helpers, seconds, rate_hz=30.0, until=None):
    frames = helpers.frames(4, h=120, w=160)
    clock = probe.node.get_clock()
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end and not (until and until()):
        pub.publish(helpers.image_msg(frames[i % 4], clock.now().nanoseconds))
        probe.spin_for(1.0 / rate_hz)
        i += 1


def progress_of(probe):
    got: list[Progress] = []
    probe.node.create_subscription(Progress, 'progress', got.append, 50)
    return got


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_while_streaming_and_publishing(probe, start_monitor, helpers, sig):
    monitor = start_monitor(SCRIPTED)
    got = progress_of(probe)
    # Subscribers to every output, so the node is publishing all of them when the signal comes.
    probe.node.create_subscription(Image, 'progress/image', lambda m: None, 2)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    stream(probe, pub, helpers, 2.0)
    assert any(m.status == Progress.STATUS_OK for m in got), monitor.log()
    assert stop_with(monitor, sig) == 0
    assert not ERROR_TEXT.search(monitor.log()), monitor.log()


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_while_loading(probe, start_monitor, sig):
    monitor = start_monitor(DEMO)
    got = progress_of(probe)
    assert probe.spin_until(lambda: any(m.status == Progress.STATUS_LOADING for m in got),
                            30.0), monitor.log()
    assert stop_with(monitor, sig) == 0
    assert not ERROR_TEXT.search(monitor.log()), monitor.log()


def test_signal_during_inference(probe, start_monitor, helpers):
    monitor = start_monitor(DEMO)
    got = progress_of(probe)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 30.0)
    stream(probe, pub, helpers, 60.0, until=lambda: any(m.status == Progress.STATUS_OK
                                                        for m in got))
    assert any(m.status == Progress.STATUS_OK for m in got), monitor.log()
    # Frames keep coming, so an inference is running (or about to) when the signal lands.
    stream(probe, pub, helpers, 0.3)
    assert stop_with(monitor, signal.SIGINT) == 0
    assert not ERROR_TEXT.search(monitor.log()), monitor.log()
