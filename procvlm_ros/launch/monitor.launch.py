"""Start the ProcVLM progress monitor: ``ros2 launch procvlm_ros monitor.launch.py``."""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchContext, LaunchDescription


def _monitor(context: LaunchContext) -> list:
    image_topic = LaunchConfiguration('image_topic').perform(context)
    # Only non-empty launch arguments override the params file.
    overrides = {name: LaunchConfiguration(name).perform(context)
                 for name in ('model', 'task', 'profile')}
    overrides = {name: value for name, value in overrides.items() if value}
    parameters = [LaunchConfiguration('params_file').perform(context)]
    if overrides:
        parameters.append(overrides)
    return [Node(
        package='procvlm_ros', executable='monitor_node', name='procvlm_monitor',
        namespace=LaunchConfiguration('namespace').perform(context), output='screen',
        parameters=parameters,
        remappings=[('image', image_topic), ('image/compressed', image_topic + '/compressed')])]


def generate_launch_description() -> LaunchDescription:
    default_params = os.path.join(get_package_share_directory('procvlm_ros'), 'config',
                                  'monitor.yaml')
    return LaunchDescription([
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML file with the monitor parameters'),
        DeclareLaunchArgument('model', default_value='',
                              description='checkpoint directory or hub id (overrides the file)'),
        DeclareLaunchArgument('task', default_value='',
                              description='task sentence (overrides the file)'),
        DeclareLaunchArgument('profile', default_value='',
                              description='task profile: procvlm_progress, pairwise_critic, '
                              'navigation_action or grounded_query (overrides the file)'),
        DeclareLaunchArgument('image_topic', default_value='image',
                              description='camera topic remapped onto the node input `image`'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the node and its topics'),
        OpaqueFunction(function=_monitor),
    ])
