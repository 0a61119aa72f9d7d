"""
Temporal speculative decoding in the model backends (issue 11): with the previous window's
answer as a draft every window's tokens are exactly the plain greedy ones (fp32), for the
transformers and onnxruntime backends, on the demo model's synthetic episodes and the tiny
random model; odd drafts, eos, max_new_tokens, the repetition penalty and format-1 exports.
"""

import json
import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('onnxruntime')

from procvlm_ros.core.backends import create_backend  # noqa: E402
from procvlm_ros.core.backends.base import GenerationRequest  # noqa: E402
from procvlm_ros.core.config import BackendConfig  # noqa: E402
from procvlm_ros.core.image import qwen_vl_pre_resize  # noqa: E402
from procvlm_ros.demo_model import CHECKPOINT_DIR  # noqa: E402
from procvlm_ros.export.episodes import episode_run  # noqa: E402
from procvlm_ros.export.testing import demo_export, tiny_export  # noqa: E402

pytestmark = pytest.mark.slow
DEMO_EPISODES = [(555, 0, 'success'), (555, 1, 'fail')]  # 23 + 32 windows
DEMO_EOS = 2  # <|im_end|> of the demo tokenizer (generation_config eos [2, 0])
TINY_TASK = 'stack the blocks'


def config(backend, model, **kw):
    where = dict(model=str(model)) if backend == 'transformers' else dict(engine_dir=str(model))
    kw.setdefault('max_new_tokens', 256)
    return BackendConfig(backend=backend, device='cpu', dtype='fp32', **where, **kw)


def pair(backend, model, **kw):
    """The same model twice: speculation off (plain greedy) and on."""
    return (create_backend(config(backend, model, speculation=False, **kw)),
            create_backend(config(backend, model, speculation=True, **kw)))


def live(plain, fast, windows, task):
    """Every window with and without the previous answer as the draft; returns the totals."""
    totals = {'plain': 0, 'spec': 0, 'accepted': 0, 'windows': 0}
    previous = None
    for images, keys in windows:
        want = plain.generate(GenerationRequest(images, task, keys, draft_token_ids=previous))
        got = fast.generate(GenerationRequest(images, task, keys, draft_token_ids=previous))
        assert got.token_ids == want.token_ids, (keys[-1], got.text, want.text)
        assert got.text == want.text
        assert want.decoder_passes == max(0, want.generated_tokens - 1)
        assert want.draft_tokens_accepted == 0  # speculation off ignores the draft
        assert got.decoder_passes + got.draft_tokens_accepted >= got.generated_tokens - 1
        if previous is None:
            assert got.decoder_passes == want.decoder_passes  # no draft, no saving
        totals['plain'] += want.decoder_passes
        totals['spec'] += got.decoder_passes
        totals['accepted'] += got.draft_tokens_accepted
        totals['windows'] += 1
        previous = got.token_ids
    return totals


# ---------------------------------------------------------------- demo model, synthetic episodes


@pytest.fixture(scope='module')
def demo_onnx(tmp_path_factory):
    return demo_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')


@pytest.fixture(scope='module')
def demo_runs():
    return [episode_run(seed, index, kind) for seed, index, kind in DEMO_EPISODES]


@pytest.mark.parametrize('episode', [0, 1])  # one test per episode keeps each one short
@pytest.mark.parametrize('backend', ['transformers', 'onnxruntime'])
def test_demo_episodes_every_window_identical_and_fewer_passes(backend, episode, demo_runs,
                                                               request):
    model = CHECKPOINT_DIR if backend == 'transformers' else request.getfixturevalue('demo_onnx')
    run = demo_runs[episode]
    plain, fast = pair(backend, model)
    with plain, fast:
        totals = live(plain, fast, run.windows, run.task)
    assert totals['windows'] == (23, 32)[episode]
    # The target: at least 4x fewer sequential decoder passes with the previous answer.
    assert totals['plain'] >= 4 * totals['spec'], totals


@pytest.mark.parametrize('backend', ['transformers', 'onnxruntime'])
def test_demo_odd_drafts(backend, demo_runs, request):
    model = CHECKPOINT_DIR if backend == 'transformers' else request.getfixturevalue('demo_onnx')
    run, other = demo_runs[0], demo_runs[1]
    images, keys = run.windows[10]
    plain, fast = pair(backend, model)
    with plain, fast:
        want = plain.generate(GenerationRequest(images, run.task, keys))
        answer = want.token_ids
        assert answer[-1] == DEMO_EOS and DEMO_EOS not in answer[:-1]
        o_images, o_keys = other.windows[5]
        other_task = plain.generate(GenerationRequest(o_images, other.task, o_keys)).token_ids
        rng = np.random.default_rng(0)
        drafts = {
            'empty': [], 'own answer': answer, 'garbage': rng.integers(0, 300, 80).tolist(),
            'longer than the answer': answer[:-1] * 3 + [DEMO_EOS],
            'another task': other_task,
            'eos early': answer[:5] + [DEMO_EOS] + answer[5:],
            'eos only': [DEMO_EOS] * 4, 'answer without eos': answer[:-1]}
        for name, draft in drafts.items():
            got = fast.generate(GenerationRequest(images, run.task, keys, draft_token_ids=draft))
            assert got.token_ids == answer, name
        # The exact answer as the draft: every pass adds 16 accepted ids and its own one.
        own = fast.generate(GenerationRequest(images, run.task, keys, draft_token_ids=answer))
        assert own.draft_tokens_accepted + own.decoder_passes == len(answer) - 1
        assert own.decoder_passes == -(-(len(answer) - 1) // 17)
    # A draft longer than the rest of the answer: eos accepted inside it ends the window.
    wide = create_backend(config(backend, model, speculation_max_draft=100))
    with wide:
        got = wide.generate(GenerationRequest(images, run.task, keys, draft_token_ids=answer))
    assert got.token_ids == answer
    assert (got.decoder_passes, got.draft_tokens_accepted) == (1, len(answer) - 1)
    # max_new_tokens reached inside an accepted draft: the budget cuts it, as plain greedy.
    for budget in (1, 2, 7, 18):
        plain, fast = pair(backend, model, max_new_tokens=budget)
        with plain, fast:
            want = plain.generate(GenerationRequest(images, run.task, keys))
            got = fast.generate(GenerationRequest(images, run.task, keys, draft_token_ids=answer))
        assert got.token_ids == want.token_ids == answer[:budget], budget
        assert got.generated_tokens == budget


# ---------------------------------------------------------------- tiny random model


def tiny_windows(seed, count=6, n=8):
    """A moving scene (a block sliding) in windows of 8 frames, one frame later each time."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (48, 64, 3), np.uint8)
    frames = []
    for i in range(count + n - 1):
        img = base.copy()
        img[8:28, 2 + 3 * i:14 + 3 * i] = (240, 40, 30)
        frames.append(qwen_vl_pre_resize(Image.fromarray(img), 14))
    return [(frames[w:w + n], [(seed, i) for i in range(w, w + n)]) for w in range(count)]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')


@pytest.mark.parametrize('backend', ['transformers', 'onnxruntime'])
def test_tiny_model_videos_identical(backend, tiny):
    model = tiny[0] if backend == 'transformers' else tiny[1]
    plain, fast = pair(backend, model, max_new_tokens=16)
    with plain, fast:
        for seed in (1, 2, 3):
            live(plain, fast, tiny_windows(seed, count=5), TINY_TASK)


@pytest.fixture(scope='module')
def penalised(tiny, tmp_path_factory):
    """The tiny checkpoint and export with repetition_penalty 3 in the generation config."""
    base = tmp_path_factory.mktemp('penalty')
    ckpt = base / 'ckpt'
    shutil.copytree(tiny[0], ckpt)
    gen = json.loads((ckpt / 'generation_config.json').read_text())
    (ckpt / 'generation_config.json').write_text(json.dumps(dict(gen, repetition_penalty=3.0)))
    onnx = base / 'onnx'
    onnx.mkdir()
    for p in tiny[1].iterdir():
        if p.name != 'manifest.json':
            os.symlink(p, onnx / p.name)
    data = json.loads((tiny[1] / 'manifest.json').read_text())
    data['generation']['repetition_penalty'] = 3.0
    (onnx / 'manifest.json').write_text(json.dumps(data))
    return ckpt, onnx


def test_repetition_penalty_is_honoured_exactly(tiny, penalised):
    windows = tiny_windows(4, count=3)
    images, keys = windows[0]
    with create_backend(config('transformers', tiny[0], max_new_tokens=24)) as ref:
        unpenalised = ref.generate(GenerationRequest(images, TINY_TASK, keys)).token_ids
    for backend, model in (('transformers', penalised[0]), ('onnxruntime', penalised[1])):
        plain, fast = pair(backend, model, max_new_tokens=24)
        with plain, fast:
            want = plain.generate(GenerationRequest(images, TINY_TASK, keys)).token_ids
            assert want != unpenalised  # the penalty really changes this answer
            for draft in (unpenalised, want, want[::-1], [want[0]] * 30):
                got = fast.generate(GenerationRequest(images, TINY_TASK, keys,
                                                      draft_token_ids=draft))
                assert got.token_ids == want, (backend, draft)
            live(plain, fast, windows, TINY_TASK)


def test_format_1_export_loads_and_decodes_without_speculation(tiny, tmp_path_factory, caplog):
    from procvlm_ros.core.backends.manifest import ExportManifest
    _, old = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports', format_version=1)
    manifest = ExportManifest.read(old)
    assert manifest.format_version == 1 and not manifest.verifies_drafts
    assert 'logit_index' not in {t['name'] for t in manifest.graph('decoder')['inputs']}
    images, keys = tiny_windows(5, count=1)[0]
    with create_backend(config('onnxruntime', tiny[1], max_new_tokens=16)) as new:
        want = new.generate(GenerationRequest(images, TINY_TASK, keys))
    with caplog.at_level(logging.INFO), \
            create_backend(config('onnxruntime', old, max_new_tokens=16)) as backend:
        got = backend.generate(GenerationRequest(images, TINY_TASK, keys,
                                                 draft_token_ids=want.token_ids))
        again = backend.generate(GenerationRequest(images, TINY_TASK, keys,
                                                   draft_token_ids=want.token_ids))
    assert got.token_ids == again.token_ids == want.token_ids
    assert got.decoder_passes == got.generated_tokens - 1 and got.draft_tokens_accepted == 0
    lines = [r.getMessage() for r in caplog.records if 'speculation off' in r.getMessage()]
    assert len(lines) == 1 and 'format 1' in lines[0] and 're-export' in lines[0]


# ---------------------------------------------------------------- TensorRT (GPU machines only)


def _gpu_reason():
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return 'TensorRT is not installed'
    return '' if torch.cuda.is_available() else 'no CUDA device'


@pytest.mark.gpu
@pytest.mark.skipif(bool(_gpu_reason()), reason=_gpu_reason() or 'ok')
def test_tensorrt_speculation_identical_on_demo_episodes(demo_onnx, demo_runs, tmp_path):
    from procvlm_ros.export.trt_build import build_engines, TrtBuildOptions
    build_engines(TrtBuildOptions(onnx=demo_onnx, out=tmp_path / 'engines', precision='fp32'),
                  show_progress=False)
    folder = str(tmp_path / 'engines')
    plain = create_backend(BackendConfig(backend='tensorrt', engine_dir=folder,
                                         max_new_tokens=256, speculation=False))
    fast = create_backend(BackendConfig(backend='tensorrt', engine_dir=folder,
                                        max_new_tokens=256, speculation=True))
    with plain, fast:
        totals = [live(plain, fast, run.windows, run.task) for run in demo_runs]
    assert sum(t['plain'] for t in totals) >= 4 * sum(t['spec'] for t in totals)
