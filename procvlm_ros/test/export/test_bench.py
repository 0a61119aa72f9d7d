"""procvlm-export bench: stage figures per backend, ratios, sliding-window cache saving."""

import json

import pytest

from procvlm_ros.export import bench, cli
from procvlm_ros.export.testing import tiny_export

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def options(tmp_path_factory):
    checkpoint, folder = tiny_export(tmp_path_factory.getbasetemp() / 'procvlm-exports')
    return bench.BenchOptions(model=str(checkpoint), onnx=str(folder), device='cpu', frames=3,
                              image_size=(64, 48), new_tokens=4, repeats=2, windows=3)


def test_bench_reports_every_stage_ratios_and_cache_saving(options, monkeypatch, tmp_path,
                                                           capsys):
    # Workers run in this process (the CLI runs each in its own subprocess for peak memory).
    monkeypatch.setattr(bench, '_run_worker', bench.worker)
    out = tmp_path / 'bench.json'
    rc = cli.main(['--quiet', 'bench', '--model', options.model, '--onnx', options.onnx,
                   '--device', 'cpu', '--frames', '3', '--image-size', '64x48',
                   '--new-tokens', '4', '--repeats', '2', '--windows', '3', '--json', str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    assert results['window'] == {'frames': 3, 'image_size': [64, 48], 'new_tokens': 4,
                                 'repeats': 2, 'sliding_windows': 3, 'task': bench.TASK,
                                 'threads': 'default'}
    torch_res, ort_res = results['backends']['transformers'], results['backends']['onnxruntime']
    for res in (torch_res, ort_res):
        assert res['available'] and res['peak_rss_mb'] > 0 and res['tokens_per_s'] > 0
        for stage in ('vision', 'prefill', 'decode_per_token', 'end_to_end'):
            assert 0 < res[stage]['p50_ms'] <= res[stage]['p95_ms']
    assert torch_res['prompt_tokens'] == ort_res['prompt_tokens']
    ratio = ort_res['speedup_vs_transformers']['end_to_end']
    assert ratio == pytest.approx(torch_res['end_to_end']['p50_ms']
                                  / ort_res['end_to_end']['p50_ms'])
    assert torch_res['speedup_vs_transformers']['decode_per_token'] == 1.0
    # 3 stride-1 windows of 3 frames after a cleared cache: 3 + 1 + 1 encoded, 4 reused.
    assert ort_res['sliding_window']['hit_rate'] == pytest.approx(4 / 9)
    assert {'cold_vision_ms', 'warm_vision_ms', 'saving_pct', 'cold_preprocess_ms'} <= set(
        ort_res['sliding_window'])  # timings themselves are too noisy to compare on CI
    assert results['backends']['tensorrt']['available'] is False
    assert results['backends']['tensorrt']['reason']
    table = capsys.readouterr().out
    assert 'window: 3 frames 64x48, 4 generated tokens' in table
    assert 'onnxruntime' in table and 'tensorrt      unavailable' in table


def test_percentiles_are_in_milliseconds():
    assert bench.percentiles([0.001, 0.002, 0.003]) == {'p50_ms': pytest.approx(2.0),
                                                        'p95_ms': pytest.approx(2.9)}
    assert all(v != v for v in bench.percentiles([]).values())  # NaN when nothing ran
