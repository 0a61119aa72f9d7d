"""
The adaptation loop on the demo model, small: one successful demonstration of the held-out
drawer family -> annotate -> dataset -> train (demo preset, fewer steps) -> procvlm-eval on
held-out drawer episodes. The adapted model must be clearly better than the zero-shot one.
The full-size loop (20 episodes, success + failure run) is ``make adapt-demo``.

Cost: STEPS training steps and 2 x EPISODES scored success episodes (about 120 windows each),
one torch thread: OpenMP threads that spin while they wait made the same loop many times
slower on a shared 2-core machine (``OMP_WAIT_POLICY`` is read once per process, so a test
cannot set it; one thread has nobody to wait for).
"""

import pytest

from procvlm_ros.adapt import annotation as ann
from procvlm_ros.adapt import demo
from procvlm_ros.adapt.cli import main as adapt
from procvlm_ros.demo_model import CHECKPOINT_DIR
from procvlm_ros.synth.export import write_dataset

pytest.importorskip('peft')
pytestmark = pytest.mark.slow
EPISODES = 3
STEPS = 100


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_one_shot_adaptation_beats_zero_shot(tmp_path, one_thread):
    anns = demo.record(tmp_path)
    saved = ann.load(anns['success'])
    assert saved.done and len(saved.stages) == 4  # the four drawer actions
    data = tmp_path / 'data'
    assert adapt(['dataset', str(anns['success']), '--out', str(data)]) == 0
    adapter = tmp_path / 'adapter'
    assert adapt(['train', '--model', str(CHECKPOINT_DIR), '--data', str(data), '--out',
                  str(adapter), '--preset', 'demo', '--device', 'cpu', '--threads', '1',
                  '--steps', str(STEPS), '--quiet']) == 0  # the demo preset, fewer steps
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
