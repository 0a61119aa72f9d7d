"""The DDS content filter on the input: frames the window will not keep are never delivered."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticArray
from procvlm_msgs.msg import Progress
import pytest
from sensor_msgs.msg import Image

try:
    from rclpy.subscription import ContentFilterOptions  # noqa: F401 - Jazzy and later
except ImportError:
    pytest.skip('this rclpy has no content filters (Humble)', allow_module_level=True)

ANSWER = 'Therefore, the estimated progress is <progress>40%</progress>.'
PARAMS = {'backend': 'scripted', 'scripted_outputs': [ANSWER], 'task': 'wipe the table',
          'window_size': 4, 'sample_period_s': 1.0, 'stale_after_s': 5.0,
          'status_period_s': 0.5, 'diagnostics_period_s': 0.5, 'max_stamp_age_s': 0.0}


class Seen:
    def __init__(self, probe):
        self.progress: list[Progress] = []
        self.values: dict[str, str] = {}
        probe.node.create_subscription(Progress, 'progress', self.progress.append, 100)
        probe.node.create_subscription(DiagnosticArray, '/diagnostics', self._diag, 10)

    def _diag(self, msg):
        for status in msg.status:
            self.values.update({kv.key: kv.value for kv in status.values})

    def received(self):
        return int(self.values.get('frames_received', '0'))


def _play(probe, pub, helpers, start_s, seconds, rate_hz=30.0):
    frames = helpers.frames(3)
    n = int(seconds * rate_hz)
    for i in range(n):
        pub.publish(helpers.image_msg(frames[i % 3], int((start_s + i / rate_hz) * 1e9)))
        probe.spin_for(1.0 / rate_hz)
    return n


@pytest.mark.parametrize('filtered', [True, False])
def test_frames_not_due_are_not_delivered(probe, start_monitor, helpers, filtered):
    monitor = start_monitor(dict(PARAMS, input_filter=filtered))
    seen = Seen(probe)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    sent = _play(probe, pub, helpers, 100.0, 4.0)
    probe.spin_for(1.5)
    windows = {tuple((s.sec, s.nanosec) for s in m.frame_stamps) for m in seen.progress
               if m.status == Progress.STATUS_OK}
    # One kept frame per second of stamp time either way: 4 or 5 distinct windows.
    assert 4 <= len(windows) <= 6, (windows, monitor.log())
    if filtered:
        assert 'filtered by DDS' in monitor.log()
        assert seen.received() <= 0.25 * sent, (seen.received(), sent)
    else:
        assert seen.received() >= 0.9 * sent, (seen.received(), sent)
    assert monitor.stop() == 0


def test_a_time_jump_back_still_reaches_the_door(probe, start_monitor, helpers):
    monitor = start_monitor(PARAMS)
    seen = Seen(probe)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    _play(probe, pub, helpers, 500.0, 2.5)
    _play(probe, pub, helpers, 3.0, 2.5)  # the bag looped
    assert probe.spin_until(lambda: any(m.episode == 1 and m.status == Progress.STATUS_OK
                                        for m in seen.progress), 10.0), monitor.log()
    assert 'time jumped back' in monitor.log()
    assert monitor.stop() == 0
