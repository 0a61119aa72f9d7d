#!/usr/bin/env python3
"""
Cost of one draft-verifying decoder pass on a GPU (issue 11, GPU section).

A randomly initialised Qwen3-VL with ProcVLM-2B's shapes (Qwen3-VL-2B-Instruct's config,
``docs/export.md``) runs on CUDA in fp16 or bf16 with PyTorch. The KV cache is filled with a
``--context``-token prefill (2,500 by default: an 8-frame 640x480 window), then one pass feeding
1, 4, 8, 16, 32 and 64 new tokens on top of it is timed with CUDA events (the cache is cropped
back after every pass, as a rejected draft's positions are). Greedy argmax over every position
is included, since the verify loop needs it.

Random weights cost exactly what trained ones cost (same shapes, same kernels). The output is
the curve the speculative-decoding latency model in docs/export.md rests on: if a 16- or
32-token pass costs about one decode step, a window's decode time scales with its number of
sequential passes.

Needs torch with CUDA and transformers >= 4.57.1. Not run in this repository's CI (no GPU).

    python bench/verify_cost_gpu.py --dtype bf16 --json bench/results/verify-cost-gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from typing import Any

SIZES = (1, 4, 8, 16, 32, 64)


def build(dtype: Any, attn: str) -> Any:
    import torch
    import transformers

    from procvlm_ros.testing.tiny_model import procvlm_2b_config_dict

    config = transformers.Qwen3VLConfig(**procvlm_2b_config_dict())
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device('cuda'):
        model = transformers.Qwen3VLForConditionalGeneration(config).to(dtype)
    return model.eval()


def measure(model: Any, context: int, repeats: int, warmup: int) -> list[dict[str, float]]:
    import torch
    vocab = model.config.text_config.vocab_size
    gen = torch.Generator(device='cuda').manual_seed(1)
    prompt = torch.randint(0, vocab, (1, context), device='cuda', generator=gen)
    with torch.inference_mode():
        out = model(input_ids=prompt, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        rows = []
        for k in SIZES:
            feed = torch.randint(0, vocab, (1, k), device='cuda', generator=gen)
            times = []
            for i in range(warmup + repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                logits = model(input_ids=feed, past_key_values=cache, use_cache=True).logits
                logits[0].argmax(-1).tolist()  # the verify loop reads every position's id
                end.record()
                torch.cuda.synchronize()
                cache.crop(context)
                if i >= warmup:
                    times.append(start.elapsed_time(end))
            med = statistics.median(times)
            rows.append({'tokens': k, 'median_ms': med, 'p10_ms': _pct(times, 10),
                         'p90_ms': _pct(times, 90), 'ms_per_token': med / k})
    base = rows[0]['median_ms']
    for r in rows:
        r['vs_one_token'] = r['median_ms'] / base
    return rows


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16'])
    p.add_argument('--context', type=int, default=2500, help='tokens already in the KV cache')
    p.add_argument('--repeats', type=int, default=50)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--attn', default='sdpa', choices=['sdpa', 'eager', 'flash_attention_2'])
    p.add_argument('--json', default=None, help='write the results as JSON')
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print('verify_cost_gpu: no CUDA device (torch sees none); this script needs a GPU',
              file=sys.stderr)
        return 2
    import transformers
    dtype = torch.bfloat16 if args.dtype == 'bf16' else torch.float16
    model = build(dtype, args.attn)
    params = sum(t.numel() for t in model.parameters())
    rows = measure(model, args.context, args.repeats, args.warmup)
    result = {'gpu': torch.cuda.get_device_name(0), 'torch': torch.__version__,
              'transformers': transformers.__version__, 'python': platform.python_version(),
              'dtype': args.dtype, 'attn': args.attn, 'context': args.context,
              'parameters': params, 'repeats': args.repeats, 'passes': rows}
    print(f'{result["gpu"]}, {args.dtype}, {args.attn}, context {args.context}, '
          f'{params / 1e9:.3f} B parameters')
    print(f'{"tokens":>7}{"median ms":>11}{"p10":>8}{"p90":>8}{"ms/token":>10}{"x 1-token":>10}')
    for r in rows:
        print(f'{r["tokens"]:7d}{r["median_ms"]:11.2f}{r["p10_ms"]:8.2f}{r["p90_ms"]:8.2f}'
              f'{r["ms_per_token"]:10.2f}{r["vs_one_token"]:10.2f}')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=2)
            f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
