"""Profile names -> classes; the one place the node, CLIs and tests look profiles up."""

from __future__ import annotations

import importlib
from typing import Any

from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.profiles.base import TaskProfile

# name -> 'module:Class', imported on use so a profile's dependencies stay optional.
PROFILES: dict[str, str] = {
    'procvlm_progress': 'procvlm_ros.core.profiles.procvlm_progress:ProcVlmProgressProfile',
}


def make_profile(name: str, **options: Any) -> TaskProfile:
    """
    Build a profile by name with its options (unknown options are a ConfigError).

    :raises ConfigError: For an unknown profile or options it does not take.
    """
    if name not in PROFILES:
        raise ConfigError(f'profile must be one of {sorted(PROFILES)}, got {name!r}')
    module, cls_name = PROFILES[name].split(':')
    cls = getattr(importlib.import_module(module), cls_name)
    try:
        profile: TaskProfile = cls(**options)
    except TypeError as e:
        raise ConfigError(f'profile {name}: {e}') from e
    return profile
