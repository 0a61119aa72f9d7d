#!/usr/bin/env python3
"""
Live demo: a synthetic robot episode -> the monitor node -> progress, interventions, done.

Three processes talk over real ROS 2 (Fast DDS on loopback): ``synthetic_camera`` playing a
generated table-top episode that stalls half-way and then finishes (it also publishes the true
progress), the monitor node with the demo model, and this script, which prints what a
supervisor sees, records ``progress/image`` into an annotated video and plots estimate against
ground truth.

The default model is the project's demo model (a tiny Qwen3-VL trained on the synthetic task,
see docs/demo_model.md), NOT ProcVLM-2B. ``--model DIR`` runs any checkpoint instead.
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
REASONS = {0: 'stalled', 1: 'regressed', 2: 'stale_input', 3: 'model_error'}
DEMO_MODEL = Path(__file__).resolve().parents[1] / 'procvlm_ros/procvlm_ros/demo_model/checkpoint'


def default_model(out: Path) -> tuple[str, str]:
    if (DEMO_MODEL / 'config.json').exists():
        return str(DEMO_MODEL), 'demo model trained on the synthetic task (docs/demo_model.md)'
    tiny = out / 'tiny-qwen3vl-random'
    if not (tiny / 'config.json').exists():
        from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

        build_tiny_checkpoint(tiny, seed=0)
    return str(tiny), 'tiny RANDOM Qwen3-VL (no demo checkpoint found): answers carry no meaning'


def spawn(module: str, params: dict, out: Path, name: str, env: dict) -> subprocess.Popen:
    params_file = out / f'{name}.yaml'
    params_file.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    log = (out / f'{name}.log').open('w')
    return subprocess.Popen([sys.executable, '-m', module, '--ros-args', '--params-file',
                             str(params_file)], env=env, stdout=log, stderr=subprocess.STDOUT)


class Listener:
    """What a supervisor sees: progress, interventions, done, ground truth, annotated images."""

    def __init__(self, node, t0: float) -> None:
        from procvlm_msgs.msg import Intervention, Progress
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float32

        self.t0 = t0
        self.rows: list[dict] = []
        self.events: list[dict] = []
        self.images: list = []
        self.truth = math.nan
        self.done_at: float | None = None
        node.create_subscription(Progress, 'progress', self.on_progress, 50)
        node.create_subscription(Intervention, 'intervention', self.on_intervention, 50)
        node.create_subscription(Float32, 'ground_truth', self.on_truth, 50)
        node.create_subscription(Image, 'progress/image', self.on_image, 5)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def on_truth(self, msg) -> None:
        self.truth = float(msg.data)

    def on_image(self, msg) -> None:
        import numpy as np

        if len(self.images) < 2000:  # bounded: about 16 min at 2 Hz
            self.images.append(np.frombuffer(msg.data, np.uint8).reshape(
                msg.height, msg.width, 3).copy())

    def on_progress(self, m) -> None:
        if m.status not in (0, 1):
            if m.status in (3, 5):
                print(f'[{self.now():6.1f}s] {STATUS[m.status]}: {m.status_message}', flush=True)
            return
        row = {'t': self.now(), 'status': STATUS[m.status],
               'value': None if math.isnan(m.value) else round(m.value, 4),
               'truth': None if math.isnan(self.truth) else round(self.truth, 4),
               'done': m.done, 'stalled': m.stalled, 'stalled_for_s': round(m.stalled_for_s, 1),
               'next_action': m.remaining_actions[0] if m.remaining_actions else '',
               'inference_s': round(m.inference_time_s, 3)}
        self.rows.append(row)
        if m.done and self.done_at is None:
            self.done_at = row['t']
        est = '  n/a ' if row['value'] is None else f'{100 * row["value"]:5.1f}%'
        gt = '  n/a ' if row['truth'] is None else f'{100 * row["truth"]:5.1f}%'
        flags = ('DONE ' if m.done else '') + (f'STALLED {m.stalled_for_s:.0f}s '
                                               if m.stalled else '')
        print(f'[{row["t"]:6.1f}s] estimate {est}  truth {gt}  {flags:<14} '
              f'{row["inference_s"]:.2f}s  next: {row["next_action"][:48]}', flush=True)

    def on_intervention(self, m) -> None:
        event = {'t': self.now(), 'reason': REASONS.get(m.reason, m.reason), 'active': m.active,
                 'message': m.message}
        self.events.append(event)
        verb = '>>> INTERVENTION REQUESTED' if m.active else '<<< intervention cleared'
        print(f'[{event["t"]:6.1f}s] {verb} ({event["reason"]}): {m.message}', flush=True)


def wait_until_loaded(node, seconds: float) -> bool:
    """The monitor publishes WAITING_FOR_FRAMES once its model is loaded."""
    from procvlm_msgs.msg import Progress
    import rclpy

    seen: list = []
    sub = node.create_subscription(Progress, 'progress', seen.append, 10)
    end = time.monotonic() + seconds
    while time.monotonic() < end and not any(m.status in (2, 5) for m in seen):
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_subscription(sub)
    errors = [m.status_message for m in seen if m.status == 5]
    if errors:
        print(f'monitor error: {errors[-1]}', flush=True)
    return any(m.status == 2 for m in seen)


def plot(rows: list[dict], events: list[dict], done_at: float | None, png: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.8))
    t = [r['t'] for r in rows]
    ax.plot(t, [100 * r['truth'] if r['truth'] is not None else math.nan for r in rows],
            color='gray', lw=2, label='ground truth')
    ax.plot(t, [100 * r['value'] if r['value'] is not None else math.nan for r in rows],
            'o-', color='tab:green', ms=3, label='estimate (monitor)')
    for r in rows:
        if r['stalled']:
            ax.axvspan(r['t'] - 0.25, r['t'] + 0.25, color='tab:red', alpha=0.15, lw=0)
    for e in events:
        ax.axvline(e['t'], color='tab:red' if e['active'] else 'tab:blue', ls='--', lw=1)
        ax.text(e['t'], 102, ('! ' if e['active'] else 'ok ') + e['reason'], fontsize=7,
                rotation=90, va='bottom')
    if done_at is not None:
        ax.axvline(done_at, color='black', lw=1.5)
        ax.text(done_at, 50, ' done', fontsize=9)
    ax.set(xlabel='time since camera start [s]', ylabel='progress [%]', ylim=(-5, 120))
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    ap.add_argument('--out', default='out/demo')
    ap.add_argument('--model', default=None, help='checkpoint directory (default: demo model)')
    ap.add_argument('--kind', default='stall', choices=['success', 'fail', 'stall', 'regress'])
    ap.add_argument('--seed', type=int, default=2026)
    ap.add_argument('--index', type=int, default=0)
    ap.add_argument('--max-seconds', type=float, default=240.0)
    ap.add_argument('--adapter', default='',
                    help='LoRA adapter on top of the model, e.g. from make adapt-demo '
                         '(out/adapt-demo/adapter_one_success); the episode then comes from '
                         'the held-out drawer family unless --task-kind says otherwise')
    ap.add_argument('--task-kind', default='',
                    help='synthetic task family (stack, push, bin, drawer); default: random, '
                         'drawer with --adapter')
    args = ap.parse_args()
    task_kind = args.task_kind or ('drawer' if args.adapter else '')
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    from procvlm_ros import demo_model
    from procvlm_ros.synth.episode import DEFAULT_FPS, generate_episode

    episode = generate_episode(args.seed, args.index, args.kind, task_kind or None)
    model, label = (args.model, 'checkpoint given with --model') if args.model else (
        default_model(out))
    print(f'Model: {label}\nEpisode: {args.kind} "{episode.task.sentence}", '
          f'{episode.num_frames / DEFAULT_FPS:.0f} s at {DEFAULT_FPS:g} fps', flush=True)
    env = dict(os.environ, ROS_DOMAIN_ID=os.environ.get('ROS_DOMAIN_ID', '37'),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1',
               HF_HUB_OFFLINE='1')
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')})
    import rclpy

    rclpy.init()
    node = rclpy.create_node('demo_supervisor')
    procs = [spawn('procvlm_ros.ros.monitor_node', {
        'model': model, 'adapter': str(Path(args.adapter).resolve()) if args.adapter else '',
        'task': episode.task.sentence, 'backend': 'transformers',
        'device': 'cpu', 'dtype': 'fp32', 'window_size': 8,
        'sample_period_s': 1.0 / DEFAULT_FPS * 0.9, 'max_new_tokens': 96,
        # The demo model's supervision settings (chosen on validation episodes).
        'stall_window_s': demo_model.STALL_WINDOW_S,
        'stall_min_delta': demo_model.STALL_MIN_DELTA,
        'done_threshold': demo_model.DONE_THRESHOLD, 'done_consecutive': 2, 'annotated_image_rate_hz': 2.0, 'stale_after_s': 10.0},
        out, 'monitor', env)]
    try:
        print('Loading the model in the monitor ...', flush=True)
        if not wait_until_loaded(node, 120.0):
            print(f'monitor did not get ready; see {out}/monitor.log', flush=True)
            return 1
        procs.append(spawn('procvlm_ros.ros.synthetic_camera', {
            'kind': args.kind, 'seed': args.seed, 'index': args.index, 'fps': DEFAULT_FPS,
            'task_kind': task_kind,
            'publish_ground_truth': True, 'start_delay_s': 2.0}, out, 'camera', env))
        listener = Listener(node, time.monotonic())
        end = time.monotonic() + args.max_seconds
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.1)
            if listener.done_at is not None and listener.now() > listener.done_at + 3.0:
                break
            if listener.now() > episode.num_frames / DEFAULT_FPS + 20.0:
                break
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    node.destroy_node()
    rclpy.try_shutdown()
    return report(listener, out)


def report(listener: Listener, out: Path) -> int:
    rows, events = listener.rows, listener.events
    (out / 'progress_log.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    plot(rows, events, listener.done_at, out / 'progress.png')
    if listener.images:
        import numpy as np
        from PIL import Image

        from procvlm_ros.media.video import write_video

        h, w = listener.images[0].shape[:2]
        scale = max(1, 640 // w)  # small synthetic frames are hard to read at native size
        size = (w * scale - (w * scale) % 2, h * scale - (h * scale) % 2)
        write_video(out / 'annotated.mp4', (np.asarray(Image.fromarray(img).resize(
            size, Image.Resampling.LANCZOS)) for img in listener.images), fps=2.0)
    pairs = [(r['value'], r['truth']) for r in rows
             if r['value'] is not None and r['truth'] is not None]
    mae = sum(abs(v - t) for v, t in pairs) / len(pairs) if pairs else math.nan
    raised = [e for e in events if e['active']]
    print(f'\n{len(rows)} windows evaluated live; mean |estimate - truth| {100 * mae:.1f} '
          f'points; interventions: {[(e["reason"], e["t"]) for e in raised] or "none"}; '
          f'done: {f"at {listener.done_at:.1f} s" if listener.done_at else "no"}')
    print(f'Plot {out / "progress.png"}, annotated video {out / "annotated.mp4"}, '
          f'log {out / "progress_log.jsonl"}, node logs {out}/monitor.log, camera.log')
    summary = {'windows': len(rows), 'mae': mae, 'done_at_s': listener.done_at,
               'interventions': raised, 'annotated_frames': len(listener.images)}
    (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    return 0 if rows else 1


if __name__ == '__main__':
    sys.exit(main())
