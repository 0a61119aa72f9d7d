"""procvlm-infer options come from the config dataclasses; official flags stay as they are."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
import json

import numpy as np
import pytest

from procvlm_ros.cli import infer
from procvlm_ros.cli.options import add_field_options, field_values, Override
from procvlm_ros.core.backends import REGISTRY
from procvlm_ros.core.config import BackendConfig, BACKENDS, param, WindowConfig

# evqa/inference.py: flag -> default (None where required).
OFFICIAL = {'model_path': '', 'video_path': None, 'task': None, 'output_path': None,
            'window_size': 8, 'max_new_tokens': 4096, 'temperature': 0.0, 'torch_dtype': 'bf16',
            'max_frames': None, 'max_sampled_frames': 512, 'enable_value_head': False,
            'use_lora': False}
# Documented departures from the dataclass defaults (infer.BACKEND_OVERRIDES).
DEFAULT_OVERRIDES = {'dtype': 'bf16'}
REQUIRED = ['--video_path', 'v.mp4', '--task', 'stack the blocks']


def options_by_flag(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s.lstrip('-'): a for a in parser._actions for s in a.option_strings}


def test_official_flags_keep_their_names_and_defaults():
    parser = infer.build_parser()
    by_flag = options_by_flag(parser)
    args = parser.parse_args(REQUIRED)
    for flag, default in OFFICIAL.items():
        assert flag in by_flag, f'--{flag} is gone'
        if default is None and flag in ('video_path', 'task'):
            assert by_flag[flag].required, flag
        else:
            assert getattr(args, by_flag[flag].dest) == default, flag
    # A bare switch, as officially; on|off also accepted (issue 11: --speculation on|off).
    assert by_flag['enable_value_head'].const is True
    assert parser.parse_args([*REQUIRED, '--speculation', 'off']).speculation is False
    assert parser.parse_args([*REQUIRED, '--no_speculation']).speculation is False
    assert parser.parse_args(REQUIRED).speculation is True
    with pytest.raises(SystemExit):
        parser.parse_args([*REQUIRED, '--speculation', 'maybe'])
    parsed = parser.parse_args([*REQUIRED, '--window_size', '4', '--torch_dtype', 'bfloat16',
                                '--max_new_tokens', '12', '--enable_value_head'])
    assert (parsed.window_size, parsed.torch_dtype, parsed.max_new_tokens) == (4, 'bfloat16', 12)


def test_every_backend_field_is_an_option_with_the_dataclass_default():
    parser = infer.build_parser()
    by_flag = options_by_flag(parser)
    args = vars(parser.parse_args(REQUIRED))
    flag_of = {name: o.flag for name, o in infer.BACKEND_OVERRIDES.items() if o.flag}
    for f in fields(BackendConfig):
        flag = flag_of.get(f.name, f.name)
        switch = f'no_{flag}' if f.default is True else flag
        assert switch in by_flag, f'BackendConfig.{f.name} has no --{switch}'
        value = args[by_flag[switch].dest]
        value = tuple(value) if isinstance(value, list) else value
        assert value == DEFAULT_OVERRIDES.get(f.name, f.default), f.name
        if f.metadata.get('choices') and f.name not in infer.BACKEND_OVERRIDES:
            assert tuple(by_flag[switch].choices) == f.metadata['choices'], f.name
    for name in infer.WINDOW_FIELDS:
        f = next(f for f in fields(WindowConfig) if f.name == name)
        switch = f'no_{name}' if f.default is True else name
        assert args[by_flag[switch].dest] == f.default


def test_backend_names_are_the_registry():
    assert set(BACKENDS) == set(REGISTRY)


@dataclass(frozen=True)
class Example:
    count: int = field(default=3, metadata=param('How many.', lo=1, hi=9))
    rate: float = field(default=0.5, metadata=param('How fast.'))
    mode: str = field(default='a', metadata=param('Which.', choices=('a', 'b')))
    fast: bool = field(default=True, metadata=param('Go fast.'))
    loud: bool = field(default=False, metadata=param('Be loud.'))
    names: tuple[str, ...] = field(default=(), metadata=param('Names.'))
    limit: int | None = None


def test_a_new_field_becomes_an_option():
    parser = argparse.ArgumentParser()
    added = add_field_options(parser, Example, overrides={'rate': Override(flag='speed')})
    assert field_values(parser.parse_args([]), added) == {
        'count': 3, 'rate': 0.5, 'mode': 'a', 'fast': True, 'loud': False, 'names': (),
        'limit': None}
    args = parser.parse_args(['--count', '7', '--speed', '2', '--mode', 'b', '--no_fast',
                              '--loud', '--names', 'x', 'y', '--limit', '4'])
    assert Example(**field_values(args, added)) == Example(7, 2.0, 'b', False, True, ('x', 'y'),
                                                           4)
    for bad in (['--count', '1.5'], ['--mode', 'c'], ['--rate', '1']):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    assert 'range 1..9' in parser.format_help()
    with pytest.raises(ValueError, match='nope'):
        add_field_options(argparse.ArgumentParser(), Example, only=('nope',))


@pytest.fixture
def video(tmp_path):
    from procvlm_ros.media.video import write_video

    frames = [np.full((32, 48, 3), 10 * i, np.uint8) for i in range(6)]
    return write_video(tmp_path / 'clip.mp4', frames, fps=5.0)


def test_scripted_run_through_the_derived_options(video, tmp_path, capsys):
    out = tmp_path / 'r.jsonl'
    rc = infer.main(['--video_path', str(video), '--task', 'stack the blocks', '--quiet',
                     '--no_plot', '--output_path', str(out), '--backend', 'scripted',
                     '--torch_dtype', 'float32', '--window_size', '2', '--no_jpeg_roundtrip',
                     '--scripted_outputs', '<progress>10%</progress>', 'none',
                     '<progress>60%</progress>'])
    assert rc == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r['progress'] for r in records] == [10.0, 10.0, 60.0, 10.0, 10.0, 60.0]
    assert records[3]['window_frame_indices'] == [2, 3]


@pytest.mark.parametrize(('argv', 'expect'), [
    (['--speculation_max_draft', '0'], 'speculation_max_draft must be >= 1'),
    (['--torch_dtype', 'float8'], "unknown torch_dtype 'float8'"),
    (['--backend', 'transformers'], 'model is empty'),
])
def test_bad_values_are_clear_errors(argv, expect, video, capsys):
    rc = infer.main(['--video_path', str(video), '--task', 't', '--quiet', '--no_plot',
                     '--backend', 'scripted', *argv])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err, err
