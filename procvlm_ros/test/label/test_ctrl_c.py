"""Ctrl-C in procvlm-label stops the run even when its KeyboardInterrupt is swallowed."""

import os
import signal
import time

import pytest

from procvlm_ros.label.cli import CtrlC


def _sigint_swallowed():
    """Ctrl-C arriving while a finaliser runs: the KeyboardInterrupt goes nowhere."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # the handler runs in this (main) thread before the sleep ends
    except KeyboardInterrupt:
        return
    raise AssertionError('SIGINT did not raise KeyboardInterrupt')


def test_a_lost_interrupt_is_raised_again_at_the_next_check():
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as ctrl_c:
        ctrl_c.check()  # nothing pressed yet: silent
        _sigint_swallowed()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()  # stays requested
    assert signal.getsignal(signal.SIGINT) is before


def _fail_inside(ctrl_c_handler_seen):
    with CtrlC():
        ctrl_c_handler_seen.append(signal.getsignal(signal.SIGINT))
        raise ValueError('boom')


def test_the_handler_is_restored_after_an_error():
    before = signal.getsignal(signal.SIGINT)
    seen = []
    with pytest.raises(ValueError, match='boom'):
        _fail_inside(seen)
    assert seen and seen[0] is not before
    assert signal.getsignal(signal.SIGINT) is before
