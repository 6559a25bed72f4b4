"""The ``dsg_mapper`` node: messages → numpy → the Mapper → messages.

Threads (why: a solve or a calibration step must never starve a subscription):

* the executor thread runs subscriptions (they only convert and enqueue),
  services and the diagnostics timer;
* the tick thread warms the mapper up, then steps the mapping session
  (``dsg_ros.mapping.session``) on every cloud (or at ``rate_hz`` when none
  comes): tick, publish what the tick produced, then marginalize and refine
  the window until the next cloud is ready;
* the session's calibration worker learns from window snapshots the tick
  thread hands it; the tick thread applies the new theta at its next step;
* the voxel thread publishes the whole map at ``voxel_rate_hz``.

Stamps come from messages (``use_sim_time`` only affects the node clock,
used for diagnostics headers when no data arrived yet).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray, PoseStamped
from nav_msgs.msg import Odometry, Path as PathMsg
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import LaserScan, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from dsg_ros import se3
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping import Mapper, MappingSession, SessionConfig, TickResult
from dsg_ros.msgs import points_from_scan, reason
from dsg_ros.ros import messages as msgs
from dsg_ros.ros.params import declare
from dsg_ros.ros.pointcloud import cloud_to_xyz

LATENCY_WINDOW = 2000  # recent cloud→publication latencies kept for percentiles
TIME_JUMP_SAMPLES = 3  # refused odometry samples far in the past, in a row, that restart mapping


def _qos(reliability: str, depth: int, latched: bool = False) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


class MapperNode(Node):
    """Online differentiable mapping over ROS 2 topics."""

    def __init__(self, node_name: str = "dsg_mapper", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.settings, mapper_config = declare(self)
        s = self.settings
        self._refused_calibration: str | None = None  # why calibration_file was refused at start: never overwritten then
        self.mapper = Mapper(mapper_config, self._load_calibration())
        self.counts = {"odom": 0, "points": 0, "scans": 0, "ground_truth": 0, "skipped_messages": 0, "published_ticks": 0, "skipped_while_warming": 0}
        self._skipped: Counter[str] = Counter()  # "<what>: <reason>" → messages skipped
        self._latency_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._tick_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._arrivals: dict[float, float] = {}
        self._path: dict[float, PoseStamped] = {}  # keyframe stamp → its last estimate (T_map_base)
        self._last: TickResult | None = None
        self._last_stamp: float | None = None  # newest data stamp, for headers
        self._calibrated_at: float | None = None
        self._status = ("warming up (compiling)", DiagnosticStatus.WARN)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reset_requested = threading.Event()
        self._reset_done = threading.Event()
        self._behind = 0  # refused odometry samples in a row that lie far in the past
        self.time_jump_resets = 0
        self._map_lock = threading.Lock()  # a reset's DELETEALL and a map publication never interleave

        self.create_subscription(Odometry, "odom", self._on_odom, _qos(s.odom_reliability, s.odom_depth))
        self.create_subscription(Odometry, "ground_truth", self._on_ground_truth, _qos(s.odom_reliability, s.odom_depth))
        self.create_subscription(PointCloud2, "points", self._on_points, _qos(s.points_reliability, s.points_depth))
        if s.scan_topic:
            self.create_subscription(LaserScan, s.scan_topic, self._on_scan, _qos(s.scan_reliability, s.scan_depth))
        self.pub_poses = self.create_publisher(PoseArray, "~/poses", 10)
        self.pub_path = self.create_publisher(PathMsg, "~/path", _qos("reliable", 1, latched=True))
        self.pub_voxels = self.create_publisher(MarkerArray, "~/voxels", _qos("reliable", 1, latched=True))
        self.pub_graph = self.create_publisher(MarkerArray, "~/graph", 10)
        self.pub_odometry = self.create_publisher(Odometry, "~/odometry", 50)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/save_calibration", self._on_save_calibration)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(1.0 / s.diagnostics_rate_hz, self._publish_diagnostics)
        self._tf = self._make_tf_broadcaster()

        self.session = MappingSession(
            self.mapper,
            SessionConfig(calibrate=s.calibrate_online, learn_in_background=True, calibration_period_s=s.calibration_period_s),
            publish=self._on_tick,
            interrupt=self._wake.is_set,  # refine until the next cloud can be mapped
            report=lambda message: self.get_logger().error(message, throttle_duration_sec=5.0),
        )
        self._ticker = threading.Thread(target=self._run_ticks, name="dsg_tick", daemon=True)
        # The whole map as markers takes ~0.2 s per 100k voxels to build: its
        # own thread, so ticks (and the latency they add) never wait for it.
        self._voxeler = threading.Thread(target=self._run_voxels, name="dsg_voxels", daemon=True)
        self._ticker.start()
        self._voxeler.start()

    # ------------------------------------------------------------------ set-up

    def _load_calibration(self) -> cal.Theta | None:
        path = self.settings.calibration_file
        if not path:
            return None
        if not Path(path).exists():
            self.get_logger().info(f"no calibration at {path} yet: starting from the identity calibration")
            return None
        try:
            theta = cal.load(path)
        except cal.CalibrationFileError as exc:
            self._refused_calibration = str(exc)
            self.get_logger().error(f"ignoring calibration file, starting from the identity calibration: {exc}")
            return None
        self.get_logger().info(f"loaded calibration {path}: {cal.CalibrationSummary.of(theta)}")
        return theta

    def _make_tf_broadcaster(self):
        if not self.settings.broadcast_tf:
            return None
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            self.get_logger().info("tf2_ros is not installed: map → odom is not broadcast (the correction is on ~/odometry)")
            return None
        return TransformBroadcaster(self)

    def shutdown(self) -> None:
        """Stop the worker threads (the executor is the caller's)."""
        self._stop.set()
        self._wake.set()
        self._ticker.join(timeout=10.0)
        self.session.close()
        self._voxeler.join(timeout=10.0)

    # --------------------------------------------------------------- callbacks

    def _skip(self, what: str, exc: Exception) -> None:
        self.counts["skipped_messages"] += 1
        self._skipped[f"{what}: {reason(str(exc))}"] += 1
        self.get_logger().warning(f"skipped {what}: {exc}", throttle_duration_sec=2.0)

    def _on_odom(self, msg: Odometry) -> None:
        self.counts["odom"] += 1
        if not self._ready.is_set():
            return
        try:
            stamp, T_odom_base, warning = msgs.odometry_from_msg(msg)
        except msgs.MessageError as exc:
            return self._skip("odometry", exc)
        if warning:
            self.get_logger().warning(warning, throttle_duration_sec=2.0)
        if not self.mapper.add_odometry(stamp, T_odom_base):
            self.counts["skipped_messages"] += 1
            self._check_time_jump(stamp)
            return
        self._behind = 0
        if self.settings.tick_on_cloud and self.mapper.cloud_ready():
            self._wake.set()  # a cloud was waiting for this odometry

    def _check_time_jump(self, stamp: float) -> None:
        """Restart mapping once ``TIME_JUMP_SAMPLES`` refused odometry samples in a
        row lie ``time_jump_reset_s`` behind the newest one: the stream started
        over (a looping bag). In a row, so that one stray stamp far ahead of
        the clock (which the odometry buffer drops by itself) never costs the map."""
        latest, jump = self.mapper.odometry.latest_stamp, self.settings.time_jump_reset_s
        if jump <= 0.0 or latest is None or stamp >= latest - jump or self._reset_requested.is_set():
            self._behind = 0
            return
        self._behind += 1
        if self._behind == TIME_JUMP_SAMPLES:
            self._behind = 0
            self.time_jump_resets += 1
            self.get_logger().warning(f"odometry went back {latest - stamp:.1f} s in time (a bag played again?): mapping restarts")
            self._reset_requested.set()
            self._wake.set()

    def _on_ground_truth(self, msg: Odometry) -> None:
        self.counts["ground_truth"] += 1
        if not self._ready.is_set():
            return
        try:
            stamp, T_world_base, _ = msgs.odometry_from_msg(msg)
        except msgs.MessageError as exc:
            return self._skip("ground truth", exc)
        self.mapper.add_reference(stamp, T_world_base)

    def _on_points(self, msg: PointCloud2) -> None:
        self._add_sensor_points(msg, "points", "cloud", cloud_to_xyz, planar=False)

    def _on_scan(self, msg: LaserScan) -> None:
        self._add_sensor_points(msg, "scans", "scan", points_from_scan, planar=True)

    def _add_sensor_points(
        self, msg: PointCloud2 | LaserScan, counter: str, what: str, convert: Callable[[Any], tuple[np.ndarray, int]], planar: bool
    ) -> None:
        """Convert a cloud or scan to sensor-frame points ``p_sensor`` (N, 3) and
        queue them for the mapper; a message that does not convert is a counted
        skip. ``counter``: its ``counts`` key; ``what``: its name in skips."""
        arrived = time.perf_counter()
        self.counts[counter] += 1
        if not self._ready.is_set():
            self.counts["skipped_while_warming"] += 1
            return
        s = self.settings
        frame = msg.header.frame_id
        if s.sensor_frame and frame not in (s.sensor_frame, s.base_frame):
            return self._skip(what, ValueError(f"frame_id {frame!r} is neither sensor_frame {s.sensor_frame!r} nor base_frame {s.base_frame!r}"))
        try:
            p, dropped = convert(msg)
            stamp = msgs.stamp_to_sec(msg.header.stamp)
        except msgs.MessageError as exc:
            return self._skip(what, exc)
        if frame == s.base_frame:
            # The mapper takes sensor-frame points and moves them to the base by
            # its calibrated extrinsic: undo that one, not the nominal.
            nominal = se3.normalized(np.asarray(self.mapper.config.T_base_sensor))
            assert nominal is not None  # MapperConfig rejects an invalid extrinsic
            T_base_sensor = cal.base_sensor(self.mapper.theta, nominal)
            p = se3.apply(se3.inverse(T_base_sensor), p)
        self._arrivals[stamp] = arrived  # before add_cloud: a running tick may take the cloud at once
        if not self.mapper.add_cloud(stamp, p, dropped=dropped, planar=planar):
            self._arrivals.pop(stamp, None)
        elif s.tick_on_cloud:
            self._wake.set()

    # -------------------------------------------------------------- services

    def _on_save_calibration(self, _request, response):
        path = self.settings.calibration_file
        if not path:
            response.success, response.message = False, "parameter calibration_file is empty: nowhere to save"
            return response
        if self._refused_calibration is not None and Path(path).exists():
            response.success = False
            response.message = f"not overwriting the calibration file refused at start ({self._refused_calibration}); move it away first"
            return response
        try:
            written = cal.save(path, self.mapper.theta, {"source": "dsg_mapper", "calibration_steps": self.mapper.calibrator.steps})
        except (OSError, ValueError) as exc:
            response.success, response.message = False, f"could not save {path}: {exc}"
            return response
        response.success, response.message = True, f"saved {written}"
        self.get_logger().info(response.message)
        return response

    def _on_reset(self, _request, response):
        # The tick thread resets between ticks; answer once it has, so that
        # nothing from before the reset is published after the response.
        if not self._ready.is_set():
            response.success, response.message = False, "still warming up: nothing to reset yet"
            return response
        self._reset_done.clear()
        self._reset_requested.set()
        self._wake.set()
        if self._reset_done.wait(timeout=10.0):
            response.success, response.message = True, "map, window and odometry cleared (calibration kept)"
        else:
            response.success, response.message = False, "the tick thread did not reset within 10 s"
        return response

    # ------------------------------------------------------------------ ticks

    def _run_ticks(self) -> None:
        try:
            seconds = self.mapper.warm_up()
        except Exception:  # a broken install must say why, not hang "warming up"
            self._status = ("warm-up failed: " + traceback.format_exc(limit=3), DiagnosticStatus.ERROR)
            self.get_logger().error(self._status[0])
            return
        self.get_logger().info(f"mapper ready (warm-up {seconds:.1f} s)")
        self._status = ("ok", DiagnosticStatus.OK)
        self._ready.set()
        period = 1.0 / self.settings.rate_hz
        while not self._stop.is_set():
            self._wake.wait(timeout=period)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._tick_once()
            except Exception:  # keep mapping: report, never die
                self._status = ("tick failed: " + traceback.format_exc(limit=3), DiagnosticStatus.ERROR)
                self.get_logger().error(self._status[0], throttle_duration_sec=5.0)

    def _tick_once(self) -> None:
        if self._reset_requested.is_set():
            self._reset_requested.clear()
            with self._map_lock:
                self.mapper.reset()
                self._path.clear()
            self._arrivals.clear()
            stamp = self._header_stamp()
            self.pub_voxels.publish(msgs.delete_all(self.settings.map_frame, stamp))
            self.pub_graph.publish(msgs.delete_all(self.settings.map_frame, stamp))
            # ~/path is latched: replace it, or late subscribers get the old one.
            self.pub_path.publish(msgs.path(np.zeros(0), np.zeros((0, 7)), self.settings.map_frame, stamp))
            self.pub_poses.publish(msgs.pose_array(np.zeros((0, 7)), stamp, self.settings.map_frame))
            self._reset_done.set()
            self.get_logger().info("reset: map cleared")
        if self.session.step().theta_applied:
            self._calibrated_at = time.monotonic()

    def _on_tick(self, result: TickResult) -> None:
        """The session's ``publish``: report and publish a tick's result, right after the tick."""
        for warning in result.warnings:
            self.get_logger().warning(warning, throttle_duration_sec=1.0)
        if result.rolled_back:
            self._status = ("last solve rolled back", DiagnosticStatus.WARN)
        elif result.solve is not None:
            self._status = ("ok", DiagnosticStatus.OK)
        self._publish(result)
        done = time.perf_counter()
        for stamp in result.cloud_stamps:
            arrived = self._arrivals.pop(stamp, None)
            if arrived is not None:
                self._latency_ms.append(1000.0 * (done - arrived))
        # Clouds the mapper dropped (no odometry in time) never come back in cloud_stamps.
        stale = [k for k, t in list(self._arrivals.items()) if done - t > 10.0]
        for k in stale:
            self._arrivals.pop(k, None)
        self._last = result
        self._tick_ms.append(result.diagnostics.tick_ms)

    def _header_stamp(self) -> Time:
        return msgs.sec_to_stamp(self._last_stamp) if self._last_stamp is not None else self.get_clock().now().to_msg()

    def _publish(self, result: TickResult) -> None:
        s = self.settings
        if result.odometry_stamp is not None:
            self._last_stamp = result.odometry_stamp
        stamp = self._header_stamp()
        if result.T_map_base is not None and result.odometry_stamp is not None:  # T_map_base comes with its stamp
            self.pub_odometry.publish(msgs.odometry_msg(result.T_map_base, msgs.sec_to_stamp(result.odometry_stamp), s.map_frame, s.base_frame))
            if self._tf is not None and result.T_map_odom is not None:
                self._broadcast_tf(result.T_map_odom, msgs.sec_to_stamp(result.odometry_stamp))
        if result.solve is not None or result.keyframes_added:
            # Only window keyframes move: the others' messages are reused.
            self._path.update((t, msgs.pose_stamped(t, T, s.map_frame)) for t, T in zip(result.window_stamps.tolist(), result.window_poses))
            self.pub_poses.publish(msgs.pose_array(result.window_poses, stamp, s.map_frame))
            self.pub_path.publish(msgs.path_of([self._path[k] for k in sorted(self._path)], s.map_frame, stamp))
            odom_edges, obs_edges = self.mapper.edges(s.graph_max_observations)
            self.pub_graph.publish(msgs.graph_markers(odom_edges, obs_edges, s.map_frame, stamp))
            self.counts["published_ticks"] += 1

    def _broadcast_tf(self, T_map_odom: np.ndarray, stamp: Time) -> None:
        from geometry_msgs.msg import TransformStamped

        t = TransformStamped()
        t.header.stamp, t.header.frame_id, t.child_frame_id = stamp, self.settings.map_frame, self.settings.odom_frame
        t.transform.rotation.w, t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z = (float(v) for v in T_map_odom[:4])
        t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in T_map_odom[4:])
        self._tf.sendTransform(t)

    def _run_voxels(self) -> None:
        s = self.settings
        if s.voxel_rate_hz <= 0:
            return
        while not self._stop.wait(1.0 / s.voxel_rate_hz):
            if not self._path or self._reset_requested.is_set():
                continue
            try:
                _, centers, counts = self.mapper.voxels()
                values = centers[:, 2] if s.voxel_color == "height" else counts.astype(np.float64)
                markers = msgs.voxel_markers(centers, values, self.mapper.config.voxel_size, s.map_frame, self._header_stamp())
                with self._map_lock:
                    if self._path:  # reset while building: the old map must not come back
                        self.pub_voxels.publish(markers)
            except Exception:
                self.get_logger().error("voxel publication failed: " + traceback.format_exc(limit=3), throttle_duration_sec=5.0)

    # ------------------------------------------------------------- diagnostics

    @staticmethod
    def _percentiles(samples: deque[float]) -> tuple[float | None, float | None]:
        if not samples:
            return None, None
        values = np.fromiter(list(samples), np.float64)
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))

    def _publish_diagnostics(self) -> None:
        message, level = self._status
        d = self._last.diagnostics if self._last is not None else None  # None ("n/a") until the first tick
        solve = d.last_solve if d is not None else None
        p50, p99 = self._percentiles(self._latency_ms)  # cloud arrival → publication of the tick that used it
        tick50, tick99 = self._percentiles(self._tick_ms)
        age = time.monotonic() - self._calibrated_at if self._calibrated_at is not None else None
        learned = cal.CalibrationSummary.of(self.mapper.theta)
        values = {
            "ready": self._ready.is_set(),
            "tick_ms": None if d is None else d.tick_ms,
            "tick_ms_p50": tick50,
            "tick_ms_p99": tick99,
            "latency_ms_p50": p50,
            "latency_ms_p99": p99,
            "window_keyframes": None if d is None else d.window_keyframes,
            "window_capacity": None if d is None else d.window_capacity,
            "window_voxels": None if d is None else d.window_voxels,
            "map_voxels": None if d is None else d.map_voxels,
            "keyframes": None if d is None else d.stats["keyframes"],
            "compilations_after_warmup": None if d is None else d.compilations_after_warmup,
            "last_solve_status": None if solve is None else solve.status,
            "last_solve_iterations": None if solve is None else solve.iterations,
            "rollbacks": None if d is None else d.stats["rollbacks"],
            "calibration_steps": self.mapper.calibrator.steps,
            "calibration_accepted": self.mapper.calibrator.accepted,
            "calibration_rejected": self.mapper.calibrator.rejected,
            "calibration_age_s": age,
            "calibration_odom_scale": learned.odom_scale[0],
            "calibration_yaw_rate_bias_deg_s": learned.odom_bias_angular_deg_s[2],
            "calibration_time_offset_s": learned.time_offset_s,
            "dropped_points": self.mapper.stats["dropped_points"],
            "dropped_clouds": self.mapper.stats["dropped_clouds"],
            "dropped_observations": None if d is None else d.dropped_observations,
            "rejected_odometry": self.mapper.stats["rejected_odometry"],
            "rejected_clouds": self.mapper.stats["rejected_clouds"],
            "registration_failures": self.mapper.stats["registration_failures"],
            "registration_screened": self.mapper.stats["registration_screened"],
            "time_jump_resets": self.time_jump_resets,
            **{f"received_{k}": v for k, v in self.counts.items()},
            **{f"skipped {k}": v for k, v in sorted(self._skipped.items())},
        }
        self.pub_diagnostics.publish(
            msgs.diagnostics(self._header_stamp(), f"{self.get_name()}: mapping", self.get_fully_qualified_name(), level, message, values)
        )


def main(args: list[str] | None = None) -> int:
    """``hybrid_node`` / ``dsg-ros node``: run the node until Ctrl-C."""
    from dsg_ros import runtime

    runtime.enable_compile_cache()
    rclpy.init(args=args)
    try:
        node = MapperNode()
    except (ValueError, ParameterException) as exc:
        print(f"dsg_mapper: {exc}")
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
