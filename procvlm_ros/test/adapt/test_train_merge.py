"""procvlm-adapt train (reproducible, official files) and merge (token-identical, ONNX export)."""

import json

import numpy as np
import pytest
import yaml

from procvlm_ros.adapt.cli import main as adapt_main
from procvlm_ros.adapt.train import PRESETS, train_adapter, TrainSettings
from procvlm_ros.core.backends import lora_adapter as lora
from procvlm_ros.media.video import write_video
from procvlm_ros.offline import infer_progress_from_video
from procvlm_ros.testing.helpers import moving_frames
from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

pytest.importorskip('peft')
pytestmark = pytest.mark.slow
TASK = 'open the drawer'
TINY = TrainSettings(rank=4, alpha=8.0, dropout=0.0, lr=5e-3, steps=3, batch_size=2,
                     grad_accum=2, warmup_ratio=0.34, value_head='auto', min_pixels=0,
                     max_pixels=0, seed=5)


def frames(n=10, h=48, w=64):
    return moving_frames(n, h, w, background=60, brighten=10, speed=4)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('adapt')
    base = build_tiny_checkpoint(root / 'base', seed=3, with_value_head=True)
    video = write_video(root / 'demo.mp4', frames(), fps=2.0)
    stages = root / 'stages.yaml'
    stages.write_text(yaml.safe_dump({'task': TASK, 'done': True, 'stages': [
        {'description': 'reach the knob', 'end_frame': 3},
        {'description': 'pull it open', 'end_frame': 7}]}))
    assert adapt_main(['annotate', '--source', str(video), '--out', str(root / 'ann'),
                       '--stages', str(stages)]) == 0
    assert adapt_main(['dataset', str(root / 'ann'), '--out', str(root / 'data')]) == 0
    adapter = root / 'adapter'
    summary = train_adapter(base, [str(root / 'data')], adapter, TINY, device='cpu',
                            show_progress=False)
    return base, root, adapter, video, summary


def test_official_recipe_is_the_default():
    s = PRESETS['official']
    assert (s.rank, s.alpha, s.dropout, s.lr, s.epochs) == (64, 128.0, 0.05, 1e-5, 3.0)
    assert (s.batch_size, s.grad_accum, s.warmup_ratio, s.weight_decay) == (4, 2, 0.05, 0.01)
    assert (s.value_loss_weight, s.min_pixels, s.max_pixels) == (0.1, 1024, 262144)
    assert PRESETS['demo'].value_head == 'off'


def test_adapter_folder_like_the_official_one(setup):
    base, root, adapter, _, summary = setup
    cfg = json.loads((adapter / 'adapter_config.json').read_text())
    assert cfg['base_model_name_or_path'] == str(base.resolve())
    assert cfg['r'] == 4 and sorted(cfg['target_modules']) == ['k_proj', 'o_proj', 'q_proj',
                                                               'v_proj']
    for name in ('adapter_model.safetensors', 'procvlm_head.bin', 'preprocessor_config.json',
                 'tokenizer.json', lora.FINGERPRINT_FILE, 'training_log.jsonl'):
        assert (adapter / name).is_file(), name
    log = [json.loads(line) for line in (adapter / 'training_log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log] == [0, 1, 2]
    assert all(np.isfinite(r['loss']) and 'value_l1' in r for r in log)
    assert summary['value_head'].startswith('from procvlm_head.pt')
    import torch
    head = torch.load(adapter / 'procvlm_head.bin', weights_only=True)
    base_head = torch.load(base / 'procvlm_extra' / 'procvlm_head.pt', weights_only=True)
    assert len(head) == 14 and set(head) == set(base_head)
    assert not torch.equal(head['value_head.8.weight'], base_head['value_head.8.weight'])


def test_training_is_reproducible(setup, tmp_path):
    from safetensors.torch import load_file

    base, root, adapter, _, _ = setup
    again = tmp_path / 'again'
    train_adapter(base, [str(root / 'data')], again, TINY, device='cpu', show_progress=False)
    a = load_file(str(adapter / 'adapter_model.safetensors'))
    b = load_file(str(again / 'adapter_model.safetensors'))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)

    def numbers(folder):  # every logged figure but the step's wall time
        rows = [json.loads(line) for line in (folder / 'training_log.jsonl').read_text(
        ).splitlines()]
        assert all(r.pop('seconds') > 0 for r in rows)
        return rows
    assert numbers(adapter) == numbers(again)


def test_run_reports_step_time_and_peak_memory(setup):
    *_, summary = setup
    assert summary['step_seconds_median'] > 0 and summary['first_step_seconds'] > 0
    assert summary['peak_cuda_memory_gib'] is None  # a CPU run
    assert 0.1 < summary['peak_rss_gib'] < 64
    assert summary['gradient_checkpointing'] is False


def model_and_batch(setup, pick):
    """The tiny base (fp32, eval) and a training batch of the rows ``pick`` chooses."""
    import torch

    from procvlm_ros.adapt.dataset import read_qa_pairs
    from procvlm_ros.adapt.train import collate, prepare_sample
    from procvlm_ros.core.backends.hf_processor import load_processor
    from procvlm_ros.core.backends.transformers_backend import load_model

    base, root, *_ = setup
    processor, _ = load_processor(base, 0, 0)
    model = load_model(base, 'cpu', torch.float32, 'sdpa').eval()
    rows = pick(read_qa_pairs(root / 'data'))
    batch = collate([prepare_sample(processor, r) for r in rows], 0, 'cpu', torch.float32)
    batch.pop('progress')
    return model, batch


def test_answer_loss_equals_the_full_logits_loss(setup):
    # Logits only where an answer token is predicted: the same loss (and gradient) as the
    # model's own loss over full logits, on a right-padded batch of different lengths.
    import torch

    from procvlm_ros.adapt.train import answer_loss

    def mixed(rows):  # 1 image ... the most images
        rows = sorted(rows, key=lambda r: len(r['images']))
        picked = [rows[0], rows[-1], rows[len(rows) // 2]]
        assert len({len(r['images']) for r in picked}) == 3
        return picked

    model, batch = model_and_batch(setup, mixed)
    lm_head = model.lm_head.weight
    full = model(**batch).loss
    (g_full,) = torch.autograd.grad(full, lm_head)
    mine = answer_loss(model, batch)
    (g_mine,) = torch.autograd.grad(mine, lm_head)
    torch.testing.assert_close(mine, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_mine, g_full, rtol=1e-5, atol=1e-7)


def test_value_head_reads_the_cross_entropy_pass(setup):
    # The value loss takes the hidden state of the forward pass that gives the cross-entropy
    # (one pass, as the official model's forward); it equals a separate pass's.
    import torch

    from procvlm_ros.adapt.train import LastHiddenState

    model, batch = model_and_batch(setup, lambda rows: rows[:3])
    catcher = LastHiddenState(model)
    with torch.no_grad():
        loss = model(**batch).loss
        caught = catcher.take()
        with pytest.raises(RuntimeError, match='did not run'):
            catcher.take()  # one pass, one hidden state
        catcher.close()
        keys = ('pixel_values', 'image_grid_thw', 'mm_token_type_ids')
        separate = model.model(input_ids=batch['input_ids'],
                               attention_mask=batch['attention_mask'],
                               **{k: batch[k] for k in keys if k in batch}).last_hidden_state
    assert torch.isfinite(loss)
    assert caught.shape == (*batch['input_ids'].shape, model.config.text_config.hidden_size)
    torch.testing.assert_close(caught, separate, rtol=0, atol=1e-6)
    with torch.no_grad():
        model(**batch)
    assert catcher.value is None


def records(video, **kw):
    return infer_progress_from_video(video_path=video, task=TASK, torch_dtype='fp32',
                                     max_new_tokens=12, device='cpu', plot=False,
                                     show_progress=False, attn_implementation='eager', **kw)


def test_merged_checkpoint_gives_the_same_tokens_on_every_window(setup, tmp_path):
    base, root, adapter, video, _ = setup
    merged = tmp_path / 'merged'
    assert adapt_main(['merge', '--adapter', str(adapter), '--out', str(merged)]) == 0
    for name in ('model.safetensors', 'config.json', 'generation_config.json',
                 'chat_template.jinja', 'preprocessor_config.json', 'procvlm_head.bin'):
        assert (merged / name).is_file(), name
    assert not (merged / 'adapter_config.json').exists()
    unmerged = records(video, model_path=str(base), adapter=str(adapter))
    plain = records(video, model_path=str(merged))
    assert len(unmerged) == 10
    assert [r['model_output'] for r in plain] == [r['model_output'] for r in unmerged]
    base_only = records(video, model_path=str(base))
    assert [r['model_output'] for r in base_only] != [r['model_output'] for r in unmerged]
    # The merged checkpoint exports to ONNX; onnxruntime answers as the adapted reference.
    from procvlm_ros.export import cli as export_cli

    folder = tmp_path / 'onnx'
    assert export_cli.main(['--quiet', 'onnx', '--model', str(merged), '--out', str(folder),
                            '--image-size', '64x48', '--max-frames', '8']) == 0
    ort = records(video, model_path='', backend='onnxruntime', engine_dir=str(folder))
    assert [r['model_output'] for r in ort] == [r['model_output'] for r in unmerged]
    assert adapt_main(['merge', '--adapter', str(adapter), '--out', str(merged)]) == 2


def test_token_rows_and_augmentations_load_and_merge(setup, tmp_path):
    # The demo preset's extras: trainable embedding rows of the answer tokens (tied lm_head)
    # and the mirror/colour augmentations; loaded unmerged and merged, the same tokens.
    from dataclasses import replace

    from safetensors.torch import load_file

    base, root, _, video, _ = setup
    adapter = tmp_path / 'tokens'
    settings = replace(TINY, train_tokens='answers', augment='mirror,colour', value_head='off')
    summary = train_adapter(base, [str(root / 'data')], adapter, settings, device='cpu',
                            show_progress=False)
    assert summary['trainable_tokens'] > 10
    keys = load_file(str(adapter / 'adapter_model.safetensors')).keys()
    assert any('trainable_tokens_delta' in k for k in keys)
    merged = tmp_path / 'merged'
    assert adapt_main(['merge', '--adapter', str(adapter), '--out', str(merged)]) == 0
    unmerged = records(video, model_path=str(base), adapter=str(adapter))
    plain = records(video, model_path=str(merged))
    assert [r['model_output'] for r in plain] == [r['model_output'] for r in unmerged]


def test_vision_tower_targets_train_load_and_merge(setup, tmp_path):
    # Dotted peft targets reach the vision blocks (attn.qkv / attn.proj; linear_fc* also hit
    # the mergers) but not patch_embed.proj, a Conv3d; loaded unmerged and merged, same tokens.
    from dataclasses import replace

    from safetensors.torch import load_file

    base, root, _, video, _ = setup
    adapter = tmp_path / 'vision'
    settings = replace(TINY, targets='q_proj,v_proj,attn.qkv,attn.proj,linear_fc1,linear_fc2',
                       value_head='off', lr=5e-2)
    train_adapter(base, [str(root / 'data')], adapter, settings, device='cpu',
                  show_progress=False)
    keys = list(load_file(str(adapter / 'adapter_model.safetensors')))
    assert any('visual.blocks.0.attn.qkv.lora_A' in k for k in keys)
    assert any('visual.merger.linear_fc1.lora_A' in k for k in keys)
    assert not any('patch_embed' in k for k in keys)
    merged = tmp_path / 'merged'
    assert adapt_main(['merge', '--adapter', str(adapter), '--out', str(merged)]) == 0
    before = load_file(str(base / 'model.safetensors'))
    after = load_file(str(merged / 'model.safetensors'))
    qkv = [k for k in before if k.endswith('visual.blocks.0.attn.qkv.weight')]
    assert len(qkv) == 1 and not np.allclose(before[qkv[0]].numpy(), after[qkv[0]].numpy())
    unmerged = records(video, model_path=str(base), adapter=str(adapter))
    plain = records(video, model_path=str(merged))
    assert [r['model_output'] for r in plain] == [r['model_output'] for r in unmerged]
