"""ROS 2 adapter: the only layer importing rclpy and *_msgs."""
