"""The node over real DDS, end to end: ``make demo`` and ``dsg-ros bench node``.

Starts the mapping node and the simulator publisher as separate processes
(``python -m dsg_ros node|sim-publisher``), watches every output topic from a
monitor node in this process, saves the calibration through the service,
and scores the published path against the published ground truth.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray
from nav_msgs.msg import Odometry, Path as PathMsg
from rclpy.client import Client
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from dsg_ros import runtime
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping import metrics
from dsg_ros.ros import messages as msgs
from dsg_ros.tools.evaluate import plot_top_view
from dsg_ros.tools.sim.scenario import SimConfig
from dsg_ros.tools.sim.trajectory import interpolate

NODE = "dsg_mapper"
RSS_SETTLE_S = 60.0  # data seconds before node RSS growth is measured


@dataclass
class Observed:
    """What the monitor saw on the node's topics."""

    counts: dict[str, int] = field(default_factory=lambda: {"poses": 0, "path": 0, "voxels": 0, "graph": 0, "odometry": 0, "diagnostics": 0})
    path_raw: bytes | None = None  # the last ~/path, serialized
    voxels_raw: bytes | None = None  # the last ~/voxels, serialized
    diagnostics: dict[str, str] = field(default_factory=dict)
    ground_truth: list[tuple[float, np.ndarray]] = field(default_factory=list)
    odom: list[tuple[float, np.ndarray]] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, node RSS)
    data_start_s: float | None = None  # when the first odometry arrived (the publisher simulates first)


class Monitor(Node):
    """Subscribes to everything the mapping node publishes, plus the sim's odom and ground truth."""

    def __init__(self) -> None:
        super().__init__("dsg_demo_monitor")
        self.seen = Observed()
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(PoseArray, f"/{NODE}/poses", lambda m: self._count("poses"), 10)
        # The large topics arrive serialized and only the last one is decoded,
        # at the end: decoding ~10⁵ points per map into Python objects took
        # CPU from the node under test on the same cores.
        self.create_subscription(PathMsg, f"/{NODE}/path", self._on_path, latched, raw=True)
        self.create_subscription(MarkerArray, f"/{NODE}/voxels", self._on_voxels, latched, raw=True)
        self.create_subscription(MarkerArray, f"/{NODE}/graph", lambda m: self._count("graph"), 10, raw=True)
        self.create_subscription(Odometry, f"/{NODE}/odometry", lambda m: self._count("odometry"), 50)
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.create_subscription(Odometry, "ground_truth", lambda m: self._record(self.seen.ground_truth, m), 100)
        self.create_subscription(Odometry, "odom", lambda m: self._record(self.seen.odom, m), 100)
        self.save: Client[Any, Any] = self.create_client(Trigger, f"/{NODE}/save_calibration")

    def _count(self, name: str) -> None:
        self.seen.counts[name] += 1

    def _on_path(self, data: bytes) -> None:
        self._count("path")
        self.seen.path_raw = data

    def _on_voxels(self, data: bytes) -> None:
        self._count("voxels")
        self.seen.voxels_raw = data

    def _on_diagnostics(self, m: DiagnosticArray) -> None:
        for status in m.status:
            if status.name.startswith(NODE):
                self._count("diagnostics")
                self.seen.diagnostics = {kv.key: kv.value for kv in status.values} | {"status": status.message}

    def _record(self, into: list, m: Odometry) -> None:
        try:
            stamp, T, _ = msgs.odometry_from_msg(m)
        except msgs.MessageError:
            return  # the node logs and skips it; the monitor just does not score it
        into.append((stamp, T))


def _voxel_centers(data: bytes | None) -> np.ndarray:
    """Centers (N, 3) of the CUBE_LIST in a serialized ~/voxels message."""
    if data is None:
        return np.zeros((0, 3))
    cubes = [m for m in deserialize_message(data, MarkerArray).markers if m.type == Marker.CUBE_LIST]
    return np.array([[p.x, p.y, p.z] for p in cubes[0].points]).reshape(-1, 3) if cubes else np.zeros((0, 3))


def _float(diag: dict[str, str], key: str) -> float | None:
    try:
        return float(diag[key])
    except (KeyError, ValueError):
        return None


def run_live(
    params_file: Path,
    output: Path,
    duration_s: float = 60.0,
    seed: int = 0,
    rate: float = 1.0,
    ready_timeout_s: float = 900.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Node + sim publisher as separate processes over DDS; returns the summary.

    The node reads ``params_file`` (the launch file's) with two overrides:
    the calibration file under ``output`` and the simulator's base→sensor
    extrinsic (the sim's LiDAR is mounted 0.2 m ahead, 0.5 m up, yawed 2°).
    """
    output.mkdir(parents=True, exist_ok=True)
    calibration_file = (output / "calibration.yaml").resolve()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")  # this process's monitor too
    env = dict(os.environ)
    node_log = open(output / "node.log", "w")
    node_proc = subprocess.Popen(
        [sys.executable, "-m", "dsg_ros", "node", "--params-file", str(params_file), "--ros-args",
         "-p", f"calibration_file:={calibration_file}", "-p", f"mapper.T_base_sensor:={list(SimConfig().T_base_sensor)}"],
        env=env, stdout=node_log, stderr=subprocess.STDOUT,
    )
    rclpy.init()
    monitor = Monitor()
    executor = SingleThreadedExecutor()
    executor.add_node(monitor)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    started = time.monotonic()
    try:
        say(f"started the mapping node (pid {node_proc.pid}, log {output / 'node.log'}); waiting for it to compile "
            "(first start ~1-2 min on a laptop CPU; later starts reuse the XLA cache)")
        while monitor.seen.diagnostics.get("ready") != "true":
            if node_proc.poll() is not None:
                raise RuntimeError(f"the node exited with code {node_proc.returncode}; see {output / 'node.log'}")
            if time.monotonic() - started > ready_timeout_s:
                raise RuntimeError(f"the node was not ready after {ready_timeout_s:.0f} s; see {output / 'node.log'}")
            time.sleep(0.5)
        say(f"node ready after {time.monotonic() - started:.0f} s; publishing {duration_s:.0f} s of simulation at {rate:g}x real time")
        pub_log = open(output / "sim_publisher.log", "w")
        pub_proc = subprocess.Popen(
            [sys.executable, "-m", "dsg_ros", "sim-publisher", "--seed", str(seed), "--duration", str(duration_s), "--rate", str(rate)],
            env=env, stdout=pub_log, stderr=subprocess.STDOUT,
        )
        run_start = time.monotonic()
        while pub_proc.poll() is None:
            rss = runtime.rss_mb(node_proc.pid)
            if rss is not None:
                monitor.seen.rss_mb.append((time.monotonic() - run_start, rss))
            if monitor.seen.data_start_s is None and monitor.seen.odom:
                monitor.seen.data_start_s = time.monotonic() - run_start
            time.sleep(1.0)
        if pub_proc.returncode != 0:
            raise RuntimeError(f"the sim publisher exited with code {pub_proc.returncode}; see {output / 'sim_publisher.log'}")
        time.sleep(3.0)  # the last ticks, the next diagnostics and voxel publications
        saved = _save_calibration(monitor)
        say(f"save_calibration: {saved}")
        time.sleep(1.5)
        return _summarize(monitor.seen, output, calibration_file, saved)
    finally:
        stop_process(node_proc)
        executor.shutdown()
        monitor.destroy_node()
        rclpy.try_shutdown()
        node_log.close()


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """SIGINT (the node shuts its threads and DDS down cleanly), then kill after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _save_calibration(monitor: Monitor) -> str:
    if not monitor.save.wait_for_service(timeout_sec=10.0):
        return "service not available"
    future = monitor.save.call_async(Trigger.Request())
    deadline = time.monotonic() + 10.0
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not future.done():
        return "no answer in 10 s"
    response = future.result()
    if response is None:  # cancelled
        return "no answer"
    return response.message if response.success else f"failed: {response.message}"


def _summarize(seen: Observed, output: Path, calibration_file: Path, saved: str) -> dict[str, Any]:
    d = seen.diagnostics
    summary: dict[str, Any] = {
        "published": dict(seen.counts),
        "received": {k[len("received_"):]: int(v) for k, v in d.items() if k.startswith("received_")},
        "latency_ms_p50": _float(d, "latency_ms_p50"),
        "latency_ms_p99": _float(d, "latency_ms_p99"),
        "tick_ms_p50": _float(d, "tick_ms_p50"),
        "tick_ms_p99": _float(d, "tick_ms_p99"),
        "keyframes": _float(d, "keyframes"),
        "map_voxels": _float(d, "map_voxels"),
        "compilations_after_warmup": _float(d, "compilations_after_warmup"),
        "calibration_steps": _float(d, "calibration_steps"),
        "dropped_clouds": _float(d, "dropped_clouds"),
        "duration_s": seen.rss_mb[-1][0] if seen.rss_mb else None,
        "save_calibration": saved,
    }
    if seen.rss_mb:
        # Growth is measured from the first minute of data on (as bench
        # mapping does): before that the node fills its window and caches.
        rss = np.array(seen.rss_mb)
        begin = (seen.data_start_s or 0.0) + RSS_SETTLE_S
        first = int(np.searchsorted(rss[:, 0], begin)) if rss[-1, 0] > begin else len(rss) // 2
        summary["node_rss_mb_start"], summary["node_rss_mb_end"] = float(rss[first, 1]), float(rss[-1, 1])
        summary["node_rss_span_s"] = float(rss[-1, 0] - rss[first, 0])
        summary["node_rss_mb_every_30s"] = [round(float(v), 1) for v in rss[first::30, 1]]
    if calibration_file.exists():
        summary["calibration"] = cal.CalibrationSummary.of(cal.load(calibration_file)).__dict__
    path = deserialize_message(seen.path_raw, PathMsg) if seen.path_raw is not None else None
    if path is not None and len(path.poses) >= 3 and len(seen.ground_truth) >= 2:
        stamps = np.array([msgs.stamp_to_sec(p.header.stamp) for p in path.poses])
        estimate = np.array([[p.pose.orientation.w, p.pose.orientation.x, p.pose.orientation.y, p.pose.orientation.z,
                              p.pose.position.x, p.pose.position.y, p.pose.position.z] for p in path.poses])
        gt_t, gt = map(np.array, zip(*seen.ground_truth))
        od_t, od = map(np.array, zip(*seen.odom))
        inside = (stamps >= max(gt_t[0], od_t[0])) & (stamps <= min(gt_t[-1], od_t[-1]))
        stamps, estimate = stamps[inside], estimate[inside]
        truth, odom = interpolate(gt_t, gt, stamps), interpolate(od_t, od, stamps)
        summary["ate_odom"] = metrics.ate(odom, truth)
        summary["ate_estimate"] = metrics.ate(estimate, truth)
        summary["png"] = str(plot_top_view(output / "map.png", _voxel_centers(seen.voxels_raw), estimate, truth, odom))
    return summary
