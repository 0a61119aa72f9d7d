#!/usr/bin/env python3
"""
Soak the live monitor: a 30 Hz 640x480 camera into the node running the demo model, for a
configurable time; prints the node's RSS slope, inference rate and capture-to-publish latency.

    .venv/bin/python scripts/soak.py --minutes 30 --json out/soak.json

The camera plays a synthetic episode (upscaled to VGA) in a loop with stamps = now; the monitor
runs as users run it (its own process, ``--ros-args --params-file``). Not a CI test: run it by
hand when the input path or the model loop changes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


def camera(args: argparse.Namespace) -> int:
    """The camera process: a synthetic episode upscaled to 640x480 at 30 Hz, looped."""
    import array

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from procvlm_ros.synth.episode import generate_episode

    episode = generate_episode(seed=args.seed, index=0, kind='success')
    frames = [array.array('B', np.repeat(np.repeat(f, 4, axis=0), 4, axis=1).tobytes())
              for f in episode.frames()]
    h, w = episode.height * 4, episode.width * 4
    rclpy.init()
    node = rclpy.create_node('soak_camera')
    pub = node.create_publisher(Image, 'image', QoSProfile(
        depth=2, reliability=ReliabilityPolicy.RELIABLE))
    # The episode's own frame rate sets how fast the scene moves; the camera repeats frames
    # to publish at 30 Hz, as a real camera would film a slower process.
    per_frame = max(1, round(30.0 / episode.fps))
    count = [0]

    def tick() -> None:
        msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, is_bigendian=0)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = 'camera'
        msg.data = frames[(count[0] // per_frame) % len(frames)]
        pub.publish(msg)
        count[0] += 1

    node.create_timer(1.0 / 30.0, tick)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    while rclpy.ok() and not stop[0]:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({'published': count[0]}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def soak(args: argparse.Namespace) -> int:
    from procvlm_msgs.msg import Progress
    import rclpy
    from rclpy.node import Node

    from procvlm_ros import demo_model

    env = dict(os.environ, ROS_DOMAIN_ID=str(args.domain),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / 'params.yaml'
        params.write_text(json.dumps({'/**': {'ros__parameters': {
            'backend': 'transformers', 'model': str(demo_model.CHECKPOINT_DIR),
            'device': 'cpu', 'dtype': 'fp32', 'task': _episode_task(args.seed),
            'sample_period_s': demo_model.SAMPLE_PERIOD_S, 'stale_after_s': 10.0,
            'max_new_tokens': 128}}}))
        node_log = Path(tmp) / 'monitor.log'
        monitor = subprocess.Popen(
            [sys.executable, '-m', 'procvlm_ros.ros.monitor_node', '--ros-args',
             '--params-file', str(params)], env=env, stdout=node_log.open('w'),
            stderr=subprocess.STDOUT, cwd=ROOT / 'procvlm_ros')
        cam = subprocess.Popen([sys.executable, __file__, '--role', 'camera', '--seed',
                                str(args.seed)], env=env, stdout=subprocess.PIPE, text=True)
        rclpy.init()
        probe = Node('soak_probe')
        latencies: list[float] = []
        windows: list[float] = []
        statuses: dict[int, int] = {}

        def on_progress(msg: Progress) -> None:
            statuses[msg.status] = statuses.get(msg.status, 0) + 1
            if msg.status in (Progress.STATUS_OK, Progress.STATUS_CARRIED_FORWARD):
                latencies.append(msg.capture_to_publish_s)
                windows.append(time.monotonic())

        probe.create_subscription(Progress, 'progress', on_progress, 50)
        start = time.monotonic()
        end = start + args.minutes * 60.0
        samples: list[tuple[float, float]] = []
        next_sample = start
        try:
            while time.monotonic() < end and monitor.poll() is None:
                rclpy.spin_once(probe, timeout_sec=0.2)
                if time.monotonic() >= next_sample:
                    samples.append((time.monotonic() - start, rss_mb(monitor.pid)))
                    next_sample += args.sample_s
                    if len(samples) % 6 == 0:
                        print(f'[soak] {samples[-1][0] / 60:5.1f} min  rss {samples[-1][1]:.1f} MB'
                              f'  windows {len(windows)}', flush=True)
        finally:
            cam.send_signal(signal.SIGTERM)
            published = json.loads((cam.communicate(timeout=30)[0] or '{}').strip()
                                   .splitlines()[-1] or '{}').get('published')
            alive = monitor.poll() is None
            monitor.send_signal(signal.SIGINT)
            code = monitor.wait(timeout=60)
            probe.destroy_node()
            rclpy.try_shutdown()
        report = summarise(samples, windows, latencies, statuses, args, published, alive, code)
        print(json.dumps(report, indent=1))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))
        if not alive:
            print(node_log.read_text()[-3000:], file=sys.stderr)
        return 0 if alive and code == 0 else 1


def _episode_task(seed: int) -> str:
    from procvlm_ros.synth.episode import generate_episode

    return generate_episode(seed=seed, index=0, kind='success').task.sentence


def summarise(samples, windows, latencies, statuses, args, published, alive, code) -> dict:
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    warm = t >= min(300.0, t.max() / 3) if t.size else t
    slope = float(np.polyfit(t[warm] / 3600.0, rss[warm], 1)[0]) if warm.sum() > 2 else None
    lat = np.array(latencies)
    span = (windows[-1] - windows[0]) if len(windows) > 1 else 0.0
    return {
        'minutes': args.minutes, 'frames_published': published, 'node_alive_at_end': alive,
        'node_exit_code': code, 'windows': len(windows),
        'inference_rate_hz': round((len(windows) - 1) / span, 3) if span else None,
        'capture_to_publish_p50_s': round(float(np.percentile(lat, 50)), 3) if lat.size else None,
        'capture_to_publish_p95_s': round(float(np.percentile(lat, 95)), 3) if lat.size else None,
        'rss_start_mb': round(float(rss[0]), 1) if rss.size else None,
        'rss_end_mb': round(float(rss[-1]), 1) if rss.size else None,
        'rss_max_mb': round(float(rss.max()), 1) if rss.size else None,
        'rss_slope_mb_per_hour_after_warmup': round(slope, 2) if slope is not None else None,
        'statuses': {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--role', choices=('soak', 'camera'), default='soak')
    parser.add_argument('--minutes', type=float, default=30.0)
    parser.add_argument('--sample-s', type=float, default=10.0, help='RSS sampling period')
    parser.add_argument('--seed', type=int, default=3)
    parser.add_argument('--domain', type=int, default=77)
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args()
    return camera(args) if args.role == 'camera' else soak(args)


if __name__ == '__main__':
    sys.exit(main())
