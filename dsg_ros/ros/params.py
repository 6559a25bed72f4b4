"""The node's ROS parameters: its own settings, plus the whole MapperConfig tree under ``mapper.``.

Every parameter is declared with a descriptor (description, range or
allowed values, read-only where it cannot change while running), so
``ros2 param describe /dsg_mapper <name>`` teaches what it does. The mapper
tree is flattened from the dataclasses (``mapper.window.keyframes``), and
read back through :func:`dsg_ros.config.from_mapping`, so YAML, the CLI and
ROS parameters share one set of names and one validation.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidTopicNameException
from rclpy.node import Node
from rclpy.validate_topic_name import validate_topic_name

from dsg_ros.config import flatten, from_mapping, to_mapping, unflatten
from dsg_ros.mapping import MapperConfig


@dataclass(frozen=True)
class NodeSettings:
    """How the node talks to ROS (the mapping itself is ``MapperConfig``)."""

    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    sensor_frame: str = ""
    rate_hz: float = 10.0
    tick_on_cloud: bool = True
    points_reliability: str = "best_effort"
    points_depth: int = 5
    scan_topic: str = "scan"
    scan_reliability: str = "best_effort"
    scan_depth: int = 5
    odom_reliability: str = "reliable"
    odom_depth: int = 100
    calibration_file: str = ""
    calibrate_online: bool = True
    calibration_period_s: float = 1.0
    voxel_rate_hz: float = 0.5  # the whole map as markers costs ~10 ms per 35k voxels
    voxel_color: str = "height"
    graph_max_observations: int = 2000
    diagnostics_rate_hz: float = 1.0
    broadcast_tf: bool = True
    time_jump_reset_s: float = 1.0


_RELIABILITY = ("best_effort", "reliable")

# name → (description, range (lo, hi) or allowed strings). Every parameter is
# read once at start (the node keeps a frozen NodeSettings), hence read-only.
_NODE_DOCS: dict[str, tuple[str, Any]] = {
    "map_frame": ("frame of every published pose and marker", None),
    "odom_frame": ("frame of the incoming odometry (the tf child of map_frame)", None),
    "base_frame": ("robot base frame; clouds and scans in this frame are moved to the sensor frame by the (calibrated) extrinsic", None),
    "sensor_frame": ("frame_id clouds and scans must carry (empty: any frame other than base_frame is the sensor)", None),
    "rate_hz": ("tick rate when no cloud arrives; the mapper also ticks on each cloud if tick_on_cloud", (0.5, 200.0)),
    "tick_on_cloud": ("tick as soon as a cloud can be mapped (it arrived and odometry covers its stamp) instead of waiting for the next period", None),
    "points_reliability": ("QoS reliability of the points subscription (SensorDataQoS is best_effort)", _RELIABILITY),
    "points_depth": ("QoS history depth of the points subscription", (1, 1000)),
    "scan_topic": (
        "sensor_msgs/LaserScan input (REP 117), mapped as a planar scan beside any clouds on points; remappings apply (empty: no scan subscription)",
        None,
    ),
    "scan_reliability": ("QoS reliability of the scan subscription (SensorDataQoS is best_effort)", _RELIABILITY),
    "scan_depth": ("QoS history depth of the scan subscription", (1, 1000)),
    "odom_reliability": ("QoS reliability of the odom and ground_truth subscriptions", _RELIABILITY),
    "odom_depth": ("QoS history depth of the odom and ground_truth subscriptions", (1, 10000)),
    "calibration_file": (
        "calibration YAML: loaded at start if it exists, written by ~/save_calibration (empty: none); '~' expands, relative to the working directory",
        None,
    ),
    "calibrate_online": ("learn the calibration while mapping (a worker thread; ticks never wait for it)", None),
    "calibration_period_s": (
        "least wall-clock time between two online calibration steps (a step due sooner is skipped): caps the CPU learning takes from ticks",
        (0.0, 3600.0),
    ),
    "voxel_rate_hz": ("how often the whole voxel map is published on ~/voxels (0: never)", (0.0, 50.0)),
    "voxel_color": ("colour voxels by 'height' or by observation 'count'", ("height", "count")),
    "graph_max_observations": ("observation edges drawn on ~/graph at most (evenly thinned)", (0, 1_000_000)),
    "diagnostics_rate_hz": ("how often /diagnostics is published", (0.1, 50.0)),
    "broadcast_tf": ("broadcast map → odom on /tf when tf2_ros is installed", None),
    "time_jump_reset_s": (
        "odometry stamps going back by more than this (s) in a row restart mapping as ~/reset does (a bag played again, a simulator restarted); 0: never",
        (0.0, 1e9),
    ),
}

_MAPPER_DOCS: dict[str, tuple[str, Any]] = {
    "window.keyframes": ("keyframes in the sliding window (fixed capacity: no recompilation)", (2, 200)),
    "window.max_voxels": ("free voxel slots in the window", (1, 1_000_000)),
    "window.max_observations_per_keyframe": ("voxel observations kept per keyframe (the most-supported cells)", (1, 100_000)),
    "window.max_anchors_per_keyframe": ("observations of frozen (out-of-window) voxels kept per keyframe, most-supported first", (1, 100_000)),
    "keyframes.distance_m": ("a new keyframe after this much travel", (0.0, 100.0)),
    "keyframes.angle_deg": ("... or this much rotation", (0.0, 360.0)),
    "keyframes.interval_s": ("... or this much time", (0.0, 3600.0)),
    "voxel_size": ("voxel edge length in metres", (0.01, 10.0)),
    "min_points_per_voxel": ("points a cell needs in one scan to become an observation", (1, 10_000)),
    "min_range_m": ("points closer than this are dropped (robot body)", (0.0, 1000.0)),
    "max_range_m": ("points further than this are dropped", (0.0, 10_000.0)),
    "T_base_sensor": ("nominal base → sensor extrinsic as [qw, qx, qy, qz, x, y, z]", None),
    "odom_sigma_m": ("odometry noise per keyframe increment, translation", (1e-6, 100.0)),
    "odom_sigma_rad": ("odometry noise per keyframe increment, rotation", (1e-6, 10.0)),
    "obs_sigma_m": ("voxel observation noise (along the surface normal where the cell is planar)", (1e-6, 100.0)),
    "obs_plane_sigma_m": ("voxel observation noise within the plane of a planar cell", (1e-6, 100.0)),
    "odometry.max_extrapolation_s": (
        "a cloud this far past the newest odometry is placed by extrapolating the last motion instead of waiting for the next sample",
        (0.0, 1.0),
    ),
    "calibration.every_keyframes": ("an online calibration step every this many keyframes (0: never)", (0, 10_000)),
    "calibration.optimizer": (
        "gauss_newton (recursive least squares; odometry only) or adam (to learn the extrinsic or noise scales)",
        ("gauss_newton", "adam"),
    ),
    "calibration.forgetting": ("gauss_newton: weight kept per step of the information learned so far", (1e-3, 1.0)),
}


def _descriptor(name: str, default: Any, description: str, constraint: Any) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, description=description, read_only=True)
    if isinstance(constraint, tuple) and constraint and isinstance(constraint[0], str):
        d.additional_constraints = "one of: " + ", ".join(constraint)
    elif isinstance(constraint, tuple):
        lo, hi = constraint
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def mapper_parameter_defaults() -> dict[str, Any]:
    """``mapper.*`` parameter names and defaults, as declared."""
    return {f"mapper.{k}": v for k, v in flatten(to_mapping(MapperConfig())).items()}


def declare(node: Node) -> tuple[NodeSettings, MapperConfig]:
    """Declare every parameter on ``node`` and read the settings back.

    Raises ValueError naming the parameter when a value is out of place
    (unknown choice, invalid topic name, invalid mapper config); range violations are refused
    by rclpy itself at declaration.
    """
    for f in fields(NodeSettings):
        description, constraint = _NODE_DOCS[f.name]
        node.declare_parameter(f.name, f.default, _descriptor(f.name, f.default, description, constraint))
    for name, default in mapper_parameter_defaults().items():
        description, constraint = _MAPPER_DOCS.get(name[len("mapper.") :], (f"MapperConfig field {name[len('mapper.'):]}", None))
        node.declare_parameter(name, default, _descriptor(name, default, description, constraint))
    values = {f.name: node.get_parameter(f.name).value for f in fields(NodeSettings)}
    for name, (_, constraint) in _NODE_DOCS.items():
        if isinstance(constraint, tuple) and isinstance(constraint[0], str) and values[name] not in constraint:
            raise ValueError(f"parameter {name}: {values[name]!r} is not one of {constraint}")
    if values["calibration_file"]:
        # Absolute once, at start: every log line and save names the same file
        # (a ROS parameter is not shell-expanded: "~/cal.yaml" would make a
        # folder named "~"). Symlinks are kept, not resolved: a save replaces
        # the link in this folder, and never writes through it elsewhere.
        values["calibration_file"] = str(Path(values["calibration_file"]).expanduser().absolute())
    settings = NodeSettings(**values)
    if settings.scan_topic:  # else create_subscription fails later, with a traceback instead of the parameter's name
        try:
            validate_topic_name(settings.scan_topic)
        except InvalidTopicNameException as exc:
            raise ValueError(f"parameter scan_topic: {exc}") from None
    flat = {}
    for name in mapper_parameter_defaults():
        value = node.get_parameter(name).value  # double arrays come back as array.array
        flat[name[len("mapper.") :]] = value if isinstance(value, (bool, int, float, str)) else list(value)
    return settings, from_mapping(MapperConfig, unflatten(flat), "mapper")


def default_params_file() -> Path:
    """``config/hybrid.yaml`` as installed (colcon or pip: ``<prefix>/share/dsg_ros``), else from the source tree."""
    candidates = [Path(sys.prefix) / "share" / "dsg_ros" / "config" / "hybrid.yaml", Path(__file__).resolve().parents[2] / "config" / "hybrid.yaml"]
    try:  # a ROS workspace (colcon); pip installs have no ament index
        from ament_index_python.packages import get_package_share_directory

        candidates.insert(0, Path(get_package_share_directory("dsg_ros")) / "config" / "hybrid.yaml")
    except (ImportError, LookupError, OSError):  # PackageNotFoundError is a KeyError; no AMENT_PREFIX_PATH is an OSError
        pass
    for path in candidates:
        if path.exists():
            return path
    raise FileNotFoundError(f"config/hybrid.yaml not found (looked in {[str(c) for c in candidates]}); pass --params-file")
