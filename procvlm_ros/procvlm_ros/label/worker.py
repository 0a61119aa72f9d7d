"""
A model-holding labeller: one backend + estimator, reused for every episode it is given.
The local loop holds one; each Ray actor holds one (``runner.py``).
"""

from __future__ import annotations

import os
from typing import Any

from procvlm_ros.label.score import label_episode, LabelSettings
from procvlm_ros.label.sources import EpisodeError, EpisodeSpec


class Labeller:
    """Loads the backend lazily (so constructing it on a Ray driver is cheap)."""

    def __init__(self, backend_options: dict[str, Any], settings: LabelSettings,
                 torch_threads: int | None = None) -> None:
        self.backend_options = dict(backend_options)
        self.settings = settings
        self.torch_threads = torch_threads
        self._threads_before: int | None = None
        self._backend: Any = None
        self._config: Any = None

    def _ensure(self) -> Any:
        """A function task -> fresh per-episode scorer (the core Monitor, as procvlm-infer)."""
        if self._backend is None:
            if self.torch_threads:
                # Several workers on one host: one intra-op pool each, or they spin on
                # each other's cores (8x slower measured on a loaded 2-core machine).
                import torch

                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(int(self.torch_threads))
            from procvlm_ros.core.backends import create_backend
            from procvlm_ros.core.config import BackendConfig

            config = BackendConfig(**self.backend_options)
            backend = create_backend(config)
            backend.load()
            self._backend = backend
            self._config = config
        return self._make_scorer

    def _make_scorer(self, task: str) -> Any:
        from procvlm_ros.offline import file_monitor

        config = self._config
        return file_monitor(self._backend, task,
                            window_size=self.settings.scoring.window_size,
                            pre_resize_patch_size=config.pre_resize_patch_size,
                            speculation=bool(config.speculation and config.temperature == 0))

    def label(self, spec: EpisodeSpec) -> dict[str, Any]:
        """``{'ok': True, 'result': ...}`` or ``{'ok': False, 'reason': ...}`` (never raises
        for a problem of the episode; a broken backend still raises)."""
        make_scorer = self._ensure()
        try:
            return {'ok': True, 'episode_id': spec.episode_id,
                    'result': label_episode(spec, make_scorer, self.settings)}
        except EpisodeError as exc:
            return {'ok': False, 'episode_id': spec.episode_id, 'path': spec.path,
                    'reason': str(exc)}

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = self._config = None
        if self._threads_before is not None:  # in-process: leave torch as it was
            import torch

            torch.set_num_threads(self._threads_before)
            self._threads_before = None
