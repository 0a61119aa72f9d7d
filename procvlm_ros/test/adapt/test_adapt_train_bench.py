"""
bench/adapt_train_gpu.py, the GPU section of issue 10 as one command: here its whole path
(random base, camera-sized demonstration, annotate -> dataset -> procvlm-adapt train per
configuration, figures) runs on the CPU with the tiny shape.
"""

import json
from pathlib import Path
import subprocess
import sys

import pytest

pytest.importorskip('peft')
SCRIPT = Path(__file__).resolve().parents[3] / 'bench' / 'adapt_train_gpu.py'


@pytest.mark.slow  # ~1 min: two 2-step trainings of the tiny model
def test_bench_runs_the_user_commands_and_reports_figures(tmp_path):
    out = tmp_path / 'bench'
    res = subprocess.run([sys.executable, str(SCRIPT), '--out', str(out), '--shape', 'tiny',
                          '--device', 'cpu', '--dtype', 'fp32', '--steps', '2',
                          '--frame-size', '320x240', '--configs', 'official,batch1'],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((out / 'adapt_train_gpu.json').read_text())
    assert result['gpu'] is None and result['shape'] == 'tiny' and result['samples'] > 20
    official, batch1 = result['rows']
    for row in (official, batch1):
        assert row['error'] is None and row['steps'] == 2
        assert row['step_seconds_median'] > 0 and row['first_step_seconds'] > 0
        assert row['peak_cuda_memory_gib'] is None and row['peak_rss_gib'] > 0.1
        # the official recipe, value head included (the tiny base has one, as ProcVLM-2B)
        assert row['settings']['rank'] == 64 and row['settings']['lr'] == 1e-5
    assert (official['settings']['batch_size'], official['settings']['grad_accum']) == (4, 2)
    assert (batch1['settings']['batch_size'], batch1['settings']['grad_accum']) == (1, 8)
    summary = json.loads((out / 'adapters' / 'batch1' / 'procvlm_adapter.json').read_text())
    assert summary['gradient_checkpointing'] is True
    assert summary['value_head'].startswith('from ')
    log = (out / 'adapters' / 'official' / 'training_log.jsonl').read_text().splitlines()
    assert len(log) == 2 and all('value_l1' in json.loads(line) for line in log)
    # the demonstration went through annotate at the camera size
    ann = (out / 'annotation' / 'annotation.yaml').read_text()
    assert 'reach the purple drawer knob' in ann
    import av
    with av.open(str(out / 'demonstration.mp4')) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (320, 240)
    assert 'official' in res.stdout and 'batch1' in res.stdout


def test_bench_without_cuda_says_so(tmp_path):
    torch = pytest.importorskip('torch')
    if torch.cuda.is_available():
        pytest.skip('a CUDA device is present')
    res = subprocess.run([sys.executable, str(SCRIPT), '--out', str(tmp_path / 'b')],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and 'no CUDA device' in res.stderr
    assert not (tmp_path / 'b').exists()


def test_bench_refuses_a_frame_size_the_frames_do_not_scale_to(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), '--out', str(tmp_path / 'b'),
                          '--shape', 'tiny', '--device', 'cpu', '--frame-size', '300x200',
                          '--configs', 'official'], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and 'multiple of 160x120' in res.stderr
    assert not (tmp_path / 'b').exists()


def test_procvlm_2b_shape_is_the_real_model_size():
    # The bench's base: ProcVLM-2B's shapes (2.1275 B parameters, tied embedding), checked on
    # the meta device (no weights are made).
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    from procvlm_ros.testing.tiny_model import build_tiny_checkpoint, procvlm_2b_config_dict

    config = transformers.Qwen3VLConfig(**procvlm_2b_config_dict())
    with torch.device('meta'):
        model = transformers.Qwen3VLForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == 2_127_532_032 and config.tie_word_embeddings
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert (config.text_config.num_hidden_layers, config.vision_config.depth) == (28, 24)
    with pytest.raises(ValueError, match='shape'):
        build_tiny_checkpoint('/nonexistent/x', shape='7b')
    with pytest.raises(ValueError, match='qwen3_vl'):
        build_tiny_checkpoint('/nonexistent/x', shape='procvlm_2b', family='qwen2_5_vl')
