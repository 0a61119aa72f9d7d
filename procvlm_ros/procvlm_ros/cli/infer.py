"""``procvlm-infer``: score a video or rosbag2 offline, with the official inference flags."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from procvlm_ros.core.config import BackendConfig, BACKENDS
from procvlm_ros.core.errors import ProcVlmError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='procvlm-infer',
        description='Per-frame task progress for a video file or a rosbag2 image topic; writes '
                    'the official ProcVLM JSONL records and a PNG plot beside them.')
    p.add_argument('--video_path', required=True,
                   help='video file, or rosbag2 directory / .mcap / .db3 file')
    p.add_argument('--task', required=True, help='task sentence substituted into the prompt')
    p.add_argument('--model_path', default='', help='checkpoint directory or hub id')
    p.add_argument('--output_path', default=None,
                   help='JSONL output (default: <video_dir>/<stem>_progress.jsonl)')
    p.add_argument('--torch_dtype', default='bf16', help='bf16 | fp16 | fp32 | auto')
    p.add_argument('--max_new_tokens', type=int, default=4096)
    p.add_argument('--temperature', type=float, default=0.0, help='0 = greedy')
    p.add_argument('--window_size', type=int, default=8)
    p.add_argument('--max_frames', type=int, default=None,
                   help='use only the first N source frames')
    p.add_argument('--max_sampled_frames', type=int, default=512)
    p.add_argument('--enable_value_head', action='store_true',
                   help='replace the generated number with the value head (official formula)')
    p.add_argument('--use_lora', action='store_true',
                   help='--model_path is a LoRA adapter directory: load the base named in its '
                        'adapter_config.json and apply the adapter (official flag; like the '
                        'official CLI it also turns the value head on when a head sidecar '
                        'exists)')
    p.add_argument('--adapter', default='',
                   help='LoRA adapter directory applied on top of --model_path')
    p.add_argument('--adapter_head', default='adapter', choices=['adapter', 'official'],
                   help="value head with an adapter: the adapter's procvlm_head.bin (fix, "
                        "default) or the base's (official behaviour)")
    p.add_argument('--backend', default='transformers', choices=[b for b in BACKENDS
                                                                 if b != 'scripted'])
    p.add_argument('--image_topic', default=None, help='rosbag2 input: the image topic')
    p.add_argument('--device', default='auto')
    p.add_argument('--attn_implementation', default='sdpa',
                   choices=['sdpa', 'eager', 'flash_attention_2'])
    p.add_argument('--prompt_layout', default='images_first',
                   choices=['images_first', 'text_first'])
    p.add_argument('--value_head_calibration', default='official', choices=['official', 'trained'])
    p.add_argument('--engine_dir', default='',
                   help='exported graphs/engines (onnxruntime, tensorrt)')
    p.add_argument('--no_jpeg_roundtrip', action='store_true',
                   help='skip the official JPEG q95 round trip of every frame')
    p.add_argument('--no_plot', action='store_true', help='do not write the PNG plot')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    return p


def default_output(video_path: str) -> Path:
    """Official default: ``<video_dir>/<stem>_progress.jsonl`` (bag directories: beside it)."""
    path = Path(video_path).expanduser().resolve()
    return path.with_name(f'{path.stem}_progress.jsonl')


def lora_model_paths(model_path: str, adapter: str, adapter_head: str) -> tuple[str, str, bool]:
    """
    ``--use_lora``: ``(base, adapter, value head available)`` from an adapter directory.

    The base comes from ``adapter_config.json`` as in the official CLI. The official CLI always
    turns the value head on with ``--use_lora``; here it is turned on when a head sidecar
    exists (adapter or base), because without one the official code runs a random head.
    """
    from procvlm_ros.core.backends import lora_adapter as lora
    from procvlm_ros.core.backends.value_head import find_head_sidecar

    adapter_dir = adapter or model_path
    if not adapter_dir:
        raise ProcVlmError('--use_lora needs --model_path ADAPTER_DIR')
    base = lora.base_model_of(adapter_dir)
    if adapter and model_path and model_path != adapter:
        base = model_path  # explicit base wins
    own = lora.adapter_head_path(adapter_dir) if adapter_head == 'adapter' else None
    has_head = own is not None or (Path(base).is_dir() and find_head_sidecar(base) is not None)
    return base, adapter_dir, has_head


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from procvlm_ros.offline import infer_progress_from_video

    output = Path(args.output_path) if args.output_path else default_output(args.video_path)
    options = {f: getattr(args, f) for f in ('device', 'attn_implementation', 'prompt_layout',
                                             'value_head_calibration', 'engine_dir', 'adapter',
                                             'adapter_head')}
    try:
        if args.use_lora:
            args.model_path, options['adapter'], head = lora_model_paths(
                args.model_path, args.adapter, args.adapter_head)
            args.enable_value_head = args.enable_value_head or head
        BackendConfig(backend=args.backend, model=args.model_path, **options)  # validate early
        records = infer_progress_from_video(
            video_path=args.video_path, task=args.task, model_path=args.model_path,
            output_path=output, window_size=args.window_size, torch_dtype=args.torch_dtype,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            max_frames=args.max_frames, max_sampled_frames=args.max_sampled_frames,
            enable_value_head=args.enable_value_head, backend=args.backend,
            image_topic=args.image_topic, plot=not args.no_plot, show_progress=not args.quiet,
            jpeg_roundtrip=not args.no_jpeg_roundtrip, **options)
    except (ProcVlmError, FileNotFoundError) as e:
        print(f'procvlm-infer: error: {e}', file=sys.stderr)
        return 2
    print(f'Done. Wrote {len(records)} records to: {output}')
    if not args.no_plot:
        print(f'Plot: {output.with_suffix(".png")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
