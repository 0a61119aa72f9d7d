"""
TensorRT backend.

Without TensorRT or a GPU (CI): the refusals a robot sees (no TensorRT, cpu device, missing,
truncated or foreign engines) are tested. The GPU test builds engines from the tiny export and
compares with ONNX Runtime token for token; it is skipped here with the reason.
"""

from dataclasses import asdict, replace
import importlib.util

import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.backends import trt_engines as te
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendUnavailableError
from procvlm_ros.export.testing import write_fake_export

HAVE_TRT = importlib.util.find_spec('tensorrt') is not None
PLATFORM = te.Platform('10.3.0', 'Orin', '8.7', '# R36 (release), REVISION: 4.3')


def _gpu_reason():
    if not HAVE_TRT:
        return 'TensorRT is not installed (not on PyPI; JetPack or NVIDIA index)'
    try:
        import torch
    except ImportError:
        return 'torch is not installed'
    return '' if torch.cuda.is_available() else 'no CUDA GPU visible to torch'


def _engines(folder, export_id='fake-export', platform=PLATFORM):
    engines = {}
    for graph in ('vision', 'decoder'):
        (folder / f'{graph}.engine').write_bytes(b'x' * 64)
        record = te.make_record(graph=graph, onnx_sha256={}, export_id=export_id,
                                precision='fp16', profiles=[], options={}, platform=platform)
        engines[graph] = dict(record, file=f'{graph}.engine', size=64)
    te.write_index(folder, engines, export_id)
    return te.read_index(folder)


@pytest.mark.skipif(HAVE_TRT, reason='TensorRT is installed: the missing-TensorRT path '
                                     'cannot be exercised')
def test_load_without_tensorrt_is_a_clear_refusal(tmp_path):
    folder = write_fake_export(tmp_path / 'engines')
    backend = create_backend(BackendConfig(backend='tensorrt', engine_dir=str(folder)))
    with pytest.raises(BackendUnavailableError, match='TensorRT is not importable here'):
        backend.load()


def test_cpu_device_is_refused(tmp_path):
    folder = write_fake_export(tmp_path / 'engines')
    backend = create_backend(BackendConfig(backend='tensorrt', engine_dir=str(folder),
                                           device='cpu'))
    with pytest.raises(BackendUnavailableError, match='runs on a CUDA GPU; device is cpu'):
        backend.load()


def test_current_engines_pass_the_check(tmp_path):
    folder = write_fake_export(tmp_path / 'engines')
    te.check_engines(_engines(folder), folder, 'fake-export', PLATFORM)


def test_engines_for_another_gpu_and_tensorrt_are_refused_with_each_reason(tmp_path):
    folder = write_fake_export(tmp_path / 'engines')
    index = _engines(folder)
    here = replace(PLATFORM, tensorrt_version='10.14.1', gpu_name='NVIDIA H100 80GB HBM3',
                   compute_capability='9.0', l4t_release='')
    with pytest.raises(BackendUnavailableError) as err:
        te.check_engines(index, folder, 'fake-export', here)
    text = str(err.value)
    for field in ('tensorrt_version', 'gpu_name', 'compute_capability', 'l4t_release'):
        assert f'vision: {field}: engine built for' in text
        assert f'decoder: {field}:' in text
    assert "'10.3.0', this machine has '10.14.1'" in text
    assert 'Rebuild on this machine: procvlm-export trt' in text


def test_truncated_missing_or_foreign_engines_are_refused(tmp_path):
    folder = write_fake_export(tmp_path / 'engines', export_id='new-export')
    index = _engines(folder, export_id='old-export')
    (folder / 'decoder.engine').write_bytes(b'x' * 10)
    with pytest.raises(BackendUnavailableError) as err:
        te.check_engines(index, folder, 'new-export', PLATFORM)
    text = str(err.value)
    assert 'decoder: engine file decoder.engine is missing or truncated' in text
    assert "vision: engine was built from export 'old-export'" in text
    del index['engines']['vision']
    with pytest.raises(BackendUnavailableError, match='vision: no engine recorded'):
        te.check_engines(index, folder, 'old-export', PLATFORM)


def test_missing_engine_index_names_the_build_command(tmp_path):
    folder = write_fake_export(tmp_path / 'exp')
    with pytest.raises(BackendUnavailableError, match='procvlm-export trt --onnx'):
        te.read_index(folder)


def test_key_depends_on_every_build_input():
    base = dict(graph='decoder', onnx_sha256={'decoder.onnx': 'a'}, export_id='e',
                precision='fp16', profiles=[{'x': [[1], [1], [1]]}], options={'split': 0},
                platform=PLATFORM)
    key = te.make_record(**base)['key']
    changes = [dict(onnx_sha256={'decoder.onnx': 'b'}), dict(export_id='f'),
               dict(precision='int8'), dict(profiles=[]), dict(options={'split': 4}),
               dict(platform=replace(PLATFORM, compute_capability='8.6')),
               dict(platform=replace(PLATFORM, l4t_release=''))]
    assert all(te.make_record(**dict(base, **c))['key'] != key for c in changes)
    assert te.make_record(**base)['key'] == key
    assert asdict(PLATFORM)['gpu_name'] == 'Orin'


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(bool(_gpu_reason()), reason=_gpu_reason() or 'ok')
def test_tensorrt_matches_onnxruntime_token_for_token(tmp_path_factory, tmp_path):
    from procvlm_ros.core.backends.base import GenerationRequest
    from procvlm_ros.core.backends.manifest import ExportManifest
    from procvlm_ros.export.check import check_images
    from procvlm_ros.export.testing import tiny_export
    from procvlm_ros.export.trt_build import build_engines, TrtBuildOptions

    _, folder = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')
    build_engines(TrtBuildOptions(onnx=folder, out=tmp_path / 'engines', precision='fp32'),
                  show_progress=False)
    frames = check_images(ExportManifest.read(folder), 9, seed=4)
    with create_backend(BackendConfig(backend='tensorrt', engine_dir=str(tmp_path / 'engines'),
                                      max_new_tokens=12)) as trt, \
            create_backend(BackendConfig(backend='onnxruntime', engine_dir=str(folder),
                                         device='cpu', max_new_tokens=12)) as ort:
        for start in (0, 1):
            request = GenerationRequest(frames[start:start + 8], 'stack the blocks',
                                        [(0, i) for i in range(start, start + 8)])
            assert trt.generate(request).token_ids == ort.generate(request).token_ids
        assert trt.cache_stats()['hits'] == 7
