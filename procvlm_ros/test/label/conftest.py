"""Shared fixtures: a few short synthetic episodes and the demo-model arguments."""

import shutil

import pytest

from procvlm_ros.demo_model import CHECKPOINT_DIR
from procvlm_ros.synth.export import write_dataset

SEED = 4321
# Demo model on CPU; short episodes keep each labelling run to seconds.
MODEL_ARGS = ['--model', str(CHECKPOINT_DIR), '--device', 'cpu', '--dtype', 'fp32',
              '--max-new-tokens', '256', '--done-threshold', '1.0', '--stall-window-s', '6',
              '--stall-min-delta', '0.03', '--torch-threads', '1', '--quiet']
FAST = ['--stride', '4', '--max-frames', '24']


@pytest.fixture(scope='session')
def synth_root(tmp_path_factory):
    """Three episodes (success, fail, stall) as mp4 + rosbag2 + ground truth."""
    pytest.importorskip('torch')
    pytest.importorskip('transformers')
    root = tmp_path_factory.mktemp('label_synth') / 'ds'
    write_dataset(root, 3, SEED, kinds=['success', 'fail', 'stall'], formats=('mp4', 'bag'))
    return root


@pytest.fixture
def dataset(synth_root, tmp_path):
    """A private copy (labelling writes .progress.mcap beside the bags)."""
    copy = tmp_path / 'ds'
    shutil.copytree(synth_root, copy)
    return copy
