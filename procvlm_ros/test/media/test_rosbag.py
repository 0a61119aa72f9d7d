import numpy as np
import pytest

from procvlm_ros.core.errors import ConfigError, ImageError, MediaError
from procvlm_ros.core.image import jpeg_roundtrip
from procvlm_ros.core.types import Frame

try:
    from rosbags.rosbag1 import Writer as Ros1Writer
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_typestore, Stores

    from procvlm_ros.media.rosbag import (
        list_image_topics,
        probe_image_topic,
        read_bag_frames,
        write_image_bag,
    )
except ModuleNotFoundError as e:  # rosbags comes with the optional 'media' extra
    if e.name != 'rosbags':
        raise
    pytest.skip('rosbags is not installed', allow_module_level=True)

TOPIC = '/camera/image_raw'
N, H, W = 6, 24, 32
T0 = 1_700_000_000 * 10**9 + 123_456_789


def make_frames():
    # Gradient plus a per-frame offset: catches channel order, transposition and frame mix-ups.
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 8, y * 10, (x + y) * 4], axis=2)
    return [Frame(((base + 37 * i) % 256).astype(np.uint8), T0 + i * 100_000_000, 'cam_optical', i)
            for i in range(N)]


FRAMES = make_frames()


def expected_pixels(frame, compressed):
    return jpeg_roundtrip(frame.image) if compressed else frame.image


@pytest.mark.parametrize('compressed', [False, True], ids=['raw', 'jpeg'])
@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_written_bag_reads_back(tmp_path, storage, compressed):
    bag = write_image_bag(tmp_path / 'bag', FRAMES, TOPIC, storage=storage, compressed=compressed)
    suffix = {'sqlite3': '.db3', 'mcap': '.mcap'}[storage]
    assert sorted(p.suffix for p in bag.iterdir()) == sorted([suffix, '.yaml'])
    msgtype = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
    assert list_image_topics(bag) == {TOPIC: msgtype}
    assert probe_image_topic(bag, TOPIC) == N
    got = list(read_bag_frames(bag, TOPIC))
    assert [f.index for f in got] == list(range(N))
    assert [f.stamp_ns for f in got] == [f.stamp_ns for f in FRAMES]
    assert {f.frame_id for f in got} == {'cam_optical'}
    for frame, source in zip(got, FRAMES, strict=True):
        # The JPEG case is exact too: same Pillow encoder and decoder as jpeg_roundtrip.
        np.testing.assert_array_equal(frame.image, expected_pixels(source, compressed))
        assert frame.image.flags.c_contiguous
        assert frame.image.flags.writeable


def test_selected_indices_and_single_mcap_file(tmp_path):
    bag = write_image_bag(tmp_path / 'bag', FRAMES, TOPIC, storage='mcap', version=9)
    (mcap,) = bag.glob('*.mcap')
    for path in (bag, mcap):  # rosbags also reads a bare .mcap file
        got = list(read_bag_frames(path, TOPIC, [4, 1, 4]))
        assert [f.index for f in got] == [1, 4]
        np.testing.assert_array_equal(got[1].image, FRAMES[4].image)
        assert got[0].stamp_ns == FRAMES[1].stamp_ns


def test_frame_id_override(tmp_path):
    bag = write_image_bag(tmp_path / 'bag', FRAMES[:2], TOPIC, frame_id='wrist')
    assert [f.frame_id for f in read_bag_frames(bag, TOPIC)] == ['wrist', 'wrist']


def test_index_past_the_end_raises(tmp_path):
    bag = write_image_bag(tmp_path / 'bag', FRAMES, TOPIC)
    it = read_bag_frames(bag, TOPIC, [5, 9])
    assert next(it).index == 5
    with pytest.raises(MediaError, match=r'has 6 messages; requested indices \[9\] do not exist'):
        next(it)


@pytest.fixture
def mixed_bag(tmp_path):
    """Write a bag with a bgr8 image (header stamp 0), a jpeg topic and a non-image topic."""
    store = get_typestore(Stores.ROS2_HUMBLE)
    types = store.types
    path = tmp_path / 'mixed'
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        raw = writer.add_connection('/cam/bgr', 'sensor_msgs/msg/Image', typestore=store)
        text = writer.add_connection('/chatter', 'std_msgs/msg/String', typestore=store)
        writer.add_connection('/cam/jpeg', 'sensor_msgs/msg/CompressedImage', typestore=store)
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=0, nanosec=0), frame_id='left')
        image = types['sensor_msgs/msg/Image'](
            header=header, height=1, width=2, encoding='bgr8', is_bigendian=0, step=8,
            data=np.array([3, 2, 1, 6, 5, 4, 0, 0], np.uint8))  # 2 bytes of row padding
        writer.write(raw, 42, store.serialize_cdr(image, 'sensor_msgs/msg/Image'))
        msg = types['std_msgs/msg/String'](data='hello')
        writer.write(text, 43, store.serialize_cdr(msg, 'std_msgs/msg/String'))
    return path


def test_foreign_bag_bgr8_padding_and_zero_stamp(mixed_bag):
    assert list_image_topics(mixed_bag) == {'/cam/bgr': 'sensor_msgs/msg/Image',
                                            '/cam/jpeg': 'sensor_msgs/msg/CompressedImage'}
    assert probe_image_topic(mixed_bag, '/cam/jpeg') == 0
    (frame,) = read_bag_frames(mixed_bag, '/cam/bgr')
    np.testing.assert_array_equal(frame.image, [[[1, 2, 3], [4, 5, 6]]])
    assert frame.stamp_ns == 42  # header stamp 0 -> log time
    assert frame.frame_id == 'left'


@pytest.mark.parametrize('func', [probe_image_topic, read_bag_frames])
def test_missing_or_non_image_topic_lists_the_image_topics(mixed_bag, func):
    expected = r'image topics present: /cam/bgr \(Image\), /cam/jpeg \(CompressedImage\)'
    with pytest.raises(MediaError, match=r"topic '/nope' is not in the bag .*" + expected):
        func(mixed_bag, '/nope')
    with pytest.raises(MediaError, match=r"'/chatter' has type std_msgs/msg/String .*" + expected):
        func(mixed_bag, '/chatter')


def test_ros1_bag_is_read(tmp_path):
    store = get_typestore(Stores.ROS1_NOETIC)
    types = store.types
    path = tmp_path / 'old.bag'
    with Ros1Writer(path) as writer:
        conn = writer.add_connection('/cam', 'sensor_msgs/msg/Image', typestore=store)
        header = types['std_msgs/msg/Header'](
            seq=0, stamp=types['builtin_interfaces/msg/Time'](sec=5, nanosec=7), frame_id='f')
        msg = types['sensor_msgs/msg/Image'](
            header=header, height=1, width=2, encoding='mono8', is_bigendian=0, step=2,
            data=np.array([9, 200], np.uint8))
        writer.write(conn, 11, store.serialize_ros1(msg, 'sensor_msgs/msg/Image'))
    assert list_image_topics(path) == {'/cam': 'sensor_msgs/msg/Image'}
    (frame,) = read_bag_frames(path, '/cam')
    assert (frame.stamp_ns, frame.frame_id, frame.index) == (5_000_000_007, 'f', 0)
    np.testing.assert_array_equal(frame.image, [[[9, 9, 9], [200, 200, 200]]])


def test_undecodable_message_names_topic_and_ordinal(tmp_path):
    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    path = tmp_path / 'bad'
    with Writer(path, version=9) as writer:
        conn = writer.add_connection('/img', 'sensor_msgs/msg/CompressedImage', typestore=store)
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='')
        msg = types['sensor_msgs/msg/CompressedImage'](
            header=header, format='jpeg', data=np.frombuffer(b'garbage', np.uint8))
        writer.write(conn, 1, store.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
    with pytest.raises(ImageError, match=r'/img message 0: cannot decode 7 bytes'):
        list(read_bag_frames(path, '/img'))


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere'):
        list_image_topics(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='nowhere'):
        read_bag_frames(tmp_path / 'nowhere', TOPIC)  # at call time
    with pytest.raises(MediaError, match='not a rosbag2 directory'):
        list_image_topics(tmp_path)
    junk = tmp_path / 'junk.db3'
    junk.write_bytes(b'this is not sqlite' * 10)
    with pytest.raises(MediaError, match=r'cannot read bag .*junk\.db3'):
        list_image_topics(junk)
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    with pytest.raises(MediaError, match=r'cannot read bag .*notes\.txt'):
        probe_image_topic(text, TOPIC)


def test_writer_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"storage must be one of \['mcap', 'sqlite3'\]"):
        write_image_bag(tmp_path / 'a', FRAMES, TOPIC, storage='zip')
    with pytest.raises(ConfigError, match='version must be 8 or 9, got 7'):
        write_image_bag(tmp_path / 'a', FRAMES, TOPIC, version=7)
    with pytest.raises(FileExistsError, match='exists'):
        write_image_bag(tmp_path, FRAMES, TOPIC)
    bad = [FRAMES[0], Frame(np.zeros((4, 4), np.uint8), T0, '', 1)]
    with pytest.raises(ImageError, match=r'frame 1: expected an \(H, W, 3\) uint8 RGB image'):
        write_image_bag(tmp_path / 'b', bad, TOPIC)
    assert not (tmp_path / 'b').exists()  # no half-written bag left behind
