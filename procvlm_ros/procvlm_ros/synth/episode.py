"""
Episodes: a task executed over time, with per-frame ground truth.

An episode is a sequence of :class:`~procvlm_ros.synth.scene.Pose` values, one per frame at a
fixed frame rate. Its kind decides how the procedure coordinate ``s`` evolves:

- ``success``: forward with varied speeds and short pauses, reaches ``s = K`` (progress 1.0),
  then the gripper retreats and the finished scene is held for a few frames;
- ``fail``: forward until it stops for good somewhere before the end (never reaches 1.0);
- ``stall``: like success, with one long pause or a series of failed grasp retries on the way
  (ground truth flat during the stall), then finishes;
- ``regress``: forward, then undoes part of the work (ground truth drops), then goes on; it
  finishes in most episodes and stops early in the others.

Ground truth per frame: progress ``s / K``, the remaining atomic actions (the unfinished action
under way and the ones after it), ``done`` (``s == K``) and ``stalled`` (inside a stall
interval).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import math
from typing import Any

import numpy as np

from procvlm_ros.synth import scene
from procvlm_ros.synth.scene import Pose, Style, Task

EPISODE_KINDS = ('success', 'fail', 'stall', 'regress')
DEFAULT_FPS = 2.0
GT_VERSION = 1
# Gripper speed along its path, pixels per second (each action draws its own).
SPEED_PX_S = (28.0, 50.0)
STALL_PAUSE_S = (8.0, 14.0)
FAIL_HOLD_S = (6.0, 12.0)
SHORT_PAUSE_S = (0.5, 1.5)


@dataclass(frozen=True)
class Interval:
    """Frames ``start..end`` (inclusive) and why they are marked."""

    start: int
    end: int
    cause: str

    def to_json(self, fps: float) -> dict[str, Any]:
        return {'start_frame': self.start, 'end_frame': self.end,
                'start_s': round(self.start / fps, 6), 'end_s': round(self.end / fps, 6),
                'cause': self.cause}


@dataclass(frozen=True)
class Episode:
    """A generated episode: task, look, one pose per frame, and its ground truth."""

    episode_id: str
    seed: int
    index: int
    kind: str
    task: Task
    style: Style
    fps: float
    poses: tuple[Pose, ...]
    stall_intervals: tuple[Interval, ...]
    regress_intervals: tuple[Interval, ...]

    @property
    def num_frames(self) -> int:
        return len(self.poses)

    @property
    def width(self) -> int:
        return scene.WIDTH

    @property
    def height(self) -> int:
        return scene.HEIGHT

    @property
    def progress(self) -> np.ndarray:
        """Ground-truth progress per frame in [0, 1]."""
        k = self.task.num_actions
        return np.array([min(max(p.s, 0.0), k) / k for p in self.poses], dtype=np.float64)

    @property
    def done(self) -> np.ndarray:
        """Whether the task is complete at each frame."""
        return self.progress >= 1.0

    @property
    def stalled(self) -> np.ndarray:
        flags = np.zeros(self.num_frames, dtype=bool)
        for iv in self.stall_intervals:
            flags[iv.start:iv.end + 1] = True
        return flags

    @property
    def success(self) -> bool:
        return bool(self.done[-1])

    def remaining_actions(self, frame: int) -> list[str]:
        """Atomic actions still to do at ``frame``: the one under way and those after it."""
        k = self.task.num_actions
        s = min(max(self.poses[frame].s, 0.0), float(k))
        return list(self.task.action_texts[min(int(math.floor(s)), k):])

    def frame(self, index: int) -> np.ndarray:
        """Render frame ``index`` (RGB, ``height x width x 3``)."""
        return scene.render(self.task, self.poses[index], self.style,
                            noise_seed=_noise_seed(self.seed, self.index, index))

    def frames(self) -> Iterator[np.ndarray]:
        for i in range(self.num_frames):
            yield self.frame(i)

    def ground_truth(self) -> dict[str, Any]:
        """The ground-truth JSON document of this episode."""
        progress = self.progress
        done = self.done
        stalled = self.stalled
        return {
            'version': GT_VERSION,
            'episode_id': self.episode_id,
            'seed': self.seed,
            'index': self.index,
            'kind': self.kind,
            'task_kind': self.task.kind,
            'task': self.task.sentence,
            'actions': list(self.task.action_texts),
            'fps': self.fps,
            'width': self.width,
            'height': self.height,
            'num_frames': self.num_frames,
            'success': self.success,
            'stall_intervals': [iv.to_json(self.fps) for iv in self.stall_intervals],
            'regress_intervals': [iv.to_json(self.fps) for iv in self.regress_intervals],
            'frames': [
                {'index': i, 'time_s': round(i / self.fps, 6),
                 'progress': round(float(progress[i]), 6),
                 'remaining_actions': self.remaining_actions(i),
                 'done': bool(done[i]), 'stalled': bool(stalled[i])}
                for i in range(self.num_frames)],
        }


def _noise_seed(seed: int, index: int, frame: int) -> int:
    return int(np.random.SeedSequence([seed, index, frame, 7]).generate_state(1)[0])


class _Timeline:
    """Accumulates poses while the procedure coordinate moves."""

    def __init__(self, task: Task, rng: np.random.Generator, fps: float) -> None:
        self.task, self.rng, self.fps = task, rng, fps
        self.poses: list[Pose] = []
        self.s = 0.0

    def frames_for(self, seconds: tuple[float, float]) -> int:
        return max(1, int(round(self.rng.uniform(*seconds) * self.fps)))

    def hold(self, count: int, jitter: bool = False) -> None:
        for _ in range(count):
            dy = float(self.rng.integers(-1, 2)) if jitter else 0.0
            self.poses.append(Pose(self.s, dy=dy))

    def move_to(self, target: float, short_pauses: bool = True) -> None:
        """Move ``s`` to ``target`` frame by frame, one speed per action, maybe pausing."""
        forward = target >= self.s
        current = -1
        speed = 0.0
        while abs(target - self.s) > 1e-12:
            # The action under way: forward from s = 3.0 it is action 3, backward action 2.
            index = int(math.floor(self.s)) if forward else int(math.ceil(self.s)) - 1
            index = min(max(index, 0), self.task.num_actions - 1)
            if index != current:
                current = index
                speed = float(self.rng.uniform(*SPEED_PX_S)) / self.fps
                if short_pauses and self.rng.random() < 0.2:
                    self.hold(self.frames_for(SHORT_PAUSE_S))
            ds = speed * float(self.rng.uniform(0.85, 1.15)) / max(
                self.task.actions[index].length, 1.0)
            # Never skip an action boundary: each action ends exactly at its end point.
            if forward:
                self.s = float(min(self.s + ds, index + 1, target))
            else:
                self.s = float(max(self.s - ds, index, target))
            self.poses.append(Pose(self.s))

    def retreat(self) -> None:
        """After the task is done: lift the open gripper and return home, then hold."""
        state = scene.state_at(self.task, Pose(self.s))
        path = scene.lift_path(state.gripper, self.task.home, self.task.travel_y)
        retreat = scene.Action('retreat', path)
        speed = float(self.rng.uniform(*SPEED_PX_S)) / self.fps
        n = max(1, int(math.ceil(retreat.length / speed)))
        for i in range(1, n + 1):
            self.poses.append(Pose(self.s, gripper=retreat.point(i / n), closed=False))
        for _ in range(self.frames_for((1.0, 3.0))):
            self.poses.append(Pose(self.s, gripper=self.task.home, closed=False))

    def retry(self, count: int) -> None:
        """Failed grasps at the current point: close, lift empty, lower, open; ``s`` is flat."""
        for _ in range(count):
            lift = float(self.rng.uniform(6, 12))
            for dy, closed in ((0.0, True), (-lift, True), (-lift / 2, False), (0.0, False)):
                self.poses.append(Pose(self.s, dy=dy, closed=closed))


def _draw_kind_point(rng: np.random.Generator, task: Task) -> float:
    """A procedure coordinate strictly inside the task, away from both ends."""
    k = task.num_actions
    return float(rng.uniform(0.15, 0.85) * k)


def generate_episode(seed: int, index: int = 0, kind: str = 'success',
                     task_kind: str | None = None, fps: float = DEFAULT_FPS) -> Episode:
    """
    Generate one episode, deterministically from ``(seed, index)``.

    :param seed: Data-set seed.
    :param index: Episode number within the data set (also names it ``episode_NNNN``).
    :param kind: One of :data:`EPISODE_KINDS`.
    :param task_kind: One of :data:`~procvlm_ros.synth.scene.TASK_KINDS`; random when None.
    :param fps: Frame rate; speeds and pauses are in seconds, so more fps gives more frames.
    """
    if kind not in EPISODE_KINDS:
        raise ValueError(f'episode kind must be one of {EPISODE_KINDS}, got {kind!r}')
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f'fps must be positive, got {fps!r}')
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    task = scene.make_task(rng, task_kind)
    style = scene.make_style(rng)
    tl = _Timeline(task, rng, fps)
    k = float(task.num_actions)
    stalls: list[Interval] = []
    regressions: list[Interval] = []
    tl.hold(int(rng.integers(1, 4)))

    if kind == 'success':
        tl.move_to(k)
    elif kind == 'fail':
        tl.move_to(_draw_kind_point(rng, task))
        start = len(tl.poses) - 1
        tl.hold(tl.frames_for(FAIL_HOLD_S), jitter=True)
        stalls.append(Interval(start, len(tl.poses) - 1, 'stopped'))
    elif kind == 'stall':
        grasps = [i for i, a in enumerate(task.actions) if a.grasp]
        if rng.random() < 0.5:
            # Failed grasps: the gripper reaches the object, then retries 3-5 times.
            target = float(rng.choice(grasps)) + float(rng.uniform(0.9, 0.97))
            tl.move_to(target)
            start = len(tl.poses) - 1
            tl.retry(int(rng.integers(3, 6)))
            stalls.append(Interval(start, len(tl.poses) - 1, 'retry'))
        else:
            tl.move_to(_draw_kind_point(rng, task))
            start = len(tl.poses) - 1
            tl.hold(tl.frames_for(STALL_PAUSE_S))
            stalls.append(Interval(start, len(tl.poses) - 1, 'pause'))
        tl.move_to(k)
    else:  # regress
        top = float(rng.uniform(max(1.2, 0.35 * k), 0.85 * k))
        tl.move_to(top)
        start = len(tl.poses) - 1
        back = float(rng.uniform(0.4, min(2.0, top - 0.1)))
        tl.move_to(top - back, short_pauses=False)
        regressions.append(Interval(start, len(tl.poses) - 1, 'undo'))
        tl.hold(int(rng.integers(1, 3)))
        if rng.random() < 0.7:
            tl.move_to(k)
        else:
            tl.move_to(float(rng.uniform(tl.s, k - 0.2)))
            start = len(tl.poses) - 1
            tl.hold(tl.frames_for(FAIL_HOLD_S), jitter=True)
            stalls.append(Interval(start, len(tl.poses) - 1, 'stopped'))

    if tl.s >= k:
        tl.retreat()
    return Episode(f'episode_{index:04d}', int(seed), int(index), kind, task, style, float(fps),
                   tuple(tl.poses), tuple(stalls), tuple(regressions))
