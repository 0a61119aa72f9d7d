"""Reading the JSON files of checkpoints and adapters, with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from procvlm_ros.core.errors import BackendUnavailableError


def read_json_object(path: Path) -> dict[str, Any]:
    """
    Return the JSON object in ``path``.

    :raises BackendUnavailableError: If the file cannot be read, is not JSON or not an object.
    """
    try:
        text = path.read_text(encoding='utf-8')
    except OSError as e:
        raise BackendUnavailableError(f'cannot read {path}: {e}') from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise BackendUnavailableError(f'{path} is not valid JSON: {e}') from e
    if not isinstance(data, dict):
        raise BackendUnavailableError(f'{path} does not hold a JSON object')
    return data
