"""The ProcVLM prompt: template ``procedural_c`` and the single user turn around it."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from procvlm_ros.core.errors import ConfigError

PROMPT_LAYOUTS = ('images_first', 'text_first')
# Tasks longer than this are almost certainly a pasted document, not a task sentence.
MAX_TASK_CHARS = 2000


def load_template(name: str = 'procedural_c') -> str:
    """Return a prompt template shipped with the package, stripped as the official loader does."""
    return resources.files('procvlm_ros.core').joinpath(f'templates/{name}.txt').read_text(
        encoding='utf-8').strip()


def validate_task(task: str) -> str:
    """Return ``task`` stripped, or raise ConfigError when it is empty or absurdly long."""
    if not isinstance(task, str) or not task.strip():
        raise ConfigError('task must be a non-empty sentence, e.g. "fold the red T-shirt"')
    if len(task) > MAX_TASK_CHARS:
        raise ConfigError(f'task has {len(task)} characters; at most {MAX_TASK_CHARS} allowed')
    return task.strip()


def build_prompt(task: str, template: str | None = None) -> str:
    """Substitute the task into the template with plain ``str.replace`` (official behaviour)."""
    template = load_template() if template is None else template
    return template.replace('{task}', validate_task(task))


def build_messages(images: Sequence[Any], prompt: str,
                   layout: str = 'images_first') -> list[dict[str, Any]]:
    """
    Build the one-user-turn chat (no system message) for a window of images.

    ``images_first`` is the official transformers path and the training layout;
    ``text_first`` reproduces the official default (vLLM) path, which appends the images
    after the prompt text.
    """
    if layout not in PROMPT_LAYOUTS:
        raise ConfigError(f'prompt_layout must be one of {PROMPT_LAYOUTS}, got {layout!r}')
    image_parts = [{'type': 'image', 'image': image} for image in images]
    text_part = [{'type': 'text', 'text': prompt}]
    content = image_parts + text_part if layout == 'images_first' else text_part + image_parts
    return [{'role': 'user', 'content': content}]
