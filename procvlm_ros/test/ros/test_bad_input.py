"""
Hostile input against the node in its own process: many malformed kinds, hundreds of times each,
between valid frames. The node must not crash, must reject each one at the door (counted in
/diagnostics, said in the status), keep estimating from the valid frames, and keep RSS flat.
"""

from __future__ import annotations

from pathlib import Path
import struct
import time
import zlib

from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
from procvlm_msgs.msg import Progress
import pytest
from sensor_msgs.msg import CompressedImage, Image

from procvlm_ros.core.image import rgb_to_jpeg, rgb_to_png

ANSWER = ('The following actions are required: \n1. wipe\n'
          'Therefore, the estimated progress is <progress>40%</progress>.')
PARAMS = {'backend': 'scripted', 'scripted_outputs': [ANSWER], 'task': 'wipe the table',
          'window_size': 2, 'sample_period_s': 0.0, 'stale_after_s': 30.0,
          'status_period_s': 0.2, 'qos_reliability': 'reliable', 'qos_depth': 50,
          'diagnostics_period_s': 0.5, 'max_image_pixels': 4096 * 3072,
          # The default arrival-age check is part of what is tested here.
          'max_stamp_age_s': 10.0}
ROUNDS = 100  # each bad kind is sent this many times


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    raise AssertionError('no VmRSS')


def raw_image(stamp_ns, *, h=48, w=64, encoding='rgb8', step=None, data=None):
    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 10**9)
    msg.header.frame_id = 'camera'
    msg.height, msg.width, msg.encoding = h, w, encoding
    msg.step = step if step is not None else w * 3
    if data is None:
        data = np.full(msg.step * h, 90, np.uint8).tobytes()
    msg.data = data
    return msg


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack('>I', len(payload)) + kind + payload
            + struct.pack('>I', zlib.crc32(kind + payload) & 0xFFFFFFFF))


def png(width: int, height: int, *extra: bytes, idat: bytes | None = None) -> bytes:
    ihdr = png_chunk(b'IHDR', struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0))
    if idat is None:
        idat = png_chunk(b'IDAT', zlib.compress(b'\x00' + b'\x00' * 3 * width))
    return b'\x89PNG\r\n\x1a\n' + ihdr + b''.join(extra) + idat + png_chunk(b'IEND', b'')


def compressed_kinds() -> dict[str, bytes]:
    good_jpeg = rgb_to_jpeg(np.full((48, 64, 3), 120, np.uint8))
    tiff_overflow = (b'II*\x00' + struct.pack('<I', 8) + struct.pack('<H', 1)
                     + struct.pack('<HHII', 273, 4, 1, 0xFFFFFFF0) + b'\x00' * 4)
    return {
        # zTXt chunk that inflates far past Pillow's text limit (4 KB on the wire).
        'png_ztxt_bomb': png(4, 4, png_chunk(b'zTXt', b'k\x00\x00' + zlib.compress(
            b'A' * 8_000_000, 9))),
        'png_truncated_ihdr': b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + b'IHDR' + b'\x00\x01',
        'png_broken_chunk': png(4, 4, b'\x00\x00\x00\x05zzzz\xff'),
        'tiff_overflowing_offset': tiff_overflow,
        'png_declares_8k': png(7680, 4320),
        'jpeg_truncated': good_jpeg[: len(good_jpeg) // 3],
        'random_bytes': np.random.default_rng(0).integers(0, 256, 2048, np.uint8).tobytes(),
        'empty': b'',
        'gif': b'GIF89a' + b'\x01\x00\x01\x00' + b'\x00' * 20,
        'png_4000x3': rgb_to_png(np.zeros((3, 4000, 3), np.uint8)),
    }


class Watch:
    def __init__(self, probe):
        self.progress: list[Progress] = []
        self.rejected = 0
        self.received = 0
        probe.node.create_subscription(Progress, 'progress', self.progress.append, 100)
        probe.node.create_subscription(DiagnosticArray, '/diagnostics', self._diag, 10)

    def _diag(self, msg):
        for status in msg.status:
            for kv in status.values:
                if kv.key == 'frames_rejected':
                    self.rejected = int(kv.value)
                if kv.key == 'frames_received':
                    self.received = int(kv.value)

    def ok(self):
        return [m for m in self.progress if m.status == Progress.STATUS_OK]


def _storm(probe, monitor, watch, publish, bad_kinds, make_valid, now_ns):
    pid = monitor.proc.pid
    sent_bad = 0
    rss_after_warmup = None
    for rnd in range(ROUNDS):
        publish(make_valid(now_ns()))
        probe.spin_for(0.01)
        for make in bad_kinds.values():
            publish(make(now_ns()))
            sent_bad += 1
            if sent_bad % 8 == 0:
                probe.spin_for(0.005)  # pace: the node's queue is 50 deep
        if rnd == 10:
            probe.spin_for(1.0)
            rss_after_warmup = rss_mb(pid)
        assert monitor.alive(), monitor.log()[-3000:]
    publish(make_valid(now_ns()))
    assert probe.spin_until(lambda: watch.rejected >= 0.9 * sent_bad, 30.0), (
        watch.rejected, sent_bad, monitor.log()[-3000:])
    return sent_bad, rss_after_warmup, rss_mb(pid)


def test_raw_input_storm_is_rejected_at_the_door(probe, start_monitor):
    monitor = start_monitor(PARAMS)
    watch = Watch(probe)
    pub = probe.node.create_publisher(Image, 'image', 100)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    clock = probe.node.get_clock()

    def now_ns():
        return clock.now().nanoseconds

    def serialized(payload):
        def make(stamp):
            return payload  # rclpy publishes bytes as an already serialized message
        return make

    from rclpy.serialization import serialize_message
    good_bytes = serialize_message(raw_image(now_ns()))
    s = 10**9
    bad = {
        'unknown_encoding': lambda t: raw_image(t, encoding='yuv_weird'),
        'step_too_small': lambda t: raw_image(t, step=10),
        'data_too_short': lambda t: raw_image(t, data=b'\x01' * 100),
        'wide_4000x3': lambda t: raw_image(t, h=3, w=4000),
        'tall_3x4000': lambda t: raw_image(t, h=4000, w=3),
        'one_pixel': lambda t: raw_image(t, h=1, w=1),
        'empty_image': lambda t: raw_image(t, h=0, w=0, data=b''),
        'declares_huge': lambda t: raw_image(t, h=60000, w=60000, step=180000, data=b'\0' * 64),
        'odd_step_mono16': lambda t: raw_image(t, encoding='mono16', step=129, w=64, h=48),
        'zero_stamp': lambda t: raw_image(0),
        'negative_stamp': lambda t: raw_image(-5 * s),
        'future_stamp': lambda t: raw_image(t + 3600 * s),
        'stale_stamp': lambda t: raw_image(t - 60 * s),
        'out_of_order': lambda t: raw_image(t - s // 2),
        'truncated_cdr': serialized(good_bytes[: len(good_bytes) // 2]),
        'garbage_cdr': serialized(b'\x00\x01\x00\x00' + b'\xff' * 64),
    }
    assert len(bad) >= 12

    sent_bad, rss_warm, rss_end = _storm(probe, monitor, watch, pub.publish, bad,
                                         lambda t: raw_image(t), now_ns)
    assert monitor.alive(), monitor.log()[-3000:]
    # Estimates kept coming from the valid frames, and the rejections were said in statuses.
    assert len(watch.ok()) >= 20, monitor.log()[-3000:]
    assert any('rejected frame' in m.status_message for m in watch.progress)
    assert not any('inference' in m.status_message.lower() for m in watch.progress
                   if m.status == Progress.STATUS_ERROR)
    assert rss_end - rss_warm < 40.0, (rss_warm, rss_end)
    assert monitor.stop() == 0, monitor.log()[-3000:]


@pytest.mark.parametrize('kind', ['png_ztxt_bomb', 'png_truncated_ihdr', 'png_broken_chunk',
                                  'tiff_overflowing_offset', 'png_declares_8k'])
def test_each_issue_payload_alone_does_not_kill_the_node(probe, start_monitor, kind):
    monitor = start_monitor(dict(PARAMS, input_type='compressed'))
    pub = probe.node.create_publisher(CompressedImage, 'image/compressed', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    msg = CompressedImage(format='png', data=compressed_kinds()[kind])
    msg.header.stamp = probe.node.get_clock().now().to_msg()
    pub.publish(msg)
    probe.spin_for(1.5)
    assert monitor.alive(), monitor.log()[-3000:]
    assert 'Traceback' not in monitor.log()
    assert monitor.stop() == 0


def test_compressed_input_storm_is_rejected_at_the_door(probe, start_monitor):
    monitor = start_monitor(dict(PARAMS, input_type='compressed'))
    watch = Watch(probe)
    pub = probe.node.create_publisher(CompressedImage, 'image/compressed', 100)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    clock = probe.node.get_clock()
    good = rgb_to_jpeg(np.full((48, 64, 3), 120, np.uint8))

    def compressed(payload, fmt='jpeg'):
        def make(stamp):
            msg = CompressedImage(format=fmt, data=payload)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp), 10**9)
            return msg
        return make

    bad = {name: compressed(payload, 'png') for name, payload in compressed_kinds().items()}
    bad['compressed_depth'] = compressed(good, '16UC1; compressedDepth')
    sent_bad, rss_warm, rss_end = _storm(probe, monitor, watch, pub.publish, bad,
                                         compressed(good),
                                         lambda: clock.now().nanoseconds)
    assert monitor.alive(), monitor.log()[-3000:]
    assert len(watch.ok()) >= 20, monitor.log()[-3000:]
    assert rss_end - rss_warm < 40.0, (rss_warm, rss_end)
    assert 'Traceback' not in monitor.log()
    assert monitor.stop() == 0, monitor.log()[-3000:]


def test_a_time_jump_back_starts_a_new_episode(probe, start_monitor):
    monitor = start_monitor(dict(PARAMS, max_stamp_age_s=0.0))
    watch = Watch(probe)
    pub = probe.node.create_publisher(Image, 'image', 10)
    assert probe.spin_until(lambda: pub.get_subscription_count() > 0, 20.0)
    for t in (500.0, 500.5, 501.0):
        pub.publish(raw_image(int(t * 1e9)))
        probe.spin_for(0.2)
    assert probe.spin_until(lambda: len(watch.ok()) >= 1, 10.0), monitor.log()
    for t in (3.0, 3.5, 4.0):  # the bag looped
        pub.publish(raw_image(int(t * 1e9)))
        probe.spin_for(0.2)
    assert probe.spin_until(lambda: any(m.episode == 1 for m in watch.ok()), 10.0), monitor.log()
    after = [m for m in watch.ok() if m.episode == 1]
    # Windows of the new episode hold only frames after the jump, in time order.
    for m in after:
        stamps = [s.sec * 10**9 + s.nanosec for s in m.frame_stamps]
        assert stamps == sorted(stamps) and max(stamps) < 10 * 10**9
    assert 'time jumped back' in monitor.log()
    time.sleep(0.1)
    assert monitor.stop() == 0
