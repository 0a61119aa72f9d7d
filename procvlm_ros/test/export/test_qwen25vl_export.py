"""
Qwen2.5-VL through procvlm-export onnx and the onnxruntime backend (issue 13), on the tiny random
Qwen2.5-VL checkpoint: every window of a short video token for token against the transformers
reference, with and without speculation drafts; the vision graph against the model's ``visual``
for several grids; ``check``'s per-tensor parity; the manifest's family; the refusal of InternVL
before any weights are read; manifests without ``model.family`` still read as Qwen3-VL.
"""

import json
import shutil

import numpy as np
from PIL import Image
import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('onnxruntime')

from procvlm_ros.core.backends import create_backend  # noqa: E402
from procvlm_ros.core.backends.base import GenerationRequest  # noqa: E402
from procvlm_ros.core.backends.families import family_by_name  # noqa: E402
from procvlm_ros.core.backends.manifest import ExportManifest  # noqa: E402
from procvlm_ros.core.config import BackendConfig  # noqa: E402
from procvlm_ros.core.image import qwen_vl_pre_resize  # noqa: E402
from procvlm_ros.export import cli  # noqa: E402
from procvlm_ros.export.errors import ExportError  # noqa: E402
from procvlm_ros.export.testing import tiny_checkpoint, tiny_export  # noqa: E402
from procvlm_ros.testing.helpers import link_copy  # noqa: E402

pytestmark = pytest.mark.slow
TASK = 'stack the blocks'
NEW_TOKENS = 12
WINDOW_INPUTS = ['pixel_values', 'rope_pos', 'window_index', 'reverse_index', 'window_ids']


def with_random_biases(src, dst, seed=11):
    """
    A copy of a checkpoint with random biases where the tiny model's are all zero: the language
    model's q/k/v biases (Qwen2-style attention) and the vision blocks' biases, so they take
    part in every comparison. The merger's stay zero: on the tiny random tower its output bias
    would swamp the image features, and every window would give the same answer.
    """
    from safetensors.torch import load_file, save_file
    import torch

    if (dst / 'model.safetensors').is_file():
        return dst
    shutil.copytree(src, dst, dirs_exist_ok=True)
    weights = load_file(str(src / 'model.safetensors'))
    gen = torch.Generator().manual_seed(seed)
    for name in sorted(weights):
        if name.endswith(('q_proj.bias', 'k_proj.bias', 'v_proj.bias')):
            scale = 0.2
        elif name.endswith('.bias') and '.blocks.' in name:
            scale = 0.02
        else:
            continue
        weights[name] = torch.randn(weights[name].shape, generator=gen) * scale
    save_file(weights, str(dst / 'model.safetensors'), metadata={'format': 'pt'})
    return dst


@pytest.fixture(scope='module')
def q25(tmp_path_factory):
    """``(checkpoint, export folder)``: tiny Qwen2.5-VL with random biases, 64x48 frames."""
    from procvlm_ros.export.onnx_export import export_onnx, OnnxExportOptions

    base = tmp_path_factory.getbasetemp() / 'procvlm-exports'
    checkpoint = with_random_biases(tiny_checkpoint(base, 7, 'qwen2_5_vl'),
                                    base / 'tiny-qwen2_5_vl-7-biases')
    out = base / 'export-qwen2_5_vl-7-biases-fp32-64x48-f8'
    if not (out / 'manifest.json').is_file():
        export_onnx(OnnxExportOptions(model=str(checkpoint), out=out, image_size=(64, 48)),
                    show_progress=False)
    return checkpoint, out


def config(backend, model, **kw):
    where = dict(model=str(model)) if backend == 'transformers' else dict(engine_dir=str(model))
    kw.setdefault('max_new_tokens', NEW_TOKENS)
    return BackendConfig(backend=backend, device='cpu', dtype='fp32', **where, **kw)


def moving_frames(n=10, h=48, w=64, seed=0):
    """A block sliding over a random background: every frame differs."""
    base = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    frames = []
    for i in range(n):
        img = base.copy()
        img[8:28, 2 + 4 * i:14 + 4 * i] = (240, 40, 30)
        frames.append(img)
    return frames


def test_export_folder_names_the_family_and_the_window_inputs(q25):
    """Also builds the module's export, so the parity tests below stay short."""
    import onnx

    from procvlm_ros.export.trt_build import profiles
    checkpoint, folder = q25
    m = ExportManifest.read(folder)
    m.verify_files(hashes=True)
    assert m.family == 'qwen2_5_vl' and m.model['family'] == 'qwen2_5_vl'
    assert m.model['architecture'] == 'Qwen2_5_VLForConditionalGeneration'
    assert m.model['num_deepstack'] == 0 and m.model['window_size'] == 56
    assert m.model['fullatt_block_indexes'] == [1, 3] and m.model['patch_dim'] == 3 * 2 * 14 * 14
    assert m.data['source']['model_type'] == 'qwen2_5_vl'
    vision_in = [t['name'] for t in m.graph('vision')['inputs']]
    decoder_in = [t['name'] for t in m.graph('decoder')['inputs']]
    assert vision_in == WINDOW_INPUTS
    assert [t['name'] for t in m.graph('vision')['outputs']] == ['image_embeds']
    assert decoder_in[:6] == ['input_ids', 'visual_index', 'image_embeds', 'position_ids',
                              'past_length', 'logit_index'] and 'deepstack' not in decoder_in
    for graph in ('vision', 'decoder'):
        proto = onnx.load(str(folder / f'{graph}.onnx'), load_external_data=False)
        assert {o.domain for o in proto.opset_import} == {''}  # ai.onnx only
        bad = {'NonZero', 'Loop', 'If', 'SequenceEmpty', 'SplitToSequence', 'TopK'}
        assert not bad & {n.op_type for n in proto.graph.node}
    # TensorRT profiles name exactly the graphs' inputs (TensorRT itself is not run here).
    shapes = profiles(m)
    assert list(shapes['vision'][0]) == vision_in
    patches = m.limits['max_patches_per_frame']
    assert shapes['vision'][0]['window_index'] == [[1], [patches // 4], [patches // 4]]
    assert shapes['vision'][0]['window_ids'] == [[4], [patches], [patches]]
    for profile in shapes['decoder']:  # past_length is a fixed [1]: no profile needed
        assert set(profile) == set(decoder_in) - {'past_length'}


def test_every_video_window_matches_the_reference_with_and_without_drafts(q25, tmp_path):
    from procvlm_ros.media.video import write_video
    from procvlm_ros.offline import infer_progress_from_video

    checkpoint, folder = q25
    video = write_video(tmp_path / 'clip.mp4', moving_frames(), fps=10.0)
    common = dict(video_path=video, task=TASK, window_size=8, plot=False, show_progress=False)
    ref = infer_progress_from_video(model_path=str(checkpoint), backend='transformers',
                                    torch_dtype='fp32', device='cpu',
                                    max_new_tokens=NEW_TOKENS, **common)
    plain = create_backend(config('onnxruntime', folder, speculation=False))
    got = infer_progress_from_video(backend=plain, **common)
    fast = create_backend(config('onnxruntime', folder, speculation=True))
    drafted = infer_progress_from_video(backend=fast, speculation=True, **common)
    assert len(got) == len(drafted) == len(ref) == 10
    for a, b, c in zip(ref, got, drafted):
        assert b['window_frame_indices'] == a['window_frame_indices']
        assert b['model_output'] == a['model_output'], a['sample_index']
        assert c['model_output'] == a['model_output'], a['sample_index']
    assert len({r['model_output'] for r in ref}) > 1  # the frames change the answer
    # Drafts from the previous window save decoder passes; plain greedy passes every token.
    assert sum(r['decoder_passes'] for r in drafted) < sum(r['decoder_passes'] for r in got)
    assert sum(r['draft_tokens_accepted'] for r in drafted) > 0
    # 10 windows x 8 frames: each of the 10 sampled frames is encoded exactly once.
    stats = plain.cache_stats()
    assert (stats['misses'], stats['hits']) == (10, 70)


def test_direct_requests_with_odd_drafts_and_chunked_prefill_are_token_for_token(q25, tmp_path):
    checkpoint, folder = q25
    frames = [qwen_vl_pre_resize(Image.fromarray(f), 14) for f in moving_frames(9, seed=3)]
    keys = [('ep', i) for i in range(9)]
    ref = create_backend(config('transformers', checkpoint))
    fast = create_backend(config('onnxruntime', folder, speculation=True))
    with ref, fast:
        previous = None
        for start in (0, 1):  # slide by one frame; the previous answer is the draft
            request = GenerationRequest(frames[start:start + 8], TASK, keys[start:start + 8],
                                        draft_token_ids=previous)
            want = ref.generate(request)
            got = fast.generate(request)
            assert got.token_ids == want.token_ids and got.text == want.text
            assert got.prompt_tokens == want.prompt_tokens
            previous = got.token_ids
        assert got.timings['vision_frames_encoded'] == 1.0
        rng = np.random.default_rng(0)
        answer = want.token_ids
        for draft in ([], rng.integers(0, 151000, 30).tolist(), answer[::-1], answer * 2):
            request = GenerationRequest(frames[1:9], TASK, keys[1:9], draft_token_ids=draft)
            assert fast.generate(request).token_ids == answer
        # Keyless frames: encoded again, same answer.
        keyless = fast.generate(GenerationRequest(frames[1:9], TASK))
        assert keyless.timings['vision_frames_encoded'] == 8.0
        assert keyless.token_ids == answer
    # Prefill in chunks of 16 tokens and verify passes of at most 16: same graphs, same answer.
    chunked = link_copy(folder, tmp_path / 'chunked', skip={'manifest.json'})
    data = json.loads((folder / 'manifest.json').read_text())
    data['limits'].update(prefill_chunk=16, max_verify_tokens=16)
    (chunked / 'manifest.json').write_text(json.dumps(data))
    with create_backend(config('onnxruntime', chunked, speculation=True)) as backend:
        got = backend.generate(GenerationRequest(frames[1:9], TASK, draft_token_ids=answer))
    assert got.prompt_tokens > 3 * 16 and got.token_ids == answer


@pytest.mark.parametrize('frames', [1, 3])
def test_vision_graph_matches_the_visual_forward_for_several_grids(q25, frames):
    import onnxruntime as ort
    import torch
    import transformers

    from procvlm_ros.core.backends.family_inputs import family_inputs
    checkpoint, folder = q25
    m = ExportManifest.read(folder)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(checkpoint), dtype=torch.float32, attn_implementation='eager').eval()
    session = ort.InferenceSession(str(m.graph_path('vision')),
                                   providers=['CPUExecutionProvider'])
    family = family_inputs(m.family, m.model)
    rng = np.random.default_rng(frames)
    # One window, several windows with padding, tall, wide; window side = 2 merged tokens.
    for gh, gw in [(4, 4), (6, 6), (8, 12), (14, 6), (10, 22)]:
        pixels = rng.normal(size=(frames * gh * gw, m.model['patch_dim'])).astype(np.float32)
        with torch.no_grad():
            ref = model.model.visual(torch.from_numpy(pixels),
                                     grid_thw=torch.tensor([[1, gh, gw]] * frames))
        ref = ref.pooler_output.numpy()
        feed = {'pixel_values': pixels.reshape(frames, gh * gw, -1),
                **family.vision_arrays(gh, gw)}
        (embeds,) = session.run(None, feed)
        assert embeds.shape == (frames, gh * gw // 4, m.model['hidden_size'])
        err = np.abs(embeds.reshape(ref.shape) - ref).max() / np.abs(ref).max()
        assert err < 1e-5, (gh, gw, err)


def test_check_reports_parity_within_tolerance(q25):
    from procvlm_ros.export.check import check_export

    checkpoint, folder = q25
    report = check_export(folder, str(checkpoint), frames=3, new_tokens=16)
    assert report.ok, report.table()
    names = {e.name for e in report.outputs}
    assert {'vision.image_embeds', 'decoder.prefill_logits', 'decoder.decode_logits',
            'decoder.verify_logits', 'decoder.present_key_1'} <= names
    assert not any(n.startswith('vision.deepstack') for n in names)
    assert all(e.rel <= 1e-4 for e in report.outputs)
    assert report.greedy_identical and len(report.reference_tokens) == 16


@pytest.mark.parametrize('model_type', ['internvl', 'internvl_chat'])
def test_exporter_refuses_internvl_before_reading_weights(model_type, tmp_path, capsys):
    from procvlm_ros.export.onnx_export import export_onnx, OnnxExportOptions

    ckpt = tmp_path / 'internvl'
    ckpt.mkdir()  # config.json only: the refusal must come before any weights are looked at
    (ckpt / 'config.json').write_text(json.dumps({'model_type': model_type}))
    note = family_by_name(model_type).export_note
    assert note
    out = tmp_path / 'out'
    with pytest.raises(ExportError) as info:
        export_onnx(OnnxExportOptions(model=str(ckpt), out=out), show_progress=False)
    assert note in str(info.value) and "'qwen2_5_vl'" in str(info.value)
    rc = cli.main(['--quiet', 'onnx', '--model', str(ckpt), '--out', str(out)])
    assert rc == cli.EXIT_BAD_INPUT and note in capsys.readouterr().err
    assert not out.exists()


def test_exporter_refuses_format_1_and_a_sliding_window_language_model(q25, tmp_path):
    from procvlm_ros.export.onnx_export import export_onnx, OnnxExportOptions

    checkpoint, _ = q25
    out = tmp_path / 'out'
    with pytest.raises(ExportError, match='Qwen3-VL compatibility format'):
        export_onnx(OnnxExportOptions(model=str(checkpoint), out=out, format_version=1),
                    show_progress=False)
    sliding = tmp_path / 'sliding'
    shutil.copytree(checkpoint, sliding)
    cfg = json.loads((sliding / 'config.json').read_text())
    cfg['text_config'].update(use_sliding_window=True, sliding_window=32, max_window_layers=0)
    (sliding / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ExportError, match='sliding-window attention'):
        export_onnx(OnnxExportOptions(model=str(sliding), out=out), show_progress=False)
    assert not out.exists()


def test_manifest_without_family_reads_and_serves_as_qwen3_vl(tmp_path, tmp_path_factory):
    from procvlm_ros.export.testing import write_fake_export
    from procvlm_ros.export.trt_build import profiles

    fake = ExportManifest.read(write_fake_export(tmp_path / 'fake'))
    assert 'family' not in fake.model and fake.family == 'qwen3_vl'
    assert list(profiles(fake)['vision'][0]) == ['pixel_values', 'interp_indices',
                                                 'interp_weights', 'rope_pos']
    # A real Qwen3-VL export with model.family removed (as written before Qwen2.5-VL support).
    _, folder = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')
    assert ExportManifest.read(folder).family == 'qwen3_vl'
    old = link_copy(folder, tmp_path / 'old', skip={'manifest.json'})
    data = json.loads((folder / 'manifest.json').read_text())
    del data['model']['family']
    (old / 'manifest.json').write_text(json.dumps(data))
    frames = [qwen_vl_pre_resize(Image.fromarray(f), 14) for f in moving_frames(8)]
    request = GenerationRequest(frames, TASK)
    with create_backend(config('onnxruntime', folder)) as new, \
            create_backend(config('onnxruntime', old)) as backend:
        assert backend.manifest.family == 'qwen3_vl'
        assert backend.generate(request).token_ids == new.generate(request).token_ids
