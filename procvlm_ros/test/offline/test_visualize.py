"""procvlm-visualize renders one annotated frame per record; checked by decoding the mp4."""

import subprocess
import sys

import numpy as np
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.media.video import probe_video, read_video_frames, write_video
from procvlm_ros.offline import infer_progress_from_video


@pytest.fixture
def scored(tmp_path):
    frames = [np.full((48, 64, 3), 30 + 10 * i, np.uint8) for i in range(12)]
    video = write_video(tmp_path / 'clip.mp4', frames, fps=6.0)
    answers = tuple(f'1. step {i}\nTherefore <progress>{5 + 8 * i}%</progress>.'
                    for i in range(12))
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=answers))
    records_path = tmp_path / 'clip.jsonl'
    records = infer_progress_from_video(video_path=video, task='stack', backend=backend,
                                        output_path=records_path, max_sampled_frames=6,
                                        show_progress=False)
    return video, records_path, records


def test_annotated_video_frames_size_and_content(scored, tmp_path):
    video, records_path, records = scored
    out = tmp_path / 'annotated.mp4'
    res = subprocess.run([sys.executable, '-m', 'procvlm_ros.cli.visualize', '--records',
                          str(records_path), '--output', str(out), '--quiet'],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    info = probe_video(out)
    assert info.frame_count == len(records) == 6
    assert (info.width, info.height) == (960, 950)  # 64x48 -> 960x720 + 230 panel
    assert info.fps == pytest.approx(3.0)  # 6 fps x 6 sampled / 12 source frames
    decoded = [f.image for f in read_video_frames(out)]
    panel = slice(720, 950)
    first, last = decoded[0][panel].astype(int), decoded[-1][panel].astype(int)
    assert np.abs(first - last).mean() > 1.0  # the curve grew and the text changed
    # The camera part shows the source frame (uniform grey 30 + 10*i, up to codec noise).
    top = decoded[-1][:700, :].mean()
    assert abs(top - (30 + 10 * 11)) < 6


def test_bad_records_are_a_clear_error(tmp_path):
    bad = tmp_path / 'bad.jsonl'
    bad.write_text('{"hello": 1}\n')
    res = subprocess.run([sys.executable, '-m', 'procvlm_ros.cli.visualize', '--records',
                          str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and 'not a procvlm-infer JSONL' in res.stderr
