"""procvlm-export onnx / check: the exported folder, its parity figures and the CLI's errors."""

import json
from pathlib import Path
import shutil

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends.manifest import EXPORT_ID_KEY, ExportManifest, sha256_file
from procvlm_ros.export import cli
from procvlm_ros.export.check import CheckReport, OutputError
from procvlm_ros.export.errors import ExportError
from procvlm_ros.export.testing import tiny_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    return tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')


def test_folder_is_self_describing_and_self_contained(exported, tmp_path):
    import onnx
    checkpoint, folder = exported
    m = ExportManifest.read(folder)
    m.verify_files(hashes=True)
    for name in ('tokenizer.json', 'tokenizer_config.json', 'chat_template.jinja',
                 'preprocessor_config.json', 'generation_config.json', 'config.json'):
        assert m.data['files'][name] == sha256_file(folder / name)
    src = m.data['source']
    assert src['weights_sha256'] == {'model.safetensors':
                                     sha256_file(checkpoint / 'model.safetensors')}
    assert src['config_sha256'] == sha256_file(checkpoint / 'config.json')
    assert {'torch', 'transformers', 'onnx', 'procvlm_ros'} <= set(m.data['exporter'])
    assert m.data['opset'] == 18 and m.tokens['eos_token_ids'] == [151645, 151643]
    assert m.tokens['image_token_id'] == 151655
    assert m.limits['frame_grid'] == [4, 4] and m.limits['max_tokens_per_frame'] == 4
    assert m.data['preprocessing']['size'] == {'shortest_edge': 4096, 'longest_edge': 16384}
    for graph in ('vision', 'decoder'):
        proto = onnx.load(str(folder / f'{graph}.onnx'), load_external_data=False)
        assert {p.key: p.value for p in proto.metadata_props}[EXPORT_ID_KEY] == m.export_id
        assert [i.name for i in proto.graph.input] == [t['name']
                                                      for t in m.graph(graph)['inputs']]
        assert {o.domain for o in proto.opset_import} == {''}  # ai.onnx only
        bad = {'NonZero', 'Loop', 'If', 'SequenceEmpty', 'SplitToSequence'}
        assert not bad & {n.op_type for n in proto.graph.node}
    shapes = {t['name']: t['shape'] for t in m.graph('decoder')['inputs']}
    assert shapes['input_ids'] == [1, 'seq'] and shapes['past_key_1'][2] == 'cache_slots'
    # Moved away from the checkpoint (hidden), the folder alone still answers.
    moved = tmp_path / 'robot' / 'procvlm'
    shutil.copytree(folder, moved)
    hidden = checkpoint.with_name(checkpoint.name + '.hidden')
    checkpoint.rename(hidden)
    try:
        from procvlm_ros.core.backends import create_backend
        from procvlm_ros.core.backends.base import GenerationRequest
        from procvlm_ros.core.config import BackendConfig
        backend = create_backend(BackendConfig(backend='onnxruntime', engine_dir=str(moved),
                                               device='cpu', max_new_tokens=4))
        with backend:
            frame = Image.fromarray(np.full((48, 64, 3), 90, np.uint8))
            assert backend.generate(GenerationRequest([frame], 'wave')).generated_tokens > 0
    finally:
        hidden.rename(checkpoint)


def test_check_cli_reports_parity_within_tolerance(exported, tmp_path, capsys):
    checkpoint, folder = exported
    report_path = tmp_path / 'report.json'
    rc = cli.main(['--quiet', 'check', '--onnx', str(folder), '--model', str(checkpoint),
                   '--frames', '3', '--new-tokens', '16', '--json', str(report_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(report_path.read_text())
    errors = {e['name']: e for e in report['outputs']}
    assert errors['decoder.prefill_logits']['rel'] <= 1e-4
    assert errors['decoder.decode_logits']['rel'] <= 1e-4
    assert errors['vision.image_embeds']['rel'] <= 1e-4
    assert {f'decoder.present_key_{i}' for i in range(2)} <= set(errors)
    assert report['greedy_identical'] and len(report['reference_tokens']) == 16
    assert 'decoder.prefill_logits' in out and 'OK' in out


def test_check_cli_fails_listing_every_output_beyond_tolerance(monkeypatch, capsys):
    from procvlm_ros.export import check

    report = CheckReport('x', 'fp32', [OutputError('vision.image_embeds', 1e-3, 2e-3, 1e-4),
                                       OutputError('decoder.prefill_logits', 1.0, 5e-2, 1e-4),
                                       OutputError('decoder.decode_logits', 1e-6, 1e-7, 1e-4)],
                         reference_tokens=[1, 2, 3], onnx_tokens=[1, 2, 4])
    monkeypatch.setattr(check, 'check_export', lambda *a, **k: report)
    assert cli.main(['--quiet', 'check', '--onnx', 'x', '--model', 'y']) == cli.EXIT_MISMATCH
    err = capsys.readouterr().err
    assert 'vision.image_embeds: rel 0.002' in err and 'decoder.prefill_logits' in err
    assert 'decode_logits' not in err and 'first 2 of 3 tokens match' in err


def test_check_cli_on_a_truncated_export_is_a_bad_input(exported, tmp_path, capsys):
    folder = tmp_path / 'cut'
    shutil.copytree(exported[1], folder)
    with (folder / 'vision.onnx.data').open('r+b') as f:
        f.truncate(1000)
    rc = cli.main(['--quiet', 'check', '--onnx', str(folder), '--model', str(exported[0])])
    assert rc == cli.EXIT_BAD_INPUT
    assert 'vision.onnx.data has 1000 bytes' in capsys.readouterr().err


def test_onnx_cli_refuses_a_checkpoint_that_is_not_qwen3_vl(exported, tmp_path, capsys):
    other = tmp_path / 'llava'
    other.mkdir()
    config = json.loads((exported[0] / 'config.json').read_text())
    (other / 'config.json').write_text(json.dumps(dict(config, model_type='llava')))
    out = tmp_path / 'out'
    rc = cli.main(['--quiet', 'onnx', '--model', str(other), '--out', str(out)])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT and "type 'llava'" in err and "'qwen3_vl'" in err
    assert not out.exists()
    rc = cli.main(['--quiet', 'onnx', '--model', str(tmp_path / 'none'), '--out', str(out)])
    assert rc == cli.EXIT_BAD_INPUT and 'does not exist' in capsys.readouterr().err


def test_failed_export_keeps_the_previous_folder_and_leaves_no_partial(exported, tmp_path,
                                                                       monkeypatch):
    from procvlm_ros.export import onnx_export

    out = tmp_path / 'exp'
    out.mkdir()
    (out / 'manifest.json').write_text('{"previous": true}')

    def broken(*args, **kwargs):
        raise RuntimeError('exporter exploded')
    monkeypatch.setattr(onnx_export, 'export_decoder', broken)
    opts = onnx_export.OnnxExportOptions(model=str(exported[0]), out=out, image_size=(64, 48))
    with pytest.raises(ExportError, match='decoder graph export failed: RuntimeError'):
        onnx_export.export_onnx(opts, show_progress=False)
    assert json.loads((out / 'manifest.json').read_text()) == {'previous': True}
    assert [p.name for p in tmp_path.iterdir()] == ['exp']


@pytest.mark.parametrize(('args', 'message'), [
    (dict(dtype='bf16'), 'fp32 or fp16'), (dict(max_frames=0), 'positive'),
    (dict(prefill_chunk=0), '>= 0')])
def test_export_options_are_validated(args, message):
    from procvlm_ros.export.onnx_export import OnnxExportOptions, parse_image_size

    with pytest.raises(ExportError, match=message):
        OnnxExportOptions(model='m', out=Path('o'), **args)
    assert parse_image_size('640x480') == (640, 480)
    with pytest.raises(ExportError, match='640x480'):
        parse_image_size('640')
