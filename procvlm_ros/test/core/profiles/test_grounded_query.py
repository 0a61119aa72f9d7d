"""grounded_query: ViGoRL prompts verbatim, tolerant parsing, pixel mapping, zoom turns."""

import json

import numpy as np
from PIL import Image
import pytest

from procvlm_ros.core.backends import create_backend
from procvlm_ros.core.config import BackendConfig, ProfileConfig
from procvlm_ros.core.errors import ConfigError, ProcVlmError
from procvlm_ros.core.monitor import Monitor
from procvlm_ros.core.profiles import make_profile, profile_from_config
from procvlm_ros.core.profiles.common import render_placeholders
from procvlm_ros.core.profiles.grounded_query import (
    crop_around,
    GroundedQueryProfile,
    MAX_POINTS,
    model_geometry,
    parse_turn,
    SYSTEM_PROMPTS,
)
from procvlm_ros.core.profiles.results import GroundedPoint
from procvlm_ros.core.types import Frame, Status

# gsarch/grounded-rl vstar_multiturn.jinja (= eval SYSTEM_PROMPT_VSTAR), SFT form (real
# newlines and quotes), written out independently of the profile.
VSTAR_SYSTEM = """You are a helpful assistant tasked with answering a question about an image. \
You should systematically reason through the problem step by step by checking and verifying \
relevant image regions, while grounding reasoning steps to specific (x, y) points in the image:
- At each turn, first clearly reason about ONE area or element in the image enclosed in <think> \
</think> tags.
- After reasoning, either:
  a) Zoom-in on a specific region to see it better by outputting a search action formatted \
precisely as:
     <tool_call>
     {"name": "search_coordinate", "arguments": {"coordinate": [x, y]}}
     </tool_call>
  b) If confident you've found the correct location, output your final answer enclosed in \
<answer> {final answer} </answer> tags.
- Only answer if you are confident about the answer. If you are not confident, output a search \
action. You should not always end after one turn.
- You should not repeat the same coordinates in a tool call more than once. Coordinates must be \
unique across tool calls, including values that are the same or nearly identical (e.g., \
differing by only a few pixels).
- If unclear, infer based on likely context or purpose.
- Verify each step by examining multiple possible solutions before selecting a final answer."""
WEB_SYSTEM = """You are an assistant tasked with identifying precise (x,y) coordinates of a \
described element in an image.
Your task involves multiple turns of reasoning, each with EXACTLY one <think> step and one action:
- At each turn, first clearly reason about ONE area or element in the image enclosed in <think> \
</think> tags.
- After reasoning, either:
  a) Output a search action formatted precisely as:
     <tool_call>
     {"name": "search_coordinate", "arguments": {"coordinate": [x, y]}}
     </tool_call>
  b) If confident you've found the correct location, output your final answer enclosed in \
<answer> (x, y) </answer> tags.
- Only answer if you are confident about the answer. If you are not confident, output a search \
action. You should not always end after one turn.
- You should not repeat the same coordinates in a tool call more than once. Coordinates must be \
unique across tool calls, including values that are the same or nearly identical (e.g., \
differing by only a few pixels)."""
OBSERVATION = ('<observation>\nHere is the crop of the image centered on the coordinate:\n'
               '<image>\n</observation>')
OBSERVATION_DOT = ('<observation>\nHere is the crop of the image centered on the coordinate, '
                   'with a red dot at the coordinate location:\n<image>\n</observation>')
QUESTION = 'What color is the cup?'
QWEN25 = (28, 3136, 12845056)


def tool(x, y):
    call = json.dumps({'name': 'search_coordinate', 'arguments': {'coordinate': [x, y]}})
    return f'<think> look closer at ({x}, {y}) </think>\n<tool_call>\n{call}\n</tool_call>'


def test_system_prompts_are_vigorls():
    assert SYSTEM_PROMPTS['qa_multiturn'] == VSTAR_SYSTEM
    assert SYSTEM_PROMPTS['grounding_multiturn'] == WEB_SYSTEM
    assert SYSTEM_PROMPTS['none'] == ''
    assert SYSTEM_PROMPTS['grounding'].endswith(
        '- The Assistant should verify each step and check multiple possible solutions before '
        'selecting the final answer.')
    assert '<answer> (xf, yf) </answer>' in SYSTEM_PROMPTS['grounding']


def test_first_turn_zoom_turn_and_observation_goldens(asker, img):
    profile = GroundedQueryProfile(geometry=QWEN25)
    ask = asker(tool(100, 50), '<think> it is red (110, 60) </think>\n<answer> red </answer>')
    out = profile.answer(ask, img(0, 640, 480), QUESTION)
    assert len(ask.calls) == 2
    first, second = ask.calls
    assert render_placeholders(first[0]) == [('system', VSTAR_SYSTEM),
                                             ('user', '<image>' + QUESTION)]
    assert render_placeholders(second[0]) == [
        ('system', VSTAR_SYSTEM), ('user', '<image>' + QUESTION),
        ('assistant', tool(100, 50)), ('user', OBSERVATION)]
    assert [i.size for i in second[1]] == [(644, 476), (672, 672)]  # smart_resize, then V* crop
    assert out.ok and out.result.answer == 'red' and out.result.zoomed
    assert out.reasoning == 'look closer at (100, 50)\nit is red (110, 60)'
    none = GroundedQueryProfile(system_prompt_style='none', crop_dot=True, geometry=QWEN25)
    ask = asker(tool(100, 50), '<answer>red</answer>')
    none.answer(ask, img(0, 640, 480), QUESTION)
    assert render_placeholders(ask.calls[1][0])[0] == ('user', '<image>' + QUESTION)
    assert render_placeholders(ask.calls[1][0])[-1] == ('user', OBSERVATION_DOT)


@pytest.mark.parametrize(('geometry', 'frame', 'model', 'point', 'mapped'), [
    # Qwen2.5-VL defaults: sides rounded to 28
    (QWEN25, (640, 480), (644, 476), (322, 238), (320.0, 240.0)),
    # a tiny processor (factor 32, at most 16384 pixels): heavy downscale
    ((32, 4096, 16384), (640, 480), (128, 96), (64, 48), (320.0, 240.0)),
    # the camera frame is larger than the prepared image (the estimator pre-resized it)
    (QWEN25, (1280, 960), (644, 476), (644, 0), (1280.0, 0.0)),
])
def test_points_map_from_model_pixels_to_frame_pixels(asker, img, geometry, frame, model,
                                                      point, mapped):
    profile = GroundedQueryProfile(geometry=geometry)
    ask = asker(f'<think>the cup {point}</think><answer>at ({point[0]}, {point[1]})</answer>')
    out = profile.answer(ask, img(0, 640, 480), QUESTION, frame_size=frame)
    assert ask.calls[0][1][0].size == model
    assert out.result.model_size == model and out.result.frame_size == frame
    assert out.result.points == (GroundedPoint(*mapped, 'think'),
                                 GroundedPoint(*mapped, 'answer'))


def test_model_geometry_from_checkpoint_processor_configs(tmp_path):
    assert model_geometry('') == QWEN25
    assert model_geometry(tmp_path) == QWEN25  # no file: Qwen2.5-VL defaults
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps(
        {'patch_size': 16, 'merge_size': 2,
         'size': {'shortest_edge': 4096, 'longest_edge': 16384}}))  # Qwen3-VL style
    assert model_geometry(tmp_path) == (32, 4096, 16384)
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps(
        {'patch_size': 14, 'merge_size': 2, 'min_pixels': 3136, 'max_pixels': 50176}))
    assert model_geometry(tmp_path) == (28, 3136, 50176)
    profile = profile_from_config(ProfileConfig(profile='grounded_query'), model=str(tmp_path))
    assert profile.geometry == (28, 3136, 50176)
    (tmp_path / 'preprocessor_config.json').write_text('{broken')
    with pytest.raises(ConfigError, match='preprocessor_config'):
        model_geometry(tmp_path)


@pytest.mark.parametrize(('text', 'answer', 'zoom', 'npoints', 'note'), [
    ('<think>cup (10, 20) and (30.5, 40)</think>\n<answer> red </answer>', 'red', None, 2, ''),
    ('<answer>a</answer><answer>b</answer>', 'a', None, 0, '2 <answer> blocks'),
    ('<think>x (1, 2)</think><answer>blue and then', 'blue and then', None, 1, 'not closed'),
    (tool(12, 34), None, (12.0, 34.0), 1, ''),
    # truncated tool calls: the coordinate is still read when both numbers are there
    ('<tool_call>\n{"name": "search_coordinate", "arguments": {"coordinate": [120, 45',
     None, (120.0, 45.0), 0, 'not valid JSON'),
    ('<tool_call>\n{"name": "search_coordinate", "arguments": {"coordi', None, None, 0,
     'no [x, y]'),
    ('<tool_call>{"name": "search_coordinate", "arguments": {"coordinate": [NaN, 3]}}'
     '</tool_call>', None, None, 0, 'not two finite numbers'),
    ('<tool_call>{"name": "search_coordinate", "arguments": {"coordinate": [1e999, 3]}}'
     '</tool_call>', None, None, 0, 'not two finite numbers'),
    ('<tool_call>{"name": "search_coordinate", "arguments": {"coordinate": [1, 2, 3]}}'
     '</tool_call>', None, None, 0, 'no [x, y]'),
    ('<tool_call>{"name": "delete_files", "arguments": {"coordinate": [1, 2]}}</tool_call>',
     None, None, 0, 'not search_coordinate'),
    ('<tool_call>' + '[' * 100000 + '</tool_call>', None, None, 0, 'no [x, y]'),
    ('<answer>red</answer>' + tool(5, 5), 'red', None, 1, 'both an answer and a tool call'),
    ('just text (3, 4) with no tags', None, None, 1, 'whole text'),
    ('<think>\u676f\u5b50\u5728 (12, 7)\u3002</think><answer>\u7ea2\u8272</answer>',
     '\u7ea2\u8272', None, 1, ''),
    ('<think>(-5, 10) and (99999999999, 2)</think><answer>x</answer>', 'x', None, 2, ''),
    ('<think>' + '(1, 1) ' * 200 + '</think>', None, None, MAX_POINTS, f'first {MAX_POINTS}'),
    ('', None, None, 0, 'whole text'),
])
def test_turn_parsing_table(text, answer, zoom, npoints, note):
    turn = parse_turn(text)
    assert turn.answer == answer
    assert turn.zoom == zoom
    assert len(turn.points) == npoints
    assert note in ' '.join(turn.notes)


def test_points_outside_the_image_are_dropped_with_a_note(asker, img):
    profile = GroundedQueryProfile(geometry=QWEN25)
    ask = asker('<think>(-5, 10) (700, 10) (1e400, 1) (5, 10)</think><answer>x</answer>')
    out = profile.answer(ask, img(0, 644, 476), QUESTION)
    assert out.result.points == (GroundedPoint(5.0, 10.0, 'think'),)
    notes = ' '.join(out.notes)
    assert 'point (-5, 10) outside' in notes and 'point (700, 10) outside' in notes
    assert 'not finite' in notes


def test_crop_box_is_clamped_not_shifted_and_dot_drawn():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, 100:] = (0, 0, 255)  # right half blue
    image = Image.fromarray(rgb)
    crop = crop_around(image, 190, 50, 20, (40, 40))  # box x 170..200 (clamped), y 30..70
    assert crop.size == (40, 40) and np.asarray(crop)[..., 2].min() > 200
    left = crop_around(image, 0, 0, 30, (30, 30))  # box 0..30, 0..30: all black
    assert np.asarray(left).max() == 0
    dotted = crop_around(image, 50, 50, 20, (40, 40), dot=True)
    assert tuple(np.asarray(dotted)[20, 20]) == (255, 0, 0)
    assert crop_around(image, 500, 50, 20, (40, 40)) is None
    assert crop_around(image, -100, -100, 20, (40, 40)) is None


def test_turn_limit_zoom_off_and_unusable_zoom_points(asker, img):
    profile = GroundedQueryProfile(max_turns=3, geometry=QWEN25)
    ask = asker(tool(10, 10), tool(300, 200), tool(400, 100))
    out = profile.answer(ask, img(0, 644, 476), QUESTION)
    assert len(ask.calls) == 3 and not out.ok and out.result.answer == ''
    assert [len(c[1]) for c in ask.calls] == [1, 2, 3]  # one crop more per turn
    assert out.result.zoom_point == GroundedPoint(300.0, 200.0, 'zoom')
    assert 'turn limit 3 reached' in ' '.join(out.notes)
    assert out.result.raw == (tool(10, 10), tool(300, 200), tool(400, 100))

    off = GroundedQueryProfile(zoom=False, geometry=QWEN25)
    ask = asker(tool(10, 10))
    out = off.answer(ask, img(0, 644, 476), QUESTION)
    assert len(ask.calls) == 1 and not out.ok and not out.result.zoomed
    assert 'no <answer>' in ' '.join(out.notes)

    ask = asker(tool(5000, 10))
    out = profile.answer(ask, img(0, 644, 476), QUESTION)
    assert len(ask.calls) == 1 and 'no crop' in ' '.join(out.notes)


def test_bad_options():
    with pytest.raises(ConfigError, match='system_prompt_style'):
        make_profile('grounded_query', system_prompt_style='chatty')
    with pytest.raises(ConfigError, match='max_turns'):
        make_profile('grounded_query', max_turns=0)
    with pytest.raises(ConfigError):
        ProfileConfig(grounded_system_prompt_style='chatty')


def camera(i, w=160, h=120):
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, : w // 2] = 200
    return Frame(rgb, stamp_ns=(i + 1) * 10**9, frame_id='cam', index=i)


def test_monitor_ask_latest_answers_about_the_newest_frame():
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=(
        '<think>the cup (14, 7)</think><answer>red</answer>',)))
    profile = make_profile('grounded_query', geometry=(28, 3136, 50176))
    monitor = Monitor(backend, profile=profile, stale_after_s=1000.0)
    with pytest.raises(ProcVlmError, match='not loaded'):
        monitor.ask_latest(QUESTION, 10**9)
    assert monitor.load()
    with pytest.raises(ProcVlmError, match='no camera frame yet'):
        monitor.ask_latest(QUESTION, 10**9)
    first = monitor.step(10**9)  # no task needed, no windows: only the input's health
    assert first.status is Status.WAITING_FOR_FRAMES and first.estimate is None
    for i in range(3):
        monitor.offer(camera(i), (i + 1) * 10**9)
    assert monitor.step(4 * 10**9).estimate is None
    with pytest.raises(ProcVlmError, match='non-empty'):
        monitor.ask_latest('  ', 4 * 10**9)
    out = monitor.ask_latest(QUESTION, int(4.5 * 10**9))
    assert out.frame.index == 2 and out.frame_age_s == pytest.approx(1.5)
    assert out.answer.ok and out.answer.result.answer == 'red'
    # 160x120 -> prepared 168x112 (pre-resize, 28) -> model 168x112; points in camera pixels
    assert out.answer.result.model_size == (168, 112)
    (point,) = out.answer.result.points
    assert (point.x, point.y, point.label) == (pytest.approx(14 * 160 / 168), 7.5, 'think')
    request = backend.requests[0]
    assert request.task == QUESTION and request.messages[1]['content'][1]['text'] == QUESTION


def test_ask_latest_refuses_profiles_that_answer_no_questions():
    backend = create_backend(BackendConfig(backend='scripted', scripted_outputs=('5',)))
    monitor = Monitor(backend, profile=make_profile('pairwise_critic'), task='t')
    assert monitor.load()
    monitor.offer(camera(0), 10**9)
    with pytest.raises(ProcVlmError, match='pairwise_critic profile answers no questions'):
        monitor.ask_latest(QUESTION, 10**9)


def test_concurrent_questions_are_serialised_by_the_backend_lock():
    import threading
    import time

    from procvlm_ros.core.backends.base import Backend, GenerationResult

    class Slow(Backend):
        name = 'slow'
        running = 0
        overlaps = 0

        def _load(self):
            pass

        def _close(self):
            pass

        def _generate(self, request):
            Slow.running += 1
            Slow.overlaps += Slow.running > 1
            time.sleep(0.02)
            Slow.running -= 1
            return GenerationResult(text='<answer>ok</answer>', generated_tokens=1,
                                    prompt_tokens=0)

    monitor = Monitor(Slow(), profile=make_profile('grounded_query', geometry=QWEN25))
    assert monitor.load()
    monitor.offer(camera(0), 10**9)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(
        monitor.ask_latest(QUESTION, 10**9).answer.result.answer)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert answers == ['ok'] * 4 and Slow.overlaps == 0
