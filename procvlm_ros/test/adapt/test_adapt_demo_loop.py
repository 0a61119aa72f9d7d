"""
The adaptation loop on the demo model, small: one successful demonstration of the held-out
drawer family -> annotate -> dataset -> train (demo preset) -> procvlm-eval on
held-out drawer episodes. The adapted model must be clearly better than the zero-shot one.
The full-size loop (20 episodes, success + failure run) is ``make adapt-demo``. The cost is
200 training steps (about 3 min of CPU time on 2 threads in the adapt-demo runs) and 2 x 3
scored episodes; on a machine shared with other jobs it takes much longer.

Opt-in (PROCVLM_ADAPT_LOOP_TEST=1): it has not yet been seen passing within the suite's time
budget (a run on the shared 2-core machine was still training after 16 minutes), so it is not
part of `make test` until it has; `make adapt-demo` runs the full loop and prints the table.
"""

import os

import pytest

from procvlm_ros.adapt import annotation as ann
from procvlm_ros.adapt import demo
from procvlm_ros.adapt.cli import main as adapt
from procvlm_ros.demo_model import CHECKPOINT_DIR
from procvlm_ros.synth.export import write_dataset

pytest.importorskip('peft')
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get('PROCVLM_ADAPT_LOOP_TEST') != '1',
    reason='opt-in: PROCVLM_ADAPT_LOOP_TEST=1 (not yet seen passing within the time budget)')]
EPISODES = 3


def test_one_shot_adaptation_beats_zero_shot(tmp_path):
    anns = demo.record(tmp_path)
    saved = ann.load(anns['success'])
    assert saved.done and len(saved.stages) == 4  # the four drawer actions
    data = tmp_path / 'data'
    assert adapt(['dataset', str(anns['success']), '--out', str(data)]) == 0
    adapter = tmp_path / 'adapter'
    assert adapt(['train', '--model', str(CHECKPOINT_DIR), '--data', str(data), '--out',
                  str(adapter), '--preset', 'demo', '--device', 'cpu', '--threads', '2',
                  '--quiet']) == 0  # the demo preset, as make adapt-demo
    heldout = tmp_path / 'heldout'
    write_dataset(heldout, EPISODES, demo.HELDOUT_SEED, kinds=('success',),
                  task_kinds=(demo.FAMILY,))
    before = demo.evaluate(heldout, str(CHECKPOINT_DIR), tmp_path / 'zero.json')
    after = demo.evaluate(heldout, str(CHECKPOINT_DIR), tmp_path / 'after.json',
                          adapter=str(adapter))
    print(f'zero-shot VOC {before["voc_mean"]:.3f} MAE {before["mae_mean"]:.3f}; '
          f'adapted VOC {after["voc_mean"]:.3f} MAE {after["mae_mean"]:.3f}')
    assert after['voc_mean'] >= before['voc_mean'] + 0.2
    assert after['mae_mean'] <= before['mae_mean'] - 0.05
