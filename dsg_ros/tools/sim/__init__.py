"""Deterministic synthetic data for the mapper: an indoor world of boxes, a
ground robot's true path, drifting odometry and a spinning lidar.

numpy only (no JAX, no ROS). Poses are SE(3) ``wxyz_xyz`` arrays (..., 7),
jaxlie's storage; ``dsg_ros.se3`` has the group operations.
"""

from dsg_ros.tools.sim.lidar import LidarConfig, scan, scan_organized
from dsg_ros.tools.sim.odometry import OdometryCalibration, OdometryConfig, increments, integrate_odometry
from dsg_ros.tools.sim.scenario import SimConfig, SimData, simulate
from dsg_ros.tools.sim.trajectory import TrajectoryConfig, ground_truth, interpolate, planar_pose
from dsg_ros.tools.sim.world import World, WorldConfig, build_world

__all__ = [
    "LidarConfig",
    "OdometryCalibration",
    "OdometryConfig",
    "SimConfig",
    "SimData",
    "TrajectoryConfig",
    "World",
    "WorldConfig",
    "build_world",
    "ground_truth",
    "increments",
    "integrate_odometry",
    "interpolate",
    "planar_pose",
    "scan",
    "scan_organized",
    "simulate",
]
