"""ruff with the project's ament-compatible settings (pyproject.toml, core/ruff.toml)."""

from pathlib import Path
import shutil
import subprocess
import sys

import pytest

PKG = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which('ruff', path=str(Path(sys.executable).parent)) or shutil.which('ruff')
    if ruff is None:
        pytest.skip('ruff not installed (pip install ruff)')
    res = subprocess.run([ruff, 'check', 'procvlm_ros', 'test', 'launch'], cwd=PKG,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
