"""
Synthetic table-top manipulation episodes with procedural ground truth (ROS-free).

``generate_episode(seed, index, kind, task_kind)`` returns an :class:`Episode` whose frames are
rendered on demand and whose ground truth (progress, remaining actions, done, stall intervals)
follows from the task procedure. ``export`` writes episodes as mp4, rosbag2 and JSON; the
``procvlm-synth`` CLI wraps it. Test/demo data only: the scenes are simple on purpose.
"""

from procvlm_ros.synth.episode import DEFAULT_FPS, Episode, EPISODE_KINDS, generate_episode
from procvlm_ros.synth.scene import TASK_KINDS

__all__ = ['DEFAULT_FPS', 'EPISODE_KINDS', 'Episode', 'TASK_KINDS', 'generate_episode']
