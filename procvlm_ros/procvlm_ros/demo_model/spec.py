"""
The demo model's definition: tiny Qwen3-VL sizes, a scratch tokenizer, checkpoint files.

Real architecture (``Qwen3VLForConditionalGeneration``, deepstack, M-RoPE), small sizes. The
tokenizer is a byte-level BPE trained from scratch on the synthetic task's prompts and answers
with GPT-2 style pre-tokenisation (merges stay inside words, so every colour and action word is
its own token and copying the task's words into the answer is easy for a tiny model); the
seven Qwen-VL special tokens sit at ids 0-6 and every whole percentage is one token. Byte-level:
any text still encodes.
"""

from __future__ import annotations

from collections.abc import Iterable
import json
from pathlib import Path
from typing import Any

from procvlm_ros.testing.tiny_model import _processor_files, CHAT_TEMPLATE, rope_config

SPECIAL_TOKENS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|vision_start|>',
                  '<|vision_end|>', '<|image_pad|>', '<|video_pad|>')
PAD_ID, IM_START_ID, IM_END_ID, VISION_START_ID, VISION_END_ID, IMAGE_ID, VIDEO_ID = range(7)
VOCAB_SIZE = 1024
# Processor pixel limits: a 160x120 camera frame (pre-resized to 168x112) becomes 160x128,
# a 10x8 patch grid, 20 visual tokens per frame.
MIN_PIXELS = 4096
MAX_PIXELS = 32768

TEXT_SIZES: dict[str, Any] = {
    'hidden_size': 128, 'intermediate_size': 384, 'num_hidden_layers': 4,
    'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 32,
    'max_position_embeddings': 4096, 'rms_norm_eps': 1e-6, 'hidden_act': 'silu',
    'attention_bias': False, 'tie_word_embeddings': True,
}
MROPE = {'mrope_section': [6, 5, 5], 'mrope_interleaved': True}  # sums to head_dim / 2
ROPE_THETA = 10000.0
VISION_SIZES: dict[str, Any] = {
    'depth': 2, 'hidden_size': 96, 'intermediate_size': 192, 'num_heads': 4,
    'patch_size': 16, 'temporal_patch_size': 2, 'spatial_merge_size': 2, 'in_channels': 3,
    'out_hidden_size': 128, 'num_position_embeddings': 256, 'deepstack_visual_indexes': [0],
    'hidden_act': 'gelu_pytorch_tanh',
}


def model_config_dict(vocab_size: int = VOCAB_SIZE) -> dict[str, Any]:
    """Keyword arguments of the demo ``Qwen3VLConfig`` (transformers 4.57 and 5.x)."""
    text = dict(TEXT_SIZES, vocab_size=vocab_size, pad_token_id=PAD_ID, eos_token_id=IM_END_ID,
                bos_token_id=PAD_ID, **rope_config(ROPE_THETA, MROPE))
    return {
        'text_config': text, 'vision_config': dict(VISION_SIZES),
        'image_token_id': IMAGE_ID, 'video_token_id': VIDEO_ID,
        'vision_start_token_id': VISION_START_ID, 'vision_end_token_id': VISION_END_ID,
        'tie_word_embeddings': True,
    }


def build_model(seed: int, vocab_size: int = VOCAB_SIZE) -> Any:
    """A freshly initialised demo model (seeded)."""
    import torch
    import transformers

    tf: Any = transformers
    torch.manual_seed(seed)
    model = tf.Qwen3VLForConditionalGeneration(tf.Qwen3VLConfig(**model_config_dict(vocab_size)))
    model.generation_config = tf.GenerationConfig(
        bos_token_id=PAD_ID, eos_token_id=[IM_END_ID, PAD_ID], pad_token_id=PAD_ID,
        do_sample=False)
    return model


def train_tokenizer(corpus: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """
    Train the scratch byte-level BPE on ``corpus``; return a ``PreTrainedTokenizerFast``.

    Deterministic for a given corpus (the ``tokenizers`` BPE trainer breaks ties by order).
    Every whole percentage 0-100 becomes one token (numbers are frequent in the corpus added
    here), so the progress number is a single prediction.

    :raises RuntimeError: If a special token or a percentage did not get its own token.
    """
    from tokenizers import decoders, models, pre_tokenizers, Tokenizer, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    numbers = [str(n) for n in range(101)] * 100
    tok.train_from_iterator(list(corpus) + numbers, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise RuntimeError(f'special token {token} got id {tok.token_to_id(token)}, not {i}')
    split = [n for n in range(101) if len(tok.encode(str(n)).ids) != 1]
    if split:
        raise RuntimeError(f'percentages {split[:5]} are not single tokens; raise vocab_size')
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token='<|im_end|>', pad_token='<|endoftext|>',
        unk_token=None, model_max_length=4096, padding_side='left',
        extra_special_tokens={})


def write_checkpoint(out: str | Path, model: Any, tokenizer: Any,
                     extra_files: dict[str, str] | None = None) -> Path:
    """
    Write a checkpoint directory the transformers backend loads.

    Files: ``model.safetensors``, ``config.json``, ``generation_config.json``, tokenizer files,
    ``preprocessor_config.json``/``video_preprocessor_config.json`` (Qwen3-VL settings with the
    demo pixel limits) and ``chat_template.jinja`` (the project's Qwen3-VL template).
    """
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    cfg_path = path / 'tokenizer_config.json'
    cfg = json.loads(cfg_path.read_text(encoding='utf-8'))
    cfg.pop('chat_template', None)  # the VL template lives in chat_template.jinja
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding='utf-8')
    (path / 'chat_template.jinja').unlink(missing_ok=True)
    for name, content in _processor_files(MIN_PIXELS, MAX_PIXELS).items():
        (path / name).write_text(json.dumps(content, indent=2), encoding='utf-8')
    (path / 'chat_template.jinja').write_text(CHAT_TEMPLATE, encoding='utf-8')
    for name, text in (extra_files or {}).items():
        (path / name).write_text(text, encoding='utf-8')
    return path
