"""
The Makefile's test tiers select what they say: ``make test-core`` leaves out the slow tests,
``make test`` runs everything, and markers are registered strictly (a typo is an error).
"""

from pathlib import Path
import re
import shlex
import subprocess
import sys

import pytest

PKG = Path(__file__).resolve().parents[1]
MAKEFILE = PKG.parent / 'Makefile'


def recipe_pytest_args(target: str) -> list[str]:
    """Arguments after ``-m pytest`` in the recipe of ``target`` (make variables dropped)."""
    text = MAKEFILE.read_text(encoding='utf-8')
    m = re.search(rf'^{re.escape(target)}:.*\n((?:\t.*\n)+)', text, re.MULTILINE)
    assert m, f'no {target} target in the Makefile'
    line = next(x for x in m.group(1).splitlines() if '-m pytest' in x)
    args = shlex.split(line.split('-m pytest', 1)[1])
    return [a for a in args if not a.startswith('$(')]


def collect(args: list[str]) -> tuple[int, int]:
    """(selected, deselected) counts of a collect-only run from the package directory."""
    args = [a for a in args if a != '-q'] + ['-q', '--collect-only']  # -qq prints per file
    res = subprocess.run([sys.executable, '-m', 'pytest', *args],
                         cwd=PKG, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 5), res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    m = re.match(r'(\d+)(?:/(\d+))? tests? collected(?: \((\d+) deselected\))?', last)
    assert m, last
    total = int(m.group(2) or m.group(1))
    return int(m.group(1)), total - int(m.group(1))


@pytest.mark.slow  # collects test/core twice (imports torch): 10-30 s on a shared 2-core machine
def test_test_core_deselects_exactly_the_slow_tests():
    args = recipe_pytest_args('test-core')
    assert args[0] == 'test/core' and '-m' in args
    selected, deselected = collect(args)
    paths_only = [a for a in args if a != '-m' and a != args[args.index('-m') + 1]]
    slow, _ = collect([*paths_only, '-m', 'slow'])
    assert slow > 0, 'test/core has slow tests (tiny models); the tier must leave them out'
    assert deselected == slow and selected > 100


def test_test_runs_every_tier():
    args = recipe_pytest_args('test')
    assert args[0] == 'test' and '-m' not in args and '-k' not in args


def test_unknown_marker_is_an_error(tmp_path):
    (tmp_path / 'test_typo.py').write_text(
        'import pytest\n\n\n@pytest.mark.slwo\ndef test_x():\n    pass\n', encoding='utf-8')
    res = subprocess.run([sys.executable, '-m', 'pytest', '-c', str(PKG / 'setup.cfg'),
                          '--rootdir', str(tmp_path), '-p', 'no:cacheprovider',
                          str(tmp_path / 'test_typo.py')],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "'slwo' not found in `markers`" in res.stdout + res.stderr
