"""
The output folder of a labelling run; every file is written atomically (temp file in the same
folder, fsync, ``os.replace``), so a crash leaves either the old file or the new one.

    OUT/label_config.json        settings + fingerprint; a rerun must match it to resume
    OUT/episodes/<id>.json       per-episode result (the "done" marker, written last)
    OUT/records/<id>.jsonl       official ProcVLM JSONL records of the episode
    OUT/failed/<id>.json         why an episode failed (retried by the next run)
    OUT/summary.json             the run's summary
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import hashlib
import json
import os
from pathlib import Path
import re
import tempfile
from typing import Any

from procvlm_ros.core.errors import ProcVlmError

CONFIG_NAME = 'label_config.json'
SUMMARY_NAME = 'summary.json'
_SAFE = re.compile(r'[^A-Za-z0-9._-]+')


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open('rb') as written:
            os.fsync(written.fileno())  # survive a machine crash, not only a process crash
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + '\n', encoding='utf-8')


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def file_name(episode_id: str) -> str:
    """A file-system-safe name for an episode id (ids come from paths)."""
    return _SAFE.sub('_', episode_id)


class LabelStore:
    """Reads and writes one run's output folder."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any]) -> None:
        self.root = Path(out_dir).expanduser().resolve()
        self.config = config
        self.fingerprint = fingerprint(config)

    def open(self, *, overwrite: bool = False) -> None:
        """Create the folder or check that it holds a run with the same settings."""
        path = self.root / CONFIG_NAME
        if path.is_file() and not overwrite:
            old = json.loads(path.read_text(encoding='utf-8'))
            if old.get('fingerprint') != self.fingerprint:
                raise ProcVlmError(
                    f'{self.root} holds a run with other settings (fingerprint '
                    f"{old.get('fingerprint')} != {self.fingerprint}); use another --out or "
                    '--overwrite')
        elif overwrite:
            for sub in ('episodes', 'records', 'failed'):
                for p in (self.root / sub).glob('*'):
                    p.unlink()
        for stale in self.root.glob('*/.*.tmp'):  # left by a killed run; never a result
            stale.unlink()
        write_json(path, {'fingerprint': self.fingerprint, **self.config})

    def result_path(self, episode_id: str) -> Path:
        return self.root / 'episodes' / f'{file_name(episode_id)}.json'

    def records_path(self, episode_id: str) -> Path:
        return self.root / 'records' / f'{file_name(episode_id)}.jsonl'

    def failed_path(self, episode_id: str) -> Path:
        return self.root / 'failed' / f'{file_name(episode_id)}.json'

    def is_done(self, episode_id: str) -> bool:
        return self.result_path(episode_id).is_file()

    def write_result(self, result: dict[str, Any]) -> None:
        """Records first, the result (done marker) last; clears an earlier failure."""
        episode_id = result['episode_id']
        with atomic_path(self.records_path(episode_id)) as tmp, tmp.open('w') as out:
            for record in result['records']:
                out.write(json.dumps(record, ensure_ascii=False) + '\n')
        body = {k: v for k, v in result.items() if k != 'records'}
        write_json(self.result_path(episode_id), body)
        self.failed_path(episode_id).unlink(missing_ok=True)

    def write_failure(self, episode_id: str, path: str, reason: str) -> None:
        write_json(self.failed_path(episode_id),
                   {'episode_id': episode_id, 'path': path, 'reason': reason})

    def load_result(self, episode_id: str) -> dict[str, Any]:
        return json.loads(self.result_path(episode_id).read_text(encoding='utf-8'))

    def results(self) -> list[dict[str, Any]]:
        """Every finished episode's result, by dataset index."""
        rows = [json.loads(p.read_text(encoding='utf-8'))
                for p in sorted((self.root / 'episodes').glob('*.json'))]
        return sorted(rows, key=lambda r: (r['index'], r['episode_id']))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.root / SUMMARY_NAME, summary)
