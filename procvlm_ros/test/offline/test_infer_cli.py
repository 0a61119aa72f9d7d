"""procvlm-infer on real video files and rosbags, checked against an independent reference."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.image import qwen_vl_pre_resize
from procvlm_ros.core.prompt import build_prompt
from procvlm_ros.core.types import Frame
from procvlm_ros.media.rosbag import write_image_bag
from procvlm_ros.media.video import read_video_frames, write_video
from procvlm_ros.offline import infer_progress_from_video
from procvlm_ros.testing.helpers import moving_frames
from procvlm_ros.testing.tiny_model import build_tiny_checkpoint

pytestmark = pytest.mark.slow
TASK = 'stack the blocks'
EXTRA_KEYS = ['decoder_passes', 'draft_tokens_accepted']
OFFICIAL_KEYS = ['video_path', 'task', 'sample_index', 'frame_index', 'timestamp_sec',
                 'window_frame_indices', 'progress', 'parsed_progress', 'progress_source',
                 'reasoning', 'model_output']


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp('ckpt') / 'tiny', seed=3)


@pytest.fixture(scope='module')
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp('vid') / 'clip.mp4', moving_frames(20), fps=10.0)


def run_cli(*args):
    return subprocess.run([sys.executable, '-m', 'procvlm_ros.cli.infer', '--quiet', *args],
                          capture_output=True, text=True, timeout=600)


def reference_answer(model_dir, window_rgb, tmp_path, max_new_tokens):
    """The official transformers path written out independently: JPEG files, resize, generate."""
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    backend = create_backend(BackendConfig(model=str(model_dir), device='cpu', dtype='fp32',
                                           attn_implementation='eager'))
    backend.load()
    processor = backend.processor  # the checkpoint's own processor (fallback where no torchvision)
    images = []
    for i, rgb in enumerate(window_rgb):  # official: Image.save(jpg, quality=95), reopen
        path = tmp_path / f'frame_{i:06d}.jpg'
        Image.fromarray(rgb).save(path, quality=95)
        images.append(qwen_vl_pre_resize(Image.open(path).convert('RGB'), 14))
    content = [{'type': 'image'} for _ in images] + [{'type': 'text', 'text': build_prompt(TASK)}]
    text = processor.apply_chat_template([{'role': 'user', 'content': content}],
                                         tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=images, return_tensors='pt')
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation='eager').eval()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs['input_ids'].shape[1]:]
    tok = AutoTokenizer.from_pretrained(model_dir)
    backend.close()
    return tok.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_video_records_match_official_layout_and_reference(model_dir, video, tmp_path):
    out = tmp_path / 'scores.jsonl'
    res = run_cli('--video_path', str(video), '--task', TASK, '--model_path', str(model_dir),
                  '--output_path', str(out), '--torch_dtype', 'fp32', '--device', 'cpu',
                  '--attn_implementation', 'eager', '--max_new_tokens', '12',
                  '--max_sampled_frames', '6')
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # The official keys, in order, then the decoding cost beside them.
    assert [list(r) for r in records] == [OFFICIAL_KEYS + EXTRA_KEYS] * 6
    assert [r['frame_index'] for r in records] == [0, 4, 8, 11, 15, 19]
    assert [r['sample_index'] for r in records] == list(range(6))
    assert records[2]['window_frame_indices'] == [0, 0, 0, 0, 0, 0, 4, 8]
    assert records[5]['timestamp_sec'] == pytest.approx(1.9)
    assert records[0]['video_path'] == str(video.resolve())
    for r in records:  # a random model writes no tag: official carry-forward from 0.0
        assert r['parsed_progress'] is None and r['progress'] == 0.0
        assert r['progress_source'] == 'previous' and r['model_output']
    # Token-for-token equality with the independent reference on two windows.
    decoded = {f.index: f.image for f in read_video_frames(video, None)}
    for rec in (records[0], records[4]):
        window = [decoded[i] for i in rec['window_frame_indices']]
        assert rec['model_output'] == reference_answer(model_dir, window, tmp_path, 12)
    png = out.with_suffix('.png')
    img = np.asarray(Image.open(png).convert('RGB'))
    assert img.shape[0] > 100 and img.std() > 5


def test_rosbag_topic_scoring_and_topic_errors(model_dir, tmp_path):
    frames = [Frame(rgb, stamp_ns=5 * 10**9 + i * 250_000_000, frame_id='cam', index=i)
              for i, rgb in enumerate(moving_frames(6))]
    bag = write_image_bag(tmp_path / 'bag', frames, '/cam/image', storage='mcap')
    out = tmp_path / 'bag.jsonl'
    common = ['--task', TASK, '--model_path', str(model_dir), '--torch_dtype', 'fp32',
              '--device', 'cpu', '--attn_implementation', 'eager', '--max_new_tokens', '8',
              '--window_size', '4']
    res = run_cli('--video_path', str(bag), '--output_path', str(out), *common)
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 6 and all(r['image_topic'] == '/cam/image' for r in records)
    assert [r['timestamp_sec'] for r in records] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1.25])
    assert records[5]['window_frame_indices'] == [2, 3, 4, 5]
    window = [frames[i].image for i in records[5]['window_frame_indices']]
    assert records[5]['model_output'] == reference_answer(model_dir, window, tmp_path, 8)

    two = write_image_bag(tmp_path / 'two', frames, '/a/image', storage='sqlite3')
    write_image_bag(tmp_path / 'two_b', frames, '/b/image', storage='sqlite3')
    missing = run_cli('--video_path', str(two), '--image_topic', '/nope', *common)
    assert missing.returncode == 2 and '/a/image' in missing.stderr


@pytest.mark.parametrize('case', ['missing_video', 'corrupt_video', 'empty_task',
                                  'missing_model', 'not_qwen'])
def test_bad_input_is_a_clear_error(case, model_dir, video, tmp_path):
    args = {'video_path': str(video), 'task': TASK, 'model_path': str(model_dir)}
    expect = {'missing_video': 'not found', 'corrupt_video': 'corrupt.mp4',
              'empty_task': 'non-empty', 'missing_model': 'does not exist',
              'not_qwen': 'qwen3_vl'}[case]
    if case == 'missing_video':
        args['video_path'] = str(tmp_path / 'none.mp4')
    elif case == 'corrupt_video':
        bad = tmp_path / 'corrupt.mp4'
        bad.write_bytes(b'\x00\x00\x00\x18ftypmp42' + bytes(range(256)) * 8)
        args['video_path'] = str(bad)
    elif case == 'empty_task':
        args['task'] = '  '
    elif case == 'missing_model':
        args['model_path'] = str(tmp_path / 'no_model')
    else:
        (tmp_path / 'llama').mkdir()
        (tmp_path / 'llama' / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
        args['model_path'] = str(tmp_path / 'llama')
    res = run_cli(*[x for k, v in args.items() for x in (f'--{k}', v)], '--device', 'cpu',
                  '--max_new_tokens', '4')
    assert res.returncode == 2, res.stdout + res.stderr
    assert expect in res.stderr and 'Traceback' not in res.stderr


def test_value_parsing_and_carry_forward_in_records(video, tmp_path):
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=(
        'no tag here', '1. lift\nTherefore <progress>25%</progress>.', 'garbage',
        '<progress>140%</progress>')))
    records = infer_progress_from_video(video_path=video, task=TASK, backend=backend,
                                        max_sampled_frames=5, output_path=tmp_path / 'r.jsonl')
    assert [r['progress'] for r in records] == [0.0, 25.0, 25.0, 100.0, 100.0]
    assert [r['progress_source'] for r in records] == [
        'previous', 'model', 'previous', 'model', 'previous']
    assert records[1]['reasoning'] == '1. lift'
    assert Path(tmp_path / 'r.png').exists()
