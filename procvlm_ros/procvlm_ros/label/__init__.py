"""
Dataset labelling: progress, dense rewards and episode summaries for whole datasets.

``procvlm-label`` scores every episode of a folder of rosbag2 bags, a folder of videos or a
LeRobot v3 dataset with the same windows and backends as ``procvlm-infer``, writes one result
file per episode atomically (so reruns resume), and can run on a Ray cluster. ROS-free; Ray,
pyarrow and LeRobot are imported only by the parts that need them.
"""
