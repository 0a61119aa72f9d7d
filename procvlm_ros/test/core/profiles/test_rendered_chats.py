"""
Each profile's chat rendered with a family's chat template, as the backends apply it.

The tiny checkpoints' templates (procvlm_ros.testing.tiny_model) reproduce the chat shape of
Qwen2.5-VL (ChatML, default system prompt when none is given) and InternVL (each image part an
``<IMG_CONTEXT>`` line the processor expands to ``<img>...</img>``). Rendered the way
transformers renders chat templates (sandboxed Jinja, trim and lstrip blocks).
"""

from jinja2.sandbox import ImmutableSandboxedEnvironment
import pytest

from procvlm_ros.core.profiles import make_profile
from procvlm_ros.core.profiles.grounded_query import SYSTEM_PROMPTS
from procvlm_ros.core.profiles.navigation_action import SYSTEM_PROMPT as R2R_SYSTEM
from procvlm_ros.core.profiles.pairwise_critic import SYSTEM_PROMPT as VLAC_SYSTEM
from procvlm_ros.testing.tiny_model import INTERNVL_CHAT_TEMPLATE, QWEN2_5_VL_CHAT_TEMPLATE

VISION = '<|vision_start|><|image_pad|><|vision_end|>'


def render(template, messages):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def test_navigation_on_qwen2_5_vl_template(asker, img):
    ask = asker('Action: Move', 'Action: Left')
    profile = make_profile('navigation_action')
    state = None
    for window in ([img(1)], [img(1), img(2)]):
        state = profile.run(ask, window, None, 'Go to the door.', state,
                            previous_percent=None).state
    assert render(QWEN2_5_VL_CHAT_TEMPLATE, ask.calls[1][0]) == (
        f'<|im_start|>system\n{R2R_SYSTEM}<|im_end|>\n'
        '<|im_start|>user\nRoute Instruction: Go to the door.\nCurrent Step: 1\n'
        f'Cummulative Distance Traveled: 0\nImages from Previous Steps: {VISION}\n'
        f"Actions performed at Previous Steps: ['Move']\nCurrent image:{VISION}\n"
        "Possible actions: ['Left', 'Right', 'Move', 'Stop']\nNow predict the next action "
        'based on the input you have recived. Answer on the format: Action: (an the action you '
        'choose)<|im_end|>\n<|im_start|>assistant\n')


@pytest.mark.parametrize('style', ['qa_multiturn', 'none'])
def test_grounded_zoom_turn_on_qwen2_5_vl_template(asker, img, style):
    tool = ('<think> the cup (30, 20) </think>\n<tool_call>\n{"name": "search_coordinate", '
            '"arguments": {"coordinate": [30, 20]}}\n</tool_call>')
    ask = asker(tool, '<answer> red </answer>')
    profile = make_profile('grounded_query', system_prompt_style=style,
                           geometry=(28, 3136, 50176))
    profile.answer(ask, img(0, 112, 84), 'What color is the cup?')
    # no system prompt (the official demos): the template's default one, as in the demos
    system = SYSTEM_PROMPTS[style] or 'You are a helpful assistant.'
    assert render(QWEN2_5_VL_CHAT_TEMPLATE, ask.calls[1][0]) == (
        f'<|im_start|>system\n{system}<|im_end|>\n'
        f'<|im_start|>user\n{VISION}What color is the cup?<|im_end|>\n'
        f'<|im_start|>assistant\n{tool}<|im_end|>\n'
        '<|im_start|>user\n<observation>\nHere is the crop of the image centered on the '
        f'coordinate:\n{VISION}\n</observation><|im_end|>\n<|im_start|>assistant\n')


def test_critic_on_internvl_template_matches_vlac_rendering(asker, img):
    ask = asker('3')
    make_profile('pairwise_critic').run(ask, [img(1), img(2)], None, 'open the drawer', None,
                                        previous_percent=None)
    # ms-swift's internvl2 template writes <img>...</img>\n for each <image>; VLAC's prompt has
    # its own \n after it, hence the blank line, as in VLAC's rendered prompts.
    assert render(INTERNVL_CHAT_TEMPLATE, ask.calls[0][0]) == (
        f'<|im_start|>system\n{VLAC_SYSTEM}<|im_end|>\n'
        '<|im_start|>user\nImage-1: <IMG_CONTEXT>\n\nImage-2: <IMG_CONTEXT>\n\nCompare two '
        'images and evaluate whether the second image is closer to achieving task objectives '
        'compared to the first image. + score means the second image is closer, - score means '
        'the first image is closer\nResponse the relative progressing of target task follow '
        '<score>. The target task is: <task> open the drawer </task> <score><|im_end|>\n'
        '<|im_start|>assistant\n')
