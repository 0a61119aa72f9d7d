import numpy as np

from procvlm_ros.core.frame_window import FrameWindow
from procvlm_ros.core.types import Frame

S = 1_000_000_000


def frame(t_s, i=0):
    return Frame(image=np.zeros((2, 2, 3), np.uint8), stamp_ns=int(t_s * S), index=i)


def test_pads_with_first_frame_until_full():
    w = FrameWindow(4, 0.0)
    assert w.snapshot() is None
    w.offer(frame(0, 0))
    w.offer(frame(1, 1))
    snap = w.snapshot()
    assert [f.index for f in snap.frames] == [0, 0, 0, 1]
    assert list(snap.sequences) == [1, 1, 1, 2]


def test_bounded_and_newest_last():
    w = FrameWindow(3, 0.0)
    for i in range(1000):
        w.offer(frame(i, i))
    assert len(w) == 3
    assert [f.index for f in w.snapshot().frames] == [997, 998, 999]


def test_sparse_sampling_by_stamp():
    w = FrameWindow(8, 1.0)
    kept = [w.offer(frame(t / 10, t)) for t in range(31)]  # 10 Hz for 3 s
    assert [i for i, k in enumerate(kept) if k] == [0, 10, 20, 30]


def test_due_predicts_offer_without_keeping():
    w = FrameWindow(8, 1.0)
    assert w.due(0)
    w.offer(frame(10.0))
    assert not w.due(int(10.5 * S)) and w.due(11 * S)
    assert len(w) == 1  # due() keeps nothing


def test_version_changes_only_on_kept_frames_and_clear():
    w = FrameWindow(2, 1.0)
    w.offer(frame(0))
    v = w.snapshot().version
    w.offer(frame(0.5))
    assert w.snapshot().version == v
    w.clear()
    assert w.snapshot() is None
    w.offer(frame(0.6))  # spacing restarts after a clear
    snap = w.snapshot()
    assert snap.version > v and snap.sequences == (1, 1)
