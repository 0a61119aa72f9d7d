"""navigation_action: the R2R low-level prompt verbatim, action parsing, steps and history."""

import json
import math

import numpy as np
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig, ProfileConfig, WindowConfig
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.monitor import Monitor
from procvlm_ros.core.profiles import make_profile, profile_from_config
from procvlm_ros.core.profiles.common import render_placeholders
from procvlm_ros.core.profiles.navigation_action import (
    NavigationActionProfile,
    NavigationState,
    parse_action,
    read_checkpoint_system_prompt,
    SYSTEM_PROMPT,
)
from procvlm_ros.core.supervision import SupervisionConfig
from procvlm_ros.core.types import Frame, Status

# Vebjorhk/masters-thesis-VLN system-prompts/system_prompt_low_level.json, "system_prompt",
# as the JSON file escapes it.
CARD_SYSTEM_JSON = (
    '"You are a robot which follows route instructions step-by-step to reach a destination. At '
    'every step, you will receive:\\n\\t1. Route Instruction: the instruction to follow.\\n\\t2. '
    'Current Step: The step number you are currently on in the overall route.\\n\\t3. '
    'Cumulative Distance Traveled: The total distance (in meters) you have moved from the '
    'starting point up to your current position.\\n\\t4. Observations from previous steps (if '
    'available), including:\\n\\t\\t- Images captured at previous steps.\\n\\t\\t- Actions '
    'performed at previous steps.\\n\\t5. Current image: An image showing the robots present '
    'view.\\n\\t6. Possible actions: The set of available actions for this step.\\n\\nActions '
    'and their definitions:\\n\\t- Right: Rotates 30 degrees to the right.\\n\\t- Left: Rotates '
    '30 degrees to the left.\\n\\t- Move: Moves you forward in your current direction of view.'
    '\\n\\t- Stop: Choose this action when you think you have reached the goal or the end of '
    'the navigation path.\\n\\nImportant Notes\\n\\t- Choose only one action at a time, using '
    "only the predefined actions listed in the 'Possible Actions' field.\\n\\t- The environment "
    'is graph-based, meaning movement occurs between discrete nodes rather than continuous '
    'space.\\n\\t- Automatically Turn Towards Node: When you move forward, the camera is '
    'automatically adjusted to center on the next node in the graph-based environment. This is '
    'handled separately and does not require prediction. Your responsibility is to decide '
    'movement and rotation based on the provided inputs.\\n\\nYour task is to predict the most '
    'appropriate next action at each step based on the given information."')
# format_prompts_v3_5: the user turn with '<image>' where the image parts are.
STEP0 = ('Route Instruction: {i}\nCurrent Step: 0\nCummulative Distance Traveled: 0\n'
         'Images from Previous Steps: []\nActions performed at Previous Steps: []\n'
         'Current image:<image>\nPossible actions: {a}\nNow predict the next action based on '
         'the input you have recived. Answer on the format: Action: (an the action you choose)')
STEP2 = ('Route Instruction: {i}\nCurrent Step: 2\nCummulative Distance Traveled: {d}\n'
         'Images from Previous Steps: <image><image>\n'
         "Actions performed at Previous Steps: ['Move', 'Left']\n"
         'Current image:<image>\nPossible actions: {a}\nNow predict the next action based on '
         'the input you have recived. Answer on the format: Action: (an the action you choose)')
ROUTE = 'Walk past the sofa and stop at the kitchen door.'
ALL = "['Left', 'Right', 'Move', 'Stop']"
NO_MOVE = "['Left', 'Right', 'Stop']"


def test_system_prompt_is_the_cards_text():
    assert json.loads(CARD_SYSTEM_JSON) == SYSTEM_PROMPT


def test_user_turn_golden_at_the_first_step_and_with_history(asker, img):
    profile = NavigationActionProfile(move_distance_m=2.5)
    ask = asker('Action: Move', 'Action: Left', 'Action: Stop')
    frames = [img(10 * i, 640, 480) for i in range(4)]
    state = profile.initial_state()
    for end in (1, 2, 3):  # one new frame per step; the window pads the start
        window = [frames[0]] * (3 - end) + frames[:end]
        state = profile.run(ask, window, None, ROUTE, state, previous_percent=None).state
    first, third = ask.calls[0], ask.calls[2]
    assert render_placeholders(first[0]) == [
        ('system', SYSTEM_PROMPT), ('user', STEP0.format(i=ROUTE, a=ALL))]
    assert render_placeholders(third[0])[1] == ('user', STEP2.format(i=ROUTE, d='2.5', a=ALL))
    # 320x240, oldest first: the previous steps' frames, then the current one
    assert [i.size for i in third[1]] == [(320, 240)] * 3
    assert [int(np.asarray(i)[0, 0, 0]) for i in third[1]] == [0, 10, 20]
    assert len(first[1]) == 1  # the padding copies of the first frame are not steps
    assert state == NavigationState(step=3, actions=('Move', 'Left', 'Stop'), distance=2.5)


def test_move_not_offered(asker, img):
    profile = NavigationActionProfile(move_possible=False)
    ask = asker('Action: Move', 'Action: Right')
    out = profile.run(ask, [img(1)], None, ROUTE, None, previous_percent=None)
    assert render_placeholders(ask.calls[0][0])[1][1] == STEP0.format(i=ROUTE, a=NO_MOVE)
    assert not out.ok and out.result.action == '' and 'Move was not offered' in out.notes[0]
    assert out.state == NavigationState()  # no step taken
    out = profile.run(ask, [img(1)], None, ROUTE, out.state, previous_percent=None)
    assert out.ok and out.result.action == 'Right' and out.result.offered == (
        'Left', 'Right', 'Stop')


@pytest.mark.parametrize(('text', 'action', 'note'), [
    ('Action: Move', 'Move', ''),
    ('action: left', 'Left', ''),
    ('Action: **Stop**', 'Stop', ''),
    ('Action: (Right)', 'Right', ''),
    ('Action:Move.', 'Move', ''),
    ('Action\uff1a Left', 'Left', ''),  # full-width colon
    ('Move', 'Move', 'first word'),
    ('Stop.<|im_end|>', 'Stop', 'first word'),
    ('Action: Move\nAction: Left', 'Move', 'the first is used'),
    ('Action: Fly', '', 'not one of'),
    ('Action: Moving', '', 'not one of'),
    ('I think we should go', '', 'not one of'),
    ('', '', 'names no action'),
    ('12345', '', 'names no action'),
    ('\u524d\u8fdb', '', 'names no action'),  # "forward" in Chinese: no ASCII word
    ('Action: ' + 'M' * 10000, '', 'not one of'),
])
def test_action_parsing_table(text, action, note):
    found, notes = parse_action(text)
    assert found == action
    assert note in ' '.join(notes)


def test_checkpoint_system_prompt_and_explicit_option(tmp_path):
    assert read_checkpoint_system_prompt('') is None
    assert read_checkpoint_system_prompt(tmp_path) is None
    assert NavigationActionProfile(model_dir=str(tmp_path)).system_prompt_source == 'built-in'
    (tmp_path / 'system_prompt.txt').write_text('Shipped prompt.\n\tSecond line.\n')
    shipped = NavigationActionProfile(model_dir=str(tmp_path))
    assert shipped.system_prompt == 'Shipped prompt.\n\tSecond line.'
    assert shipped.system_prompt_source == 'checkpoint'
    mine = NavigationActionProfile(system_prompt='Mine.', model_dir=str(tmp_path))
    assert (mine.system_prompt, mine.system_prompt_source) == ('Mine.', 'option')
    (tmp_path / 'system_prompt.txt').unlink()
    (tmp_path / 'system_prompt.json').write_text(json.dumps({'system_prompt': 'From JSON.'}))
    assert read_checkpoint_system_prompt(tmp_path) == 'From JSON.'
    (tmp_path / 'system_prompt.json').write_text('{"other": 1}')
    with pytest.raises(ConfigError, match='system_prompt.json'):
        NavigationActionProfile(model_dir=str(tmp_path))
    cfg = ProfileConfig(profile='navigation_action', navigation_move_possible=False,
                        navigation_system_prompt='P.')
    profile = profile_from_config(cfg, model=str(tmp_path))
    assert (profile.move_possible, profile.system_prompt) == (False, 'P.')
    with pytest.raises(ConfigError):
        make_profile('navigation_action', move_distance_m=-1.0)


def frame(i):
    return Frame(np.full((48, 64, 3), 20 * i % 256, np.uint8), stamp_ns=(i + 1) * 10**9, index=i)


def test_through_the_monitor_no_progress_no_stall_and_reset():
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=(
        'Action: Move', 'Action: Left', 'Right', 'hmm', 'Action: Stop')))
    monitor = Monitor(backend, window=WindowConfig(window_size=3, sample_period_s=0.0),
                      supervision=SupervisionConfig(stall_window_s=2.0), task=ROUTE,
                      stale_after_s=1000.0,
                      profile=make_profile('navigation_action'))
    assert monitor.load()
    outs = []
    for i in range(4):
        monitor.offer(frame(i), (i + 1) * 10**9)
        outs.append(monitor.step((i + 1) * 10**9))
    steps = [(o.estimate.result.action, o.estimate.result.step) for o in outs]
    assert steps == [('Move', 0), ('Left', 1), ('Right', 2), ('', 3)]
    assert [o.estimate.status for o in outs] == [Status.OK] * 3 + [Status.CARRIED_FORWARD]
    assert all(o.estimate.percent is None for o in outs)
    # no progress value: the supervisor raises no stall or done however long it runs
    late = monitor.step(60 * 10**9)
    assert all(not o.events for o in [*outs, late]) and not outs[-1].state.done
    assert math.isnan(outs[-1].state.value)
    assert 'Right' in backend.requests[0].messages[1]['content'][-1]['text']
    monitor.new_episode(61 * 10**9)
    monitor.offer(frame(70), 71 * 10**9)
    again = monitor.step(71 * 10**9).estimate
    assert (again.result.action, again.result.step) == ('Stop', 0)


def test_reply_starts_with_the_authors_prefix_and_the_model_continues_it(asker, img):
    """The backend gets 'Action: ' as the reply's start; the model's next word is the action."""
    profile = make_profile('navigation_action')
    ask = asker('Left', ' right', 'Action: Stop', 'forward')
    state = profile.initial_state()
    actions = []
    for _ in range(4):
        out = profile.run(ask, [img(1), img(2)], None, 'Go to the door.', state,
                          previous_percent=None)
        state = out.state
        actions.append(out.result.action)
    assert ask.prefixes == ['Action: '] * 4
    assert actions == ['Left', 'Right', 'Stop', '']  # a repeated prefix is not doubled
    assert out.result.raw == 'Action: forward' and not out.ok
    assert state.step == 3


def test_empty_prefix_lets_the_model_write_the_whole_answer(asker, img):
    profile = make_profile('navigation_action', answer_prefix='')
    ask = asker('Action: Move')
    out = profile.run(ask, [img(1)], None, 'Go.', profile.initial_state(), previous_percent=None)
    assert ask.prefixes == [''] and out.result.action == 'Move' and out.text == 'Action: Move'
