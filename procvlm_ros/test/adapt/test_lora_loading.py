"""LoRA adapters on the transformers backend, against an independent peft-wrapped generate()."""

import json
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends import lora_adapter as lora
from procvlm_ros.core.backends.base import GenerationRequest
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendUnavailableError, ConfigError
from procvlm_ros.media.video import write_video
from procvlm_ros.testing.tiny_model import build_tiny_checkpoint, write_value_head_sidecar

pytest.importorskip('peft')
pytestmark = pytest.mark.slow
TASK = 'open the drawer'
HIDDEN = 64  # tiny_model.TEXT_SIZES['hidden_size']


def make_adapter(base, out, *, seed=7, rank=4, head=True):
    """A peft LoRA adapter with non-zero B matrices (so it changes the answers)."""
    from peft import get_peft_model, LoraConfig
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(base))
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias='none',
                     target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj'],
                     init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # larger updates: the answers must change visibly
        for name, p in peft_model.named_parameters():
            if 'lora_B' in name:
                p.mul_(20.0)
    peft_model.save_pretrained(str(out))
    if head:
        write_value_head_sidecar(out, HIDDEN, seed=seed + 100, relpath='procvlm_head.bin')
    return out


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp('lora')
    base = build_tiny_checkpoint(root / 'base', seed=3, with_value_head=True)
    adapter = make_adapter(base, root / 'adapter')
    return base, adapter, root


def images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in range(n)]


def backend(base, adapter='', **kw):
    b = create_backend(BackendConfig(model=str(base), adapter=str(adapter), device='cpu',
                                     dtype='fp32', attn_implementation='eager',
                                     max_new_tokens=24, **kw))
    b.load()
    return b


def peft_reference(base, adapter, inputs, max_new_tokens=24):
    """Independent path: base model + PeftModel.from_pretrained, generate() on the wrapper."""
    from peft import PeftModel
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(
        str(base), attn_implementation='eager', dtype=torch.float32)
    wrapped = PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()
    with torch.inference_mode():
        out = wrapped.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs['input_ids'].shape[1]:].tolist()


def test_adapter_tokens_match_peft_generate(dirs):
    base, adapter, _ = dirs
    with_adapter = backend(base, adapter)
    plain = backend(base)
    try:
        for seed in range(3):
            req = GenerationRequest(images=images(seed=seed), task=TASK)
            got = with_adapter.generate(req).token_ids
            ref = peft_reference(base, adapter, with_adapter.prepare_inputs(req))
            assert got == ref
            assert plain.generate(req).token_ids != got  # the adapter changes the answer
    finally:
        with_adapter.close()
        plain.close()


def test_value_head_modes(dirs):
    import torch

    base, adapter, _ = dirs
    fixed = backend(base, adapter, enable_value_head=True)
    official = backend(base, adapter, enable_value_head=True, adapter_head='official')
    try:
        assert fixed.value_head_path == adapter / 'procvlm_head.bin'
        assert official.value_head_path == base / 'procvlm_extra' / 'procvlm_head.pt'
        want = torch.load(adapter / 'procvlm_head.bin', weights_only=True)
        got = fixed._head.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
        base_head = torch.load(official.value_head_path, weights_only=True)
        assert not torch.equal(official._head.state_dict()['value_head.8.weight'],
                               want['value_head.8.weight'])
        assert torch.equal(official._head.state_dict()['value_head.8.weight'],
                           base_head['value_head.8.weight'])
    finally:
        fixed.close()
        official.close()


def test_official_loader_really_drops_the_adapter_head(dirs):
    """What the faithful mode reproduces: load_state_dict(strict=False) on the peft wrapper."""
    from peft import PeftModel
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from procvlm_ros.core.backends.value_head import build_value_head

    base, adapter, _ = dirs
    model = Qwen3VLForConditionalGeneration.from_pretrained(str(base))
    head = build_value_head(HIDDEN)
    model.pooler, model.value_head = head.pooler, head.value_head  # official attribute names
    wrapped = PeftModel.from_pretrained(model, str(adapter))
    state = torch.load(adapter / 'procvlm_head.bin', weights_only=True)
    result = wrapped.load_state_dict(state, strict=False)
    assert sorted(result.unexpected_keys) == sorted(state)  # all 14 keys dropped
    assert len(state) == 14


def test_bad_adapters_are_refused_with_a_reason(dirs, tmp_path):
    base, adapter, root = dirs
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(BackendUnavailableError, match='adapter_config.json is missing'):
        backend(base, empty)

    wrong_rank = shutil.copytree(adapter, tmp_path / 'rank')
    cfg = json.loads((wrong_rank / 'adapter_config.json').read_text())
    cfg['r'] = 8
    (wrong_rank / 'adapter_config.json').write_text(json.dumps(cfg))
    with pytest.raises(BackendUnavailableError, match='rank or hidden size differ'):
        backend(base, wrong_rank)

    wrong_targets = shutil.copytree(adapter, tmp_path / 'targets')
    cfg = json.loads((wrong_targets / 'adapter_config.json').read_text())
    cfg['target_modules'] = ['q_proj', 'gate_projx']
    (wrong_targets / 'adapter_config.json').write_text(json.dumps(cfg))
    with pytest.raises(BackendUnavailableError, match='gate_projx'):
        backend(base, wrong_targets)
    # peft also takes dotted suffixes ('self_attn.q_proj'); a suffix of a name is not one
    cfg['target_modules'] = ['self_attn.q_proj', 'attn.k_proj']
    (wrong_targets / 'adapter_config.json').write_text(json.dumps(cfg))
    with pytest.raises(BackendUnavailableError, match=r"\['attn.k_proj'\]"):
        backend(base, wrong_targets)

    # An adapter trained (per its fingerprint) on another base with the same shapes.
    other = build_tiny_checkpoint(root / 'other', seed=11)
    stamped = shutil.copytree(adapter, tmp_path / 'stamped')
    (stamped / lora.FINGERPRINT_FILE).write_text(json.dumps(
        {'base_fingerprint': lora.base_fingerprint(base), 'base_model': str(base)}))
    backend(base, stamped).close()  # its own base loads
    with pytest.raises(BackendUnavailableError, match='trained on another base'):
        backend(other, stamped)

    with pytest.raises(BackendUnavailableError, match='is a LoRA adapter, not a checkpoint'):
        backend(adapter)
    with pytest.raises(ConfigError, match='transformers backend'):
        BackendConfig(backend='onnxruntime', engine_dir='x', adapter=str(adapter))


def test_procvlm_infer_use_lora_reads_the_base_from_the_adapter(dirs, tmp_path):
    base, adapter, _ = dirs
    frames = [np.full((48, 64, 3), 30 + 20 * i, np.uint8) for i in range(4)]
    video = write_video(tmp_path / 'clip.mp4', frames, fps=4.0)

    def run(*args, out):
        proc = subprocess.run(
            [sys.executable, '-m', 'procvlm_ros.cli.infer', '--quiet', '--no_plot',
             '--video_path', str(video), '--task', TASK, '--torch_dtype', 'fp32',
             '--device', 'cpu', '--attn_implementation', 'eager', '--max_new_tokens', '12',
             '--output_path', str(out), *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line)['model_output'] for line in out.read_text().splitlines()]

    lora_run = run('--model_path', str(adapter), '--use_lora', out=tmp_path / 'a.jsonl')
    explicit = run('--model_path', str(base), '--adapter', str(adapter),
                   '--enable_value_head', out=tmp_path / 'b.jsonl')
    plain = run('--model_path', str(base), out=tmp_path / 'c.jsonl')
    assert lora_run == explicit
    assert lora_run != plain
    proc = subprocess.run([sys.executable, '-m', 'procvlm_ros.cli.infer', '--video_path',
                           str(video), '--task', TASK, '--model_path', str(tmp_path),
                           '--use_lora'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert 'adapter_config.json is missing' in proc.stderr
