"""
The core's enums equal the message constants, both ways, name by name.

``Status`` mirrors ``procvlm_msgs/msg/Progress`` STATUS_* and ``Reason`` mirrors
``procvlm_msgs/msg/Intervention`` REASON_*; the node copies enum values into messages, so a
constant added, renamed or renumbered on one side only would publish wrong codes. The .msg files
are parsed (no ROS needed); the generated classes are compared too where they are importable.
"""

from __future__ import annotations

import enum
import importlib
from pathlib import Path
import re

import pytest

from procvlm_ros.core.supervision import Reason
from procvlm_ros.core.types import Status

MSG_DIR = Path(__file__).resolve().parents[2] / 'procvlm_msgs' / 'msg'
PAIRS = [(Status, 'Progress', 'STATUS_'), (Reason, 'Intervention', 'REASON_')]
IDS = ['Status-Progress', 'Reason-Intervention']

# A constant line of the ROS interface definition: `<type> NAME=value  # comment`.
_CONSTANT = re.compile(r'^\s*(?P<type>[\w/]+)\s+(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*(?P<value>[^#]+?)'
                       r'\s*(?:#.*)?$')


def msg_constants(text: str, prefix: str) -> dict[str, int]:
    """Integer constants of a .msg text whose names start with ``prefix``."""
    out = {}
    for line in text.splitlines():
        m = _CONSTANT.match(line)
        if m and m['name'].startswith(prefix):
            assert m['name'] not in out, f'{m["name"]} defined twice'
            out[m['name']] = int(m['value'], 0)
    return out


def enum_constants(cls: type[enum.IntEnum], prefix: str) -> dict[str, int]:
    return {prefix + member.name: int(member.value) for member in cls}


def test_parser_reads_constants_and_ignores_fields_and_comments():
    text = ('# STATUS_X=9 in a comment\nuint8 STATUS_OK=0  # fine\nuint8 STATUS_BAD = 0x0A\n'
            'uint8 status\nstring NAME_OTHER="STATUS_Y"\nint32 REASON_A=-1\n')
    assert msg_constants(text, 'STATUS_') == {'STATUS_OK': 0, 'STATUS_BAD': 10}
    assert msg_constants(text, 'REASON_') == {'REASON_A': -1}


@pytest.mark.parametrize(('cls', 'msg', 'prefix'), PAIRS, ids=IDS)
def test_enum_equals_msg_file_constants(cls, msg, prefix):
    from_msg = msg_constants((MSG_DIR / f'{msg}.msg').read_text(encoding='utf-8'), prefix)
    from_enum = enum_constants(cls, prefix)
    assert from_msg, f'no {prefix}* constants in {msg}.msg'
    only_msg = sorted(set(from_msg) - set(from_enum))
    only_enum = sorted(set(from_enum) - set(from_msg))
    assert not only_msg, f'{msg}.msg constants missing from {cls.__name__}: {only_msg}'
    assert not only_enum, f'{cls.__name__} members missing from {msg}.msg: {only_enum}'
    assert from_enum == from_msg


@pytest.mark.parametrize(('cls', 'msg', 'prefix'), PAIRS, ids=IDS)
def test_enum_equals_generated_message_class(cls, msg, prefix):
    try:
        msgs = importlib.import_module('procvlm_msgs.msg')
    except ImportError:
        pytest.skip('procvlm_msgs is not built/installed')
    msg_cls = getattr(msgs, msg)
    generated = {name: int(getattr(msg_cls, name)) for name in dir(msg_cls)
                 if name.startswith(prefix) and name.isupper()}
    assert generated == enum_constants(cls, prefix)


# NavigationAction: its STATUS_* are a subset of Progress's codes (what the node copies from
# the core), and its action constants are the core's NAVIGATION_ACTIONS, word for word.
NAVIGATION_STATUS = {'STATUS_OK': Status.OK, 'STATUS_NO_ACTION': Status.CARRIED_FORWARD,
                     'STATUS_ERROR': Status.ERROR}
_STRING_CONSTANT = re.compile(r'^\s*string\s+(?P<name>[A-Z][A-Z0-9_]*)\s*=\s*"(?P<value>[^"]*)"')


def test_navigation_action_constants_match_the_core():
    from procvlm_ros.core.profiles.results import NAVIGATION_ACTIONS
    from procvlm_ros.ros import profile_conversions as pc

    text = (MSG_DIR / 'NavigationAction.msg').read_text(encoding='utf-8')
    assert msg_constants(text, 'STATUS_') == {k: int(v) for k, v in NAVIGATION_STATUS.items()}
    assert (pc.ACTION_OK, pc.ACTION_NONE, pc.ACTION_ERROR) == (0, 1, 5)
    strings = {m['name']: m['value'] for m in map(_STRING_CONSTANT.match, text.splitlines())
               if m}
    assert strings == {a.upper(): a for a in NAVIGATION_ACTIONS}
    try:
        msgs = importlib.import_module('procvlm_msgs.msg')
    except ImportError:
        return
    generated = msgs.NavigationAction
    assert {a.upper(): getattr(generated, a.upper()) for a in NAVIGATION_ACTIONS} == strings
    assert {k: getattr(generated, k) for k in NAVIGATION_STATUS} == msg_constants(text, 'STATUS_')
