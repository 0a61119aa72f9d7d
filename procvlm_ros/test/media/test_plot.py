import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.errors import ConfigError
from procvlm_ros.media.plot import plot_progress  # imports matplotlib only when called

pytest.importorskip('matplotlib')

CARRIED = np.array([0xEF, 0x6C, 0x00])  # colour of carried-forward markers


def records(values, carried=()):
    return [{'timestamp_sec': i / 30, 'progress': v, 'frame_index': i,
             'progress_source': 'previous' if i in carried else 'model'}
            for i, v in enumerate(values)]


def load(path):
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert('RGB')).astype(int)


def count_colour(pixels, rgb, tol=30):
    return int((np.abs(pixels - rgb).max(axis=2) <= tol).sum())


def test_png_has_requested_size_and_curves_differ(tmp_path):
    rising = plot_progress(records(np.linspace(0, 100, 20)), tmp_path / 'a.png', title='fold')
    falling = plot_progress(records(np.linspace(90, 10, 20)), tmp_path / 'b.png', title='fold')
    size_a, a = load(rising)
    size_b, b = load(falling)
    assert size_a == size_b == (960, 540)
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 10  # not blank
    assert (np.abs(a - b).max(axis=2) > 0).sum() > 1000


def test_carried_forward_points_are_marked(tmp_path):
    values = [0, 10, 10, 30, 40, 40, 40, 70]
    _, plain = load(plot_progress(records(values), tmp_path / 'plain.png'))
    _, marked = load(plot_progress(records(values, carried={2, 5, 6}), tmp_path / 'marked.png'))
    assert count_colour(plain, CARRIED) == 0
    assert count_colour(marked, CARRIED) > 30


def test_custom_size_none_values_empty_records_and_parent_dirs(tmp_path):
    path = plot_progress(records([5, None, 50]), tmp_path / 'x' / 'y' / 'p.png',
                         size_px=(640, 360))
    assert load(path)[0] == (640, 360)
    assert load(plot_progress([], tmp_path / 'empty.png'))[0] == (960, 540)


def test_record_without_progress_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="record 1 has no 'progress' key"):
        plot_progress([{'timestamp_sec': 0, 'progress': 1}, {'timestamp_sec': 1}],
                      tmp_path / 'p.png')
