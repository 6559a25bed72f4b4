"""ROS 2 adapter: the node, its parameters and messages; the only core layer importing rclpy and *_msgs."""
