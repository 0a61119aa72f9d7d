"""The onnxruntime backend against the transformers reference, on a tiny exported Qwen3-VL."""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends.base import GenerationRequest
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendError, BackendUnavailableError
from procvlm_ros.core.estimator import ProgressEstimator
from procvlm_ros.core.image import qwen_vl_pre_resize
from procvlm_ros.core.types import Frame, Status
from procvlm_ros.export.testing import tiny_export
from procvlm_ros.testing import helpers

pytestmark = pytest.mark.slow
TASK = 'stack the blocks'
NEW_TOKENS = 12


def moving_frames(n=10, h=48, w=64):
    return helpers.moving_frames(n, h, w, background=30, brighten=11, speed=3, top=8,
                                 colour=(240, 40, 30))


def images(n, seed=0, h=48, w=64):
    rng = np.random.default_rng(seed)
    return [qwen_vl_pre_resize(Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)), 14)
            for _ in range(n)]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    return tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')


@pytest.fixture(scope='module')
def reference(exported):
    backend = create_backend(BackendConfig(model=str(exported[0]), device='cpu', dtype='fp32',
                                           max_new_tokens=NEW_TOKENS))
    with backend:
        yield backend


def ort(folder, **kw):
    kw.setdefault('max_new_tokens', NEW_TOKENS)
    return create_backend(BackendConfig(backend='onnxruntime', engine_dir=str(folder),
                                        device='cpu', **kw))


def variant(src, dst, edit):
    """Same graphs (symlinked), edited manifest."""
    dst.mkdir()
    for p in src.iterdir():
        if p.name != 'manifest.json':
            os.symlink(p, dst / p.name)
    data = json.loads((src / 'manifest.json').read_text())
    edit(data)
    (dst / 'manifest.json').write_text(json.dumps(data))
    return dst


def test_every_video_window_matches_the_reference_and_frames_are_encoded_once(
        exported, tmp_path):
    from procvlm_ros.media.video import write_video
    from procvlm_ros.offline import infer_progress_from_video

    checkpoint, folder = exported
    video = write_video(tmp_path / 'clip.mp4', moving_frames(), fps=10.0)
    common = dict(video_path=video, task=TASK, window_size=8, plot=False, show_progress=False)
    ref = infer_progress_from_video(model_path=str(checkpoint), backend='transformers',
                                    torch_dtype='fp32', device='cpu',
                                    max_new_tokens=NEW_TOKENS, **common)
    backend = ort(folder)
    got = infer_progress_from_video(backend=backend, **common)
    assert len(got) == len(ref) == 10
    for a, b in zip(ref, got):
        assert b['window_frame_indices'] == a['window_frame_indices']
        assert b['model_output'] == a['model_output'], a['sample_index']
    assert any(r['model_output'] for r in got)
    # 10 windows x 8 frames: each of the 10 sampled frames is encoded exactly once.
    stats = backend.cache_stats()
    assert (stats['misses'], stats['hits']) == (10, 70)
    assert stats['hit_rate'] == pytest.approx(70 / 80)


def test_tokens_timings_and_vision_cache_on_direct_requests(exported, reference):
    backend = ort(exported[1])
    frames = images(9, seed=1)
    keys = [('ep', i) for i in range(9)]
    with backend:
        for start in (0, 1):  # slide by one frame
            request = GenerationRequest(frames[start:start + 8], TASK, keys[start:start + 8])
            want = reference.generate(request)
            got = backend.generate(request)
            assert got.token_ids == want.token_ids and got.text == want.text
            assert got.prompt_tokens == want.prompt_tokens
            assert len(backend.step_times) == got.generated_tokens - 1
        assert got.timings['vision_frames_encoded'] == 1.0
        assert got.timings['vision_frames_reused'] == 7.0
        assert got.timings['vision_cache_hit_rate'] == pytest.approx(7 / 16)
        assert all(got.timings[k] > 0 for k in ('vision_s', 'prefill_s', 'decode_s'))
        # No keys: nothing is cached, every frame is encoded, same answer.
        keyless = backend.generate(GenerationRequest(frames[1:9], TASK))
        assert keyless.timings['vision_frames_encoded'] == 8.0
        assert keyless.token_ids == got.token_ids
        # A key reused for other pixels is re-encoded, never served stale.
        swapped = frames[1:8] + [images(1, seed=5)[0]]  # key (ep, 8), other pixels
        request = GenerationRequest(swapped, TASK, keys[1:9])
        again = backend.generate(request)
        assert again.timings['vision_frames_encoded'] == 1.0
        assert again.token_ids == reference.generate(request).token_ids


def test_profile_messages_and_assistant_prefix_match_the_reference(exported, reference):
    """A profile's own chat (system turn, text between images) and reply prefix, as rendered."""
    frames = images(3, seed=2)
    messages = [{'role': 'system', 'content': 'You navigate.'},
                {'role': 'user', 'content': [
                    {'type': 'text', 'text': 'Route: go left.\nPrevious:'},
                    {'type': 'image', 'image': frames[0]}, {'type': 'image', 'image': frames[1]},
                    {'type': 'text', 'text': '\nCurrent image:'},
                    {'type': 'image', 'image': frames[2]}]}]
    with ort(exported[1]) as backend:
        for prefix in ('', 'Action: '):
            request = GenerationRequest(frames, 'go left', messages=messages,
                                        assistant_prefix=prefix)
            want, got = reference.generate(request), backend.generate(request)
            assert got.token_ids == want.token_ids and got.prompt_tokens == want.prompt_tokens
        plain = backend.generate(GenerationRequest(frames, 'go left', messages=messages))
        assert got.prompt_tokens > plain.prompt_tokens


def test_chunked_prefill_gives_the_same_tokens(exported, reference, tmp_path):
    folder = variant(exported[1], tmp_path / 'chunked',
                     lambda d: d['limits'].update(prefill_chunk=16))
    request = GenerationRequest(images(8, seed=2), TASK)
    with ort(folder) as backend:
        got = backend.generate(request)
    assert got.prompt_tokens > 3 * 16  # really several chunks
    assert got.token_ids == reference.generate(request).token_ids


def test_fp16_export_loads_and_runs(exported, tmp_path_factory):
    from procvlm_ros.core.backends.manifest import ExportManifest

    _, folder16 = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports', dtype='fp16')
    manifest = ExportManifest.read(folder16)
    assert manifest.dtype == 'fp16'
    inputs = {t['name']: t['dtype'] for t in manifest.graph('decoder')['inputs']}
    assert inputs['image_embeds'] == 'float16' and inputs['past_key_0'] == 'float16'
    size16 = sum(f['size'] for _, f in manifest.graph_files('decoder'))
    size32 = sum(f['size'] for _, f in ExportManifest.read(exported[1]).graph_files('decoder'))
    assert size16 < 0.6 * size32
    request = GenerationRequest(images(8, seed=3), TASK, [(0, i) for i in range(8)])
    with ort(folder16) as b16, ort(exported[1]) as b32:
        r16, r32 = b16.generate(request), b32.generate(request)
    assert r16.generated_tokens == NEW_TOKENS or r16.token_ids[-1] in (151645, 151643)
    assert r16.token_ids[:4] == r32.token_ids[:4]


# ---------------------------------------------------------------- bad input


def test_window_longer_than_the_export_is_an_error_not_a_crash(exported):
    with ort(exported[1]) as backend:
        with pytest.raises(BackendError, match='9 frames .* at most 8 .*--max-frames 9'):
            backend.generate(GenerationRequest(images(9), TASK))
        big = qwen_vl_pre_resize(Image.new('RGB', (640, 480), (9, 9, 9)), 14)
        with pytest.raises(BackendError, match='12 visual tokens .* allows 4 .*--image-size'):
            backend.generate(GenerationRequest([big], TASK))
        estimator = ProgressEstimator(backend, TASK)
        frames = [Frame(np.zeros((48, 64, 3), np.uint8), i) for i in range(9)]
        estimate = estimator.estimate(frames, keys=list(range(9)))
        assert estimate.status is Status.ERROR and 'max_frames' in estimate.status_message
        # The backend still works after refusing.
        assert backend.generate(GenerationRequest(images(2), TASK)).generated_tokens > 0


def test_context_beyond_max_context_is_an_error(exported, tmp_path):
    short = variant(exported[1], tmp_path / 'short', lambda d: d['limits'].update(max_context=40))
    with ort(short) as backend, pytest.raises(BackendError, match='not fit max_context 40'):
        backend.generate(GenerationRequest(images(8), TASK))
    roomy = variant(exported[1], tmp_path / 'roomy', lambda d: d['limits'].update(max_context=96))
    request = GenerationRequest(images(2), TASK)  # 63 prompt tokens
    with ort(roomy, max_new_tokens=20) as backend:
        backend.ignore_eos = True
        assert backend.generate(request).generated_tokens == 20  # 63 + 20 fits in 96
    with ort(roomy, max_new_tokens=60) as backend:
        backend.ignore_eos = True  # the tiny model must run into the limit
        with pytest.raises(BackendError, match=r'reached max_context 96 .*\(prompt 63 tokens'):
            backend.generate(request)


def test_truncated_graph_files_are_refused_at_load(exported, tmp_path):
    folder = tmp_path / 'cut'
    folder.mkdir()
    for p in exported[1].iterdir():
        os.symlink(p, folder / p.name)
    data = (exported[1] / 'decoder.onnx.data').read_bytes()
    (folder / 'decoder.onnx.data').unlink()
    (folder / 'decoder.onnx.data').write_bytes(data[:len(data) // 2])
    with pytest.raises(BackendUnavailableError, match=r'decoder graph: decoder.onnx.data has '
                                                      rf'{len(data) // 2} bytes'):
        ort(folder).load()


def test_corrupt_graph_with_matching_sizes_names_the_graph(exported, tmp_path):
    proto = (exported[1] / 'decoder.onnx').read_bytes()

    def edit(d):
        d['graphs']['decoder']['files']['decoder.onnx']['size'] = 100
    folder = variant(exported[1], tmp_path / 'corrupt', edit)
    (folder / 'decoder.onnx').unlink()
    (folder / 'decoder.onnx').write_bytes(proto[:100])
    with pytest.raises(BackendUnavailableError, match='cannot load the decoder graph'):
        ort(folder).load()


def test_manifest_from_another_export_is_refused(exported, tmp_path_factory, tmp_path):
    same_sizes = variant(exported[1], tmp_path / 'other-id',
                         lambda d: d.update(export_id='0' * 32))
    with pytest.raises(BackendUnavailableError, match="describes export '0000.*another export"):
        ort(same_sizes).load()
    _, folder16 = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports', dtype='fp16')
    other = json.loads((Path(folder16) / 'manifest.json').read_text())
    swapped = variant(exported[1], tmp_path / 'swapped', lambda d: d.update(other))
    with pytest.raises(BackendUnavailableError, match='does not match its manifest'):
        ort(swapped).load()


def test_config_the_export_cannot_honour_is_refused(exported, tmp_path):
    with pytest.raises(BackendUnavailableError, match='greedily only'):
        ort(exported[1], temperature=0.7).load()
    with pytest.raises(BackendUnavailableError, match='value head is not exported'):
        ort(exported[1], enable_value_head=True).load()
    with pytest.raises(BackendUnavailableError, match='engine_dir is empty'):
        create_backend(BackendConfig(backend='onnxruntime')).load()
    with pytest.raises(BackendUnavailableError, match='not a procvlm-export folder'):
        ort(exported[0]).load()  # the checkpoint, not an export
    with pytest.raises(BackendError, match='not loaded'):
        ort(exported[1]).generate(GenerationRequest(images(1), TASK))


def _cuda_reason():
    try:
        import onnxruntime
        import torch
    except ImportError as e:
        return f'{e.name} is not installed'
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        return 'onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)'
    return '' if torch.cuda.is_available() else 'no CUDA GPU visible to torch'


@pytest.mark.gpu
@pytest.mark.skipif(bool(_cuda_reason()), reason=_cuda_reason() or 'ok')
def test_cuda_provider_gives_the_cpu_provider_tokens(exported):
    frames = images(9, seed=6)
    with ort(exported[1], device='cuda') as gpu, ort(exported[1]) as cpu:
        for start in (0, 1):
            request = GenerationRequest(frames[start:start + 8], TASK,
                                        [(0, i) for i in range(start, start + 8)])
            assert gpu.generate(request).token_ids == cpu.generate(request).token_ids
        assert gpu.cache_stats()['hits'] == 7
