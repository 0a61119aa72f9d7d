"""An interrupted labelling run (process killed) loses nothing finished and duplicates nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from .conftest import MODEL_ARGS

pytestmark = pytest.mark.slow
FRAMES = 20  # scored frames per episode (the shortest episode of the data set has 23)


def _wait_for(predicate, timeout, proc):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.mark.parametrize('sig', [signal.SIGKILL, signal.SIGINT], ids=['SIGKILL', 'SIGINT'])
def test_killed_run_resumes_without_losses_or_duplicates(dataset, tmp_path, sig):
    out = tmp_path / 'out'
    # Every frame of the first 20 (20 windows an episode): the two episodes left after the
    # first result take seconds, so the signal lands mid-run even on a loaded machine (with 8
    # windows an episode the rest of the run once finished before the signal was sent).
    cmd = [sys.executable, '-m', 'procvlm_ros.label.cli', 'run', '--videos', str(dataset),
           '--out', str(out), '--stride', '1', '--max-frames', str(FRAMES), *MODEL_ARGS]
    episodes = out / 'episodes'
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, 'PYTHONUNBUFFERED': '1'})
    try:
        started = _wait_for(lambda: episodes.is_dir() and any(episodes.glob('*.json')), 240,
                            proc)
        assert started, proc.communicate()[1].decode()[-2000:]
        assert proc.poll() is None, 'the run ended before it could be interrupted'
        proc.send_signal(sig)  # mid-run: one episode done, the next one being scored
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Ctrl-C: the CLI's own exit status with a resume hint; SIGKILL: killed
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), (
        proc.stderr.read().decode()[-2000:])
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in episodes.glob('*.json')}
    assert 1 <= len(finished) < 3, 'the run was not interrupted mid-way'
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    results = sorted(episodes.glob('*.json'))
    assert [p.stem for p in results] == [f'episode_000{i}__video' for i in range(3)]
    for name, (mtime, body) in finished.items():  # finished before: untouched
        assert (episodes / name).stat().st_mtime_ns == mtime
        assert (episodes / name).read_bytes() == body
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['labelled'] == 3
    assert summary['this_run']['labelled'] == 3 - len(finished)
    for path in results:  # one record per scored frame, no duplicates from the killed run
        result = json.loads(path.read_text())
        lines = (out / 'records' / f'{path.stem}.jsonl').read_text().splitlines()
        frames = [json.loads(line)['frame_index'] for line in lines]
        assert frames == result['sampled']['frame_index'] == list(range(FRAMES))
    assert not [p for p in out.rglob('*.tmp')]
