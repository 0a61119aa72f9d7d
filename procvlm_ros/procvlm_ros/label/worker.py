"""
A model-holding labeller: one backend + estimator, reused for every episode it is given.
The local loop holds one; each Ray actor holds one (``runner.py``).
"""

from __future__ import annotations

import os
from typing import Any

from procvlm_ros.label.score import label_episode, LabelSettings
from procvlm_ros.label.sources import EpisodeError, EpisodeSpec

# Placeholder until the first episode sets its own task (the estimator needs a valid one).
_NO_TASK = 'label episodes'


class Labeller:
    """Loads the backend lazily (so constructing it on a Ray driver is cheap)."""

    def __init__(self, backend_options: dict[str, Any], settings: LabelSettings) -> None:
        self.backend_options = dict(backend_options)
        self.settings = settings
        self._backend = None
        self._estimator = None

    def _ensure(self) -> Any:
        if self._estimator is None:
            from procvlm_ros.core.backends import create_backend
            from procvlm_ros.core.config import BackendConfig
            from procvlm_ros.core.estimator import ProgressEstimator

            config = BackendConfig(**self.backend_options)
            backend = create_backend(config)
            backend.load()
            self._backend = backend
            self._estimator = ProgressEstimator(
                backend, _NO_TASK, jpeg_roundtrip=True,
                pre_resize_patch_size=config.pre_resize_patch_size, initial_percent=0.0,
                cache_size=2 * self.settings.scoring.window_size)
        return self._estimator

    def label(self, spec: EpisodeSpec) -> dict[str, Any]:
        """``{'ok': True, 'result': ...}`` or ``{'ok': False, 'reason': ...}`` (never raises
        for a problem of the episode; a broken backend still raises)."""
        estimator = self._ensure()
        try:
            return {'ok': True, 'episode_id': spec.episode_id,
                    'result': label_episode(spec, estimator, self.settings)}
        except EpisodeError as exc:
            return {'ok': False, 'episode_id': spec.episode_id, 'path': spec.path,
                    'reason': str(exc)}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = self._estimator = None
