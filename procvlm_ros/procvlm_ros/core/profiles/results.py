"""Typed results of the profiles other than ``procvlm_progress`` (whose result is ParsedAnswer)."""

from __future__ import annotations

from dataclasses import dataclass

NAVIGATION_ACTIONS = ('Move', 'Left', 'Right', 'Stop')


@dataclass(frozen=True)
class CriticStep:
    """
    One pair-wise critic answer (VLAC style).

    :param delta: Progress change between the two frames in percentage points (signed), or
        None when the answer had no number.
    :param value: Accumulated progress after this step, [0, 100].
    :param done: The done query's verdict, or None when it was not asked this window.
    :param done_score: The done query's score in [0, 1] when it gave one.
    :param raw: The critic answer text; ``done_raw`` the done answer's.
    """

    delta: float | None
    value: float
    done: bool | None = None
    done_score: float | None = None
    raw: str = ''
    done_raw: str = ''


@dataclass(frozen=True)
class NavigationDecision:
    """
    One navigation step (R2R style).

    :param action: One of NAVIGATION_ACTIONS, or '' when the answer named none.
    :param step: Index of this step in the episode (0 first).
    :param raw: The answer text.
    :param offered: The actions the prompt offered (no Move when moving was impossible).
    """

    action: str
    step: int
    raw: str = ''
    offered: tuple[str, ...] = NAVIGATION_ACTIONS


@dataclass(frozen=True)
class GroundedPoint:
    """A point the answer cites, in pixels of the camera frame (x right, y down)."""

    x: float
    y: float
    label: str = ''


@dataclass(frozen=True)
class GroundedAnswer:
    """
    An answer about one frame with the points it cites (ViGoRL style).

    :param answer: The final answer text (inside ``<answer>`` when present).
    :param points: Cited points mapped to camera-frame pixels.
    :param zoomed: A zoom tool call was made and answered with a crop (second turn).
    :param zoom_point: The point zoomed into, camera-frame pixels, when zoomed.
    :param raw: Every turn's answer text, in order.
    :param model_size: ``(width, height)`` of the image the model saw (its pixel space).
    :param frame_size: ``(width, height)`` of the camera frame the points are mapped to.
    """

    answer: str
    points: tuple[GroundedPoint, ...] = ()
    zoomed: bool = False
    zoom_point: GroundedPoint | None = None
    raw: tuple[str, ...] = ()
    model_size: tuple[int, int] = (0, 0)
    frame_size: tuple[int, int] = (0, 0)
