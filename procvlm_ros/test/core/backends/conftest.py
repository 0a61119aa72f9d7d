"""Tests that build or load the tiny random checkpoint are slow (the `slow` marker's meaning)."""

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Fixtures of test_transformers_backend.py that build (ckpt) or load a tiny checkpoint; the
# fixtures that load one all depend on ckpt, and item.fixturenames includes dependencies.
TINY_MODEL_FIXTURES = frozenset({'ckpt'})


def pytest_collection_modifyitems(items):
    for item in items:
        uses = set(getattr(item, 'fixturenames', ()))
        if Path(item.path).resolve().is_relative_to(HERE) and TINY_MODEL_FIXTURES & uses:
            item.add_marker(pytest.mark.slow)
