"""
Scripted backend: returns canned answers in turn. FOR TESTS AND DEMOS OF NODE LOGIC ONLY.

It runs no model and never reads the images; it exists so the node, the supervision logic and
launch files can be exercised where no checkpoint is available. It is never a default.
"""

from __future__ import annotations

import itertools

from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.config import BackendConfig
from procvlm_ros.core.errors import BackendError

# A raised error is scripted with this prefix, e.g. '!raise backend exploded'.
RAISE_PREFIX = '!raise '


class ScriptedBackend(Backend):
    """Replays ``BackendConfig.scripted_outputs`` cyclically (test/demo only)."""

    name = 'scripted'

    def __init__(self, config: BackendConfig) -> None:
        super().__init__()
        if not config.scripted_outputs:
            raise BackendError('scripted backend needs scripted_outputs (a list of answers)')
        self._outputs = tuple(config.scripted_outputs)
        self._cycle: itertools.cycle[str] | None = None
        self.requests: list[GenerationRequest] = []

    def _load(self) -> None:
        self._cycle = itertools.cycle(self._outputs)

    def _generate(self, request: GenerationRequest) -> GenerationResult:
        assert self._cycle is not None  # the base class calls this only while loaded
        # Keep only the last request: enough for tests, bounded memory for long demos.
        self.requests[:] = [request]
        text = next(self._cycle)
        if text.startswith(RAISE_PREFIX):
            raise BackendError(text[len(RAISE_PREFIX):])
        return GenerationResult(text=text, generated_tokens=len(text.split()), prompt_tokens=0)

    def _close(self) -> None:
        self._cycle = None
