"""manifest.json reading and verification, atomic writes, and the core import boundary."""

import json
import os
import stat
import subprocess
import sys

import pytest

from procvlm_ros.core.backends.manifest import (
    atomic_write_json,
    EXPORT_ID_KEY,
    ExportManifest,
    MANIFEST_NAME,
)
from procvlm_ros.core.errors import BackendUnavailableError
from procvlm_ros.export.testing import write_fake_export


def test_reads_a_valid_folder_and_its_facts(tmp_path):
    folder = write_fake_export(tmp_path / 'exp', export_id='abc')
    m = ExportManifest.read(folder)
    m.verify_files(hashes=True)
    assert m.export_id == 'abc' and m.dtype == 'fp32'
    assert m.graph_path('decoder') == folder / 'decoder.onnx'
    assert sorted(p.name for p, _ in m.graph_files('vision')) == ['vision.onnx',
                                                                  'vision.onnx.data']
    assert m.limits['max_frames'] == 2 and m.tokens['eos_token_ids'] == [1]


def test_missing_folder_and_missing_manifest_name_the_fix(tmp_path):
    with pytest.raises(BackendUnavailableError, match='does not exist'):
        ExportManifest.read(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BackendUnavailableError, match='procvlm-export onnx --model'):
        ExportManifest.read(tmp_path / 'empty')


@pytest.mark.parametrize(('edit', 'message'), [
    (lambda d: d.update(format='something-else'), 'not a procvlm-export manifest'),
    (lambda d: d.update(format_version=99), 'format_version 99'),
    (lambda d: d.pop('limits'), 'incomplete'),
    (lambda d: d['graphs'].pop('vision'), 'incomplete'),
])
def test_foreign_or_incomplete_manifest_is_refused(tmp_path, edit, message):
    folder = write_fake_export(tmp_path / 'exp')
    data = json.loads((folder / MANIFEST_NAME).read_text())
    edit(data)
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BackendUnavailableError, match=message):
        ExportManifest.read(folder)


def test_unreadable_manifest_is_refused(tmp_path):
    folder = write_fake_export(tmp_path / 'exp')
    (folder / MANIFEST_NAME).write_text('{not json')
    with pytest.raises(BackendUnavailableError, match='not readable JSON'):
        ExportManifest.read(folder)


def test_every_truncated_missing_or_altered_file_is_listed(tmp_path):
    folder = write_fake_export(tmp_path / 'exp')
    data = (folder / 'decoder.onnx.data').read_bytes()
    (folder / 'decoder.onnx.data').write_bytes(data[:1234])  # truncated
    (folder / 'vision.onnx').unlink()  # missing
    m = ExportManifest.read(folder)
    with pytest.raises(BackendUnavailableError) as err:
        m.verify_files()
    text = str(err.value)
    assert 'decoder.onnx.data has 1234 bytes, the manifest records 3000' in text
    assert 'vision.onnx is missing' in text
    # Same size, other content: only the hash check sees it.
    folder2 = write_fake_export(tmp_path / 'exp2')
    (folder2 / 'vision.onnx.data').write_bytes(b'x' * 1000)
    m2 = ExportManifest.read(folder2)
    m2.verify_files()
    with pytest.raises(BackendUnavailableError, match='vision.onnx.data content differs'):
        m2.verify_files(hashes=True)


def test_graph_metadata_from_another_export_is_refused(tmp_path):
    m = ExportManifest.read(write_fake_export(tmp_path / 'exp', export_id='mine'))
    m.verify_graph_metadata('vision', {EXPORT_ID_KEY: 'mine'})
    with pytest.raises(BackendUnavailableError, match="export 'theirs'.*export 'mine'"):
        m.verify_graph_metadata('vision', {EXPORT_ID_KEY: 'theirs'})
    with pytest.raises(BackendUnavailableError, match='another export'):
        m.verify_graph_metadata('decoder', {})


def test_io_mismatches_are_all_listed(tmp_path):
    m = ExportManifest.read(write_fake_export(tmp_path / 'exp'))
    m.verify_io('vision', {'vision_in': 'float32'}, {'vision_out': 'float32'})
    with pytest.raises(BackendUnavailableError) as err:
        m.verify_io('vision', {'vision_in': 'float16'}, {})
    assert "input 'vision_in' is float16, manifest says float32" in str(err.value)
    assert "output 'vision_out' is missing" in str(err.value)


def test_atomic_write_replaces_whole_file_readable_and_leaves_no_temp(tmp_path):
    path = tmp_path / 'sub' / 'm.json'
    atomic_write_json(path, {'a': 1})
    atomic_write_json(path, {'b': 2})
    assert json.loads(path.read_text()) == {'b': 2}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ['m.json']


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / 'm.json'
    atomic_write_json(path, {'a': 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {'bad': object()})
    assert json.loads(path.read_text()) == {'a': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['m.json']


BOUNDARY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import procvlm_ros.core.backends.onnx_backend, procvlm_ros.core.backends.trt_backend
import procvlm_ros.core.backends.exported, procvlm_ros.core.backends.trt_engines
import procvlm_ros.core.backends.manifest, procvlm_ros.core.backends.qwen3vl_inputs
import procvlm_ros.core.backends.greedy, procvlm_ros.core.backends.vision_cache
import procvlm_ros.core.backends.device_arrays
from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig
b = create_backend(BackendConfig(backend='onnxruntime', engine_dir='/nowhere'))
t = create_backend(BackendConfig(backend='tensorrt', engine_dir='/nowhere'))
print(b.name, t.name)
"""


def test_exported_backends_import_and_construct_without_heavy_libraries():
    blocked = {'torch', 'transformers', 'onnxruntime', 'tensorrt', 'onnx', 'rclpy'}
    out = subprocess.run([sys.executable, '-c', BOUNDARY.format(blocked=blocked)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['onnxruntime', 'tensorrt']
