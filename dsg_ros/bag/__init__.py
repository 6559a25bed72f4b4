"""Bags in and out with the ``rosbags`` library: no rclpy.

:class:`Bag` reads rosbag2 (sqlite3, mcap) and ROS 1 bags; :class:`BagWriter`
writes rosbag2 atomically; :mod:`dsg_ros.bag.build` makes the messages and
:mod:`dsg_ros.bag.tf` finds odometry and extrinsics in TF. Message contents
go through :mod:`dsg_ros.msgs`, as on the node's side.
"""

from dsg_ros.bag.errors import BagError
from dsg_ros.bag.reader import Bag, BagInfo, BagMessage, TopicInfo, bag_info
from dsg_ros.bag.writer import STORAGES, BagWriter

__all__ = ["STORAGES", "Bag", "BagError", "BagInfo", "BagMessage", "BagWriter", "TopicInfo", "bag_info"]
