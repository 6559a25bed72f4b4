"""dsg_ros: online differentiable mapping for ROS 2.

The core layers (``world``, ``solve``, ``learn``, ``mapping``, ``msgs``,
``bag``) import and run without ROS; ``dsg_ros.ros`` is the only core layer
that touches rclpy. ``dsg_ros.tools`` (simulator, demo, evaluation and plots,
benches, converters) builds on the core, which never imports it.
"""

__version__ = "0.1.0"
