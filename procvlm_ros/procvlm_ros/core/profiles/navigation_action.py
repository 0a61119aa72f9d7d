"""
``navigation_action``: R2R-style low-level navigation, one action per window.

Reproduces the public format of Qwen2.5-VL-3B-R2R-low-level (Kåsene & Lison; the authors' code
Vebjorhk/masters-thesis-VLN ``format_prompts_v3_5`` and ``system_prompt_low_level.json``):

- a **system message** (mandatory: the model was trained with it) describing the inputs and the
  actions Right/Left/Move/Stop;
- **one user turn**: ``Route Instruction: {instruction}\\nCurrent Step: {step}\\nCummulative
  Distance Traveled: {distance}\\nImages from Previous Steps: `` then one image per previous
  step (``[]`` when none), ``\\nActions performed at Previous Steps: {['Left', ...]}\\nCurrent
  image:`` then the current image, ``\\nPossible actions: {[...]}\\nNow predict the next action
  based on the input you have recived. Answer on the format: Action: (an the action you
  choose)`` (the card's spelling, kept: the model was trained on it);
- **answer** ``Action: X``. Move is not offered when it is impossible (``move_possible``);
- frames are 320x240 (the simulator's 640x480 renders halved with Lanczos).

Mapping onto a window: the route instruction is the task; the current image is the window's
newest frame; the previous steps are the window's older frames, as many as steps were taken in
this episode (the window pads an episode's start with its first frame, and those copies are not
steps), each paired with the action taken then (the last ones, so images and actions stay
aligned as in training; the window bounds the history, the authors sent all of it). The step
counter, the actions and the distance live in the profile state, which the Monitor resets with
the episode. An answer that names no offered action leaves the state as it was (no step).

The reply starts with ``Action: `` as the authors start it (``answer_prefix``, sent to the
backend as the assistant prefix), so the model writes the action word next; greedy decoding's
first token is the authors' argmax at the last position. The parser reads the prefix and the
answer together and also accepts a full ``Action: X``, a bare ``X`` and common decorations
(``answer_prefix`` '' lets the model write everything itself).
The distance is ``move_distance_m`` per Move (the simulator's graph edge lengths do not exist on
a robot; 0 keeps "0").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
from pathlib import Path
import re
from typing import Any, ClassVar

from PIL import Image

from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.profiles.base import Ask, Interpretation, TaskProfile
from procvlm_ros.core.profiles.common import interleave, resize_exact
from procvlm_ros.core.profiles.results import NAVIGATION_ACTIONS, NavigationDecision

FRAME_SIZE = (320, 240)  # width, height of the training frames
ANSWER_PREFIX = 'Action: '  # the authors start the reply with it and read the next token
# The system prompt of system_prompt_low_level.json (the Move + auto-turn variant).
SYSTEM_PROMPT = (
    'You are a robot which follows route instructions step-by-step to reach a destination. At '
    'every step, you will receive:\n'
    '\t1. Route Instruction: the instruction to follow.\n'
    '\t2. Current Step: The step number you are currently on in the overall route.\n'
    '\t3. Cumulative Distance Traveled: The total distance (in meters) you have moved from the '
    'starting point up to your current position.\n'
    '\t4. Observations from previous steps (if available), including:\n'
    '\t\t- Images captured at previous steps.\n'
    '\t\t- Actions performed at previous steps.\n'
    '\t5. Current image: An image showing the robots present view.\n'
    '\t6. Possible actions: The set of available actions for this step.\n\n'
    'Actions and their definitions:\n'
    '\t- Right: Rotates 30 degrees to the right.\n'
    '\t- Left: Rotates 30 degrees to the left.\n'
    '\t- Move: Moves you forward in your current direction of view.\n'
    '\t- Stop: Choose this action when you think you have reached the goal or the end of the '
    'navigation path.\n\n'
    'Important Notes\n'
    "\t- Choose only one action at a time, using only the predefined actions listed in the "
    "'Possible Actions' field.\n"
    '\t- The environment is graph-based, meaning movement occurs between discrete nodes rather '
    'than continuous space.\n'
    '\t- Automatically Turn Towards Node: When you move forward, the camera is automatically '
    'adjusted to center on the next node in the graph-based environment. This is handled '
    'separately and does not require prediction. Your responsibility is to decide movement and '
    'rotation based on the provided inputs.\n\n'
    'Your task is to predict the most appropriate next action at each step based on the given '
    'information.')
# Where a checkpoint may ship its own system prompt (first found wins).
CHECKPOINT_PROMPT_FILES = ('system_prompt.txt', 'system_prompt.json')
_ORDER = ('Left', 'Right', 'Move', 'Stop')  # the order the card offers them in
_ACTION = re.compile(r'action\s*[:\uff1a]\s*[*_`"\'(\[]*\s*([A-Za-z]+)', re.IGNORECASE)
_WORD = re.compile(r'[A-Za-z]+')


@dataclass(frozen=True)
class NavigationState:
    """
    One episode of navigation steps.

    :param step: Steps taken (the next one's ``Current Step``).
    :param actions: The actions taken, oldest first.
    :param distance: Metres travelled (``move_distance_m`` per Move).
    """

    step: int = 0
    actions: tuple[str, ...] = ()
    distance: float = 0.0


def read_checkpoint_system_prompt(model_dir: str | Path) -> str | None:
    """
    The system prompt a checkpoint ships (``system_prompt.txt``, or ``system_prompt.json`` with
    a ``system_prompt`` key), or None when it ships none. A final newline is dropped.

    :raises ConfigError: When such a file exists but cannot be read.
    """
    if not model_dir:
        return None
    root = Path(model_dir).expanduser()
    for name in CHECKPOINT_PROMPT_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding='utf-8')
            if name.endswith('.json'):
                text = json.loads(text)['system_prompt']
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f'cannot read the system prompt from {path}: {e}') from e
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f'{path} holds no system prompt text')
        return text.removesuffix('\n')
    return None


def offered_actions(move_possible: bool) -> tuple[str, ...]:
    """``['Left', 'Right', 'Move', 'Stop']``, without Move when moving is impossible."""
    return tuple(a for a in _ORDER if move_possible or a != 'Move')


def parse_action(text: str, offered: Sequence[str] = _ORDER) -> tuple[str, list[str]]:
    """
    The action an answer names, or '' with notes; never raises.

    Reads ``Action: X`` (the trained format; the first one counts), else the first word (the
    authors read one token after a prompt that already ended in ``Action: ``). Case and
    decorations (``**Move**``, ``(Move)``, ``Move.``) are tolerated. An action that was not
    offered (Move when moving is impossible) or an unknown word gives ''.
    """
    notes: list[str] = []
    found = [m.group(1) for m in _ACTION.finditer(text)]
    if len(set(w.lower() for w in found)) > 1:
        notes.append(f'answer names {len(found)} actions; the first is used')
    first_word = _WORD.search(text)
    word = found[0] if found else (first_word.group(0) if first_word else '')
    if not found and word:
        notes.append('no "Action:" in the answer; its first word is read')
    canonical = {a.lower(): a for a in NAVIGATION_ACTIONS}.get(word.lower(), '')
    if not canonical:
        shown = text.strip()[:40]
        notes.append(f'answer names no action ({shown!r})' if not word
                     else f'{word[:20]!r} is not one of {list(offered)}')
        return '', notes
    if canonical not in offered:
        notes.append(f'{canonical} was not offered (possible: {list(offered)})')
        return '', notes
    return canonical, notes


class NavigationActionProfile(TaskProfile):
    """
    Route instruction + previous steps + current frame -> Move/Left/Right/Stop.

    :param system_prompt: The system message; '' = the checkpoint's own (``model_dir``) when it
        ships one, else the built-in default (the card's text).
    :param model_dir: Checkpoint directory to read a shipped system prompt from.
    :param move_possible: Offer Move (False: the robot cannot move forward now).
    :param move_distance_m: Metres added to the distance per Move.
    :param frame_size: Width and height every image is resized to (Lanczos).
    :param answer_prefix: Text that starts the assistant's reply (the authors' ``Action: ``).
    """

    name: ClassVar[str] = 'navigation_action'
    publishes: ClassVar[str] = 'action'

    def __init__(self, system_prompt: str = '', model_dir: str = '',
                 move_possible: bool = True, move_distance_m: float = 0.0,
                 frame_size: tuple[int, int] = FRAME_SIZE,
                 answer_prefix: str = ANSWER_PREFIX) -> None:
        shipped = read_checkpoint_system_prompt(model_dir) if not system_prompt else None
        self.system_prompt = system_prompt or shipped or SYSTEM_PROMPT
        self.system_prompt_source = ('option' if system_prompt else
                                     'checkpoint' if shipped else 'built-in')
        if move_distance_m < 0 or not move_distance_m == move_distance_m:
            raise ConfigError(f'move_distance_m must be >= 0, got {move_distance_m}')
        if len(frame_size) != 2 or min(frame_size) < 1:
            raise ConfigError(f'frame_size must be (width, height) >= 1, got {frame_size}')
        self.move_possible = bool(move_possible)
        self.move_distance_m = float(move_distance_m)
        self.frame_size = (int(frame_size[0]), int(frame_size[1]))
        self.answer_prefix = str(answer_prefix)

    def _with_prefix(self, answer: str) -> str:
        """The whole reply: the prefix the model continued, unless it repeated the prefix."""
        head = self.answer_prefix.strip().lower()
        if head and answer.lstrip().lower().startswith(head):
            return answer
        return self.answer_prefix + answer

    def initial_state(self) -> NavigationState:
        return NavigationState()

    def messages(self, instruction: str, state: NavigationState,
                 history: Sequence[Image.Image], current: Image.Image) -> list[dict[str, Any]]:
        """The system message and the one user turn, images already at ``frame_size``."""
        actions = list(state.actions[len(state.actions) - len(history):]) if history else []
        pieces: list[str | Image.Image] = [
            f'Route Instruction: {instruction}\nCurrent Step: {state.step}\n'
            f'Cummulative Distance Traveled: {_distance(state.distance)}\n'
            'Images from Previous Steps: ']
        pieces += list(history) if history else ['[]']
        pieces += [f'\nActions performed at Previous Steps: {actions!s}\nCurrent image:',
                   current,
                   f'\nPossible actions: {list(offered_actions(self.move_possible))!s}\n'
                   'Now predict the next action based on the input you have recived. Answer on '
                   'the format: Action: (an the action you choose)']
        return [{'role': 'system', 'content': self.system_prompt},
                {'role': 'user', 'content': interleave(pieces)}]

    def run(self, ask: Ask, images: Sequence[Image.Image], keys: Sequence[Any] | None,
            task: str, state: Any, *, previous_percent: float | None,
            draft: Sequence[int] | None = None) -> Interpretation:
        state = state if isinstance(state, NavigationState) else self.initial_state()
        count = min(state.step, len(images) - 1)
        window = [resize_exact(i, self.frame_size) for i in images[len(images) - 1 - count:]]
        history, current = window[:-1], window[-1]
        sent_keys = None if keys is None else list(keys)[len(images) - 1 - count:]
        result = ask(self.messages(task, state, history, current), window, sent_keys, None,
                     self.answer_prefix)
        text = self._with_prefix(result.text)
        offered = offered_actions(self.move_possible)
        action, notes = parse_action(text, offered)
        decision = NavigationDecision(action=action, step=state.step, raw=text, offered=offered)
        if action:
            state = NavigationState(
                step=state.step + 1, actions=(*state.actions, action),
                distance=state.distance + (self.move_distance_m if action == 'Move' else 0.0))
        return Interpretation(
            percent=None, result=decision, state=state, ok=bool(action), text=text,
            last=result, notes=tuple(notes), generated_tokens=result.generated_tokens,
            latency_s=result.latency_s)


def _distance(metres: float) -> str:
    # The simulator starts from the integer 0 and sums float edge lengths (Python repr).
    return '0' if metres == 0 else repr(float(metres))
