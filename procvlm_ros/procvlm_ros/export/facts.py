"""
What the manifest records about a checkpoint and its export: limits, sizes, token ids,
library versions, source hashes and preprocessing settings; and the small files copied.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
import platform
import shutil
from typing import Any

from procvlm_ros.core.backends.manifest import sha256_file

PROMPT_BUDGET = 256  # template + task tokens assumed by the default max_context
NEW_TOKEN_BUDGET = 512  # the node's default max_new_tokens
PROCESSOR_FILES = ('tokenizer.json', 'tokenizer_config.json', 'vocab.json', 'merges.txt',
                   'special_tokens_map.json', 'added_tokens.json', 'chat_template.jinja',
                   'chat_template.json', 'preprocessor_config.json',
                   'video_preprocessor_config.json', 'processor_config.json',
                   'generation_config.json', 'config.json')
WEIGHT_SUFFIXES = ('.safetensors', '.bin')


def frame_tokens(image_processor: Any, width: int, height: int) -> tuple[int, int, int]:
    """
    Largest token count of a ``width x height`` camera frame over the pre-resize choices.

    :returns: ``(tokens, grid_h, grid_w)`` of the largest case.
    """
    import numpy as np
    from PIL import Image

    from procvlm_ros.core.image import qwen_vl_pre_resize
    best = (0, 0, 0)
    blank = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    for patch in (0, 14, 16):  # pre_resize_patch_size choices of the node
        out = image_processor(images=[qwen_vl_pre_resize(blank, patch)], return_tensors='np')
        _, h, w = (int(v) for v in np.asarray(out['image_grid_thw'])[0])
        best = max(best, (h * w // 4, h, w))
    return best


def compute_limits(opts: Any, image_processor: Any) -> dict[str, Any]:
    """Profile limits recorded in the manifest (and used for TensorRT profiles)."""
    tokens, gh, gw = frame_tokens(image_processor, *opts.image_size)
    context = opts.max_context or (opts.max_frames * (tokens + 2) + PROMPT_BUDGET
                                   + NEW_TOKEN_BUDGET)
    context = -(-context // 64) * 64
    return {'max_frames': opts.max_frames, 'image_size': list(opts.image_size),
            'frame_grid': [gh, gw], 'max_tokens_per_frame': tokens,
            'max_patches_per_frame': 4 * tokens, 'max_context': context,
            'prefill_chunk': min(opts.prefill_chunk, context),
            'cache_frames': opts.cache_frames or 2 * opts.max_frames}


def model_facts(config: Any) -> dict[str, Any]:
    """
    Family and sizes the runtimes need, from the loaded config (``Qwen3VLConfig`` or
    ``Qwen2_5_VLConfig``).
    """
    from procvlm_ros.core.backends.families import family_for_config
    family = family_for_config({'model_type': config.model_type})
    text, vision = config.text_config, config.vision_config
    facts = {
        'family': family.name, 'architecture': family.model_class,
        'num_layers': text.num_hidden_layers, 'num_attention_heads': text.num_attention_heads,
        'num_kv_heads': text.num_key_value_heads,
        'head_dim': getattr(text, 'head_dim', None) or text.hidden_size
        // text.num_attention_heads,
        'hidden_size': text.hidden_size, 'vocab_size': text.vocab_size,
        'num_deepstack': len(getattr(vision, 'deepstack_visual_indexes', None) or ()),
        'vision_hidden_size': vision.hidden_size, 'vision_depth': vision.depth,
        'patch_size': vision.patch_size, 'temporal_patch_size': vision.temporal_patch_size,
        'spatial_merge_size': vision.spatial_merge_size,
        'patch_dim': vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2,
        'tie_word_embeddings': bool(getattr(config, 'tie_word_embeddings', False)),
    }
    if family.name == 'qwen2_5_vl':  # window attention; Qwen2 attention: head_dim = H / heads
        facts.update(head_dim=text.hidden_size // text.num_attention_heads,
                     window_size=int(vision.window_size),
                     fullatt_block_indexes=[int(i) for i in vision.fullatt_block_indexes])
    else:
        facts['num_grid_per_side'] = int(round(vision.num_position_embeddings ** 0.5))
    return facts


def token_facts(config: Any, generation: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """Special token ids and the eos ids the greedy loop stops on."""
    eos = generation.get('eos_token_id')
    if eos is None:
        eos = tokenizer.eos_token_id
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    return {'image_token_id': int(config.image_token_id),
            'video_token_id': int(config.video_token_id),
            'vision_start_token_id': int(config.vision_start_token_id),
            'vision_end_token_id': int(config.vision_end_token_id),
            'eos_token_ids': eos_ids, 'pad_token_id': generation.get('pad_token_id')}


def versions() -> dict[str, str]:
    """Library versions of the exporting environment."""
    import onnx
    import torch
    import transformers

    import procvlm_ros
    # getattr: run from the repository root, ``procvlm_ros`` can resolve to the ROS package
    # folder (a namespace package without __version__).
    found = {'procvlm_ros': getattr(procvlm_ros, '__version__', 'unknown'),
             'torch': torch.__version__,
             'transformers': transformers.__version__, 'onnx': onnx.__version__,
             'python': platform.python_version()}
    for name in ('onnxscript', 'onnxruntime'):
        with contextlib.suppress(ImportError):
            found[name] = __import__(name).__version__
    return found


def source_facts(model: str, path: Path, model_type: str = 'qwen3_vl') -> dict[str, Any]:
    """Checkpoint identity: argument, resolved path, model type, config and weight hashes."""
    weights = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return {'model': model, 'path': str(path.resolve()), 'model_type': model_type,
            'config_sha256': sha256_file(path / 'config.json'),
            'weights_sha256': {p.name: sha256_file(p) for p in weights}}


def preprocessing_facts(processor: Any, route: str) -> dict[str, Any]:
    ip = processor.image_processor
    keys = ('size', 'patch_size', 'temporal_patch_size', 'merge_size', 'image_mean',
            'image_std', 'rescale_factor', 'do_resize', 'do_rescale', 'do_normalize',
            'do_convert_rgb', 'min_pixels', 'max_pixels')
    facts = {k: getattr(ip, k, None) for k in keys}
    facts['resample'] = int(getattr(ip, 'resample', 3) or 3)
    facts['image_processor'] = type(ip).__name__
    facts['route'] = route
    return json.loads(json.dumps(facts, default=str))


def copy_processor_files(src: Path, dst: Path) -> dict[str, str]:
    """Copy tokenizer/processor/template/config files; return name -> sha256."""
    copied = {}
    for name in PROCESSOR_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
            copied[name] = sha256_file(dst / name)
    return copied
