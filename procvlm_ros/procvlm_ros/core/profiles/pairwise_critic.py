"""
``pairwise_critic``: VLAC-style pair-wise progress critic with an accumulated value.

Reproduces the public format of InternRobotics/VLAC (``evo_vlac``, ``GAC_model``):

- **Critic query** (``get_trajectory_critic``, no reference): a system message, then one user
  turn ``Image-1: <image>\\nImage-2: <image>\\nCompare two images ...<task> {task} </task>
  <score>`` with the earlier frame first. The answer is the signed progress change in percentage
  points (VLAC reads it with a bare ``float()``).
- **With reference frames** (a demonstration of the task, ``ref_image_list``): the trajectory
  example ``<trajectory> <task> {task} </task>: 0% <image>\\n 50% <image>\\n ...</trajectory>``
  directly followed by ``0% <image>\\nThis image is the trajectory beginning of the following two
  images\\nImage-1: ...``; images: the reference frames, the episode's first frame, then the pair.
- **Accumulation** (``critic_to_value_simple``): the value starts at 0 and each delta ``c``
  moves it by ``v + (100 - v) * c / 100`` (``simple``, VLAC's default, also for negative ``c``);
  ``asymmetric`` (VLAC ``simple=False``) uses ``100 - max(100 - v, 1) / (100 + c) * 100`` for
  ``c <= 0``; ``mix`` (VLAC ``'mix_f'``) uses ``max(10, ...)`` of that above 50 and
  ``v * (1 + c / 100)`` below.
- **Done query** (``get_done_prompt``): one image, ``The 1 means yes, the 0 means no. Check if
  the robot has completed its task: <task> {task} </task> <done>``; done when the answer's
  number is above ``done_threshold`` (VLAC's example uses 0.9).

Choices made here, where VLAC's offline trajectory API has no live counterpart:

- The pair is (the frame the previous critic step ended on, the newest frame). The first window
  of an episode uses the window's last two frames. While every window is evaluated (offline,
  or a live loop that keeps up) this is exactly "the window's last two frames"; when the live
  loop falls behind, no progress between two evaluated frames is lost, because the deltas
  telescope like VLAC's non-overlapping ``frame_skip`` pairs. A failed answer keeps the anchor,
  so the next pair spans the gap.
- The value is clamped to [0, 100] after every step (VLAC's own value can leave that range after
  large negative deltas; a progress value cannot, and one wild answer must not poison the
  episode). Deltas are clamped to [-100, 100]. Both are noted when they happen.
- The done query costs a second model call, so it is asked only when the value reaches
  ``done_min_value`` or every ``done_every`` windows (0: never by count), and no more once it
  said done (done is sticky within the episode, as the supervisor's done is). A yes sets the
  value to 100 when ``done_sets_value`` (VLAC: "the value is also done; closer to 100 is more
  complete"), so the supervisor's done rule, plots and HIL see it unchanged; the simple
  accumulation keeps 100 once reached.
- VLAC's ``rich`` probability-weighted digits need the token log-probabilities, which backends do
  not return; the greedy answer text is read instead ("1" / "0" for done).
- Images are resized to ``image_size`` x ``image_size`` with LANCZOS as VLAC does (aspect ratio
  not kept); 0 leaves them as the estimator prepared them. The estimator's qwen-vl-utils
  pre-resize runs before (set ``pre_resize_patch_size`` 0 for VLAC's exact pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from procvlm_ros.core.backends.base import GenerationResult
from procvlm_ros.core.errors import ConfigError, ProcVlmError
from procvlm_ros.core.profiles.base import Ask, Interpretation, TaskProfile
from procvlm_ros.core.profiles.common import first_number, interleave, resize_exact, text_part
from procvlm_ros.core.profiles.results import CriticStep

SYSTEM_PROMPT = (
    'You are a visual-language assistant designed to interpret spatial and task-related '
    'information from images and text. Provide precise, context-aware responses and actionable '
    'guidance to assist in achieving task objectives.')
_COMPARE = (
    'Compare two images and evaluate whether the second image is closer to achieving task '
    'objectives compared to the first image. + score means the second image is closer, - score '
    'means the first image is closer\nResponse the relative progressing of target task follow '
    '<score>. The target task is: <task> {task} </task> <score>')
DONE_PROMPT = ('The 1 means yes, the 0 means no. Check if the robot has completed its task: '
               '<task> {task} </task> <done>')
ACCUMULATIONS = ('simple', 'asymmetric', 'mix')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp')
MAX_REFERENCE_FRAMES = 11  # VLAC: "up to 11 reference images"
_CLAMP = 100.0


@dataclass(frozen=True)
class CriticState:
    """
    One episode of critic steps.

    :param value: Accumulated progress in [0, 100] (VLAC's value list starts at 0).
    :param anchor: The frame the last critic step ended on (the next pair starts there).
    :param first: The episode's first frame (the reference prompt's ``0% <image>``).
    :param windows: Windows evaluated in this episode (counts the done query's period).
    :param done: The done query said yes in this episode.
    """

    value: float = 0.0
    anchor: Image.Image | None = None
    anchor_key: Any = None
    first: Image.Image | None = None
    first_key: Any = None
    windows: int = 0
    steps: int = 0
    done: bool = False


def accumulate(value: float, delta: float, rule: str = 'simple') -> float:
    """
    VLAC's value after one delta (``critic_to_value_simple``), before clamping.

    :param value: Value before, in [0, 100].
    :param delta: Progress change in percentage points, in [-100, 100].
    :param rule: ``simple``, ``asymmetric`` or ``mix`` (see the module docstring).
    """
    if delta > 0 or rule == 'simple':
        return value + (100.0 - value) * delta / 100.0
    # VLAC divides by (100 + c); c = -100 would divide by zero: the value drops to the floor.
    shrink = 100.0 - max(100.0 - value, 1.0) / max(100.0 + delta, 1e-6) * 100.0
    if rule == 'asymmetric':
        return shrink
    return max(10.0, shrink) if value > 50 else value + value * delta / 100.0


def parse_delta(text: str) -> tuple[float | None, list[str]]:
    """
    The critic answer's progress delta in percentage points, clamped to [-100, 100].

    VLAC's answer is just the number (``"12.5"``, ``"-3"``). Tolerated: text around it, a ``%``,
    a reasoning block (the number after the last ``</think>`` wins), a unicode minus. Refused
    with a note (None): no number, ``nan``/``inf``, overflowing numbers.
    """
    body = text.rsplit('</think>', 1)[-1] if '</think>' in text else text
    value, notes = first_number(body)
    if value is None:
        return None, notes
    if abs(value) > _CLAMP:
        notes.append(f'delta {value:g} outside [-100, 100]; clamped')
        value = max(-_CLAMP, min(_CLAMP, value))
    return value, notes


def parse_done(text: str) -> tuple[float | None, list[str]]:
    """The done answer's score in [0, 1] ("1" yes, "0" no; "yes"/"no" words accepted)."""
    value, notes = first_number(text)
    if value is None:
        word = text.strip().lower()
        if word.startswith('yes'):
            return 1.0, ['done answer is a word; read as 1']
        if word.startswith('no'):
            return 0.0, ['done answer is a word; read as 0']
        return None, notes
    if not 0.0 <= value <= 1.0:
        notes.append(f'done score {value:g} outside [0, 1]; clamped')
        value = max(0.0, min(1.0, value))
    return value, notes


def load_reference_frames(path: str | Path, count: int) -> list[Image.Image]:
    """
    A demonstration's frames for the reference prompt: ``count`` of them, VLAC's subsampling.

    :param path: A folder of images (sorted by file name) or a video file.
    :param count: Frames to keep, 2..11: the first, then ``int(k * (n - 1) / (count - 1))``.
    :raises ConfigError: Missing path, too few frames, or an unreadable file.
    """
    if not 2 <= count <= MAX_REFERENCE_FRAMES:
        raise ConfigError(f'reference frame count must be 2..{MAX_REFERENCE_FRAMES}, got {count}')
    src = Path(path).expanduser()
    if not src.exists():
        raise ConfigError(f'reference frames not found: {src}')
    try:
        if src.is_dir():
            files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            total = len(files)
            picks = _reference_indices(total, count, src)
            return [_open_rgb(files[i]) for i in picks]
        from procvlm_ros.media import video

        total = video.probe_video(src).frame_count
        picks = _reference_indices(total, count, src)
        by_index = {f.index: f.image for f in video.read_video_frames(src, sorted(set(picks)))}
        return [Image.fromarray(np.ascontiguousarray(by_index[i])) for i in picks]
    except ConfigError:
        raise
    except (OSError, ProcVlmError, KeyError) as e:
        raise ConfigError(f'cannot read reference frames from {src}: {e}') from e


def _reference_indices(total: int, count: int, src: Path) -> list[int]:
    if total < count:
        raise ConfigError(f'{src} has {total} frames; the reference needs at least {count}')
    delta = (total - 1) / (count - 1)
    return [0] + [int(k * delta) for k in range(1, count)]


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert('RGB')


class PairwiseCriticProfile(TaskProfile):
    """
    Pair of frames -> progress delta (VLAC), accumulated into a 0-100 value; done query.

    :param accumulation: ``simple`` (VLAC default), ``asymmetric`` or ``mix``.
    :param done_min_value: Ask the done query once the value reaches this (0-100; above 100:
        never by value).
    :param done_every: Also ask it every N windows (0: never by count).
    :param done_threshold: A done answer above this is a yes (VLAC ``done_threshold``).
    :param done_sets_value: A yes sets the value to 100.
    :param reference_path: Folder of images or video of a demonstration ('' = none).
    :param reference_frames: How many reference frames go into the prompt (2-11).
    :param image_size: Square side every image is resized to (VLAC 448; 0 = as prepared).
    :param system_prompt: The system message (default VLAC's; '' = none).
    """

    name: ClassVar[str] = 'pairwise_critic'
    publishes: ClassVar[str] = 'progress'

    def __init__(self, accumulation: str = 'simple', done_min_value: float = 80.0,
                 done_every: int = 0, done_threshold: float = 0.9,
                 done_sets_value: bool = True, reference_path: str = '',
                 reference_frames: int = 6, image_size: int = 448,
                 system_prompt: str = SYSTEM_PROMPT) -> None:
        if accumulation not in ACCUMULATIONS:
            raise ConfigError(f'accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}')
        if not (math.isfinite(done_min_value) and math.isfinite(done_threshold)):
            raise ConfigError('done_min_value and done_threshold must be finite')
        if done_every < 0 or image_size < 0:
            raise ConfigError('done_every and image_size must be >= 0')
        self.accumulation = accumulation
        self.done_min_value = float(done_min_value)
        self.done_every = int(done_every)
        self.done_threshold = float(done_threshold)
        self.done_sets_value = bool(done_sets_value)
        self.image_size = int(image_size)
        self.system_prompt = system_prompt
        self.reference: tuple[Image.Image, ...] = ()
        if reference_path:
            self.reference = tuple(self._fit(i) for i in
                                   load_reference_frames(reference_path, reference_frames))

    def initial_state(self) -> CriticState:
        return CriticState()

    # ------------------------------------------------------------------ prompts
    def _fit(self, image: Image.Image) -> Image.Image:
        if self.image_size <= 0:
            return image
        return resize_exact(image, (self.image_size, self.image_size))

    def _system(self) -> list[dict[str, Any]]:
        return [{'role': 'system', 'content': self.system_prompt}] if self.system_prompt else []

    def critic_messages(self, task: str, previous: Image.Image, current: Image.Image,
                        first: Image.Image | None = None) -> list[dict[str, Any]]:
        """The critic query; with reference frames, ``first`` is the episode's first frame."""
        compare = _COMPARE.replace('{task}', task)
        pair: list[str | Image.Image] = ['Image-1: ', previous, '\nImage-2: ', current,
                                         '\n' + compare]
        if not self.reference:
            return [*self._system(), {'role': 'user', 'content': interleave(pair)}]
        n = len(self.reference)
        pieces: list[str | Image.Image] = [f'<trajectory> <task> {task} </task>:']
        for k, image in enumerate(self.reference):
            pieces += [f' {int(k / (n - 1) * 100)}% ', image, '\n']
        pieces += ['</trajectory>0% ', first if first is not None else previous,
                   '\nThis image is the trajectory beginning of the following two images\n', *pair]
        return [*self._system(), {'role': 'user', 'content': interleave(pieces)}]

    def done_messages(self, task: str, current: Image.Image) -> list[dict[str, Any]]:
        """The done query about the newest frame."""
        content = [{'type': 'image', 'image': current},
                   text_part(DONE_PROMPT.replace('{task}', task))]
        return [*self._system(), {'role': 'user', 'content': content}]

    # ------------------------------------------------------------------ one window
    def run(self, ask: Ask, images: Sequence[Image.Image], keys: Sequence[Any] | None,
            task: str, state: Any, *, previous_percent: float | None,
            draft: Sequence[int] | None = None) -> Interpretation:
        state = state if isinstance(state, CriticState) else self.initial_state()
        keyed = list(keys) if keys is not None else [None] * len(images)
        current, current_key = self._fit(images[-1]), keyed[-1]
        if state.anchor is not None:
            previous, previous_key = state.anchor, state.anchor_key
        else:
            i = -2 if len(images) > 1 else -1
            previous, previous_key = self._fit(images[i]), keyed[i]
        first, first_key = state.first, state.first_key
        if first is None:
            first, first_key = self._fit(images[0]), keyed[0]
        messages = self.critic_messages(task, previous, current, first)
        sent = [*self.reference, first, previous, current] if self.reference else [
            previous, current]
        sent_keys = ([('reference', i) for i in range(len(self.reference))]
                     + [first_key, previous_key, current_key]) if self.reference else [
            previous_key, current_key]
        critic = ask(messages, sent, None if keys is None else sent_keys, None)
        delta, notes = parse_delta(critic.text)
        state = replace(state, first=first, first_key=first_key, windows=state.windows + 1)
        if delta is not None:
            raw_value = accumulate(state.value, delta, self.accumulation)
            value = max(0.0, min(100.0, raw_value))
            if value != raw_value:
                notes.append(f'accumulated value {raw_value:.2f} clamped to {value:g}')
            state = replace(state, value=value, anchor=current, anchor_key=current_key,
                            steps=state.steps + 1)
        # An unreadable delta carries the value (and keeps the anchor); the done query is
        # still asked when due, so a broken critic answer does not hide a finished task.
        step = CriticStep(delta=delta, value=state.value, raw=critic.text)
        calls: list[GenerationResult] = [critic]
        if self._done_due(state):
            done_call = ask(self.done_messages(task, current), [current],
                            None if keys is None else [current_key], None)
            calls.append(done_call)
            step, state = self._apply_done(step, state, done_call.text, notes)
        ok = delta is not None or step.done is not None
        return self._interpret(step.value if ok else None, step, state, ok, critic,
                               calls[1:], notes)

    def _done_due(self, state: CriticState) -> bool:
        if state.done:
            return False
        by_count = self.done_every > 0 and state.windows % self.done_every == 0
        return by_count or state.value >= self.done_min_value

    def _apply_done(self, step: CriticStep, state: CriticState, text: str,
                    notes: list[str]) -> tuple[CriticStep, CriticState]:
        score, done_notes = parse_done(text)
        notes.extend(f'done query: {n}' for n in done_notes)
        done = score is not None and score > self.done_threshold
        step = replace(step, done=done if score is not None else None, done_score=score,
                       done_raw=text)
        if done:
            state = replace(state, done=True)
            if self.done_sets_value and state.value < 100.0:
                state = replace(state, value=100.0)
                step = replace(step, value=100.0)
        return step, state

    @staticmethod
    def _interpret(percent: float | None, step: CriticStep, state: CriticState, ok: bool,
                   critic: GenerationResult, extra: list[GenerationResult],
                   notes: list[str]) -> Interpretation:
        calls = [critic, *extra]
        text = '\n'.join(c.text for c in calls)
        return Interpretation(
            percent=percent, result=step, state=state, ok=ok, text=text, last=calls[-1],
            notes=tuple(notes), generated_tokens=sum(c.generated_tokens for c in calls),
            latency_s=sum(c.latency_s for c in calls))
