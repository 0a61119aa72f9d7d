from types import SimpleNamespace

import numpy as np
import pytest

from procvlm_ros.core.errors import ConfigError, ImageError, MediaError

try:
    import av

    from procvlm_ros.media import video
    from procvlm_ros.media.video import (
        DEFAULT_FPS,
        probe_video,
        read_video_frames,
        VideoInfo,
        write_video,
    )
except ModuleNotFoundError as e:  # PyAV comes with the optional 'media' extra
    if e.name != 'av':
        raise
    pytest.skip('PyAV is not installed', allow_module_level=True)

N, H, W, FPS = 20, 48, 64, 30.0


def colour(i):
    # Distinct, saturated-enough colours so a wrong frame is obvious after yuv420p coding.
    return np.array([(i * 12) % 256, 255 - i * 12, (i * 37) % 256], dtype=np.uint8)


def frames(n=N, h=H, w=W):
    return [np.broadcast_to(colour(i), (h, w, 3)).copy() for i in range(n)]


@pytest.fixture(scope='module')
def mp4(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp('video') / 'clip.mp4', frames(), FPS)


def assert_colour(frame, i, tol=8):
    mean = frame.image.reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - colour(i)).max() <= tol, (frame.index, mean, colour(i))


def test_probe_reports_count_fps_and_size(mp4):
    info = probe_video(mp4)
    assert info == VideoInfo(mp4, FPS, N, W, H)
    assert info.duration_s == pytest.approx(N / FPS)


def test_selected_frames_have_source_index_stamp_and_colour(mp4):
    got = list(read_video_frames(mp4, [7, 0, 19, 7], frame_id='cam'))
    assert [f.index for f in got] == [0, 7, 19]
    # Official timestamp_sec = frame_index / fps.
    assert [f.stamp_ns for f in got] == [0, round(7 / FPS * 1e9), round(19 / FPS * 1e9)]
    for f in got:
        assert f.frame_id == 'cam'
        assert f.image.shape == (H, W, 3)
        assert f.image.dtype == np.uint8
        assert f.image.flags.c_contiguous
        assert_colour(f, f.index)


def test_all_frames_without_indices(mp4):
    got = list(read_video_frames(mp4))
    assert [f.index for f in got] == list(range(N))
    for f in got:
        assert_colour(f, f.index)


def test_empty_selection_yields_nothing(mp4):
    assert list(read_video_frames(mp4, [])) == []


def test_index_past_the_end_raises_after_the_frames_that_exist(mp4):
    it = read_video_frames(mp4, [N - 1, N, N + 3])
    assert next(it).index == N - 1
    with pytest.raises(MediaError, match=r'has 20 frames; requested indices \[20, 23\] do not'):
        next(it)


def test_negative_index_is_refused_at_call_time(mp4):
    with pytest.raises(ConfigError, match='frame indices must be >= 0, got -1'):
        read_video_frames(mp4, [3, -1])


def test_missing_file_raises_file_not_found(tmp_path):
    missing = tmp_path / 'nope.mp4'
    with pytest.raises(FileNotFoundError, match=r'nope\.mp4'):
        probe_video(missing)
    with pytest.raises(FileNotFoundError, match=r'nope\.mp4'):
        read_video_frames(missing)  # at call time, not at the first next()


def test_undecodable_file_raises_media_error(tmp_path):
    junk = tmp_path / 'junk.mp4'
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r'cannot open video .*junk\.mp4'):
        probe_video(junk)
    with pytest.raises(MediaError, match=r'cannot open video .*junk\.mp4'):
        list(read_video_frames(junk))


def test_container_without_frame_count_is_counted_by_demuxing(tmp_path):
    path = write_video(tmp_path / 'clip.mkv', frames(7), 25, codec='mpeg4')
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska has no frame count
    assert probe_video(path) == VideoInfo(path, 25.0, 7, W, H)
    assert [f.index for f in read_video_frames(path, [6])] == [6]


def test_ntsc_rate_is_kept_exactly(tmp_path):
    path = write_video(tmp_path / 'ntsc.mp4', frames(3), 30000 / 1001)
    assert probe_video(path).fps == pytest.approx(30000 / 1001, rel=1e-9)


def test_unknown_codec_falls_back_to_mpeg4(tmp_path):
    path = write_video(tmp_path / 'fallback.mp4', frames(4), FPS, codec='no-such-encoder')
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == 'mpeg4'
    assert probe_video(path).frame_count == 4


def test_missing_fps_falls_back_to_30():
    stream = SimpleNamespace(guessed_rate=None, average_rate=None)
    assert video._fps(stream) == DEFAULT_FPS == 30.0


@pytest.mark.parametrize(('kwargs', 'error', 'match'), [
    ({'frames_rgb': frames(2, h=47)}, ImageError, 'even width and height, got 64x47'),
    ({'frames_rgb': [frames(1)[0], frames(1, w=32)[0]]}, ImageError,
     'frame 1 is 32x48, the first frame was 64x48'),
    ({'frames_rgb': [np.zeros((H, W), np.uint8)]}, ImageError,
     r'frame 0: expected an \(H, W, 3\)'),
    ({'frames_rgb': []}, ConfigError, 'got no frames'),
    ({'fps': 0}, ConfigError, 'fps must be a positive number, got 0'),
])
def test_write_video_rejects_bad_input_and_leaves_no_file(tmp_path, kwargs, error, match):
    args = {'path': tmp_path / 'bad.mp4', 'frames_rgb': frames(2), 'fps': FPS}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        write_video(**args)
    assert not (tmp_path / 'bad.mp4').exists()
