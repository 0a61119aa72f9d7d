"""
``procvlm-export``: ONNX export, parity check, TensorRT engine build and benchmark.

Exit codes: 0 success; 1 the export does not match its checkpoint (``check``, or ``onnx``'s
validation); 2 bad input (a family it cannot export, e.g. InternVL; broken folder, wrong
precision, no TensorRT...).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
import sys

from procvlm_ros.core.errors import ProcVlmError

EXIT_MISMATCH, EXIT_BAD_INPUT = 1, 2


def _onnx_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('onnx', help='export vision + decoder ONNX graphs and manifest.json')
    p.add_argument('--model', required=True,
                   help='Qwen3-VL or Qwen2.5-VL checkpoint directory or hub id')
    p.add_argument('--out', required=True, help='export folder (replaced if present)')
    p.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16'])
    p.add_argument('--max-frames', type=int, default=8, help='largest window (frames)')
    p.add_argument('--image-size', default='640x480',
                   help='largest camera frame WxH; sets the visual tokens per frame')
    p.add_argument('--max-context', type=int, default=0,
                   help='KV slots, prompt + generated (0: derived from frames and size)')
    p.add_argument('--prefill-chunk', type=int, default=512,
                   help='most prompt tokens per decoder call')
    p.add_argument('--max-verify-tokens', type=int, default=64,
                   help='most tokens of one draft-verifying decoder pass (TensorRT profile)')
    p.add_argument('--no-validate', action='store_true',
                   help='skip the torch vs ONNX Runtime check after exporting')


def _check_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('check', help='compare an export with its checkpoint (torch vs ORT)')
    p.add_argument('--onnx', required=True, help='procvlm-export onnx folder')
    p.add_argument('--model', required=True, help='the checkpoint it was exported from')
    p.add_argument('--frames', type=int, default=3)
    p.add_argument('--new-tokens', type=int, default=16)
    p.add_argument('--rtol', type=float, default=None,
                   help='relative tolerance (default 1e-4 for fp32, 2e-2 for fp16)')
    p.add_argument('--allow-greedy-mismatch', action='store_true',
                   help='report, but do not fail on, a differing greedy decode')
    p.add_argument('--json', default=None, help='also write the report as JSON')


def _trt_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('trt', help='build TensorRT engines on this machine (TensorRT 10)')
    p.add_argument('--onnx', required=True, help='procvlm-export onnx folder')
    p.add_argument('--out', required=True, help='engine folder (engine cache)')
    p.add_argument('--precision', default='fp16', choices=['fp16', 'int8', 'fp32'])
    p.add_argument('--workspace-gib', type=float, default=4.0)
    p.add_argument('--lm-head-split', type=int, default=0,
                   help='split the vocabulary projection into N MatMuls (small Jetsons)')
    group = p.add_mutually_exclusive_group()
    group.add_argument('--no-rebuild', action='store_true',
                       help='refuse (with the reasons) instead of rebuilding stale engines')
    group.add_argument('--force-rebuild', action='store_true')
    p.add_argument('--verbose', action='store_true', help='TensorRT verbose log')


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('bench', help='per-stage latency, tokens/s and memory per backend')
    p.add_argument('--model', required=True, help='checkpoint (transformers baseline)')
    p.add_argument('--onnx', default='', help='procvlm-export onnx folder')
    p.add_argument('--engine-dir', default='', help='procvlm-export trt folder (optional)')
    p.add_argument('--backends', default='transformers,onnxruntime,tensorrt',
                   help='comma list; unavailable ones are reported and skipped')
    p.add_argument('--device', default='auto')
    p.add_argument('--frames', type=int, default=8)
    p.add_argument('--image-size', default='640x480')
    p.add_argument('--new-tokens', type=int, default=32)
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--windows', type=int, default=6, help='sliding windows (stride 1)')
    p.add_argument('--threads', type=int, default=0,
                   help='CPU threads for torch and ONNX Runtime (0: library defaults)')
    p.add_argument('--json', default=None, help='write the results as JSON')


def _bench_spec_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('bench-spec', help='speculative decoding at live cadence: decoder passes, '
                       'accepted drafts, wall time with and without, per backend')
    p.add_argument('--model', required=True, help='checkpoint (transformers)')
    p.add_argument('--onnx', default='', help='procvlm-export onnx folder of that checkpoint')
    p.add_argument('--engine-dir', default='', help='procvlm-export trt folder (optional)')
    p.add_argument('--backends', default='transformers,onnxruntime')
    p.add_argument('--episodes', default='synthetic', choices=['synthetic', 'moving'],
                   help='synthetic: procvlm_ros.synth episodes (demo model); moving: a sliding '
                   'block in 64x48 frames (tiny model)')
    p.add_argument('--seed', type=int, default=555)
    p.add_argument('--count', type=int, default=6, help='episodes')
    p.add_argument('--max-windows', type=int, default=0, help='per episode (0: all)')
    p.add_argument('--max-draft', type=int, default=16, help='speculation_max_draft')
    p.add_argument('--max-new-tokens', type=int, default=256)
    p.add_argument('--threads', type=int, default=1, help='CPU threads (0: library defaults)')
    p.add_argument('--label', default='', help='name of the run in the table')
    p.add_argument('--json', default=None, help='write the results as JSON')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='procvlm-export', description=__doc__.split('\n')[1])
    parser.add_argument('--quiet', action='store_true', help='no progress bars, warnings only')
    sub = parser.add_subparsers(dest='command', required=True)
    for add in (_onnx_parser, _check_parser, _trt_parser, _bench_parser, _bench_spec_parser):
        add(sub)
    return parser


def _cmd_onnx(args: argparse.Namespace) -> int:
    from procvlm_ros.export.check import check_export
    from procvlm_ros.export.onnx_export import export_onnx, OnnxExportOptions, parse_image_size
    opts = OnnxExportOptions(model=args.model, out=Path(args.out), dtype=args.dtype,
                             max_frames=args.max_frames,
                             image_size=parse_image_size(args.image_size),
                             max_context=args.max_context, prefill_chunk=args.prefill_chunk,
                             max_verify_tokens=args.max_verify_tokens)
    manifest = export_onnx(opts, show_progress=not args.quiet)
    print(f'exported {manifest.folder} (export {manifest.export_id}, {manifest.dtype}, '
          f'limits {json.dumps(manifest.limits)})')
    if args.no_validate:
        return 0
    report = check_export(manifest.folder, args.model, frames=2, new_tokens=8)
    manifest.data['validation'] = report.to_dict()
    manifest.write()
    print(report.table())
    return 0 if report.ok else EXIT_MISMATCH


def _cmd_check(args: argparse.Namespace) -> int:
    from procvlm_ros.export.check import check_export
    report = check_export(args.onnx, args.model, frames=args.frames,
                          new_tokens=args.new_tokens, rtol=args.rtol,
                          require_greedy_match=False if args.allow_greedy_mismatch else None)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + '\n')
    if not report.ok:
        print('FAILED:\n- ' + '\n- '.join(report.failures), file=sys.stderr)
        return EXIT_MISMATCH
    print('OK')
    return 0


def _cmd_trt(args: argparse.Namespace) -> int:
    from procvlm_ros.export.trt_build import build_engines, TrtBuildOptions
    rebuild = 'never' if args.no_rebuild else 'always' if args.force_rebuild else 'auto'
    index = build_engines(TrtBuildOptions(
        onnx=Path(args.onnx), out=Path(args.out), precision=args.precision,
        workspace_gib=args.workspace_gib, lm_head_split=args.lm_head_split, rebuild=rebuild,
        verbose=args.verbose), show_progress=not args.quiet)
    for graph, record in index['engines'].items():
        print(f'{graph}: {record["file"]} ({record["size"]} bytes, key {record["key"][:16]})')
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from procvlm_ros.export.bench import BenchOptions, format_table, run_bench
    from procvlm_ros.export.onnx_export import parse_image_size
    results = run_bench(BenchOptions(
        model=args.model, onnx=args.onnx, engine_dir=args.engine_dir,
        backends=tuple(b.strip() for b in args.backends.split(',') if b.strip()),
        device=args.device, frames=args.frames, image_size=parse_image_size(args.image_size),
        new_tokens=args.new_tokens, repeats=args.repeats, windows=args.windows,
        threads=args.threads))
    text = json.dumps(results, indent=2)
    print(text)
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(text + '\n')
    return 0


def _cmd_bench_spec(args: argparse.Namespace) -> int:
    from procvlm_ros.export.spec_bench import format_table, run_spec_bench, SpecBenchOptions
    results = run_spec_bench(SpecBenchOptions(
        model=args.model, onnx=args.onnx, engine_dir=args.engine_dir,
        backends=tuple(b.strip() for b in args.backends.split(',') if b.strip()),
        episodes=args.episodes, seed=args.seed, count=args.count, max_windows=args.max_windows,
        max_draft=args.max_draft, max_new_tokens=args.max_new_tokens, threads=args.threads,
        label=args.label))
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
    bad = sum(r.get('mismatches', 0) for r in results['backends'].values())
    return EXIT_MISMATCH if bad else 0


COMMANDS = {'onnx': _cmd_onnx, 'check': _cmd_check, 'trt': _cmd_trt, 'bench': _cmd_bench,
            'bench-spec': _cmd_bench_spec}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    for noisy in ('onnxscript', 'onnx_ir', 'torch.onnx', 'httpx', 'transformers'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except (ProcVlmError, FileNotFoundError) as e:
        print(f'procvlm-export {args.command}: error: {e}', file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == '__main__':
    sys.exit(main())
