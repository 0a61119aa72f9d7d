"""
Table-top tasks as procedures, and a numpy renderer of their states (side view, 160x120).

A task is a list of atomic actions. Each action moves the gripper along a polyline of waypoints
and may carry one object with it. The whole scene is a pure function of the *procedure
coordinate* ``s`` in ``[0, K]`` (K actions): action ``floor(s)`` is under way, ``s - floor(s)``
is the fraction of its path already travelled. Ground-truth progress is ``s / K``: sub-task
completion plus the within-sub-task fraction, never time. Episodes (``episode.py``) are
sequences of ``s`` values (plus small visual perturbations such as a failed grasp), so every
frame's ground truth follows from what the frame shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import math

import numpy as np
import numpy.typing as npt

WIDTH = 160
HEIGHT = 120
TABLE_Y = 100  # table surface row
BLOCK = 14  # block side
BALL = 12  # ball diameter
FINGER_LEN = 10
FINGER_W = 3
PALM_W = 24
BIN_HALF = 22  # outer half width of the bin
BIN_WALL = 22  # wall height
MAT_W = 28  # target mat width

# Named colours that stay distinct after JPEG/H.264 at this size.
COLOURS: dict[str, tuple[int, int, int]] = {
    'red': (215, 45, 40),
    'green': (40, 165, 65),
    'blue': (45, 85, 215),
    'yellow': (235, 200, 35),
    'purple': (145, 60, 185),
    'cyan': (40, 190, 205),
}
TASK_KINDS = ('stack', 'push', 'bin')
# Task families the demo model never saw in training (held out for adaptation, issue 10).
# Kept out of TASK_KINDS so random task draws and default data sets are unchanged.
HELDOUT_TASK_KINDS = ('drawer',)
ALL_TASK_KINDS = TASK_KINDS + HELDOUT_TASK_KINDS
CABINET_W = 40  # drawer task: cabinet outline, tray, knob and how far the tray comes out
CABINET_H = 36
TRAY_W = 34
TRAY_H = 14
KNOB = 6
PULL = 30

Point = tuple[float, float]
RgbArray = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class SceneObject:
    """A movable object: a block or a ball, with its start centre."""

    shape: str  # 'block' | 'ball'
    colour: str
    x: float
    y: float

    @property
    def name(self) -> str:
        return f'{self.colour} {self.shape}'

    @property
    def size(self) -> float:
        if self.shape == 'drawer':  # what the fingers close on: the knob
            return float(KNOB)
        return float(BLOCK if self.shape == 'block' else BALL)


@dataclass(frozen=True)
class Fixture:
    """Something that does not move: a target mat or a bin."""

    kind: str  # 'mat' | 'bin'
    colour: str
    x: float


@dataclass(frozen=True)
class Action:
    """
    One atomic action.

    :param text: What the answer lists, e.g. ``'pick up the red block'``.
    :param path: Gripper waypoints, the first one being where the previous action ended.
    :param carry: ``(object index, dx, dy)``: the object's centre follows the gripper at this
        offset during the action; None when nothing moves with the gripper.
    :param closed: Whether the fingers are closed during the action.
    :param grasp: Whether the action ends with the gripper at an object it is about to grasp
        or push (where a failed grasp can be retried).
    """

    text: str
    path: tuple[Point, ...]
    carry: tuple[int, float, float] | None = None
    closed: bool = False
    grasp: bool = False
    lengths: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seg = tuple(math.dist(a, b) for a, b in zip(self.path, self.path[1:]))
        object.__setattr__(self, 'lengths', seg)

    @property
    def length(self) -> float:
        return float(sum(self.lengths))

    def point(self, fraction: float) -> Point:
        """Gripper position after ``fraction`` of the path length."""
        total = self.length
        if total <= 0.0:
            return self.path[-1]
        remaining = min(max(fraction, 0.0), 1.0) * total
        for (a, b), seg in zip(zip(self.path, self.path[1:]), self.lengths):
            if remaining <= seg and seg > 0.0:
                t = remaining / seg
                return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
            remaining -= seg
        return self.path[-1]


@dataclass(frozen=True)
class Task:
    """A task sentence, its objects and fixtures, and the actions that complete it."""

    kind: str
    sentence: str
    objects: tuple[SceneObject, ...]
    fixtures: tuple[Fixture, ...]
    actions: tuple[Action, ...]
    home: Point
    travel_y: float

    @property
    def num_actions(self) -> int:
        return len(self.actions)

    @property
    def action_texts(self) -> tuple[str, ...]:
        return tuple(a.text for a in self.actions)


@dataclass(frozen=True)
class Style:
    """Per-episode look: wall and table colours, lighting and sensor noise."""

    wall: tuple[int, int, int]
    table: tuple[int, int, int]
    light: float
    noise: float


@dataclass(frozen=True)
class Pose:
    """
    What one frame shows: the procedure coordinate plus visual perturbations.

    :param s: Procedure coordinate in ``[0, K]``; ground-truth progress is ``s / K``.
    :param dy: Extra vertical gripper offset (a grasp retry lifts the empty gripper).
    :param closed: Finger state override (None: the action's own state).
    :param gripper: Gripper position override (retreat after the task is done).
    """

    s: float
    dy: float = 0.0
    closed: bool | None = None
    gripper: Point | None = None


@dataclass(frozen=True)
class SceneState:
    gripper: Point
    closed: bool
    holding: int | None
    positions: tuple[Point, ...]


# ---------------------------------------------------------------- task construction


def lift_path(start: Point, end: Point, travel_y: float) -> tuple[Point, ...]:
    """Up to the travel height, across, down: the waypoints of a pick or place move."""
    points = [start]
    for p in ((start[0], travel_y), (end[0], travel_y), end):
        if math.dist(points[-1], p) > 1e-9:
            points.append(p)
    if len(points) == 1:
        points.append(end)
    return tuple(points)


def _grasp_point(x: float, y: float, size: float) -> Point:
    """Gripper point (bottom of the palm) that holds an object centred at (x, y)."""
    return (x, y - size / 2 - 1)


def _spaced_positions(rng: np.random.Generator, count: int, lo: float, hi: float,
                      gap: float) -> list[float]:
    """``count`` x positions in [lo, hi], pairwise at least ``gap`` apart (rejection)."""
    for _ in range(1000):
        xs = sorted(rng.uniform(lo, hi, size=count).tolist())
        if all(b - a >= gap for a, b in zip(xs, xs[1:])):
            return [float(x) for x in rng.permutation(xs)]
    raise RuntimeError(f'cannot place {count} objects {gap} px apart in [{lo}, {hi}]')


def _colours(rng: np.random.Generator, count: int) -> list[str]:
    names = list(COLOURS)
    return [names[i] for i in rng.choice(len(names), size=count, replace=False)]


def make_stack_task(rng: np.random.Generator, home: Point, travel_y: float) -> Task:
    """Stack 1-3 blocks, in the order named, onto a base block."""
    n = int(rng.integers(1, 4))
    colours = _colours(rng, n + 1)
    xs = _spaced_positions(rng, n + 1, 14, WIDTH - 14, 24)
    y0 = TABLE_Y - BLOCK / 2
    objects = tuple(SceneObject('block', c, x, y0) for c, x in zip(colours, xs))
    base = objects[0]
    clauses = [f'the {objects[1].colour} block on the {base.colour} block']
    clauses += [f'the {objects[k].colour} block on the {objects[k - 1].colour} block'
                for k in range(2, n + 1)]
    sentence = 'stack ' + ', then '.join(clauses)
    actions: list[Action] = []
    at = home
    for k in range(1, n + 1):
        obj = objects[k]
        grasp = _grasp_point(obj.x, obj.y, BLOCK)
        actions.append(Action(f'pick up the {obj.colour} block',
                              lift_path(at, grasp, travel_y), grasp=True))
        target_y = TABLE_Y - BLOCK / 2 - BLOCK * k
        place = _grasp_point(base.x, target_y, BLOCK)
        below = objects[k - 1].colour
        actions.append(Action(f'place the {obj.colour} block on the {below} block',
                              lift_path(grasp, place, travel_y),
                              carry=(k, 0.0, BLOCK / 2 + 1), closed=True))
        at = place
    return Task('stack', sentence, objects, (), tuple(actions), home, travel_y)


def make_push_task(rng: np.random.Generator, home: Point, travel_y: float) -> Task:
    """Push one block along the table onto a coloured target mat."""
    block_colour, mat_colour = _colours(rng, 2)
    bx, tx = _spaced_positions(rng, 2, 26, WIDTH - 26, 48)
    side = 1.0 if tx > bx else -1.0  # push direction
    obj = SceneObject('block', block_colour, bx, TABLE_Y - BLOCK / 2)
    reach = BLOCK / 2 + FINGER_W / 2 + 3.5  # gripper x offset behind the block's centre
    gy = TABLE_Y - BLOCK - 2
    behind = (bx - side * reach, gy)
    end = (tx - side * reach, gy)
    actions = (
        Action(f'move behind the {block_colour} block', lift_path(home, behind, travel_y),
               closed=True, grasp=True),
        Action(f'push the {block_colour} block onto the {mat_colour} target', (behind, end),
               carry=(0, side * reach, obj.y - gy), closed=True),
    )
    sentence = f'push the {block_colour} block onto the {mat_colour} target'
    return Task('push', sentence, (obj,), (Fixture('mat', mat_colour, tx),), actions, home,
                travel_y)


def make_bin_task(rng: np.random.Generator, home: Point, travel_y: float) -> Task:
    """Put 1-3 balls, in the order named, into a bin."""
    n = int(rng.integers(1, 4))
    colours = _colours(rng, n)
    clear = BIN_HALF + BALL / 2 + 4  # balls keep clear of the bin walls
    for _ in range(1000):
        bin_x = float(rng.uniform(BIN_HALF + 6, WIDTH - BIN_HALF - 6))
        ball_xs = _spaced_positions(rng, n, 10, WIDTH - 10, BALL + 8)
        if all(abs(x - bin_x) >= clear for x in ball_xs):
            break
    else:  # pragma: no cover - the ranges leave plenty of room
        raise RuntimeError('cannot lay out the bin task')
    y0 = TABLE_Y - BALL / 2
    objects = tuple(SceneObject('ball', c, x, y0) for c, x in zip(colours, ball_xs))
    names = [f'the {c} ball' for c in colours]
    listed = names[0] if n == 1 else ', '.join(names[:-1]) + ' and ' + names[-1]
    sentence = f'put {listed} into the bin'
    actions: list[Action] = []
    at = home
    slot_y = TABLE_Y - 3 - BALL / 2
    for k, obj in enumerate(objects):
        grasp = _grasp_point(obj.x, obj.y, BALL)
        actions.append(Action(f'pick up the {obj.colour} ball', lift_path(at, grasp, travel_y),
                              grasp=True))
        drop = _grasp_point(bin_x + (k - 1) * (BALL + 1), slot_y, BALL)
        actions.append(Action(f'drop the {obj.colour} ball into the bin',
                              lift_path(grasp, drop, travel_y),
                              carry=(k, 0.0, BALL / 2 + 1), closed=True))
        at = drop
    return Task('bin', sentence, objects, (Fixture('bin', 'brown', bin_x),), tuple(actions),
                home, travel_y)


def make_drawer_task(rng: np.random.Generator, home: Point, travel_y: float) -> Task:
    """Held-out family: pull a drawer open by its knob, then put a ball into the drawer."""
    drawer_colour, ball_colour = _colours(rng, 2)
    left = bool(rng.random() < 0.5)
    cx = float(rng.uniform(26, 46)) if left else float(rng.uniform(WIDTH - 46, WIDTH - 26))
    side = 1.0 if left else -1.0  # the drawer opens towards the middle of the table
    tray_y = TABLE_Y - CABINET_H / 2
    tray_x = cx + side * (CABINET_W / 2 - TRAY_W / 2 - 2)
    knob_x = tray_x + side * (TRAY_W / 2 + KNOB / 2)
    reach = BALL + 4  # the ball lies beyond the opened drawer
    far = cx + side * (CABINET_W / 2 + PULL + reach)
    lo, hi = (far, WIDTH - 10.0) if left else (10.0, far)
    ball_x = float(rng.uniform(min(lo, hi), max(lo, hi)))
    drawer = SceneObject('drawer', drawer_colour, tray_x, tray_y)
    ball = SceneObject('ball', ball_colour, ball_x, TABLE_Y - BALL / 2)
    grip = _grasp_point(knob_x, tray_y, KNOB)
    pulled = (grip[0] + side * PULL, grip[1])
    ball_grasp = _grasp_point(ball.x, ball.y, BALL)
    drop = _grasp_point(tray_x + side * (PULL - 4), tray_y - 1, BALL)
    actions = (
        Action(f'reach the {drawer_colour} drawer knob', lift_path(home, grip, travel_y),
               grasp=True),
        Action(f'pull the {drawer_colour} drawer open', (grip, pulled),
               carry=(0, tray_x - grip[0], tray_y - grip[1]), closed=True),
        Action(f'pick up the {ball_colour} ball', lift_path(pulled, ball_grasp, travel_y),
               grasp=True),
        Action(f'drop the {ball_colour} ball into the drawer',
               lift_path(ball_grasp, drop, travel_y), carry=(1, 0.0, BALL / 2 + 1),
               closed=True),
    )
    sentence = f'open the {drawer_colour} drawer and put the {ball_colour} ball in it'
    return Task('drawer', sentence, (drawer, ball), (Fixture('cabinet', 'grey', cx),), actions,
                home, travel_y)


_MAKERS = {'stack': make_stack_task, 'push': make_push_task, 'bin': make_bin_task,
           'drawer': make_drawer_task}


def make_task(rng: np.random.Generator, kind: str | None = None) -> Task:
    """Draw a task of ``kind`` (random kind when None) with random colours and layout."""
    kind = str(rng.choice(TASK_KINDS)) if kind is None else kind
    if kind not in _MAKERS:
        raise ValueError(f'task kind must be one of {ALL_TASK_KINDS}, got {kind!r}')
    travel_y = float(rng.uniform(16, 24))
    home = (float(rng.uniform(40, WIDTH - 40)), travel_y)
    return _MAKERS[kind](rng, home, travel_y)


def make_style(rng: np.random.Generator) -> Style:
    """Random wall/table tint, lighting and noise level."""
    wall = tuple(int(v) for v in np.clip(rng.normal(222, 8, 3), 190, 245))
    table = tuple(int(v) for v in np.clip(
        np.array([165, 130, 95]) + rng.normal(0, 12, 3), 90, 200))
    return Style(wall=wall, table=table, light=float(rng.uniform(0.85, 1.1)),  # type: ignore[arg-type]
                 noise=float(rng.uniform(0.0, 3.0)))


# ---------------------------------------------------------------- state and rendering


def state_at(task: Task, pose: Pose) -> SceneState:
    """Gripper, finger state and object positions of the scene that ``pose`` describes."""
    k = task.num_actions
    s = min(max(float(pose.s), 0.0), float(k))
    done = s >= k
    index = min(int(math.floor(s)), k - 1)
    fraction = 1.0 if done else s - index
    positions = [(o.x, o.y) for o in task.objects]
    for action in task.actions[:index]:
        if action.carry is not None:
            obj, dx, dy = action.carry
            end = action.path[-1]
            positions[obj] = (end[0] + dx, end[1] + dy)
    action = task.actions[index]
    gx, gy = action.point(fraction)
    holding = None
    if action.carry is not None:
        obj, dx, dy = action.carry
        positions[obj] = (gx + dx, gy + dy)
        holding = None if done else obj
    closed = False if done else action.closed
    if pose.closed is not None:
        closed = pose.closed
    if pose.gripper is not None:
        gx, gy = pose.gripper
    return SceneState((gx, gy + pose.dy), closed, holding, tuple(positions))


def _fill(img: np.ndarray, x0: float, y0: float, x1: float, y1: float,
          colour: tuple[int, int, int]) -> None:
    h, w = img.shape[:2]
    c0, c1 = max(int(round(x0)), 0), min(int(round(x1)), w)
    r0, r1 = max(int(round(y0)), 0), min(int(round(y1)), h)
    if c0 < c1 and r0 < r1:
        img[r0:r1, c0:c1] = colour


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(c * factor)))) for c in colour)  # type: ignore[return-value]


_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH]


def _disc(img: np.ndarray, x: float, y: float, radius: float,
          colour: tuple[int, int, int]) -> None:
    img[(_XX + 0.5 - x) ** 2 + (_YY + 0.5 - y) ** 2 <= radius ** 2] = colour


def _draw_object(img: np.ndarray, obj: SceneObject, x: float, y: float) -> None:
    colour = COLOURS[obj.colour]
    half = obj.size / 2
    if obj.shape == 'block':
        _fill(img, x - half, y - half, x + half, y + half, _shade(colour, 0.6))
        _fill(img, x - half + 1, y - half + 1, x + half - 1, y + half - 1, colour)
        _fill(img, x - half + 2, y - half + 2, x + half - 2, y - half + 4, _shade(colour, 1.25))
    else:
        _disc(img, x, y, half, _shade(colour, 0.6))
        _disc(img, x, y, half - 1, colour)
        _disc(img, x - 2, y - 2, 2, _shade(colour, 1.35))


def _draw_fixture(img: np.ndarray, fixture: Fixture) -> None:
    if fixture.kind == 'cabinet':
        _draw_cabinet(img, fixture.x)
        return
    if fixture.kind == 'mat':
        colour = COLOURS[fixture.colour]
        _fill(img, fixture.x - MAT_W / 2, TABLE_Y, fixture.x + MAT_W / 2, TABLE_Y + 5, colour)
        _fill(img, fixture.x - MAT_W / 2, TABLE_Y + 5, fixture.x + MAT_W / 2, TABLE_Y + 6,
              _shade(colour, 0.6))


def _draw_cabinet(img: np.ndarray, x: float) -> None:
    """A dark hollow cabinet standing on the table (drawer task)."""
    colour, inner = (80, 80, 92), (150, 150, 160)
    top = TABLE_Y - CABINET_H
    _fill(img, x - CABINET_W / 2, top, x + CABINET_W / 2, TABLE_Y, colour)
    _fill(img, x - CABINET_W / 2 + 3, top + 3, x + CABINET_W / 2 - 3, TABLE_Y - 3, inner)


def _draw_drawer(img: np.ndarray, obj: SceneObject, x: float, y: float, side: float) -> None:
    """An open-top tray with a knob on the side it opens to."""
    colour = COLOURS[obj.colour]
    dark = _shade(colour, 0.6)
    x0, x1 = x - TRAY_W / 2, x + TRAY_W / 2
    y0, y1 = y - TRAY_H / 2, y + TRAY_H / 2
    _fill(img, x0, y1 - 3, x1, y1, dark)  # bottom
    _fill(img, x0, y0, x0 + 3, y1, colour)  # walls
    _fill(img, x1 - 3, y0, x1, y1, colour)
    kx = x + side * (TRAY_W / 2 + KNOB / 2)
    _fill(img, kx - KNOB / 2, y - KNOB / 2, kx + KNOB / 2, y + KNOB / 2, dark)


def _draw_bin_walls(img: np.ndarray, x: float) -> None:
    colour = (105, 85, 70)
    top = TABLE_Y - BIN_WALL
    _fill(img, x - BIN_HALF, top, x - BIN_HALF + 3, TABLE_Y, colour)
    _fill(img, x + BIN_HALF - 3, top, x + BIN_HALF, TABLE_Y, colour)
    _fill(img, x - BIN_HALF, TABLE_Y - 3, x + BIN_HALF, TABLE_Y, colour)


def _draw_gripper(img: np.ndarray, state: SceneState, task: Task) -> None:
    gx, gy = state.gripper
    arm, palm, finger = (95, 95, 100), (55, 55, 60), (35, 35, 40)
    _fill(img, gx - 2, 0, gx + 2, gy - 4, arm)
    _fill(img, gx - PALM_W / 2, gy - 4, gx + PALM_W / 2, gy, palm)
    if state.closed:
        held = task.objects[state.holding].size / 2 if state.holding is not None else 2.0
        half = held + FINGER_W / 2
    else:
        half = PALM_W / 2 - FINGER_W / 2
    for side in (-1, 1):
        cx = gx + side * half
        _fill(img, cx - FINGER_W / 2, gy, cx + FINGER_W / 2, gy + FINGER_LEN, finger)


def render(task: Task, pose: Pose, style: Style, noise_seed: int | None = None) -> RgbArray:
    """
    Draw one ``HEIGHT x WIDTH`` RGB frame of ``task`` in state ``pose``.

    :param noise_seed: Seed of the per-frame sensor noise (none when None or style.noise is 0).
    """
    state = state_at(task, pose)
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    img[:TABLE_Y] = style.wall
    img[TABLE_Y:] = style.table
    img[TABLE_Y:TABLE_Y + 2] = _shade(style.table, 0.8)
    for fixture in task.fixtures:
        _draw_fixture(img, fixture)
    held = state.holding
    for i, (obj, (x, y)) in enumerate(zip(task.objects, state.positions)):
        if obj.shape == 'drawer':  # the drawer task only; other tasks draw as before
            cabinet = task.fixtures[0].x
            _draw_drawer(img, obj, x, y, 1.0 if obj.x > cabinet else -1.0)
        elif i != held:
            _draw_object(img, obj, x, y)
    for fixture in task.fixtures:
        if fixture.kind == 'bin':
            _draw_bin_walls(img, fixture.x)
    if held is not None and task.objects[held].shape != 'drawer':
        x, y = state.positions[held]
        _draw_object(img, task.objects[held], x, y)
    _draw_gripper(img, state, task)
    out = img.astype(np.float32) * style.light
    if noise_seed is not None and style.noise > 0:
        out += np.random.default_rng(noise_seed).normal(0.0, style.noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
