import pytest

from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.prompt import build_messages, build_prompt, load_template

GOLDEN = ('Given the recent observation and the task "fold the red T-shirt", first infer the '
          'remaining atomic actions required to complete the task. Then estimate the current '
          'completion percentage and output it as a float wrapped by <progress> tags.')


def test_template_is_the_official_224_characters():
    assert len(load_template()) == 224
    assert build_prompt('fold the red T-shirt') == GOLDEN


@pytest.mark.parametrize('task', ['', '   ', '\n'])
def test_empty_task_rejected(task):
    with pytest.raises(ConfigError, match='non-empty'):
        build_prompt(task)


def test_layouts():
    imgs = ['a', 'b']
    first = build_messages(imgs, 'P')[0]['content']
    assert [c['type'] for c in first] == ['image', 'image', 'text']
    last = build_messages(imgs, 'P', layout='text_first')[0]['content']
    assert [c['type'] for c in last] == ['text', 'image', 'image']
    with pytest.raises(ConfigError):
        build_messages(imgs, 'P', layout='sideways')
