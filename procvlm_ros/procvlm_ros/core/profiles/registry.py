"""Profile names -> classes; the one place the node, CLIs and tests look profiles up."""

from __future__ import annotations

import importlib
from typing import Any

from procvlm_ros.core.config import ProfileConfig
from procvlm_ros.core.errors import ConfigError
from procvlm_ros.core.profiles.base import TaskProfile

# name -> 'module:Class', imported on use so a profile's dependencies stay optional.
PROFILES: dict[str, str] = {
    'procvlm_progress': 'procvlm_ros.core.profiles.procvlm_progress:ProcVlmProgressProfile',
    'pairwise_critic': 'procvlm_ros.core.profiles.pairwise_critic:PairwiseCriticProfile',
    'navigation_action': 'procvlm_ros.core.profiles.navigation_action:NavigationActionProfile',
    'grounded_query': 'procvlm_ros.core.profiles.grounded_query:GroundedQueryProfile',
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


def profile_options(cfg: ProfileConfig, *, model: str = '',
                    prompt_layout: str = 'images_first') -> dict[str, Any]:
    """
    The options of ``cfg.profile`` from the parameters (``ProfileConfig``).

    :param model: The checkpoint directory (navigation reads a shipped system prompt from it,
        grounded queries the image processor's geometry).
    :param prompt_layout: ``procvlm_progress`` only (``BackendConfig.prompt_layout``).
    """
    if cfg.profile == 'procvlm_progress':
        return {'prompt_layout': prompt_layout}
    if cfg.profile == 'pairwise_critic':
        return {'accumulation': cfg.critic_accumulation,
                'done_min_value': cfg.critic_done_min_value,
                'done_every': cfg.critic_done_every,
                'done_threshold': cfg.critic_done_threshold,
                'done_sets_value': cfg.critic_done_sets_value,
                'reference_path': cfg.critic_reference_path,
                'reference_frames': cfg.critic_reference_frames,
                'image_size': cfg.critic_image_size}
    if cfg.profile == 'navigation_action':
        return {'system_prompt': cfg.navigation_system_prompt, 'model_dir': model,
                'move_possible': cfg.navigation_move_possible,
                'move_distance_m': cfg.navigation_move_distance_m,
                'answer_prefix': cfg.navigation_answer_prefix}
    return {'system_prompt_style': cfg.grounded_system_prompt_style,
            'system_prompt': cfg.grounded_system_prompt, 'zoom': cfg.grounded_zoom,
            'max_turns': cfg.grounded_max_turns, 'crop_offset': cfg.grounded_crop_offset,
            'crop_size': cfg.grounded_crop_size, 'crop_dot': cfg.grounded_crop_dot,
            'model_dir': model}


def profile_from_config(cfg: ProfileConfig, *, model: str = '',
                        prompt_layout: str = 'images_first') -> TaskProfile:
    """
    The profile the parameters ask for, built with its settings.

    :raises ConfigError: For settings the profile refuses (e.g. unreadable reference frames).
    """
    return make_profile(cfg.profile, **profile_options(cfg, model=model,
                                                       prompt_layout=prompt_layout))
