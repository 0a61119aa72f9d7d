"""
The committed demo model, scored by procvlm-eval on held-out synthetic episodes.

Held-out: data seed 4242; the model was trained on data seed 1000 (its data card reports a
larger evaluation on seed 777). Targets from issue 4: mean VOC >= 0.9 on successful episodes,
progress MAE <= 0.1, done F1 >= 0.9.
"""

import json
import re

import pytest

pytest.importorskip('torch')
pytest.importorskip('transformers')
pytest.importorskip('av')
pytest.importorskip('matplotlib')

from procvlm_ros.demo_model import CHECKPOINT_DIR  # noqa: E402
from procvlm_ros.evaluation import cli  # noqa: E402
from procvlm_ros.synth.export import load_ground_truth, write_dataset  # noqa: E402

HELDOUT_SEED = 4242
EPISODES = 6  # successful episodes, every task kind twice
ANSWER = re.compile(
    r'^(The following actions are required: \n(\d+\. [^\n]+\n)+Therefore, the estimated '
    r'progress is <progress>\d+\.\d\d%</progress>\.|Image shows the final result\.\n'
    r'Therefore, the estimated progress is <progress>100%</progress>\.)$')

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp('heldout')
    write_dataset(root / 'episodes', EPISODES, HELDOUT_SEED, kinds=['success'])
    report = root / 'report.json'
    code = cli.main(['--episodes', str(root / 'episodes'), '--model', str(CHECKPOINT_DIR),
                     '--report', str(report), '--records'])
    assert code == 0
    return root, json.loads(report.read_text())


def test_checkpoint_is_small_and_labelled():
    weights = CHECKPOINT_DIR / 'model.safetensors'
    assert weights.stat().st_size < 12 * 1024 * 1024
    for name in ('config.json', 'generation_config.json', 'tokenizer.json',
                 'tokenizer_config.json', 'preprocessor_config.json', 'chat_template.jinja'):
        assert (CHECKPOINT_DIR / name).is_file(), name
    card = (CHECKPOINT_DIR / 'DATA_CARD.md').read_text()
    assert 'NOT ProcVLM-2B' in card and 'seed' in card


def test_accuracy_targets(evaluated):
    _, report = evaluated
    assert report['episodes'] == EPISODES
    assert report['parse_rate'] == 1.0
    assert report['voc_mean'] >= 0.9, report['rows']
    assert report['mae_mean'] <= 0.1
    assert report['done_f1'] >= 0.9, report['done_counts']


def test_report_rows_and_plots(evaluated):
    root, report = evaluated
    for key in ('voc_mean', 'mae_mean', 'done_f1', 'done_precision', 'done_recall', 'mcc95',
                'negative_step_rate_mean', 'kendall_tau_mean', 'rows', 'by_kind'):
        assert key in report
    for row in report['rows']:
        gt = load_ground_truth(root / 'episodes' / row['episode_id'])
        assert row['num_frames'] == gt['num_frames'] == len(row['curve']['pred'])
        assert row['curve']['gt'] == [round(f['progress'], 4) for f in gt['frames']]
        assert (root / 'report_plots' / f'{row["episode_id"]}.png').stat().st_size > 1000
    assert (root / 'report_plots' / 'summary.png').is_file()


def test_answers_are_in_procvlm_format(evaluated):
    root, report = evaluated
    for row in report['rows']:
        gt = load_ground_truth(root / 'episodes' / row['episode_id'])
        lines = (root / 'report_records' / f'{row["episode_id"]}.jsonl').read_text().splitlines()
        for line in lines:
            record = json.loads(line)
            assert ANSWER.match(record['model_output']), record['model_output']
        # The remaining actions it lists are the task's own actions, in order.
        final = json.loads(lines[-1])['model_output']
        assert final.startswith('Image shows the final result.')
        first = json.loads(lines[0])['model_output']
        listed = re.findall(r'^\d+\. (.+)$', first, re.MULTILINE)
        assert listed == gt['actions']
