"""The Backend base class: loaded check, lock, timing and error wrapping for every backend."""

from __future__ import annotations

import threading
import time

import pytest

from procvlm_ros.core.backends.base import Backend, GenerationRequest, GenerationResult
from procvlm_ros.core.errors import BackendError, BackendUnavailableError


class _Probe(Backend):
    name = 'probe'

    def __init__(self, fail_load: bool = False, raise_in_generate: BaseException | None = None,
                 sleep_s: float = 0.0) -> None:
        super().__init__()
        self.fail_load = fail_load
        self.raise_in_generate = raise_in_generate
        self.sleep_s = sleep_s
        self.loads = 0
        self.closes = 0
        self.model: object | None = None
        self.started = threading.Event()

    def _load(self) -> None:
        self.loads += 1
        if self.fail_load:
            raise BackendUnavailableError('no weights')
        self.model = object()

    def _generate(self, request: GenerationRequest) -> GenerationResult:
        self.started.set()
        model = self.model
        time.sleep(self.sleep_s)
        if self.raise_in_generate is not None:
            raise self.raise_in_generate
        # A close() that ran meanwhile would have dropped the model.
        assert self.model is model is not None
        return GenerationResult(text='ok', generated_tokens=1, prompt_tokens=1)

    def _close(self) -> None:
        self.closes += 1
        self.model = None


REQUEST = GenerationRequest(images=[], task='t')


def test_generate_before_load_is_refused_and_close_is_idempotent():
    probe = _Probe()
    with pytest.raises(BackendError, match='_Probe is not loaded'):
        probe.generate(REQUEST)
    probe.close()
    assert probe.closes == 0
    with probe:
        assert probe.loaded
        probe.load()  # loading twice loads once
        assert probe.generate(REQUEST).text == 'ok'
    assert probe.loads == 1 and probe.closes == 1 and not probe.loaded
    probe.close()
    assert probe.closes == 1
    with pytest.raises(BackendError, match='not loaded'):
        probe.generate(REQUEST)


def test_failed_load_leaves_the_backend_unloaded():
    probe = _Probe(fail_load=True)
    with pytest.raises(BackendUnavailableError, match='no weights'):
        probe.load()
    assert not probe.loaded
    probe.close()
    assert probe.closes == 0


def test_unexpected_errors_are_wrapped_with_context_and_own_errors_pass_through():
    probe = _Probe(raise_in_generate=IndexError('index 9 is out of bounds'))
    probe.load()
    with pytest.raises(BackendError, match=r'probe inference failed on 0 images: IndexError'):
        probe.generate(REQUEST)
    probe.raise_in_generate = BackendError('context too long')
    with pytest.raises(BackendError, match='^context too long$'):
        probe.generate(REQUEST)


def test_latency_is_measured_by_the_base_class():
    probe = _Probe(sleep_s=0.05)
    probe.load()
    assert probe.generate(REQUEST).latency_s >= 0.05


def test_close_waits_for_a_running_generate():
    probe = _Probe(sleep_s=0.3)
    probe.load()
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(probe.generate(REQUEST)))
    worker.start()
    assert probe.started.wait(5.0)
    probe.close()  # must block until generate() is done, not pull the model away
    worker.join(5.0)
    assert isinstance(results[0], GenerationResult)
    assert probe.closes == 1 and probe.model is None
