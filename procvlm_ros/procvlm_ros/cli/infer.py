"""``procvlm-infer``: score a video or rosbag2 offline, with the official inference flags."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import sys

from procvlm_ros.cli.options import add_field_options, field_values, FieldOption, Override
from procvlm_ros.core.config import BackendConfig, ProfileConfig, WindowConfig
from procvlm_ros.core.errors import ProcVlmError

# Official evqa/inference.py names and defaults where they differ from the config fields.
# torch_dtype takes the official aliases too (bfloat16, float16, ...; resolved in offline.py).
BACKEND_OVERRIDES = {
    'model': Override(flag='model_path', help='Checkpoint directory or hub id.'),
    'dtype': Override(flag='torch_dtype', default='bf16', choices=None,
                      help='Weights/compute dtype: bf16, fp16, fp32 or auto (official aliases '
                           'bfloat16, float16, float32 accepted).'),
}
# Window fields that apply to a recorded video (the stamp rules are for live streams).
WINDOW_FIELDS = ('window_size', 'jpeg_roundtrip')


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, list[FieldOption], list[FieldOption],
                      list[FieldOption]]:
    p = argparse.ArgumentParser(
        prog='procvlm-infer',
        description='Per-frame task progress for a video file or a rosbag2 image topic; writes '
                    'the official ProcVLM JSONL records and a PNG plot beside them.')
    p.add_argument('--video_path', required=True,
                   help='video file, or rosbag2 directory / .mcap / .db3 file')
    p.add_argument('--task', required=True, help='task sentence substituted into the prompt')
    p.add_argument('--output_path', default=None,
                   help='JSONL output (default: <video_dir>/<stem>_progress.jsonl)')
    p.add_argument('--max_frames', type=int, default=None,
                   help='use only the first N source frames')
    p.add_argument('--max_sampled_frames', type=int, default=512,
                   help='at most this many windows, sampled uniformly (default: 512)')
    p.add_argument('--use_lora', action='store_true',
                   help='--model_path is a LoRA adapter directory: load the base named in its '
                        'adapter_config.json and apply the adapter (official flag; like the '
                        'official CLI it also turns the value head on when a head sidecar '
                        'exists)')
    p.add_argument('--image_topic', default=None, help='rosbag2 input: the image topic')
    p.add_argument('--no_plot', action='store_true', help='do not write the PNG plot')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    backend = add_field_options(p.add_argument_group('model and backend (BackendConfig)'),
                                BackendConfig, overrides=BACKEND_OVERRIDES)
    window = add_field_options(p.add_argument_group('windows (WindowConfig)'), WindowConfig,
                               only=WINDOW_FIELDS)
    group = p.add_argument_group(
        'task profile (ProfileConfig)',
        'What the model is asked. Rows: procvlm_progress the official keys; pairwise_critic '
        'the same (progress = accumulated value) plus delta, done, done_score; '
        'navigation_action action and step; grounded_query the answer to --question about '
        'every sampled frame, with its points in frame pixels.')
    group.add_argument('--question', default='',
                       help='grounded_query: the question asked about every sampled frame')
    profile = add_field_options(group, ProfileConfig)
    return p, backend, window, profile


def default_output(video_path: str, profile: str = 'procvlm_progress') -> Path:
    """
    Official default: ``<video_dir>/<stem>_progress.jsonl`` (bag directories: beside it);
    profiles other than the progress ones write ``<stem>_<profile>.jsonl``.
    """
    path = Path(video_path).expanduser().resolve()
    suffix = 'progress' if profile in ('procvlm_progress', 'pairwise_critic') else profile
    return path.with_name(f'{path.stem}_{suffix}.jsonl')


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
    parser, backend_options, window_options, profile_options = _build()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    from procvlm_ros.offline import infer_progress_from_video

    options = field_values(args, backend_options)
    try:
        profile = ProfileConfig(**field_values(args, profile_options))
        output = (Path(args.output_path) if args.output_path
                  else default_output(args.video_path, profile.profile))
        if args.use_lora:
            options['model'], options['adapter'], head = lora_model_paths(
                options['model'], options['adapter'], options['adapter_head'])
            options['enable_value_head'] = options['enable_value_head'] or head
        # Validate early (dtype aliases are resolved by infer_progress_from_video).
        BackendConfig(**{k: v for k, v in options.items() if k != 'dtype'})
        official = {'model_path': options.pop('model'), 'torch_dtype': options.pop('dtype'),
                    **{k: options.pop(k) for k in ('max_new_tokens', 'temperature',
                                                   'enable_value_head', 'backend')}}
        records = infer_progress_from_video(
            video_path=args.video_path, task=args.task, output_path=output,
            max_frames=args.max_frames, max_sampled_frames=args.max_sampled_frames,
            image_topic=args.image_topic, plot=not args.no_plot, show_progress=not args.quiet,
            profile=profile, question=args.question,
            **official, **field_values(args, window_options), **options)
    except (ProcVlmError, FileNotFoundError) as e:
        print(f'procvlm-infer: error: {e}', file=sys.stderr)
        return 2
    print(f'Done. Wrote {len(records)} records to: {output}')
    if not args.no_plot and profile.profile in ('procvlm_progress', 'pairwise_critic'):
        print(f'Plot: {output.with_suffix(".png")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
