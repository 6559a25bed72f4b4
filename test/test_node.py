"""The dsg_mapper node end to end over real DDS (one node process for the module).

The node runs as ``python -m dsg_ros node`` (what ``dsg-ros node`` and the
demo start) with a small, fast configuration; this process publishes a
simulated run through :class:`SimPublisher`'s publishers and watches every
output with a :class:`dsg_ros.tools.live.Monitor`. The node's warm-up compiles
its JAX kernels (about a minute cold; the persistent XLA cache in
~/.cache/dsg_ros/xla makes later starts quick), so the tests share one node
and one simulated time line, in file order: outputs, services, malformed
input, then LaserScans in a room of their own (after a reset, on a time line
that continues the simulated run's).

Isolation: a random ROS_DOMAIN_ID and localhost-only discovery, for this
process and the node. The node's log is printed when a test fails.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import Pose, PoseArray  # noqa: E402
from nav_msgs.msg import Odometry, Path as PathMsg  # noqa: E402
from rclpy.client import Client  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import LaserScan, PointCloud2, PointField  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from dsg_ros import se3  # noqa: E402
from dsg_ros.learn import calibration as cal  # noqa: E402
from dsg_ros.ros import messages as msgs  # noqa: E402
from dsg_ros.ros.pointcloud import xyz_to_cloud  # noqa: E402
from dsg_ros.tools.live import NODE, Monitor, stop_process  # noqa: E402
from dsg_ros.tools.sim.scenario import SimConfig, SimData, simulate  # noqa: E402
from dsg_ros.tools.sim.trajectory import planar_pose  # noqa: E402
from dsg_ros.tools.sim_publisher import SimPublisher  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "hybrid.yaml"

KEYFRAMES = 5
VOXEL_SIZE = 0.4
RATE = 2.0  # × real time
SIM_SECONDS = 22.0  # 10 (outputs) + 4 (after reset) + 2 + 3 (malformed input), with slack
READY_TIMEOUT_S = 600.0
MAP_FRAME, BASE_FRAME = "map", "base_link"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTIC_KEYS = {"ready", "tick_ms", "latency_ms_p50", "window_keyframes", "window_capacity", "map_voxels", "compilations_after_warmup"}
# The node starts from a calibration whose extrinsic raises the sensor by this
# much over the nominal, so that input in the base frame must go through the
# calibrated extrinsic to land right. A pure z shift moves the map of the
# (planar) simulated run rigidly up: those tests do not see it.
CALIBRATED_DZ = 0.15


# ------------------------------------------------------------------ nodes


class _InContext(Node):
    """Creates the node in :attr:`context` (Monitor and SimPublisher take no ``context`` argument)."""

    ros_context: Context | None = None  # not `context`: that is a Node property

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("context", _InContext.ros_context)
        super().__init__(node_name, **kwargs)


@dataclass
class Diag:
    at: float  # monotonic arrival
    level: int
    message: str
    values: dict[str, str]


class Watcher(Monitor, _InContext):
    """live.Monitor, keeping every message (with its monotonic arrival time) for the assertions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: dict[str, list[tuple[float, Any]]] = {k: [] for k in ("poses", "path", "voxels", "graph", "odometry")}
        self.diags: list[Diag] = []
        super().__init__()
        self.create_subscription(PoseArray, f"/{NODE}/poses", lambda m: self._keep("poses", m), 10)
        self.create_subscription(MarkerArray, f"/{NODE}/graph", lambda m: self._keep("graph", m), 10)
        self.create_subscription(Odometry, f"/{NODE}/odometry", lambda m: self._keep("odometry", m), 50)
        self.reset: Client[Any, Any] = self.create_client(Trigger, f"/{NODE}/reset")

    def _keep(self, name: str, m: Any) -> None:
        with self.lock:
            self.kept[name].append((time.monotonic(), m))

    def _on_path(self, data: bytes) -> None:  # Monitor takes the large topics serialized
        super()._on_path(data)
        self._keep("path", deserialize_message(data, PathMsg))

    def _on_voxels(self, data: bytes) -> None:
        super()._on_voxels(data)
        self._keep("voxels", deserialize_message(data, MarkerArray))

    def _on_diagnostics(self, m: DiagnosticArray) -> None:
        super()._on_diagnostics(m)
        for s in m.status:
            if s.name.startswith(NODE):
                level = s.level[0] if isinstance(s.level, (bytes, bytearray)) else int(s.level)
                with self.lock:
                    self.diags.append(Diag(time.monotonic(), level, s.message, {kv.key: kv.value for kv in s.values}))

    def _record(self, into: list, m: Odometry) -> None:
        # Monitor records the odom stream; the malformed-input test publishes
        # odometry that odometry_from_msg rejects, which would kill the spinner.
        try:
            super()._record(into, m)
        except msgs.MessageError:
            pass

    def messages(self, name: str, since: float = -math.inf) -> list[Any]:
        with self.lock:
            return [m for t, m in self.kept[name] if t >= since]

    def count(self, name: str) -> int:
        with self.lock:
            return len(self.kept[name])


class Publisher(SimPublisher, _InContext):
    pass


# ---------------------------------------------------------------- harness


@dataclass
class Stream:
    """The simulated run, published piece by piece on one time line: stamps are
    ``base + t`` with ``t`` continuing where the previous piece stopped, so
    odometry and cloud stamps always increase (pauses between tests do not
    matter: the node only uses message stamps)."""

    pub: Publisher
    data: SimData
    events: list[tuple[str, float, Any]] = field(default_factory=list)
    next: int = 0
    base: float | None = None
    last_t: float = 0.0
    last_odom: np.ndarray | None = None
    sent: dict[str, int] = field(default_factory=lambda: {"odom": 0, "ground_truth": 0, "cloud": 0})

    def __post_init__(self) -> None:
        self.events = list(self.data.events())

    def stamp_sec(self, t: float | None = None) -> float:
        assert self.base is not None
        return self.base + (self.last_t if t is None else t)

    def publish(self, seconds: float, rate: float = RATE) -> tuple[float, float]:
        """Publish the next ``seconds`` of the run at ``rate`` × real time; returns its (first, last) stamp."""
        if self.base is None:
            self.base = float(math.floor(time.time()))
        assert self.next < len(self.events), "the simulated run is used up: raise SIM_SECONDS"
        t_start = self.events[self.next][1]
        assert t_start + seconds <= self.events[-1][1] + 1e-9, "the simulated run is too short: raise SIM_SECONDS"
        wall0 = time.perf_counter()
        while self.next < len(self.events) and self.events[self.next][1] < t_start + seconds:
            kind, t, payload = self.events[self.next]
            delay = (t - t_start) / rate - (time.perf_counter() - wall0)
            if delay > 0:
                time.sleep(delay)
            stamp = msgs.sec_to_stamp(self.base + t)
            if kind == "cloud":
                self.pub.pub_points.publish(xyz_to_cloud(payload, stamp, "lidar"))
            else:
                parent, child = ("odom", BASE_FRAME) if kind == "odom" else ("world", BASE_FRAME)
                (self.pub.pub_odom if kind == "odom" else self.pub.pub_truth).publish(msgs.odometry_msg(np.asarray(payload), stamp, parent, child))
                if kind == "odom":
                    self.last_odom = np.asarray(payload, np.float64)
            self.sent[kind] += 1
            self.next += 1
            self.last_t = t
        return self.base + t_start, self.base + self.last_t


@dataclass
class Live:
    proc: subprocess.Popen
    log_path: Path
    calibration_file: Path
    watcher: Watcher
    stream: Stream
    spinner: threading.Thread
    spin_error: list[BaseException]
    ready_after_s: float = float("nan")

    def log(self, start: int = 0) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[start:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"the node exited with code {self.proc.returncode}; its log:\n{self.log()[-20000:]}")
        if self.spin_error:
            raise AssertionError("the test's executor thread died") from self.spin_error[0]
        assert self.spinner.is_alive(), "the test's executor thread stopped"

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.05)

    def fresh_diag(self, n: int = 1, timeout_s: float = 10.0) -> Diag:
        """The n-th diagnostics message published after this call."""
        seen = len(self.watcher.diags)
        self.wait_for(lambda: len(self.watcher.diags) >= seen + n, timeout_s, f"{n} more diagnostics message(s)")
        return self.watcher.diags[-1]

    def settle(self, timeout_s: float = 60.0) -> Diag:
        """Wait until the node has consumed what was published: keyframe,
        cloud and voxel counts unchanged over four diagnostics periods, and a
        voxel publication after that."""
        deadline = time.monotonic() + timeout_s
        prev, stable = None, 0
        while stable < 4:
            d = self.fresh_diag()
            key = tuple(d.values.get(k) for k in ("keyframes", "received_points", "received_odom", "map_voxels", "window_keyframes"))
            stable = stable + 1 if key == prev else 0
            prev = key
            if time.monotonic() > deadline:
                pytest.fail(f"the node did not settle in {timeout_s:.0f} s (last diagnostics {d.values})")
        since = time.monotonic()
        self.wait_for(lambda: self.watcher.messages("voxels", since), 5.0, "a voxel publication after settling")
        return d

    def call(self, client, timeout_s: float = 15.0) -> Trigger.Response:
        assert client.wait_for_service(timeout_sec=10.0), f"service {client.srv_name} not available"
        future = client.call_async(Trigger.Request())
        self.wait_for(future.done, timeout_s, f"an answer from {client.srv_name}")
        return future.result()

    def wait_for_subscribers(self) -> None:
        pub = self.stream.pub
        self.wait_for(
            lambda: pub.pub_points.get_subscription_count() >= 1
            and pub.pub_odom.get_subscription_count() >= 2  # the node and the monitor
            and pub.pub_truth.get_subscription_count() >= 2,
            30.0,
            "the node's subscriptions to be discovered",
        )


def _params_file(directory: Path, calibration_file: Path, **node_settings: Any) -> Path:
    """config/hybrid.yaml with a small, fast mapper (and no online calibration to compile), and ``node_settings``."""
    document = yaml.safe_load(PARAMS_FILE.read_text())
    p = document["/**"]["ros__parameters"]
    p.update(rate_hz=10.0, voxel_rate_hz=5.0, diagnostics_rate_hz=5.0, calibration_file=str(calibration_file), **node_settings)
    m = p["mapper"]
    m["window"].update(keyframes=KEYFRAMES, max_voxels=1024, max_observations_per_keyframe=300, max_anchors_per_keyframe=150)
    m["voxel_size"] = VOXEL_SIZE
    m["calibration"]["every_keyframes"] = 0
    m["T_base_sensor"] = [float(v) for v in SimConfig().T_base_sensor]  # the sim's lidar extrinsic, as live.py
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dsg_node")
    calibration_file = tmp / "cal.yaml"
    cal.save(calibration_file, {**cal.as_host(cal.zero_theta()), "extrinsic": np.array([0.0, 0.0, CALIBRATED_DZ, 0.0, 0.0, 0.0])}, {"source": "test_node"})
    params = _params_file(tmp, calibration_file)
    ros_env = {"ROS_DOMAIN_ID": str(random.randint(150, 229)), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    saved_env = {k: os.environ.get(k) for k in ros_env}
    os.environ.update(ros_env)
    log_path = tmp / "node.log"
    log = open(log_path, "w")
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dsg_ros", "node", "--params-file", str(params)],
        cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT,
    )
    context = Context()
    executor, nodes = None, []
    try:
        data = simulate(SimConfig(duration_s=SIM_SECONDS))  # while the node compiles
        rclpy.init(context=context)
        _InContext.ros_context = context
        watcher, publisher = Watcher(), Publisher(data)
        nodes = [watcher, publisher]
        executor = SingleThreadedExecutor(context=context)
        for n in nodes:
            executor.add_node(n)
        spin_error: list[BaseException] = []

        def spin() -> None:
            try:
                executor.spin()
            except ExternalShutdownException:
                pass
            except BaseException as exc:  # reported by check_alive
                spin_error.append(exc)

        spinner = threading.Thread(target=spin, name="test_node_executor", daemon=True)
        spinner.start()
        h = Live(proc, log_path, calibration_file, watcher, Stream(publisher, data), spinner, spin_error)
        try:
            h.wait_for(lambda: watcher.seen.diagnostics.get("ready") == "true", READY_TIMEOUT_S, "the node to be ready")
        except BaseException:
            print(f"node log ({log_path}):\n{h.log()[-20000:]}")
            raise
        h.ready_after_s = time.monotonic() - started
        print(f"node ready after {h.ready_after_s:.1f} s")
        h.wait_for_subscribers()
        yield h
    finally:
        stop_process(proc)
        if executor is not None:
            executor.shutdown()
        for n in nodes:
            n.destroy_node()
        rclpy.try_shutdown(context=context)
        _InContext.ros_context = None
        log.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _node_log_on_failure(live):
    """The node's log (pytest shows teardown output only when the test failed)."""
    start = len(live.log())
    yield
    time.sleep(0.2)  # what the node is logging right now
    text = live.log()
    print(f"---- node log ({live.log_path}), this test from character {start} ----\n{text[:start][-10000:]}"
          f"\n---- this test ----\n{text[start:][-30000:]}")


# ----------------------------------------------------------------- checks


def _pose_ok(pose: Pose, what: str) -> np.ndarray:
    q, p = pose.orientation, pose.position
    v = np.array([q.w, q.x, q.y, q.z, p.x, p.y, p.z])
    assert np.isfinite(v).all(), f"{what}: non-finite pose {v}"
    assert abs(np.linalg.norm(v[:4]) - 1.0) <= 1e-6, f"{what}: quaternion norm {np.linalg.norm(v[:4])!r}"
    return v


def _stamps(path: PathMsg) -> np.ndarray:
    return np.array([msgs.stamp_to_sec(p.header.stamp) for p in path.poses])


def _check_voxels(m: MarkerArray) -> Marker:
    assert len(m.markers) == 1, f"expected one marker, got {[(mk.ns, mk.type, mk.action) for mk in m.markers]}"
    mk = m.markers[0]
    assert mk.type == Marker.CUBE_LIST and mk.action == Marker.ADD
    assert mk.ns != ""
    assert mk.header.frame_id == MAP_FRAME
    assert (mk.scale.x, mk.scale.y, mk.scale.z) == pytest.approx((VOXEL_SIZE,) * 3, abs=1e-12)
    assert mk.color.a == 1.0
    o = mk.pose.orientation
    assert (o.w, o.x, o.y, o.z) == (1.0, 0.0, 0.0, 0.0)
    assert len(mk.points) > 0 and len(mk.colors) == len(mk.points)
    xyz = np.array([[p.x, p.y, p.z] for p in mk.points])
    rgba = np.array([[c.r, c.g, c.b, c.a] for c in mk.colors])
    assert np.isfinite(xyz).all()
    assert (rgba[:, 3] == 1.0).all()
    assert ((rgba[:, :3] >= 0.0) & (rgba[:, :3] <= 1.0)).all()
    return mk


def _late_joiner(live: Live, msg_type: type, topic: str, timeout_s: float = 5.0) -> list[Any]:
    """What a new transient-local subscription to ``topic`` receives within ``timeout_s``."""
    node = _InContext("dsg_test_late_joiner")
    got: list[Any] = []
    node.create_subscription(msg_type, topic, got.append, LATCHED)
    executor = SingleThreadedExecutor(context=_InContext.ros_context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + timeout_s
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            live.check_alive()
    finally:
        executor.shutdown()
        node.destroy_node()
    return got


def _number(d: Diag, key: str) -> float:
    value = d.values.get(key)
    assert value not in (None, "n/a"), f"diagnostics {key} = {value!r} ({d.values})"
    return float(value)


# ------------------------------------------------------------------ tests


def test_outputs_after_ten_seconds_of_data(live):
    w = live.watcher
    counts_before = {k: w.count(k) for k in w.kept}
    first, last = live.stream.publish(10.0)
    d = live.settle()

    assert all(w.count(k) > counts_before[k] for k in w.kept), {k: (counts_before[k], w.count(k)) for k in w.kept}
    assert w.diags, "no diagnostics"

    # ~/poses: the window, in the map frame
    pose_arrays = w.messages("poses")
    for m in pose_arrays:
        assert m.header.frame_id == MAP_FRAME
        assert 1 <= len(m.poses) <= KEYFRAMES
        for pose in m.poses:
            _pose_ok(pose, "poses")
    assert len(pose_arrays[-1].poses) == KEYFRAMES  # ~20 keyframes in 10 s: the window is full

    # ~/path: every keyframe so far (marginalized ones too), stamps increasing within the data
    for m in w.messages("path"):
        assert m.header.frame_id == MAP_FRAME
        stamps = _stamps(m)
        assert np.all(np.diff(stamps) > 0), stamps
        for ps in m.poses:
            assert ps.header.frame_id == MAP_FRAME
            _pose_ok(ps.pose, "path")
    path = w.messages("path")[-1]
    stamps = _stamps(path)
    assert len(path.poses) > KEYFRAMES, "the path keeps keyframes that left the window"
    assert first - 1e-6 <= stamps[0] and stamps[-1] <= last + 1e-6, (first, stamps, last)
    assert len(path.poses) == int(d.values["keyframes"])

    # ~/odometry: corrected odometry of base_link in map, stamps never going back
    odometry = w.messages("odometry")
    for m in odometry:
        assert m.header.frame_id == MAP_FRAME and m.child_frame_id == BASE_FRAME
        _pose_ok(m.pose.pose, "odometry")
    odom_stamps = np.array([msgs.stamp_to_sec(m.header.stamp) for m in odometry])
    assert np.all(np.diff(odom_stamps) >= 0)
    sim_odom_stamps = live.stream.data.odom_stamps
    assert odom_stamps[-1] == pytest.approx(live.stream.stamp_sec(sim_odom_stamps[sim_odom_stamps <= live.stream.last_t][-1]), abs=1e-6)

    # ~/voxels: one CUBE_LIST, same ns/id each time, coloured, voxel-sized
    voxels = w.messages("voxels")
    assert len(voxels) >= 2
    ids = {(mk.ns, mk.id) for mk in (_check_voxels(m) for m in voxels[-2:])}
    assert len(ids) == 1, ids
    assert len(voxels[-1].markers[0].points) == int(d.values["map_voxels"])

    # ~/graph: line lists of segments, in the map frame
    for m in w.messages("graph"):
        assert {mk.ns for mk in m.markers} == {"odometry", "observations"}
        for mk in m.markers:
            assert mk.type == Marker.LINE_LIST and mk.action == Marker.ADD
            assert mk.header.frame_id == MAP_FRAME
            assert len(mk.points) % 2 == 0
            assert np.isfinite([[p.x, p.y, p.z] for p in mk.points]).all()
    odometry_lines = next(mk for mk in w.messages("graph")[-1].markers if mk.ns == "odometry")
    assert len(odometry_lines.points) >= 2 * (KEYFRAMES - 1)

    # /diagnostics
    assert DIAGNOSTIC_KEYS <= set(d.values), sorted(DIAGNOSTIC_KEYS - set(d.values))
    assert d.level != 2, d.message  # ERROR: a tick failed
    assert d.values["ready"] == "true"
    assert d.values["window_capacity"] == str(KEYFRAMES)  # the parameter override took effect
    assert _number(d, "tick_ms") > 0.0
    assert _number(d, "latency_ms_p50") > 0.0
    assert 1 <= _number(d, "window_keyframes") <= KEYFRAMES
    assert _number(d, "map_voxels") > 0
    assert d.values["compilations_after_warmup"] == "0"
    assert int(d.values["received_points"]) >= 0.9 * live.stream.sent["cloud"]
    assert d.values["received_skipped_while_warming"] == "0"


def test_save_calibration_and_reset(live):
    w, stream = live.watcher, live.stream
    if not w.messages("path"):  # run alone: make a map first
        stream.publish(8.0)
        live.settle()

    # ~/save_calibration writes the versioned YAML
    response = live.call(w.save)
    assert response.success, response.message
    assert str(live.calibration_file) in response.message
    document = yaml.safe_load(live.calibration_file.read_text())
    assert document["dsg_ros_calibration"] == cal.FILE_VERSION
    assert document["metadata"]["source"] == "dsg_mapper"
    theta = cal.load(live.calibration_file)
    assert all(np.isfinite(np.asarray(v)).all() for v in theta.values())

    # ~/reset clears the markers (DELETEALL on voxels and graph) ...
    before = w.messages("path")[-1]
    last_before = _stamps(before)[-1]
    called = time.monotonic()
    response = live.call(w.reset)
    assert response.success, response.message

    def deleted(topic: str) -> bool:
        return any(m.markers and m.markers[0].action == Marker.DELETEALL for m in w.messages(topic, called))

    live.wait_for(lambda: deleted("voxels") and deleted("graph"), 10.0, "DELETEALL on ~/voxels and ~/graph")
    for topic in ("voxels", "graph"):
        m = next(m for m in w.messages(topic, called) if m.markers[0].action == Marker.DELETEALL)
        assert len(m.markers) == 1 and m.markers[0].header.frame_id == MAP_FRAME
    # ... and no stale map or path is republished while no new data comes.
    # Counted from the reset's own message: a map published between `called`
    # and the tick thread's reset is from before it.
    live.fresh_diag(3)

    def since_reset(topic: str, is_reset) -> list:
        got = w.messages(topic, called)
        return got[next(i for i, m in enumerate(got) if is_reset(m)) :]

    voxels_after = since_reset("voxels", lambda m: m.markers[0].action == Marker.DELETEALL)
    assert all(m.markers[0].action == Marker.DELETEALL for m in voxels_after), "voxels republished after reset"
    path_after = since_reset("path", lambda m: len(m.poses) == 0)
    assert all(len(m.poses) == 0 for m in path_after), "the old path republished after reset"

    # a late joiner gets the DELETEALL from the latched ~/voxels
    got = _late_joiner(live, MarkerArray, f"/{NODE}/voxels")
    assert got, "nothing latched on ~/voxels"
    assert got[-1].markers[0].action == Marker.DELETEALL

    # new data: the path restarts from the first keyframe after the reset
    first, last = stream.publish(4.0)
    live.settle()
    after = w.messages("path")[-1]
    stamps = _stamps(after)
    assert 0 < len(after.poses) < len(before.poses)
    assert stamps[0] >= first - 1e-6 and stamps[0] > last_before, (first, last_before, stamps)
    _check_voxels(w.messages("voxels")[-1])
    d = live.fresh_diag()
    assert d.values["compilations_after_warmup"] == "0"
    assert d.level != 2, d.message


def test_reset_clears_the_latched_path(live):
    w = live.watcher
    if not w.messages("path"):
        live.stream.publish(3.0)
        live.settle()
    called = time.monotonic()
    assert live.call(w.reset).success
    live.wait_for(lambda: any(m.markers and m.markers[0].action == Marker.DELETEALL for m in w.messages("voxels", called)), 10.0, "DELETEALL on ~/voxels")
    got = _late_joiner(live, PathMsg, f"/{NODE}/path", timeout_s=3.0)
    assert not got or len(got[-1].poses) == 0, f"a late joiner still gets a path of {len(got[-1].poses)} pre-reset keyframes"


def _cloud(fields: list[tuple[str, int, int]], point_step: int, n: int, data: bytes, stamp) -> PointCloud2:
    msg = PointCloud2()
    msg.header.stamp = stamp
    msg.header.frame_id = "lidar"
    msg.height, msg.width = 1, n
    msg.fields = [PointField(name=name, offset=offset, datatype=datatype, count=1) for name, offset, datatype in fields]
    msg.is_bigendian = False
    msg.point_step = point_step
    msg.row_step = point_step * n
    msg.data = data
    msg.is_dense = False
    return msg


def test_malformed_input_is_skipped(live):
    w, stream, pub = live.watcher, live.stream, live.stream.pub
    stream.publish(2.0)
    live.settle()
    base = live.fresh_diag().values
    poses_before = w.count("poses")
    path_before = _stamps(w.messages("path")[-1])

    n = 200
    rng = np.random.default_rng(0)
    good = rng.uniform(-5.0, 5.0, (n, 3)).astype("<f4")
    xyz = [("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32)]
    stamp = msgs.sec_to_stamp(stream.stamp_sec() + 0.001)
    bad_clouds = {
        "no z field": _cloud(xyz[:2], 8, n, good[:, :2].tobytes(), stamp),
        "point_step smaller than the fields": _cloud(xyz, 8, n, good[:, :2].tobytes(), stamp),
        "truncated data": _cloud(xyz, 12, n, good.tobytes()[: 12 * n // 2], stamp),
        "integer z": _cloud(xyz[:2] + [("z", 8, PointField.INT32)], 12, n, good.tobytes(), stamp),
    }
    nan_cloud = xyz_to_cloud(np.full((n, 3), np.nan), stamp, "lidar")

    zero_quaternion = msgs.odometry_msg(stream.last_odom, msgs.sec_to_stamp(stream.stamp_sec() + 0.001), "odom", BASE_FRAME)
    zero_quaternion.pose.pose.orientation.w = 0.0
    zero_quaternion.pose.pose.orientation.x = zero_quaternion.pose.pose.orientation.y = zero_quaternion.pose.pose.orientation.z = 0.0
    out_of_order = msgs.odometry_msg(stream.last_odom, msgs.sec_to_stamp(stream.stamp_sec() - 0.5), "odom", BASE_FRAME)

    for m in [*bad_clouds.values(), nan_cloud]:
        pub.pub_points.publish(m)
        time.sleep(0.05)  # within the subscription's depth, whatever the executor does
    pub.pub_odom.publish(zero_quaternion)
    pub.pub_odom.publish(out_of_order)

    def counted() -> Diag | None:
        d = w.diags[-1]
        v = d.values
        done = int(v["received_points"]) >= int(base["received_points"]) + len(bad_clouds) + 1 and int(v["received_odom"]) >= int(base["received_odom"]) + 2
        return d if done else None

    live.wait_for(counted, 10.0, "the malformed messages to be received")
    d = live.fresh_diag(2)
    v = d.values
    assert int(v["received_skipped_messages"]) - int(base["received_skipped_messages"]) == len(bad_clouds) + 2, (base, v)
    assert int(v["rejected_odometry"]) - int(base["rejected_odometry"]) == 1, (base, v)  # the out-of-order one
    assert int(v["dropped_points"]) - int(base["dropped_points"]) == n, (base, v)  # the all-NaN cloud
    assert live.proc.poll() is None

    # good data again: the node keeps mapping
    bad_sent = time.monotonic()
    first, last = stream.publish(3.0)
    d = live.settle()
    assert live.proc.poll() is None
    assert w.count("poses") > poses_before
    assert w.messages("poses", bad_sent), "no ~/poses after the malformed messages"
    stamps = _stamps(w.messages("path")[-1])
    assert stamps[-1] > path_before[-1] and stamps[-1] >= first, (path_before[-1], first, stamps[-1])
    odom_stamp = msgs.stamp_to_sec(w.messages("odometry")[-1].header.stamp)
    assert odom_stamp == pytest.approx(stream.stamp_sec(stream.data.odom_stamps[stream.data.odom_stamps <= stream.last_t][-1]), abs=1e-6)
    assert d.level != 2, d.message
    assert d.values["compilations_after_warmup"] == "0"
    assert int(d.values["received_skipped_messages"]) - int(base["received_skipped_messages"]) == len(bad_clouds) + 2, "good data was skipped"


# -------------------------------------------------------------- LaserScan

ROOM_HALF = np.array([5.0, 3.0])  # walls of a 10 m × 6 m room at x = ±5, y = ±3 (odom frame)
ROOM_SPEED = 1.0  # m/s along x, from x = -3
SCAN_FRAME = "lidar"  # the sensor frame, whose origin the calibration puts 0.5 + CALIBRATED_DZ m above the base
SCAN_BEARINGS = np.deg2rad(np.arange(-90.0, 90.5, 1.0))  # 181 beams over 180°
SCAN_NAN_BEAMS = (40, 140)  # failed readings: dropped and counted (REP 117)
SCAN_INF_BEAM = 90  # straight ahead, "nothing in range": not a point, not counted
SCAN_HZ, ROOM_ODOM_HZ = 10.0, 20.0


def _scan(ranges: np.ndarray, stamp, frame_id: str = SCAN_FRAME) -> LaserScan:
    """A LaserScan of ``ranges`` (B,) at :data:`SCAN_BEARINGS` (B = 181)."""
    return LaserScan(
        header=Header(stamp=stamp, frame_id=frame_id),
        angle_min=float(SCAN_BEARINGS[0]), angle_max=float(SCAN_BEARINGS[-1]), angle_increment=float(np.deg2rad(1.0)),
        time_increment=0.0, scan_time=1.0 / SCAN_HZ, range_min=0.1, range_max=30.0,
        ranges=np.asarray(ranges, np.float32).tolist(),
    )


def _room_ranges(T_odom_scanner: np.ndarray) -> np.ndarray:
    """Ranges (181,) from a level scanner at ``T_odom_scanner`` (7,) to the room's walls."""
    R = se3.rotation_matrix(T_odom_scanner)
    d = (R @ np.stack([np.cos(SCAN_BEARINGS), np.sin(SCAN_BEARINGS), np.zeros_like(SCAN_BEARINGS)]))[:2]  # (2, B) in odom
    wall = np.where(d > 0.0, ROOM_HALF[:, None], -ROOM_HALF[:, None])
    # The nearer of the x and y walls ahead along each beam (a beam parallel to one never meets it).
    t = np.divide(wall - T_odom_scanner[4:6, None], d, out=np.full_like(d, np.inf), where=d != 0.0)
    ranges = t.min(axis=0)
    ranges[list(SCAN_NAN_BEAMS)], ranges[SCAN_INF_BEAM] = np.nan, np.inf
    return ranges


@dataclass
class Room:
    """Odometry and LaserScans of a robot driving along x through the room, on
    one time line that starts a second after the simulated run's last stamp
    (so that nothing published on it goes back in time)."""

    live: Live
    pub_scan: Any
    start: float
    t: float = 0.0  # next time to publish, seconds from ``start``
    scans: int = 0

    def T_odom_base(self, t: float) -> np.ndarray:
        return planar_pose(0.0, np.array([-3.0 + ROOM_SPEED * t, 0.2, 0.0]))

    def publish(self, seconds: float, frame_id: str = SCAN_FRAME, rate: float = RATE) -> tuple[float, float]:
        """Odometry at 20 Hz and scans at 10 Hz, taken in ``frame_id`` (the sensor's
        or the base's), for the next ``seconds`` at ``rate`` × real time; returns
        the (first, last) stamp. The sim's nominal extrinsic places the sensor:
        the calibration only raises it, which leaves its ranges as they are."""
        pub = self.live.stream.pub
        T_base_scanner = np.asarray(SimConfig().T_base_sensor) if frame_id == SCAN_FRAME else np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        ticks = np.arange(round(seconds * ROOM_ODOM_HZ)) / ROOM_ODOM_HZ + self.t
        wall0 = time.perf_counter()
        for i, t in enumerate(ticks):
            delay = (t - ticks[0]) / rate - (time.perf_counter() - wall0)
            if delay > 0:
                time.sleep(delay)
            stamp = msgs.sec_to_stamp(self.start + t)
            T = self.T_odom_base(t)
            pub.pub_odom.publish(msgs.odometry_msg(T, stamp, "odom", BASE_FRAME))
            if i % round(ROOM_ODOM_HZ / SCAN_HZ) == 0:
                self.pub_scan.publish(_scan(_room_ranges(se3.compose(T, T_base_scanner)), stamp, frame_id))
                self.scans += 1
        self.t = ticks[-1] + 1.0 / ROOM_ODOM_HZ
        return self.start + ticks[0], self.start + ticks[-1]

    def map(self, seconds: float, z: float, frame_id: str = SCAN_FRAME) -> tuple[dict[str, str], dict[str, str]]:
        """Publish ``seconds`` of scans in ``frame_id`` into a map reset before,
        and check what the node made of them: the walls, with the returns ``z``
        above the base. Returns the diagnostics before and after."""
        w = self.live.watcher
        base = self.live.fresh_diag().values
        since = time.monotonic()
        first, last = self.publish(seconds, frame_id)
        d = self.live.settle()
        v = d.values
        scans = int(v["received_scans"]) - int(base["received_scans"])
        assert scans >= 0.9 * round((last - first) * SCAN_HZ), (first, last, base, v)
        assert int(v["dropped_points"]) - int(base["dropped_points"]) == len(SCAN_NAN_BEAMS) * scans, (base, v)
        assert v["received_skipped_messages"] == base["received_skipped_messages"]
        assert d.level != 2, d.message
        assert v["compilations_after_warmup"] == "0"

        # Keyframes every 0.5 m, placed where the odometry says (the map is the
        # odom frame since the reset): the scans registered consistently.
        path = w.messages("path")[-1]
        stamps = _stamps(path)
        assert len(path.poses) >= 2 and len(path.poses) == int(v["keyframes"]) - int(base["keyframes"]), (len(path.poses), base, v)
        assert first - 1e-6 <= stamps[0] and stamps[-1] <= last + 1e-6, (first, stamps, last)
        for ps, t in zip(path.poses, stamps):
            T = _pose_ok(ps.pose, "path")
            assert np.allclose(T[4:], self.T_odom_base(t - self.start)[4:], atol=0.1), (t, T, self.T_odom_base(t - self.start))
        assert w.messages("poses", since), "no ~/poses from the scans"
        for m in w.messages("poses", since):
            for pose in m.poses:
                _pose_ok(pose, "poses")
        for m in w.messages("odometry", since):
            _pose_ok(m.pose.pose, "odometry")

        # The map is the walls, at the returns' height (voxels are at their points' centroids).
        xyz = np.array([[p.x, p.y, p.z] for p in _check_voxels(w.messages("voxels")[-1]).points])
        to_wall = np.min(np.abs(np.abs(xyz[:, :2]) - ROOM_HALF), axis=1)
        assert np.all(to_wall <= VOXEL_SIZE / 2), xyz[to_wall > VOXEL_SIZE / 2]  # corner cells hold points of two walls
        assert np.allclose(xyz[:, 2], z, atol=0.05), (z, np.unique(xyz[:, 2].round(2)))
        return base, v


@pytest.fixture(scope="module")
def room(live: Live) -> Room:
    """A scan publisher the node subscribes to, and the node reset (the room is a new map)."""
    stream = live.stream
    pub_scan = stream.pub.create_publisher(LaserScan, "scan", qos_profile_sensor_data)
    live.wait_for(lambda: pub_scan.get_subscription_count() >= 1, 30.0, "the node's scan subscription to be discovered")
    assert live.call(live.watcher.reset).success
    start = (stream.stamp_sec() if stream.base is not None else math.floor(time.time())) + 1.0
    return Room(live, pub_scan, start)


def test_scans_are_mapped(live, room):
    base, v = room.map(3.0, z=0.5 + CALIBRATED_DZ)
    assert int(v["keyframes"]) - int(base["keyframes"]) >= 5  # 2.95 m at a keyframe per 0.5 m


def test_malformed_scans_are_skipped(live, room):
    w = live.watcher
    if room.scans == 0:  # run alone: map the room first
        room.publish(1.0)
        live.settle()
    base = live.fresh_diag().values
    path_before = _stamps(w.messages("path")[-1])

    stamp = msgs.sec_to_stamp(room.start + room.t - 0.01)
    good = np.full(SCAN_BEARINGS.size, 2.0)
    short = _scan(good[:100], stamp)  # 100 ranges for 181 bearings
    clockwise = _scan(good, stamp)
    clockwise.angle_min, clockwise.angle_max, clockwise.angle_increment = clockwise.angle_max, clockwise.angle_min, -clockwise.angle_increment
    limits = _scan(good, stamp)
    limits.range_min, limits.range_max = 5.0, 1.0
    bad = {"ranges": short, "angle_increment": clockwise, "range_min": limits}  # a word of each reason
    for m in bad.values():
        room.pub_scan.publish(m)
        time.sleep(0.05)  # within the subscription's depth, whatever the executor does

    def counted() -> Diag | None:
        d = w.diags[-1]
        return d if int(d.values["received_scans"]) >= int(base["received_scans"]) + len(bad) else None

    live.wait_for(counted, 10.0, "the malformed scans to be received")
    v = live.fresh_diag(2).values
    assert int(v["received_skipped_messages"]) - int(base["received_skipped_messages"]) == len(bad), (base, v)
    reasons = {k: int(n) - int(base.get(k, 0)) for k, n in v.items() if k.startswith("skipped scan: ")}
    assert sum(reasons.values()) == len(bad), reasons
    for word in bad:
        assert sum(n for k, n in reasons.items() if word in k) == 1, (word, reasons)
    assert live.proc.poll() is None

    # good scans again: the node keeps mapping them
    first, _ = room.publish(1.0)
    d = live.settle()
    stamps = _stamps(w.messages("path")[-1])
    assert stamps[-1] > path_before[-1] and stamps[-1] >= first, (path_before[-1], first, stamps[-1])
    assert d.level != 2, d.message
    assert int(d.values["received_skipped_messages"]) == int(v["received_skipped_messages"]), "good scans were skipped"


def test_base_frame_scans_go_through_the_calibrated_extrinsic(live, room):
    """Scans in base_link: the node moves them to the sensor frame and the
    mapper back, both by the calibrated extrinsic, so they land in the base's
    plane (by the nominal one, CALIBRATED_DZ above it)."""
    assert live.call(live.watcher.reset).success
    room.map(1.5, z=0.0, frame_id=BASE_FRAME)


def test_odometry_going_back_in_time_restarts_mapping(live, room):
    """The room's bag played again: odometry and scans start over 100 s
    earlier. The node refuses the first few samples, then restarts mapping as
    ~/reset does (DELETEALL, counted), and maps the new time line."""
    w = live.watcher
    room.publish(1.0)
    live.settle()
    base = live.fresh_diag().values
    called = time.monotonic()
    room.start -= 100.0 + room.t
    room.t = 0.0
    first, last = room.publish(2.0)
    d = live.settle()
    v = d.values
    assert int(v["time_jump_resets"]) == int(base["time_jump_resets"]) + 1, (base, v)
    assert any(m.markers and m.markers[0].action == Marker.DELETEALL for m in w.messages("voxels", called)), "no DELETEALL on ~/voxels"
    stamps = _stamps(w.messages("path")[-1])
    assert len(stamps) >= 2 and first - 1e-6 <= stamps[0] and stamps[-1] <= last + 1e-6, (first, stamps, last)
    assert v["compilations_after_warmup"] == "0" and d.level != 2, d.message


def test_empty_scan_topic_subscribes_no_scan(live, tmp_path):
    """A second node (its own domain: not seen by the first's tests) with
    ``scan_topic: ""``: its subscriptions are made before it compiles, so the
    graph is read as soon as they are discovered."""
    domain = random.choice([d for d in range(150, 230) if str(d) != os.environ["ROS_DOMAIN_ID"]])
    params = _params_file(tmp_path, tmp_path / "cal.yaml", scan_topic="")
    log_path = tmp_path / "node.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dsg_ros", "node", "--params-file", str(params)],
            cwd=REPO, env=dict(os.environ, ROS_DOMAIN_ID=str(domain), PYTHONUNBUFFERED="1"), stdout=log, stderr=subprocess.STDOUT,
        )
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    graph = Node("dsg_test_graph", context=context)

    def subscribed() -> set[str]:
        try:
            return {name for name, _ in graph.get_subscriber_names_and_types_by_node(NODE, "/")}
        except rclpy.node.NodeNameNonExistentError:  # not discovered yet
            return set()

    try:
        deadline = time.monotonic() + 60.0
        while not {"/odom", "/points", "/ground_truth"} <= subscribed():
            assert proc.poll() is None, f"the node exited with code {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the node's subscriptions were not discovered; its log:\n{log_path.read_text()}"
            time.sleep(0.1)
        time.sleep(0.5)  # a scan subscription, made with them, would be discovered by now
        assert "/scan" not in subscribed(), subscribed()
    finally:
        stop_process(proc)
        graph.destroy_node()
        rclpy.try_shutdown(context=context)
