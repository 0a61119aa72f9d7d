"""``procvlm-eval``: score synthetic episodes with a model and write an accuracy report."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
import sys
from typing import Any

from procvlm_ros.core.config import BACKENDS
from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.evaluation.report import DONE_THRESHOLD

_LOG = logging.getLogger('procvlm_ros.evaluation')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='procvlm-eval',
        description='Score every episode of a procvlm-synth directory (every frame, official '
                    '8-frame windows) and write a JSON report with VOC, MAE, done F1, MCC, '
                    'negative-step rate, per-episode rows and plots.')
    p.add_argument('--episodes', required=True, help='directory written by procvlm-synth')
    p.add_argument('--model', default='', help='checkpoint directory (or hub id)')
    p.add_argument('--backend', default='transformers', choices=BACKENDS)
    p.add_argument('--report', required=True, help='JSON report to write')
    p.add_argument('--plots', default=None,
                   help='directory for PNG plots (default: <report stem>_plots next to it; '
                        '"none" to skip)')
    p.add_argument('--input', choices=('mp4', 'bag'), default='mp4',
                   help='score the episode video (default) or its rosbag2')
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='fp32')
    p.add_argument('--engine-dir', default='', help='exported model (onnxruntime/tensorrt)')
    p.add_argument('--adapter', default='',
                   help='LoRA adapter applied on top of --model (transformers backend)')
    p.add_argument('--max-new-tokens', type=int, default=256)
    p.add_argument('--max-episodes', type=int, default=None)
    p.add_argument('--done-threshold', type=float, default=DONE_THRESHOLD,
                   help='predicted progress (percent) at or above which a frame counts as done')
    p.add_argument('--records', action='store_true',
                   help='also write the per-frame JSONL records of every episode')
    p.add_argument('--stall-window-s', type=float, default=5.0,
                   help='stall_window_s of the supervisor replayed on the predictions')
    p.add_argument('--stall-min-delta', type=float, default=0.05,
                   help='stall_min_delta of the supervisor replayed on the predictions')
    return p


def _finite(value: Any) -> Any:
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from procvlm_ros.core.supervision import SupervisionConfig
    from procvlm_ros.evaluation.plots import plot_episode, plot_summary
    from procvlm_ros.evaluation.report import evaluate

    report_path = Path(args.report)
    plots = None if args.plots == 'none' else Path(
        args.plots or report_path.with_name(report_path.stem + '_plots'))
    records = report_path.with_name(report_path.stem + '_records') if args.records else None
    options: dict[str, Any] = {'device': args.device, 'dtype': args.dtype,
                               'max_new_tokens': args.max_new_tokens}
    if args.engine_dir:
        options['engine_dir'] = args.engine_dir
    if args.adapter:
        options['adapter'] = args.adapter
    try:
        report, results = evaluate(args.episodes, model=args.model, backend=args.backend,
                                   prefer=args.input, max_episodes=args.max_episodes,
                                   done_threshold=args.done_threshold, records_dir=records,
                                   backend_options=options,
                                   # The node's stall logic on the predictions.
                                   supervision=SupervisionConfig(
                                       stall_window_s=args.stall_window_s,
                                       stall_min_delta=args.stall_min_delta))
    except (ProcVlmError, FileNotFoundError, ValueError) as e:
        print(f'procvlm-eval: {e}', file=sys.stderr)
        return 1
    if plots is not None:
        for result in results:
            plot_episode(result, plots / f'{result.episode_id}.png',
                         done_threshold=args.done_threshold)
        plot_summary(results, report, plots / 'summary.png')
        report['plots'] = str(plots)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(_finite(report), indent=1), encoding='utf-8')
    print(f'{report["episodes"]} episodes, {report["windows"]} windows: '
          f'VOC (success) {report["voc_mean"]:.3f}  MAE {report["mae_mean"]:.3f}  '
          f'done F1 {report["done_f1"]:.3f}  MCC@95 {report["mcc95"]:.3f}  '
          f'negative steps {report["negative_step_rate_mean"]:.3f}  -> {report_path}')
    sup = report['supervision']
    if sup['stall_episodes']:
        n = sup['stall_episodes']
        delay = sup['stall_mean_delay_s']
        print(f'stall episodes ({n}): flagged within the {args.stall_window_s:g} s window '
              f'{round(sup["stall_in_window_rate"] * n)}/{n}, during the stall '
              f'{round(sup["stall_detected_rate"] * n)}/{n}, mean delay '
              f'{"-" if delay is None else f"{delay:.1f} s"}')
    if sup['steady_episodes']:
        n = sup['steady_episodes']
        print(f'steady episodes ({n}): without intervention '
              f'{round(sup["steady_no_intervention_rate"] * n)}/{n}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
