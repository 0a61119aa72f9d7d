"""
``grounded_query``: ViGoRL-style grounded answers about the newest frame, with a zoom turn.

Reproduces the public format of ViGoRL (gsarch/grounded-rl; Qwen2.5-VL 3B/7B):

- a **system message** (one of the published prompts, ``system_prompt_style``); the user turn is
  the image first, then the question;
- **answers** reason inside ``<think>`` citing points ``(x, y)`` and end with ``<answer> ...
  </answer>``; the multi-turn models may instead ask to zoom with ``<tool_call>\\n{"name":
  "search_coordinate", "arguments": {"coordinate": [x, y]}}\\n</tool_call>``;
- the **zoom turn**: the box ``[x - offset, y - offset, x + offset, y + offset]`` clamped to the
  image (not shifted: edge crops are smaller), optionally a red dot at the point, resized to
  ``crop_size`` (rounded to the model's factor, as qwen-vl-utils does), sent back as a user turn
  ``<observation>\\nHere is the crop of the image centered on the coordinate:\\n<image>\\n
  </observation>``; the model continues, at most ``max_turns`` turns in all (ViGoRL eval: 4).

**Coordinates.** ViGoRL's points are integer pixels of the image as the model received it, after
the Qwen processor's ``smart_resize`` (sides rounded to ``factor`` = patch x merge: 28 for
Qwen2.5-VL, 32 for Qwen3-VL; area kept in ``[min_pixels, max_pixels]``). This profile resizes the
image to exactly that size itself (``model_geometry`` reads the factor and pixel limits from the
checkpoint's ``preprocessor_config.json``), so the processor's own resize is a no-op and the
model's pixel space is known. A point maps to the camera frame by the side ratios,
``x_cam = x * frame_width / model_width`` (and the same for y), ViGoRL's own rescaling rule; the
zoom crop is cut from the model-space image, as ViGoRL crops the resized image. Points in every
turn, tool calls included, are taken to be in the full image's space (ViGoRL's multi-turn format
asks for coordinates unique across turns, i.e. one space). Points outside the model image
(negative, huge, non-finite) are dropped with a note.
"""

from __future__ import annotations

from collections.abc import Sequence
import contextlib
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import re
from typing import Any, ClassVar

from PIL import Image, ImageDraw

from procvlm_ros.core.backends.base import GenerationResult
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.image import smart_resize
from procvlm_ros.core.profiles.base import Ask, Interpretation, TaskProfile
from procvlm_ros.core.profiles.common import interleave, resize_exact, text_part
from procvlm_ros.core.profiles.results import GroundedAnswer, GroundedPoint

_TOOL_FORMAT = (
    '     <tool_call>\n'
    '     {"name": "search_coordinate", "arguments": {"coordinate": [x, y]}}\n'
    '     </tool_call>\n')
_UNIQUE = (
    '- Only answer if you are confident about the answer. If you are not confident, output a '
    'search action. You should not always end after one turn.\n'
    '- You should not repeat the same coordinates in a tool call more than once. Coordinates '
    'must be unique across tool calls, including values that are the same or nearly identical '
    '(e.g., differing by only a few pixels).')
SYSTEM_PROMPTS = {
    # V* visual search / QA, multi-turn (vstar_multiturn.jinja, the eval SYSTEM_PROMPT_VSTAR).
    'qa_multiturn': (
        'You are a helpful assistant tasked with answering a question about an image. You '
        'should systematically reason through the problem step by step by checking and '
        'verifying relevant image regions, while grounding reasoning steps to specific (x, y) '
        'points in the image:\n'
        '- At each turn, first clearly reason about ONE area or element in the image enclosed '
        'in <think> </think> tags.\n'
        '- After reasoning, either:\n'
        '  a) Zoom-in on a specific region to see it better by outputting a search action '
        'formatted precisely as:\n' + _TOOL_FORMAT
        + "  b) If confident you've found the correct location, output your final answer "
        'enclosed in <answer> {final answer} </answer> tags.\n' + _UNIQUE + '\n'
        '- If unclear, infer based on likely context or purpose.\n'
        '- Verify each step by examining multiple possible solutions before selecting a final '
        'answer.'),
    # Web grounding, multi-turn (osatlas_multiturn_crop.jinja).
    'grounding_multiturn': (
        'You are an assistant tasked with identifying precise (x,y) coordinates of a described '
        'element in an image.\n'
        'Your task involves multiple turns of reasoning, each with EXACTLY one <think> step and '
        'one action:\n'
        '- At each turn, first clearly reason about ONE area or element in the image enclosed '
        'in <think> </think> tags.\n'
        '- After reasoning, either:\n'
        '  a) Output a search action formatted precisely as:\n' + _TOOL_FORMAT
        + "  b) If confident you've found the correct location, output your final answer "
        'enclosed in <answer> (x, y) </answer> tags.\n' + _UNIQUE),
    # Spatial reasoning, single turn (sat2_grounded_thinking.jinja).
    'spatial': (
        'A conversation between User and Assistant. The User asks a question, and the Assistant '
        'solves it. The Assistant systematically reasons through the problem step by step by '
        'checking and verifying possible solutions and image regions, while grounding reasoning '
        'steps to specific objects and their relationships in the image using (x,y) '
        'coordinates. There may be one image or two images concatenated together, in which '
        'case the Assistant must compare the spatial relationships between the two images.\n\n'
        "All reasoning processes must be enclosed within a single set of '<think>' tags, and "
        'reasoning steps must include specific reference coordinates:\n\n'
        'For example, <think>\n{Reasoning text}. {Further reasoning text} {more reasoning} \n'
        '</think>\n\n'
        "The final answer should be enclosed in '<answer>' tags in the format:\n"
        '<answer> {text of selected answer choice} </answer>\n\n'
        'The Assistant must help the user identify the correct answer choice from the options '
        'provided.\n'
        '-Your answer should be the **exact text** of the selected answer option, without '
        'additional explanations or reasoning or the option text. For example, if the answer is '
        'A. right , your response should just be <answer>right</answer> (not <answer>A. right'
        '</answer>).\n'
        '-If the correct answer is unclear, select the most relevant option based on the '
        'spatial relationships and dynamics within the image.\n'
        '- The Assistant should verify each step and check multiple possible solutions before '
        'selecting the final answer.'),
    # Web grounding, single turn (osatlas_grounded_thinking.jinja).
    'grounding': (
        'A conversation between User and Assistant. The User asks a question, and the Assistant '
        'solves it. The Assistant systematically reasons through the problem step by step, '
        'verifying each step and grounding every step to a specific point in the image.\n\n'
        "All reasoning processes must be enclosed within a single set of '<think>' tags, with "
        'each reasoning step explicitly referencing a coordinate:\n\n'
        '<think>\n[Reasoning text with grounded points inline] (x1, y1). [Further reasoning] '
        '(x2, y2), [Final refinement] (x3, y3).\n</think>\n\n'
        "The final answer should be enclosed in '<answer>' tags in the format:\n"
        '<answer> (xf, yf) </answer>\n\n'
        'Your task is to help the user identify the precise coordinates (x, y) of a specific '
        'area/element/object on the screen based on a description.\n'
        '- Aim to point to the center or a representative point within the described '
        'area/element/object as accurately as possible.\n'
        '- If the description is unclear or ambiguous, infer the most relevant area or element '
        'based on its likely context or purpose.\n'
        '- The final output should be the single most precise coordinate for the requested '
        'element.\n'
        '- The Assistant should verify each step and check multiple possible solutions before '
        'selecting the final answer.'),
    # The official demos send no system message.
    'none': '',
}
SYSTEM_PROMPT_STYLES = tuple(SYSTEM_PROMPTS)
OBSERVATION = '<observation>\nHere is the crop of the image centered on the coordinate:\n'
OBSERVATION_DOT = ('<observation>\nHere is the crop of the image centered on the coordinate, '
                   'with a red dot at the coordinate location:\n')
OBSERVATION_END = '\n</observation>'
# Qwen2.5-VL's processor defaults (factor = patch 14 x merge 2).
DEFAULT_GEOMETRY = (28, 56 * 56, 28 * 28 * 16384)
MAX_POINTS = 64  # points kept per answer (a runaway answer can cite thousands)
_FLAGS = re.IGNORECASE | re.DOTALL
_NUM = r'[+\-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+\-]?\d+)?'
_POINT = re.compile(r'\(\s*(' + _NUM + r')\s*,\s*(' + _NUM + r')\s*\)')
_COORDINATE = re.compile(r'"coordinate"\s*:\s*\[\s*(' + _NUM + r')\s*,\s*(' + _NUM + r')', _FLAGS)
_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"', _FLAGS)


@dataclass(frozen=True)
class Turn:
    """One assistant turn read: reasoning, final answer or zoom request, cited points."""

    think: str = ''
    answer: str | None = None
    zoom: tuple[float, float] | None = None
    points: tuple[tuple[float, float, str], ...] = ()  # model pixels, label think|answer
    notes: tuple[str, ...] = field(default_factory=tuple)


def model_geometry(model_dir: str | Path = '') -> tuple[int, int, int]:
    """
    ``(factor, min_pixels, max_pixels)`` of the checkpoint's image processor.

    Read from ``preprocessor_config.json``: ``patch_size * merge_size`` and ``min_pixels`` /
    ``max_pixels`` (Qwen2.5-VL) or ``size.shortest_edge`` / ``size.longest_edge`` (Qwen3-VL).
    Qwen2.5-VL's defaults where a value (or the file) is missing.

    :raises ConfigError: When the file exists but is not valid JSON.
    """
    factor, lo, hi = DEFAULT_GEOMETRY
    path = Path(model_dir).expanduser() / 'preprocessor_config.json' if model_dir else None
    if path is None or not path.is_file():
        return factor, lo, hi
    try:
        cfg = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise ConfigError(f'cannot read {path}: {e}') from e
    size = cfg.get('size') if isinstance(cfg.get('size'), dict) else {}
    factor = int(cfg.get('patch_size', 14)) * int(cfg.get('merge_size', 2))
    lo = int(cfg.get('min_pixels') or size.get('shortest_edge') or lo)
    hi = int(cfg.get('max_pixels') or size.get('longest_edge') or hi)
    return factor, lo, hi


def _tag(text: str, name: str, notes: list[str]) -> str | None:
    """The first ``<name>...</name>`` body; an unterminated one runs to the end (noted)."""
    bodies = re.findall(rf'<{name}>(.*?)</{name}>', text, _FLAGS)
    if len(bodies) > 1:
        notes.append(f'{len(bodies)} <{name}> blocks; the first is used')
    if bodies:
        return str(bodies[0])
    opened = re.search(rf'<{name}>', text, re.IGNORECASE)
    if opened:
        notes.append(f'<{name}> is not closed; read to the end of the answer')
        return text[opened.end():]
    return None


def _finite_pair(x: Any, y: Any) -> tuple[float, float] | None:
    try:
        fx, fy = float(x), float(y)
    except (TypeError, ValueError, OverflowError):
        return None
    return (fx, fy) if math.isfinite(fx) and math.isfinite(fy) else None


def parse_tool_call(body: str, notes: list[str]) -> tuple[float, float] | None:
    """The ``search_coordinate`` point of a tool call body (JSON, or what is left of it)."""
    call: Any = None
    with contextlib.suppress(ValueError, RecursionError):  # nesting bombs included
        call = json.loads(body.strip())
    if isinstance(call, dict):
        name = call.get('name')
        args = call.get('arguments')
        coordinate = args.get('coordinate') if isinstance(args, dict) else None
    else:
        found = _NAME.search(body)
        name = found.group(1) if found else None
        match = _COORDINATE.search(body)
        coordinate = [match.group(1), match.group(2)] if match else None
        if coordinate is not None:
            notes.append('tool call is not valid JSON; its coordinate was read anyway')
    if name != 'search_coordinate':
        notes.append(f'tool call names {str(name)[:40]!r}, not search_coordinate')
        if name is not None:
            return None
    if not isinstance(coordinate, (list, tuple)) or len(coordinate) != 2:
        notes.append('tool call has no [x, y] coordinate')
        return None
    point = _finite_pair(*coordinate)
    if point is None:
        notes.append(f'tool call coordinate {str(coordinate)[:60]} is not two finite numbers')
    return point


def parse_turn(text: str) -> Turn:
    """
    Read one assistant turn; never raises.

    ``<think>`` and ``<answer>``: the first block counts (more are noted); an unterminated
    block runs to the end. ``<tool_call>``: JSON, else the ``"coordinate": [x, y]`` left in a
    truncated call. An answer wins over a tool call in the same turn. Points: every ``(x, y)``
    in the reasoning and the answer (at most MAX_POINTS), non-finite ones dropped.
    """
    notes: list[str] = []
    think = _tag(text, 'think', notes)
    answer = _tag(text, 'answer', notes)
    tool = _tag(text, 'tool_call', notes)
    zoom = parse_tool_call(tool, notes) if tool is not None else None
    if answer is not None and zoom is not None:
        notes.append('turn has both an answer and a tool call; the answer is used')
        zoom = None
    if think is None and answer is None and tool is None:
        notes.append('no <think>, <answer> or <tool_call>; the whole text is the reasoning')
        think = text
    points: list[tuple[float, float, str]] = []
    for label, body in (('think', think or ''), ('answer', answer or '')):
        for match in _POINT.finditer(body):
            pair = _finite_pair(match.group(1), match.group(2))
            if pair is None:
                notes.append(f'point ({match.group(1)[:20]}, {match.group(2)[:20]}) is not finite')
            elif len(points) < MAX_POINTS:
                points.append((*pair, label))
    if len(points) >= MAX_POINTS:
        notes.append(f'more than {MAX_POINTS} points; the first {MAX_POINTS} are kept')
    return Turn(think=(think or '').strip(), answer=None if answer is None else answer.strip(),
                zoom=zoom, points=tuple(points), notes=tuple(notes))


def crop_around(image: Image.Image, x: float, y: float, offset: int, size: tuple[int, int],
                dot: bool = False) -> Image.Image | None:
    """
    ViGoRL's zoom crop: the box ``offset`` around ``(x, y)`` clamped to ``image``, optionally a
    red dot (radius 7, white outline 2) at the point, resized to ``size`` (width, height).
    None when the clamped box is empty (the point lies outside the image).
    """
    w, h = image.size
    box = (max(0, int(x - offset)), max(0, int(y - offset)),
           min(w, int(x + offset)), min(h, int(y + offset)))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    crop = image.convert('RGB').crop(box)
    if dot:
        draw = ImageDraw.Draw(crop)
        cx, cy, r = x - box[0], y - box[1], 7
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(255, 0, 0), outline=(255, 255, 255),
                     width=2)
    return crop.resize(size, Image.Resampling.BICUBIC)


class GroundedQueryProfile(TaskProfile):
    """
    Question about the newest frame -> answer with points in camera pixels; zoom turns.

    :param system_prompt_style: Which published system prompt (``SYSTEM_PROMPT_STYLES``).
    :param system_prompt: Replaces the style's text when not empty.
    :param zoom: Answer ``search_coordinate`` tool calls with a crop (a further turn).
    :param max_turns: Model calls per question at most (the zoom turns included).
    :param crop_offset: Half side of the zoom box in model pixels (V*: 182).
    :param crop_size: Side the crop is resized to, before rounding to the factor (V*: 672).
    :param crop_dot: Draw a red dot at the zoom point (web grounding) and say so.
    :param model_dir: Checkpoint whose ``preprocessor_config.json`` gives the geometry.
    :param geometry: ``(factor, min_pixels, max_pixels)``; overrides ``model_dir``.
    """

    name: ClassVar[str] = 'grounded_query'
    publishes: ClassVar[str] = 'answer'
    runs_windows: ClassVar[bool] = False

    def __init__(self, system_prompt_style: str = 'qa_multiturn', system_prompt: str = '',
                 zoom: bool = True, max_turns: int = 4, crop_offset: int = 182,
                 crop_size: int = 672, crop_dot: bool = False, model_dir: str = '',
                 geometry: tuple[int, int, int] | None = None) -> None:
        if system_prompt_style not in SYSTEM_PROMPTS:
            raise ConfigError(f'system_prompt_style must be one of {SYSTEM_PROMPT_STYLES}, '
                              f'got {system_prompt_style!r}')
        if max_turns < 1 or crop_offset < 1 or crop_size < 1:
            raise ConfigError('max_turns, crop_offset and crop_size must be >= 1')
        self.system_prompt = system_prompt or SYSTEM_PROMPTS[system_prompt_style]
        self.zoom = bool(zoom)
        self.max_turns = int(max_turns)
        self.crop_offset = int(crop_offset)
        self.crop_size = int(crop_size)
        self.crop_dot = bool(crop_dot)
        self.geometry = tuple(geometry) if geometry is not None else model_geometry(model_dir)

    def model_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` the processor resizes a ``width`` x ``height`` image to."""
        factor, lo, hi = self.geometry
        h, w = smart_resize(height, width, factor, lo, hi)
        return w, h

    def messages(self, image: Image.Image, question: str) -> list[dict[str, Any]]:
        """System message (unless style ``none``) and the first user turn: image, question."""
        system = [{'role': 'system', 'content': self.system_prompt}] if self.system_prompt else []
        return [*system, {'role': 'user', 'content': interleave([image, question])}]

    def observation(self, crop: Image.Image) -> dict[str, Any]:
        """The user turn that answers a zoom tool call with its crop."""
        head = OBSERVATION_DOT if self.crop_dot else OBSERVATION
        return {'role': 'user', 'content': [text_part(head), {'type': 'image', 'image': crop},
                                            text_part(OBSERVATION_END)]}

    def run(self, ask: Ask, images: Sequence[Image.Image], keys: Sequence[Any] | None,
            task: str, state: Any, *, previous_percent: float | None,
            draft: Sequence[int] | None = None) -> Interpretation:
        """The question is the task; it is asked about the window's newest frame."""
        key = keys[-1] if keys is not None else None
        return self.answer(ask, images[-1], task, key=key, state=state)

    def answer(self, ask: Ask, image: Image.Image, question: str, *,
               frame_size: tuple[int, int] | None = None, key: Any = None,
               state: Any = None) -> Interpretation:
        """
        Ask ``question`` about ``image`` (zoom turns included) and map the points.

        :param image: The frame as prepared for the model (any size; resized here).
        :param frame_size: ``(width, height)`` of the camera frame the points are for
            (default: ``image``'s size).
        """
        frame_w, frame_h = frame_size or image.size
        model_w, model_h = self.model_size(*image.size)
        full = resize_exact(image, (model_w, model_h), Image.Resampling.BICUBIC)
        messages = self.messages(full, question)
        sent, sent_keys = [full], [key]
        turns: list[Turn] = []
        calls: list[GenerationResult] = []
        notes: list[str] = []
        zoom_point: tuple[float, float] | None = None
        for number in range(self.max_turns):
            call = ask(messages, sent, sent_keys if key is not None else None, None)
            calls.append(call)
            turn = parse_turn(call.text)
            turns.append(turn)
            notes.extend(f'turn {number + 1}: {n}' for n in turn.notes)
            if turn.answer is not None or turn.zoom is None or not self.zoom:
                break
            if number + 1 == self.max_turns:
                notes.append(f'turn limit {self.max_turns} reached without an answer')
                break
            crop = crop_around(full, *turn.zoom, self.crop_offset, self._crop_size(),
                               self.crop_dot)
            if crop is None:
                notes.append(f'zoom point {turn.zoom} lies outside the {model_w}x{model_h} '
                             'image; no crop')
                break
            zoom_point = turn.zoom
            messages = [*messages, {'role': 'assistant', 'content': call.text},
                        self.observation(crop)]
            sent, sent_keys = [*sent, crop], [*sent_keys, None]
        result = self._result(turns, [c.text for c in calls], zoom_point, (model_w, model_h),
                              (frame_w, frame_h), notes)
        final = turns[-1].answer
        if final is None:
            notes.append('no <answer> in the last turn')
        return Interpretation(
            percent=None, result=result, state=state, ok=final is not None,
            text='\n'.join(c.text for c in calls), last=calls[-1],
            reasoning='\n'.join(t.think for t in turns if t.think), notes=tuple(notes),
            generated_tokens=sum(c.generated_tokens for c in calls),
            latency_s=sum(c.latency_s for c in calls))

    def _crop_size(self) -> tuple[int, int]:
        factor, lo, hi = self.geometry
        h, w = smart_resize(self.crop_size, self.crop_size, factor, lo, hi)
        return w, h

    @staticmethod
    def _result(turns: list[Turn], texts: list[str], zoom: tuple[float, float] | None,
                model: tuple[int, int], frame: tuple[int, int],
                notes: list[str]) -> GroundedAnswer:
        sx, sy = frame[0] / model[0], frame[1] / model[1]
        points = []
        for x, y, label in (p for t in turns for p in t.points):
            if 0 <= x <= model[0] and 0 <= y <= model[1]:
                points.append(GroundedPoint(x * sx, y * sy, label))
            else:
                notes.append(f'point ({x:g}, {y:g}) outside the {model[0]}x{model[1]} model '
                             'image; dropped')
        zoom_point = GroundedPoint(zoom[0] * sx, zoom[1] * sy, 'zoom') if zoom else None
        return GroundedAnswer(
            answer=turns[-1].answer or '', points=tuple(points), zoomed=zoom is not None,
            zoom_point=zoom_point, raw=tuple(texts), model_size=model, frame_size=frame)
