"""procvlm-export trt without TensorRT: precision rules, profiles, LM-head split, engine cache."""

from dataclasses import replace
import json
from pathlib import Path

import numpy as np
import pytest

from procvlm_ros.core.backends import trt_engines as te
from procvlm_ros.core.backends.manifest import ExportManifest
from procvlm_ros.export import trt_build
from procvlm_ros.export.errors import ExportError
from procvlm_ros.export.testing import tiny_export, write_fake_export

PLATFORM = te.Platform('10.3.0', 'Orin', '8.7', '# R36 (release), REVISION: 4.3')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    return tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')


@pytest.mark.slow
def test_precision_must_match_the_strongly_typed_graphs(exported):
    m = ExportManifest.read(exported[1])
    trt_build.check_precision(m, 'fp32')
    with pytest.raises(ExportError, match='--precision fp16 needs an --dtype fp16 export'):
        trt_build.check_precision(m, 'fp16')
    with pytest.raises(ExportError, match='QuantizeLinear/DequantizeLinear.*ModelOpt'):
        trt_build.check_precision(m, 'int8')
    with pytest.raises(ExportError, match='must be one of'):
        trt_build.check_precision(m, 'fp8')


@pytest.mark.slow
def test_profiles_cover_every_dynamic_input_within_the_manifest_limits(exported):
    m = ExportManifest.read(exported[1])
    shapes = trt_build.profiles(m)
    for graph in ('vision', 'decoder'):
        dynamic = {t['name'] for t in m.graph(graph)['inputs']
                   if any(isinstance(d, str) for d in t['shape'])}
        for profile in shapes[graph]:
            assert set(profile) == dynamic
            for name, (lo, opt, hi) in profile.items():
                assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), name
    prefill, decode, verify = shapes['decoder']
    assert prefill['input_ids'][2] == [1, m.limits['prefill_chunk']]
    assert decode['input_ids'] == [[1, 1]] * 3
    assert prefill['logit_index'] == decode['logit_index'] == [[1]] * 3
    most = m.limits['max_verify_tokens']
    assert verify['input_ids'] == [[1, 2], [1, 17], [1, most]]
    assert verify['logit_index'] == [[2], [17], [most]]
    assert prefill['past_key_0'][2] == [1, 2, m.limits['max_context'], 16]
    assert prefill['image_embeds'][0] == [1 + 16 * 4, 64]  # zero row + 16 slots x 4 tokens
    assert shapes['vision'][0]['pixel_values'][2] == [8, 16, 1536]


@pytest.mark.slow
def test_lm_head_split_gives_identical_logits(exported, tmp_path):
    import onnx
    import onnxruntime as ort

    m = ExportManifest.read(exported[1])
    split = trt_build.split_lm_head(m.graph_path('decoder'), tmp_path / 'split.onnx', 3,
                                    151936)
    proto = onnx.load(str(split), load_external_data=False)
    heads = [i for i in proto.graph.initializer if i.name.startswith('lm_head.weight_split')]
    assert sorted(int(i.dims[0]) for i in heads) == [50645, 50645, 50646]
    assert 'lm_head.weight' not in {i.name for i in proto.graph.initializer}
    rng = np.random.default_rng(0)
    feed = {'input_ids': rng.integers(0, 1000, (1, 5)), 'visual_index': np.zeros((1, 5), int),
            'image_embeds': rng.normal(size=(7, 64)).astype(np.float32),
            'deepstack': rng.normal(size=(2, 7, 64)).astype(np.float32),
            'position_ids': np.tile(np.arange(5), (3, 1, 1)),
            'past_length': np.array([0]), 'logit_index': np.arange(5)}  # every position
    for i in range(2):
        for kind in ('key', 'value'):
            feed[f'past_{kind}_{i}'] = np.zeros((1, 2, 8, 16), np.float32)
    runs = [ort.InferenceSession(str(p), providers=['CPUExecutionProvider']).run(None, feed)
            for p in (m.graph_path('decoder'), split)]
    assert np.max(np.abs(runs[0][0] - runs[1][0])) <= 1e-5 * np.max(np.abs(runs[0][0]))
    assert runs[0][0].shape == (5, 151936)
    assert np.array_equal(runs[0][1], runs[1][1])


def _fake_builds(monkeypatch):
    calls = []

    def serialize(path, shapes, workspace, verbose):
        calls.append(path.name)
        return b'engine-bytes-' + str(len(calls)).encode()
    monkeypatch.setattr(trt_build, '_serialize', serialize)
    return calls


def test_engine_cache_reuses_current_and_rebuilds_stale_engines(tmp_path, monkeypatch):
    calls = _fake_builds(monkeypatch)
    m = ExportManifest.read(write_fake_export(tmp_path / 'exp', export_id='e1'))
    opts = trt_build.TrtBuildOptions(onnx=m.folder, out=tmp_path / 'engines')
    opts.out.mkdir()
    shapes = [{'x': [[1], [1], [1]]}]
    first = trt_build._engine(opts, m, 'vision', shapes, PLATFORM, None)
    assert calls == ['vision.onnx'] and first['file'] == f'vision.{first["key"][:16]}.engine'
    assert (opts.out / first['file']).read_bytes() == b'engine-bytes-1'
    assert not [p for p in opts.out.iterdir() if p.name.endswith('.tmp')]
    again = trt_build._engine(opts, m, 'vision', shapes, PLATFORM, first)
    assert again == first and len(calls) == 1  # current: reused, not rebuilt
    moved = replace(PLATFORM, tensorrt_version='10.14.1', gpu_name='NVIDIA H100')
    rebuilt = trt_build._engine(opts, m, 'vision', shapes, moved, first)
    assert len(calls) == 2 and rebuilt['key'] != first['key']
    with pytest.raises(ExportError) as err:
        trt_build._engine(replace(opts, rebuild='never'), m, 'vision', shapes, PLATFORM,
                          rebuilt)
    assert "tensorrt_version: engine built for '10.14.1', this machine has '10.3.0'" in str(
        err.value)
    assert 'gpu_name' in str(err.value)
    (opts.out / first['file']).write_bytes(b'cut')  # truncated engine on disk
    trt_build._engine(opts, m, 'vision', shapes, PLATFORM, first)
    assert len(calls) == 3
    other_shapes = [{'x': [[1], [2], [4]]}]
    trt_build._engine(opts, m, 'vision', other_shapes, PLATFORM, first)
    assert len(calls) == 4  # profiles are part of the key


def test_build_without_tensorrt_explains_where_to_get_it(tmp_path):
    pytest.importorskip('onnx')
    try:
        import tensorrt  # noqa: F401
        pytest.skip('TensorRT is installed here')
    except ImportError:
        pass
    folder = write_fake_export(tmp_path / 'exp')
    opts = trt_build.TrtBuildOptions(onnx=folder, out=tmp_path / 'engines', precision='fp32')
    with pytest.raises(ExportError, match='TensorRT is not importable here.*JetPack'):
        trt_build.build_engines(opts, show_progress=False)


def test_engine_index_round_trip_and_copied_small_files(tmp_path):
    folder = write_fake_export(tmp_path / 'exp')
    out = tmp_path / 'engines'
    out.mkdir()
    trt_build.copy_small_files(folder, out)
    assert json.loads((out / 'manifest.json').read_text())['export_id'] == 'fake-export'
    record = te.make_record(graph='vision', onnx_sha256={'a': '1'}, export_id='fake-export',
                            precision='fp16', profiles=[], options={}, platform=PLATFORM)
    te.write_index(out, {'vision': record}, 'fake-export')
    assert te.read_index(Path(out))['engines']['vision']['key'] == record['key']


@pytest.mark.parametrize(('version', 'verify'), [(2, 33), (2, 3), (1, 0)])
def test_verify_profile_only_for_format_2_exports(tmp_path, version, verify):
    from procvlm_ros.core.backends.trt_backend import decoder_profile
    folder = write_fake_export(tmp_path / 'x')
    data = json.loads((folder / 'manifest.json').read_text())
    data['format_version'] = version
    if verify:
        data['limits']['max_verify_tokens'] = verify
    (folder / 'manifest.json').write_text(json.dumps(data))
    decoder = trt_build.profiles(ExportManifest.read(folder))['decoder']
    assert len(decoder) == (3 if version == 2 else 2)
    assert all(('logit_index' in p) == (version == 2) for p in decoder)
    if version == 2:
        assert decoder[2]['input_ids'] == [[1, 2], [1, min(verify, 17)], [1, verify]]
    # The runtime picks the profile of each pass: decode, verify, prefill.
    profiles = len(decoder)
    assert decoder_profile((1, 128, 1), profiles) == 1
    assert decoder_profile((9, 128, 9), profiles) == (2 if version == 2 else 0)
    assert decoder_profile((300, 384, 1), profiles) == 0
