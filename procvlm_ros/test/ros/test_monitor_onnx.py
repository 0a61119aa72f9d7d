"""The monitor node with backend: onnxruntime, in its own process, against a local reference."""

import time

from diagnostic_msgs.msg import DiagnosticArray
from procvlm_msgs.msg import Progress
import pytest

pytestmark = pytest.mark.slow


def test_onnxruntime_node_answers_like_the_transformers_reference(probe, start_monitor, helpers,
                                                                  tmp_path_factory):
    from sensor_msgs.msg import Image

    from procvlm_ros.core.backends import create_backend
    from procvlm_ros.core.config import BackendConfig
    from procvlm_ros.core.estimator import ProgressEstimator
    from procvlm_ros.core.types import Frame
    from procvlm_ros.export.testing import tiny_export

    checkpoint, folder = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')
    monitor = start_monitor({'backend': 'onnxruntime', 'engine_dir': str(folder),
                             'device': 'cpu', 'max_new_tokens': 10, 'task': 'wipe the table',
                             'window_size': 3, 'sample_period_s': 0.5,
                             'publish_model_output': True, 'status_period_s': 0.2})
    got, diags = [], []
    probe.node.create_subscription(Progress, 'progress', got.append, 50)
    probe.node.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 10)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 15.0), monitor.log()
    frames = helpers.frames(8, seed=9)
    sent = {}
    answered = (Progress.STATUS_OK, Progress.STATUS_CARRIED_FORWARD)

    def windows():
        return [m for m in got if m.status in answered and len(m.frame_stamps) == 3
                and len({(s.sec, s.nanosec) for s in m.frame_stamps}) == 3]

    i, deadline = 0, time.monotonic() + 90
    while len(windows()) < 2 and time.monotonic() < deadline:
        stamp = 10**9 * 30 + i * 250_000_000  # frames every 0.25 s of stamp time
        sent[stamp] = frames[i % len(frames)]
        pub.publish(helpers.image_msg(sent[stamp], stamp))
        probe.spin_for(0.1)
        i += 1
    assert len(windows()) >= 2, monitor.log()
    assert monitor.alive()
    assert all(m.backend == 'onnxruntime' and m.generated_tokens > 0 for m in windows())
    # Sliding windows reuse frames: the vision cache hit rate reaches /diagnostics.
    def hit_rate():
        for array in reversed(diags):
            for status in array.status:
                values = {kv.key: kv.value for kv in status.values}
                if 'vision_cache_hit_rate' in values:
                    return float(values['vision_cache_hit_rate'])
        return float('nan')

    assert probe.spin_until(lambda: hit_rate() > 0, 5.0), hit_rate()
    reference = create_backend(BackendConfig(model=str(checkpoint), device='cpu', dtype='fp32',
                                             max_new_tokens=10))
    with reference:
        estimator = ProgressEstimator(reference, 'wipe the table')
        for msg in windows()[:2]:
            stamps = [s.sec * 10**9 + s.nanosec for s in msg.frame_stamps]
            local = estimator.estimate([Frame(sent[s], s) for s in stamps])
            assert msg.model_output == local.model_output


def test_onnxruntime_node_with_a_broken_export_publishes_the_reason(probe, start_monitor,
                                                                    tmp_path):
    (tmp_path / 'not-an-export').mkdir()
    monitor = start_monitor({'backend': 'onnxruntime', 'engine_dir': str(tmp_path / 'not-an-'
                                                                          'export'),
                             'task': 'wipe the table', 'status_period_s': 0.2})
    got = []
    probe.node.create_subscription(Progress, 'progress', got.append, 10)
    assert probe.spin_until(lambda: any(m.status == Progress.STATUS_ERROR for m in got),
                            30.0), monitor.log()
    message = next(m for m in got if m.status == Progress.STATUS_ERROR).status_message
    assert 'manifest.json is missing' in message and 'procvlm-export onnx' in message
    assert monitor.alive()
