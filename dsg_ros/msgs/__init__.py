"""ROS message ⇄ NumPy conversion that imports no ROS package.

Duck-typed on the ROS field names, so rclpy messages (the node) and rosbags'
deserialized dataclasses (bags) go through the same code. Poses are
``wxyz_xyz`` float64 (7,) as in :mod:`dsg_ros.se3`; points are float64
(N, 3) in the message's frame; stamps are float seconds or integer
nanoseconds. Building messages is left to each side (rclpy classes in
``dsg_ros.ros``, rosbags classes in ``dsg_ros.bag``).
"""

from dsg_ros.msgs.errors import ConversionError, reason
from dsg_ros.msgs.laserscan import points_from_scan, scan_points
from dsg_ros.msgs.pointcloud import points_from_cloud
from dsg_ros.msgs.poses import (
    StampedPose,
    Transform,
    frame_name,
    odometry_from_msg,
    pose_from_msg,
    pose_stamped_from_msg,
    transforms_from_tf,
)
from dsg_ros.msgs.stamps import NS_PER_S, ns_to_parts, sec_to_ns, stamp_to_ns, stamp_to_sec

# The message types this package converts (ROS 2 names, as rosbags also
# gives ROS 1 types).
ODOMETRY = "nav_msgs/msg/Odometry"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
POINT_CLOUD = "sensor_msgs/msg/PointCloud2"
LASER_SCAN = "sensor_msgs/msg/LaserScan"
TF = "tf2_msgs/msg/TFMessage"
SUPPORTED_TYPES = frozenset({ODOMETRY, POSE_STAMPED, POINT_CLOUD, LASER_SCAN, TF})

__all__ = [
    "ConversionError",
    "LASER_SCAN",
    "NS_PER_S",
    "ODOMETRY",
    "POINT_CLOUD",
    "POSE_STAMPED",
    "SUPPORTED_TYPES",
    "StampedPose",
    "TF",
    "Transform",
    "frame_name",
    "ns_to_parts",
    "odometry_from_msg",
    "points_from_cloud",
    "points_from_scan",
    "pose_from_msg",
    "pose_stamped_from_msg",
    "reason",
    "scan_points",
    "sec_to_ns",
    "stamp_to_ns",
    "stamp_to_sec",
    "transforms_from_tf",
]
