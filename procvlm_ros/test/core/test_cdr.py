"""Serialized Image/CompressedImage read in place, checked against rosbags' CDR serializer."""

from __future__ import annotations

import numpy as np
import pytest

from procvlm_ros.core import cdr
from procvlm_ros.core.errors import ImageError

rosbags_stores = pytest.importorskip('rosbags.typesys')


@pytest.fixture(scope='module')
def store():
    return rosbags_stores.get_typestore(rosbags_stores.Stores.ROS2_HUMBLE)


def _image(store, *, frame_id='cam', encoding='rgb8', h=3, w=5, step=None, sec=12,
           nanosec=345, big=0):
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    Image = store.types['sensor_msgs/msg/Image']
    step = step if step is not None else w * 3
    data = np.arange(step * h, dtype=np.uint8)
    return Image(header=Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id),
                 height=h, width=w, encoding=encoding, is_bigendian=big, step=step, data=data)


@pytest.mark.parametrize('frame_id', ['', 'c', 'cam', 'camera_optical', 'x' * 37])
@pytest.mark.parametrize('encoding', ['rgb8', 'mono16', 'bgra8'])
def test_image_fields_equal_the_serializer_input_for_every_alignment(store, frame_id, encoding):
    msg = _image(store, frame_id=frame_id, encoding=encoding, step=17, h=4, w=5)
    raw = store.serialize_cdr(msg, 'sensor_msgs/msg/Image')
    got = cdr.parse_image(raw)
    assert (got.stamp_ns, got.frame_id, got.height, got.width) == (12 * 10**9 + 345, frame_id,
                                                                    4, 5)
    assert (got.encoding, got.is_bigendian, got.step) == (encoding, False, 17)
    assert bytes(got.data) == msg.data.tobytes()
    assert cdr.header_stamp_ns(raw) == got.stamp_ns


def test_big_endian_messages_are_read(store):
    msg = _image(store, frame_id='ab', sec=-3, nanosec=5)
    raw = store.serialize_cdr(msg, 'sensor_msgs/msg/Image', little_endian=False)
    got = cdr.parse_image(raw)
    assert got.stamp_ns == -3 * 10**9 + 5 and got.width == 5 and got.frame_id == 'ab'


def test_compressed_fields(store):
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    Compressed = store.types['sensor_msgs/msg/CompressedImage']
    payload = np.frombuffer(b'\xff\xd8\xff\xe0 not really a jpeg', np.uint8)
    msg = Compressed(header=Header(stamp=Time(sec=7, nanosec=0), frame_id='cam0'),
                     format='jpeg', data=payload)
    got = cdr.parse_compressed(store.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage'))
    assert (got.stamp_ns, got.frame_id, got.format) == (7 * 10**9, 'cam0', 'jpeg')
    assert bytes(got.data) == payload.tobytes()


def test_the_pixels_are_a_view_not_a_copy(store):
    raw = bytearray(store.serialize_cdr(_image(store), 'sensor_msgs/msg/Image'))
    got = cdr.parse_image(raw)
    raw[-1] ^= 0xFF
    assert got.data[-1] == raw[-1]


def test_every_truncation_and_corruption_is_an_image_error(store):
    raw = bytes(store.serialize_cdr(_image(store, frame_id='camera'), 'sensor_msgs/msg/Image'))
    for cut in range(len(raw) - 1):  # every prefix but the whole message
        with pytest.raises(ImageError):
            cdr.parse_image(raw[:cut])
    rng = np.random.default_rng(0)
    for _ in range(3000):
        mutated = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=rng.integers(1, 4)):
            mutated[pos] = int(rng.integers(0, 256))
        try:
            got = cdr.parse_image(bytes(mutated))
        except ImageError:
            continue
        assert len(got.data) <= len(mutated)


@pytest.mark.parametrize('raw', [b'', b'\x00', b'\x07\x07\x00\x00' + bytes(40),
                                 b'\x00\x01\x00\x00' + b'\xff' * 12])
def test_garbage_is_refused(raw):
    with pytest.raises(ImageError):
        cdr.parse_image(raw)
