#!/usr/bin/env python3
"""
What a camera stream costs the monitor node, and which QoS/transport lets it through.

Runs, for each configuration, a camera publisher process (30 Hz, stamps = now) and one
subscriber process for a fixed time, and reports the subscriber process's CPU time (% of one
core, from /proc) and the share of published frames it received:

- ``monitor``: the real monitor node (``procvlm_ros.ros.monitor_node``) with the ``scripted``
  backend (node overhead only, no model), its DDS input filter on (default): frames not due
  (one per ``sample_period_s`` = 1 s is kept) are not even sent to it;
- ``monitor-nofilter``: the same node with ``input_filter: false`` (what Humble gets): every
  frame is delivered and all but one per second are skipped after reading the stamp;
- ``plain``: the baseline in the same run, a plain rclpy subscriber that deserializes every
  message into Python (what the node did before it subscribed to serialized messages).

Configurations cross reliable/best-effort QoS with Fast DDS's default transport and the
large-segment shared-memory profile shipped in ``procvlm_ros/config/fastdds_large_frames.xml``.

    .venv/bin/python bench/node_input_cost.py --seconds 20 --sizes 640x480,1280x720
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / 'procvlm_ros' / 'config' / 'fastdds_large_frames.xml'
CLK_TCK = os.sysconf('SC_CLK_TCK')


def cpu_seconds(pid: int) -> float:
    fields = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per OS thread name (the node names its inference thread procvlm_infer)."""
    out: dict[str, float] = {}
    for task in Path(f'/proc/{pid}/task').iterdir():
        try:
            stat = (task / 'stat').read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index('(') + 1:stat.rindex(')')]
        fields = stat.rsplit(')', 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
    return float('nan')


# ---------------------------------------------------------------------- child processes
def run_publisher(args: argparse.Namespace) -> None:
    import array

    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_camera')
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE if args.qos == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT)
    pub = node.create_publisher(Image, 'image', qos)
    w, h = (int(v) for v in args.size.split('x'))
    rng = np.random.default_rng(0)
    frames = [array.array('B', rng.integers(0, 255, (h, w, 3), np.uint8).tobytes())
              for _ in range(4)]
    count = [0]

    def tick() -> None:
        msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, is_bigendian=0)
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = 'camera'
        msg.data = frames[count[0] % 4]
        pub.publish(msg)
        count[0] += 1

    node.create_timer(1.0 / args.rate, tick)
    deadline = time.monotonic() + args.run_s
    while rclpy.ok() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps({'published': count[0]}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def run_plain(args: argparse.Namespace) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node('bench_plain')
    count = [0]

    def on_image(msg: Image) -> None:
        np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3).copy()
        count[0] += 1

    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE if args.qos == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT)
    node.create_subscription(Image, 'image', on_image, qos)
    deadline = time.monotonic() + args.run_s
    while rclpy.ok() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(json.dumps({'received': count[0]}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


# ---------------------------------------------------------------------- one measurement
def _python() -> str:
    return sys.executable


def measure(kind: str, size: str, qos: str, shm: bool, seconds: float, warmup: float,
            rate: float, workdir: Path, domain: int) -> dict[str, object]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    env.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)
    if shm:
        # FASTRTPS_ works on Humble/Jazzy and Kilted (with a deprecation warning there).
        env['FASTRTPS_DEFAULT_PROFILES_FILE'] = str(PROFILE)
    run_s = warmup + seconds + 3.0
    if kind.startswith('monitor'):
        params = workdir / f'params-{domain}.yaml'
        params.write_text(json.dumps({'/**': {'ros__parameters': {
            'backend': 'scripted', 'task': 'wipe the table', 'window_size': 8,
            'sample_period_s': 1.0, 'qos_reliability': qos,
            'scripted_outputs': ['1. wipe\n<progress>50%</progress>'],
            'diagnostics_period_s': 1.0, 'annotated_image_rate_hz': 0.0,
            'input_filter': kind == 'monitor'}}}))
        sub_cmd = [_python(), '-m', 'procvlm_ros.ros.monitor_node', '--ros-args',
                   '--params-file', str(params)]
    else:
        sub_cmd = [_python(), __file__, '--role', 'plain', '--qos', qos, '--run-s', str(run_s)]
    sub = subprocess.Popen(sub_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, cwd=ROOT / 'procvlm_ros')
    time.sleep(3.0)  # node start-up, before the camera starts
    pub = subprocess.Popen([_python(), __file__, '--role', 'publisher', '--qos', qos,
                            '--size', size, '--rate', str(rate), '--run-s',
                            str(warmup + seconds + 1.0)],
                           env=env, stdout=subprocess.PIPE, text=True)
    diag = DiagnosticsProbe(env) if kind.startswith('monitor') else None
    time.sleep(warmup)
    cpu0, t0 = cpu_seconds(sub.pid), time.monotonic()
    infer0 = thread_cpu_seconds(sub.pid).get('procvlm_infer', 0.0)
    frames0 = diag.frames(timeout=5.0) if diag else None
    time.sleep(seconds)
    cpu1, t1 = cpu_seconds(sub.pid), time.monotonic()
    infer1 = thread_cpu_seconds(sub.pid).get('procvlm_infer', 0.0)
    frames1 = diag.frames(timeout=5.0) if diag else None
    rss = rss_mb(sub.pid)
    published = json.loads(pub.communicate(timeout=60)[0].strip().splitlines()[-1])['published']
    if diag is not None:
        diag.close()
        sub.send_signal(2)
        log = sub.communicate(timeout=30)[0]
        received = (frames1 - frames0) if frames0 is not None and frames1 is not None else None
        expected = rate * (t1 - t0)
    else:
        log = sub.communicate(timeout=60)[0]
        received = json.loads(log.strip().splitlines()[-1])['received']
        expected = published
    cpu = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    # The inference thread prepares one window per sample period (JPEG round trip, resize) even
    # with the scripted backend; the rest of the process is what the camera stream costs.
    infer = 100.0 * (infer1 - infer0) / (t1 - t0)
    return {'subscriber': kind, 'size': size, 'qos': qos, 'transport': 'shm-8MB' if shm
            else 'default', 'cpu_percent_of_core': round(cpu, 2),
            'input_cpu_percent_of_core': round(cpu - infer, 2),
            'inference_thread_cpu_percent': round(infer, 2),
            'received': received, 'expected': round(expected),
            'received_share': round(received / expected, 3) if received is not None else None,
            'rss_mb': round(rss, 1), 'exit': sub.returncode,
            'log_tail': '' if sub.returncode in (0, None) else log[-500:]}


class DiagnosticsProbe:
    """Reads frames_received from the node's /diagnostics in a helper process."""

    def __init__(self, env: dict[str, str]) -> None:
        code = ('import rclpy, sys\n'
                'from diagnostic_msgs.msg import DiagnosticArray\n'
                'rclpy.init(); n = rclpy.create_node("bench_diag")\n'
                'def cb(m):\n'
                '    for s in m.status:\n'
                '        for kv in s.values:\n'
                '            if kv.key == "frames_received": print(kv.value, flush=True)\n'
                'n.create_subscription(DiagnosticArray, "/diagnostics", cb, 10)\n'
                'rclpy.spin(n)\n')
        self.proc = subprocess.Popen([_python(), '-c', code], env=env, stdout=subprocess.PIPE,
                                     text=True)
        self.latest: tuple[float, int] | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # one line per /diagnostics message, as it arrives
            self.latest = (time.monotonic(), int(line))

    def frames(self, timeout: float) -> int | None:
        """frames_received from the first /diagnostics message after this call."""
        asked = time.monotonic()
        deadline = asked + timeout
        while time.monotonic() < deadline:
            if self.latest is not None and self.latest[0] > asked:
                return self.latest[1]
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--role', choices=('bench', 'publisher', 'plain'), default='bench')
    parser.add_argument('--qos', default='reliable')
    parser.add_argument('--size', default='640x480')
    parser.add_argument('--rate', type=float, default=30.0)
    parser.add_argument('--run-s', type=float, default=20.0)
    parser.add_argument('--seconds', type=float, default=20.0, help='measured time per run')
    parser.add_argument('--warmup', type=float, default=5.0)
    parser.add_argument('--sizes', default='640x480,1280x720')
    parser.add_argument('--subscribers', default='plain,monitor-nofilter,monitor')
    parser.add_argument('--qos-list', default='reliable,best_effort')
    parser.add_argument('--transports', default='default,shm')
    parser.add_argument('--json', type=Path, default=None)
    args = parser.parse_args()
    if args.role == 'publisher':
        run_publisher(args)
        return 0
    if args.role == 'plain':
        run_plain(args)
        return 0
    rows = []
    domain = 60 + os.getpid() % 40
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(','):
            for transport in args.transports.split(','):
                for qos in args.qos_list.split(','):
                    for kind in args.subscribers.split(','):
                        row = measure(kind, size, qos, transport == 'shm', args.seconds,
                                      args.warmup, args.rate, Path(tmp), domain)
                        rows.append(row)
                        print(f"{size:>9} {row['transport']:>8} {qos:>11} {kind:>16}: "
                              f"cpu {row['cpu_percent_of_core']:6.2f} % of a core "
                              f"(input {row['input_cpu_percent_of_core']:5.2f} %), "
                              f"received {row['received']}/{row['expected']} "
                              f"({row['received_share']}), rss {row['rss_mb']} MB", flush=True)
                        if row['log_tail']:
                            print(row['log_tail'])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
