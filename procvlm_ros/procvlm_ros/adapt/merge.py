"""
``procvlm-adapt merge``: fold a LoRA adapter into a plain checkpoint.

The result is a normal Qwen3-VL checkpoint directory (safetensors, ``config.json``,
``generation_config.json``, tokenizer and processor files, chat template, value-head sidecar)
that every backend loads and ``procvlm-export onnx`` exports. The merge runs in fp32 and the
weights are stored in the base checkpoint's dtype. Processor files come from the adapter when
it carries them (the official loader reads them from there), otherwise from the base.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

from procvlm_ros.core.backends import lora_adapter as lora
from procvlm_ros.core.errors import BackendUnavailableError

# Non-weight files of a checkpoint that the merged directory keeps.
CHECKPOINT_FILES = ('generation_config.json', 'tokenizer.json', 'tokenizer_config.json',
                    'vocab.json', 'merges.txt', 'special_tokens_map.json', 'added_tokens.json',
                    'preprocessor_config.json', 'video_preprocessor_config.json',
                    'processor_config.json', 'chat_template.jinja', 'chat_template.json')
PROCESSOR_FILES = CHECKPOINT_FILES[1:]
MERGE_INFO = 'merged_from.json'


def merge_adapter(adapter: str | Path, out: str | Path, *, base: str | Path = '',
                  adapter_head: str = 'adapter') -> Path:
    """
    Merge ``adapter`` into its base and write a plain checkpoint to ``out``.

    :param adapter: LoRA adapter directory.
    :param out: New checkpoint directory.
    :param base: Base checkpoint; default: ``base_model_name_or_path`` of the adapter.
    :param adapter_head: ``adapter``: the adapter's ``procvlm_head.bin`` (else the base's head);
        ``official``: the base's head.
    :returns: ``out``.
    :raises BackendUnavailableError: If the adapter does not fit the base.
    :raises FileExistsError: If ``out`` exists and is not empty.
    """
    from peft import PeftModel
    import torch

    from procvlm_ros.core.backends import value_head as vh
    from procvlm_ros.core.backends.transformers_backend import load_model, read_model_config

    adapter_dir = Path(adapter).expanduser().resolve()
    cfg = lora.read_adapter_config(adapter_dir)
    base_dir = Path(base or lora.base_model_of(adapter_dir)).expanduser().resolve()
    if not base_dir.is_dir():
        raise BackendUnavailableError(
            f'base checkpoint {base_dir} (from {lora.ADAPTER_CONFIG}) does not exist; pass '
            '--model BASE')
    model_cfg = read_model_config(base_dir)
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f'{out_dir} exists and is not empty; choose a new directory')
    lora.check_fingerprint(adapter_dir, base_dir)
    model = load_model(base_dir, 'cpu', torch.float32, 'sdpa')
    lora.check_adapter_fits(model, cfg, lora._load_adapter_state(adapter_dir), adapter_dir)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    dtype_name = str(model_cfg.get('dtype') or model_cfg.get('torch_dtype') or 'float32')
    merged = merged.to(getattr(torch, dtype_name, torch.float32))
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    for name in CHECKPOINT_FILES:
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
    if (adapter_dir / 'preprocessor_config.json').is_file():
        for name in PROCESSOR_FILES:
            if (adapter_dir / name).is_file():
                shutil.copyfile(adapter_dir / name, out_dir / name)
    head = lora.choose_head(vh.find_head_sidecar(base_dir), adapter_dir, adapter_head)
    if head is not None:
        shutil.copyfile(head, out_dir / 'procvlm_head.bin')
    info = {'adapter': str(adapter_dir), 'base': str(base_dir), 'head': str(head or ''),
            'lora_r': cfg.get('r'), 'lora_alpha': cfg.get('lora_alpha'),
            'target_modules': cfg.get('target_modules'), 'dtype': dtype_name}
    (out_dir / MERGE_INFO).write_text(json.dumps(info, indent=1), encoding='utf-8')
    return out_dir
