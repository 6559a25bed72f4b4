"""dsg_ros: online differentiable mapping for ROS 2.

The core layers (``world``, ``solve``, ``learn``, ``mapping``) import and run
without ROS; ``dsg_ros.ros`` is the only place that touches rclpy.
"""

__version__ = "0.1.0"
