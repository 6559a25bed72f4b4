"""Launch the dsg_ros mapping node (``dsg_mapper``), optionally with RViz.

Usage (ROS 2 distro install, after ``colcon build`` and sourcing the workspace)::

    ros2 launch dsg_ros hybrid.launch.py rviz:=true use_sim_time:=true
    ros2 launch dsg_ros hybrid.launch.py points_topic:=/velodyne_points odom_topic:=/odometry/filtered
    ros2 launch dsg_ros hybrid.launch.py scan_topic:=/base_scan
    ros2 launch dsg_ros hybrid.launch.py params_file:=/path/to/my.yaml

With ROS from the pip wheels (no ``launch``/``ros2``), ``dsg-ros node`` starts
the same node with the same parameter file.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("dsg_ros")
    params_file = LaunchConfiguration("params_file")
    use_sim_time = LaunchConfiguration("use_sim_time")
    rviz = LaunchConfiguration("rviz")
    # use_sim_time must reach the node as a bool, not the string 'true'.
    sim_time = ParameterValue(use_sim_time, value_type=bool)

    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "params_file",
                default_value=os.path.join(share, "config", "hybrid.yaml"),
                description="node parameter file (/**: ros__parameters)",
            ),
            DeclareLaunchArgument("use_sim_time", default_value="false", description="use /clock (bag replay, simulation)"),
            DeclareLaunchArgument("rviz", default_value="false", description="also start rviz2 with config/hybrid.rviz"),
            DeclareLaunchArgument("odom_topic", default_value="odom", description="nav_msgs/Odometry input"),
            DeclareLaunchArgument("points_topic", default_value="points", description="sensor_msgs/PointCloud2 input"),
            DeclareLaunchArgument(
                "scan_topic", default_value="scan", description="sensor_msgs/LaserScan input (the parameter scan_topic: '' turns it off)"
            ),
            DeclareLaunchArgument(
                "ground_truth_topic", default_value="ground_truth", description="optional nav_msgs/Odometry reference for calibration"
            ),
            Node(
                package="dsg_ros",
                executable="hybrid_node",
                name="dsg_mapper",
                parameters=[params_file, {"use_sim_time": sim_time}],
                remappings=[
                    ("odom", LaunchConfiguration("odom_topic")),
                    ("points", LaunchConfiguration("points_topic")),
                    ("scan", LaunchConfiguration("scan_topic")),
                    ("ground_truth", LaunchConfiguration("ground_truth_topic")),
                ],
                output="screen",
            ),
            Node(
                package="rviz2",
                executable="rviz2",
                name="rviz2",
                arguments=["-d", os.path.join(share, "config", "hybrid.rviz")],
                parameters=[{"use_sim_time": sim_time}],
                condition=IfCondition(rviz),
                output="screen",
            ),
        ]
    )
