"""Live task-progress monitoring with ProcVLM for ROS 2."""

__version__ = '0.1.0'


def infer_progress_from_video(**kwargs):  # noqa: ANN003, ANN201 - thin lazy re-export
    """Score a video or rosbag offline (:func:`procvlm_ros.offline.infer_progress_from_video`)."""
    from procvlm_ros.offline import infer_progress_from_video as _impl

    return _impl(**kwargs)
