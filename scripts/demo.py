#!/usr/bin/env python3
"""
Live demo: a camera stream -> the monitor node -> Progress printed live, plot and log written.

Three separate processes talk over real ROS 2 (Fast DDS on loopback): the video camera node
playing a rendered clip, the monitor node, and this script listening to ``progress``.

Without ``--model`` the monitor runs a tiny RANDOMLY INITIALISED Qwen3-VL of the real
architecture: it proves the live pipeline (frames, windows, prompt, generation, parsing, status),
but its answers carry no real progress. Pass a ProcVLM checkpoint with ``--model DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import yaml

STATUS = {0: 'OK', 1: 'CARRIED_FORWARD', 2: 'WAITING_FOR_FRAMES', 3: 'STALE_INPUT',
          4: 'LOADING', 5: 'ERROR'}


def prepare(out: Path, model: str | None) -> tuple[Path, str]:
    from procvlm_ros.media.video import write_video
    from procvlm_ros.testing.demo_clip import stacking_frames

    clip = out / 'demo_clip.mp4'
    if not clip.exists():
        write_video(clip, stacking_frames(seconds=12.0, fps=10.0), fps=10.0)
    if model:
        return clip, model
    tiny = out / 'tiny-qwen3vl-random'
    if not (tiny / 'config.json').exists():
        from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

        build_tiny_checkpoint(tiny, seed=0)
    return clip, str(tiny)


def spawn(module: str, params: dict, out: Path, name: str, env: dict) -> subprocess.Popen:
    params_file = out / f'{name}.yaml'
    params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    log = (out / f'{name}.log').open('w')
    return subprocess.Popen([sys.executable, '-m', module, '--ros-args', '--params-file',
                             str(params_file)], env=env, stdout=log, stderr=subprocess.STDOUT)


def listen(seconds: float, out: Path) -> list[dict]:
    import rclpy
    from procvlm_msgs.msg import Progress

    rclpy.init()
    node = rclpy.create_node('demo_listener')
    rows: list[dict] = []
    t0 = time.monotonic()

    def on_progress(m: Progress) -> None:
        row = {'t': round(time.monotonic() - t0, 2), 'status': STATUS.get(m.status, m.status),
               'episode': m.episode, 'value': None if math.isnan(m.value) else m.value,
               'inference_s': round(m.inference_time_s, 2), 'tokens': m.generated_tokens,
               'frames': len(m.frame_stamps), 'message': m.status_message,
               'answer': m.model_output}
        rows.append(row)
        value = '  n/a ' if row['value'] is None else f'{100 * row["value"]:5.1f}%'
        detail = m.status_message or m.reasoning.replace('\n', ' ')
        print(f'[{row["t"]:6.1f}s] {row["status"]:<18} progress {value}  '
              f'window {row["frames"]} frames  {row["inference_s"]:.2f}s '
              f'{row["tokens"]} tok  {detail[:70]}', flush=True)

    node.create_subscription(Progress, 'progress', on_progress, 50)
    try:
        while time.monotonic() - t0 < seconds:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    (out / 'progress_log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return rows


def plot(rows: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    answered = [r for r in rows if r['status'] in ('OK', 'CARRIED_FORWARD')]
    ax.plot([r['t'] for r in answered], [100 * r['value'] if r['value'] is not None else math.nan
                                         for r in answered], 'o-', label='progress')
    for r in rows:
        if r['status'] in ('ERROR', 'STALE_INPUT', 'CARRIED_FORWARD'):
            ax.axvline(r['t'], color={'ERROR': 'red', 'STALE_INPUT': 'orange'}.get(
                r['status'], 'lightgray'), lw=0.8)
    ax.set(xlabel='time since start [s]', ylabel='progress [%]', ylim=(-5, 105),
           title=f'live monitor: {len(answered)} windows evaluated')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    ap.add_argument('--out', default='out/demo')
    ap.add_argument('--model', default=None, help='checkpoint dir or hub id (default: tiny random)')
    ap.add_argument('--task', default='stack the three blocks on the right')
    ap.add_argument('--seconds', type=float, default=45.0)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print('Preparing camera clip and model ...', flush=True)
    clip, model = prepare(out, args.model)
    if args.model is None:
        print('NOTE: tiny randomly initialised Qwen3-VL (real architecture, no training): the '
              'pipeline runs for real, its answers carry no real progress. '
              'Use --model for a ProcVLM checkpoint.', flush=True)
    env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get('ROS_DOMAIN_ID', '37'),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1',
               HF_HUB_OFFLINE=os.environ.get('HF_HUB_OFFLINE', '1'))
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    procs = [
        spawn('procvlm_ros.ros.video_camera', {'video_path': str(clip), 'loop': True},
              out, 'camera', env),
        spawn('procvlm_ros.ros.monitor_node', {
            'model': model, 'task': args.task, 'backend': 'transformers', 'device': 'cpu',
            'window_size': 8, 'sample_period_s': 1.0, 'max_new_tokens': 32,
            'publish_model_output': True, 'stale_after_s': 5.0}, out, 'monitor', env),
    ]
    try:
        rows = listen(args.seconds, out)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    plot(rows, out / 'progress.png')
    answered = sum(r['status'] in ('OK', 'CARRIED_FORWARD') for r in rows)
    print(f'\n{answered} windows evaluated live; log {out / "progress_log.jsonl"}, '
          f'plot {out / "progress.png"}, node logs {out}/monitor.log, camera.log')
    return 0 if answered else 1


if __name__ == '__main__':
    sys.exit(main())
