"""
Run a labelling job: in-process by default, or on Ray (one model-holding actor per worker
slot, episodes streamed to them, results written atomically by the driver).

Ray does the scheduling and the fault tolerance: actors restart after a crash
(``max_restarts=-1``) and their unfinished calls are retried (``max_task_retries=-1``). The
driver is the only writer, so an episode is written once however often it was attempted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import logging
import time
from typing import Any

from procvlm_ros.core.errors import ProcVlmError
from procvlm_ros.label.score import LabelSettings
from procvlm_ros.label.sources import EpisodeSpec
from procvlm_ros.label.store import LabelStore
from procvlm_ros.label.worker import Labeller

_LOG = logging.getLogger(__name__)
Outcome = dict[str, Any]


class Tally:
    """Counts and a tqdm bar with episodes/s, windows/s and ETA."""

    def __init__(self, total: int, show: bool) -> None:
        from tqdm import tqdm

        self.ok: list[str] = []
        self.failed: dict[str, str] = {}
        self.windows = 0
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, desc='Labelling', unit='ep', disable=not show)

    def add(self, outcome: Outcome) -> None:
        if outcome['ok']:
            self.ok.append(outcome['episode_id'])
            self.windows += outcome['result']['summary']['windows']
        else:
            self.failed[outcome['episode_id']] = outcome['reason']
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(win_s=f'{self.windows / elapsed:.1f}', failed=len(self.failed))
        self.bar.update(1)

    def close(self) -> dict[str, Any]:
        self.bar.close()
        elapsed = time.perf_counter() - self.start
        done = len(self.ok) + len(self.failed)
        return {'labelled': len(self.ok), 'failed': len(self.failed), 'seconds': elapsed,
                'episodes_per_s': done / elapsed if elapsed > 0 else 0.0,
                'windows': self.windows,
                'windows_per_s': self.windows / elapsed if elapsed > 0 else 0.0}


def pending(specs: Iterable[EpisodeSpec], store: LabelStore) -> list[EpisodeSpec]:
    """Episodes without a finished result (a rerun skips the others)."""
    return [s for s in specs if not store.is_done(s.episode_id)]


def run_local(specs: list[EpisodeSpec], labeller: Labeller,
              handle: Callable[[Outcome], None], *, show_progress: bool = True
              ) -> dict[str, Any]:
    """Label ``specs`` one after another in this process."""
    tally = Tally(len(specs), show_progress)
    try:
        for spec in specs:
            outcome = labeller.label(spec)
            handle(outcome)
            tally.add(outcome)
    finally:
        stats = tally.close()
    return {**stats, 'failures': tally.failed, 'workers': 1, 'mode': 'local'}


def _join(ray: Any, address: str | None, tries: int = 3) -> None:
    """``ray.init`` for an existing cluster, with the two ways joining fails here explained."""
    for attempt in range(1, tries + 1):
        try:
            ray.init(address=address, log_to_driver=False)
            return
        except ConnectionAbortedError as exc:  # the server side answered, with a failure
            # Ray Client's proxy starts a server process per client, and that start sometimes
            # dies in fork() (ray-project/ray#63202, present in Ray 2.60; 2 of 8 connects on the
            # loaded test machine): a new connection gets a new server.
            if attempt == tries:
                raise ProcVlmError(f'cannot join the Ray cluster at {address}: {exc}') from exc
            _LOG.warning('joining %s failed (%s); retrying', address, str(exc).splitlines()[-1])
        except ConnectionError as exc:
            # `ray start` clusters use token auth by default (Ray 2.60), and Ray sends the
            # token to an explicit address (ray://..., RAY_ADDRESS) only when told to; without
            # it Ray Client reports a bare 'connection timeout'.
            raise ProcVlmError(
                f'cannot join the Ray cluster at {address or "RAY_ADDRESS"}: {exc}. If it uses '
                'token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or '
                '~/.ray/auth_token) to its token') from exc


def run_ray(specs: list[EpisodeSpec], backend_options: dict[str, Any], settings: LabelSettings,
            handle: Callable[[Outcome], None], *, workers: int, address: str | None = None,
            cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
            in_flight: int = 2, show_progress: bool = True, torch_threads: int | None = None,
            on_actors: Callable[[list[Any]], None] | None = None) -> dict[str, Any]:
    """
    Label ``specs`` on Ray with ``workers`` actors (joins ``address`` unless Ray is already
    initialised in this process). ``in_flight`` calls are queued per actor so a model never
    waits for the next episode's submission. ``on_actors`` sees the actors once they exist
    (tests use it to kill one).
    """
    import ray

    if not ray.is_initialized():
        _join(ray, address)
    # Which cluster ran the job, as the cluster names itself (its GCS address).
    cluster = ray.get_runtime_context().gcs_address
    remote = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1,
                        max_task_retries=-1)(Labeller)
    actors = [remote.remote(backend_options, settings, torch_threads)
              for _ in range(max(1, int(workers)))]
    if on_actors is not None:
        on_actors(actors)
    tally = Tally(len(specs), show_progress)
    queue = list(reversed(specs))
    running: dict[Any, tuple[int, EpisodeSpec]] = {}
    lost: dict[str, int] = {}

    def submit(slot: int) -> None:
        if queue:
            spec = queue.pop()
            running[actors[slot].label.remote(spec)] = (slot, spec)

    try:
        for slot in range(len(actors)):
            for _ in range(max(1, in_flight)):
                submit(slot)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            slot, spec = running.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                # The actor is gone for good (node lost beyond restarts): try it elsewhere,
                # a few times, then report the episode failed rather than loop.
                lost[spec.episode_id] = lost.get(spec.episode_id, 0) + 1
                _LOG.warning('actor for %s lost (%s)', spec.episode_id, exc)
                if lost[spec.episode_id] < 3:
                    queue.append(spec)
                    submit((slot + 1) % len(actors))
                    continue
                outcome = {'ok': False, 'episode_id': spec.episode_id, 'path': spec.path,
                           'reason': f'worker lost 3 times: {exc}'}
            handle(outcome)
            tally.add(outcome)
            submit(slot)
    finally:
        stats = tally.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)
    return {**stats, 'failures': tally.failed, 'workers': len(actors), 'mode': 'ray',
            'cluster': cluster}
