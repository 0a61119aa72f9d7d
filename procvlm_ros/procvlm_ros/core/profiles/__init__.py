"""
Task profiles: what to ask a vision-language model and what its answer means.

A profile builds the chat messages of a query (system prompt, text, images in order), parses
the answer into a typed result and says what the node publishes. Backends only apply the
checkpoint's chat template and run; they never know which profile asked.
"""

from procvlm_ros.core.profiles.base import Ask, Interpretation, TaskProfile
from procvlm_ros.core.profiles.registry import (
    make_profile,
    profile_from_config,
    profile_options,
    PROFILES,
)

__all__ = ['Ask', 'Interpretation', 'PROFILES', 'TaskProfile', 'make_profile',
           'profile_from_config', 'profile_options']
