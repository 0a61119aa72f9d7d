"""rgb_to_image_msg: exact rgb8 layout from any array view, filled without per-pixel Python."""

import array

import numpy as np
import pytest
from std_msgs.msg import Header

from procvlm_ros.ros.views import rgb_to_image_msg


def decode(msg):
    return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step // 3, 3)


def test_round_trip_of_contiguous_and_strided_arrays():
    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    header = Header(frame_id='cam')
    for view in (rgb, rgb[:, ::2], rgb[::-1], rgb[5:20, 3:40]):
        msg = rgb_to_image_msg(view, header)
        assert (msg.height, msg.width, msg.step) == (view.shape[0], view.shape[1],
                                                      3 * view.shape[1])
        assert msg.encoding == 'rgb8' and msg.is_bigendian == 0
        assert msg.header.frame_id == 'cam'
        assert isinstance(msg.data, array.array) and msg.data.typecode == 'B'
        np.testing.assert_array_equal(decode(msg), view)


@pytest.mark.parametrize('bad', [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8), [[0, 0, 0]]])
def test_wrong_input_is_refused_with_its_shape(bad):
    with pytest.raises(ValueError, match='needs an \\(H, W, 3\\) uint8 array, got'):
        rgb_to_image_msg(bad, Header())
