"""``dsg-ros sim-publisher``: the simulator as ROS topics (odom, points, ground_truth, optionally /clock).

Publishes in time order at ``rate`` × real time (0: as fast as the
subscribers' QoS allows). Stamps are ``start + t``: wall-clock time at start
unless ``--clock`` is given, in which case /clock carries the same time so
nodes with ``use_sim_time`` follow the simulation.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import rclpy
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import PointCloud2

from dsg_ros.ros import messages as msgs
from dsg_ros.ros.pointcloud import xyz_to_cloud
from dsg_ros.tools.sim.scenario import SIM_EPOCH_S, SimConfig, SimData, simulate


class SimPublisher(Node):
    """Publishes one simulated run; ``publish_all`` blocks until it is out."""

    def __init__(self, data: SimData, rate: float = 1.0, reliable_points: bool = False, clock: bool = False,
                 odom_frame: str = "odom", base_frame: str = "base_link", sensor_frame: str = "lidar", world_frame: str = "world") -> None:
        super().__init__("dsg_sim_publisher")
        self.data, self.rate, self.clock = data, rate, clock
        self.sensor_frame = sensor_frame
        self.frames = {"odom": (odom_frame, base_frame), "ground_truth": (world_frame, base_frame)}  # (parent, child) per odometry topic
        points_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE) if reliable_points else qos_profile_sensor_data
        self.pub_odom = self.create_publisher(Odometry, "odom", 100)
        self.pub_truth = self.create_publisher(Odometry, "ground_truth", 100)
        self.pub_points = self.create_publisher(PointCloud2, "points", points_qos)
        self.pub_clock = self.create_publisher(Clock, "/clock", 10) if clock else None
        self.sent = {"odom": 0, "ground_truth": 0, "cloud": 0}

    def wait_for_subscribers(self, timeout_s: float) -> bool:
        """Wait until something subscribes to points (discovery takes a moment)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pub_points.get_subscription_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def publish_all(self, on_progress: Callable[[int, int], object] | None = None) -> None:
        start = SIM_EPOCH_S if self.clock else time.time()
        t0 = time.perf_counter()
        total = len(self.data.cloud_stamps)
        for kind, t, payload in self.data.events():
            if self.rate > 0:
                delay = t / self.rate - (time.perf_counter() - t0)
                if delay > 0:
                    time.sleep(delay)
            stamp = msgs.sec_to_stamp(start + t)
            if self.pub_clock is not None:
                self.pub_clock.publish(Clock(clock=stamp))
            if kind == "cloud":
                self.pub_points.publish(xyz_to_cloud(payload, stamp, self.sensor_frame))
                if on_progress is not None and self.sent["cloud"] % 50 == 0:
                    on_progress(self.sent["cloud"], total)
            else:
                parent, child = self.frames[kind]
                (self.pub_odom if kind == "odom" else self.pub_truth).publish(msgs.odometry_msg(np.asarray(payload), stamp, parent, child))
            self.sent[kind] += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dsg-ros sim-publisher",
        description="Publish the simulator's odometry (odom), LiDAR clouds (points) and ground truth "
        "(ground_truth) over ROS 2, for the mapping node, the demo and tests.",
        epilog="example: dsg-ros sim-publisher --duration 60 --rate 1.0   (ROS arguments go after --ros-args)",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    parser.add_argument("--duration", type=float, default=60.0, help="simulated seconds (default 60)")
    parser.add_argument("--rate", type=float, default=1.0, help="speed as a multiple of real time; 0 = as fast as possible (default 1)")
    parser.add_argument("--reliable", action="store_true", help="publish points RELIABLE instead of the SensorDataQoS best effort")
    parser.add_argument("--clock", action="store_true", help="publish /clock (sim time from 1000 s) for nodes with use_sim_time")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for a points subscriber before publishing anyway (default 30)")
    argv = list(argv) if argv is not None else sys.argv[1:]
    split = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # strict: a misspelt option is an error, not a silent ROS argument
    ros_args = argv[split:]
    data = simulate(SimConfig(seed=args.seed, duration_s=args.duration))
    rclpy.init(args=ros_args)
    node = SimPublisher(data, rate=args.rate, reliable_points=args.reliable, clock=args.clock)
    try:
        if not node.wait_for_subscribers(args.wait):
            node.get_logger().warning(f"nothing subscribes to points after {args.wait:.0f} s; publishing anyway")
        node.publish_all(lambda i, n: node.get_logger().info(f"published {i}/{n} clouds"))
        node.get_logger().info(f"done: {node.sent}")
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
