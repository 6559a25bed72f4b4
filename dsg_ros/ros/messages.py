"""Messages <-> NumPy for poses, stamps, RViz markers and diagnostics.

Poses are ``wxyz_xyz`` arrays (7,) as in :mod:`dsg_ros.se3`: quaternion
w, x, y, z then translation. Stamps on the NumPy side are float seconds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseArray, PoseStamped, Quaternion
from nav_msgs.msg import Odometry, Path
from rclpy.serialization import serialize_message
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

# Reading messages is shared with the bag code (dsg_ros.msgs); the node reads
# through this module, under these names (re-exported: ``as`` the same name).
from dsg_ros.msgs import (
    ConversionError,
    ns_to_parts,
    odometry_from_msg as odometry_from_msg,
    pose_from_msg as pose_from_msg,
    sec_to_ns,
    stamp_to_sec as stamp_to_sec,
)
from dsg_ros.msgs.colors import colorize  # shared with the bag side (dsg_ros.bag.build)

MessageError = ConversionError


# --- stamps -----------------------------------------------------------------

_NEWEST_NS = 2**31 * 10**9 - 1  # builtin_interfaces/Time(sec=2³¹−1, nanosec=999999999)


def sec_to_stamp(s: float) -> Time:
    """Nearest nanosecond, ``nanosec`` in [0, 1e9) also for negative times.

    ``stamp_to_sec(sec_to_stamp(s)) == s`` for any ``s`` on the nanosecond grid
    and for every float64 above ~2²² s, so float stamps survive the trip out.
    Exactly 2³¹ s is the newest Time: float64 resolves only 2⁻²² s there, and
    every valid stamp in the last 0.12 µs of int32 seconds reads as 2³¹.
    """
    sec, nanosec = ns_to_parts(_NEWEST_NS if s == 2.0**31 else sec_to_ns(s))
    return Time(sec=sec, nanosec=nanosec)


# --- poses ------------------------------------------------------------------


def pose_to_msg(T: np.ndarray) -> Pose:
    """geometry_msgs/Pose of a pose (7,) ``wxyz_xyz``."""
    w, qx, qy, qz, x, y, z = np.asarray(T, np.float64).tolist()
    return Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(w=w, x=qx, y=qy, z=qz))


def pose_array(poses: np.ndarray, stamp: Time, frame_id: str) -> PoseArray:
    """PoseArray of poses (K, 7) ``T_frame_body`` in ``frame_id``."""
    poses = np.asarray(poses, np.float64).reshape(-1, 7)
    return PoseArray(header=Header(stamp=stamp, frame_id=frame_id), poses=[pose_to_msg(T) for T in poses])


def path(stamps: np.ndarray, poses: np.ndarray, frame_id: str, stamp: Time) -> Path:
    """nav_msgs/Path of keyframes: poses (K, 7) in ``frame_id`` at ``stamps``
    (K,) float seconds, each PoseStamped carrying its own keyframe stamp;
    ``stamp`` is the path's (publication) stamp."""
    stamps = np.asarray(stamps, np.float64).reshape(-1)
    poses = np.asarray(poses, np.float64).reshape(-1, 7)
    if stamps.shape[0] != poses.shape[0]:
        raise ValueError(f"{stamps.shape[0]} stamps for {poses.shape[0]} poses")
    return path_of([pose_stamped(t, T, frame_id) for t, T in zip(stamps.tolist(), poses)], frame_id, stamp)


def pose_stamped(t: float, T: np.ndarray, frame_id: str) -> PoseStamped:
    """PoseStamped of ``T`` (7,) in ``frame_id`` at ``t`` float seconds."""
    return PoseStamped(header=Header(stamp=sec_to_stamp(t), frame_id=frame_id), pose=pose_to_msg(T))


def path_of(entries: list[PoseStamped], frame_id: str, stamp: Time) -> Path:
    """nav_msgs/Path of ready-made ``entries``: a long-running node keeps the
    PoseStamped of keyframes that left the window (their estimates are final)
    instead of rebuilding thousands of them per keyframe."""
    return Path(header=Header(stamp=stamp, frame_id=frame_id), poses=entries)


def odometry_msg(T: np.ndarray, stamp: Time, frame_id: str, child_frame_id: str) -> Odometry:
    """Odometry carrying ``T_frame_child`` (7,); twist and covariances zero
    (not estimated)."""
    msg = Odometry(header=Header(stamp=stamp, frame_id=frame_id), child_frame_id=child_frame_id)
    msg.pose.pose = pose_to_msg(T)
    return msg


# --- markers ----------------------------------------------------------------

# Markers carry 10⁵ points. Building one Python Point and ColorRGBA per voxel
# and letting rclpy convert them back holds the GIL for ~1 µs per field, which
# stalled the node's executor and tick threads for 60-300 ms per map. Instead
# rclpy serializes the marker with one placeholder point (and colour), and the
# arrays are spliced into those bytes. CDR aligns each primitive to its size
# relative to the payload start; a point is 24 bytes and a colour 16, so the
# spliced arrays shift everything after them by multiples of 8 and the rest of
# the message stays correctly aligned. test_ros_messages checks the result
# against rclpy serializing the same message built field by field.
_POINT_MARK = np.array([7.0e-301, -3.0e-299, 5.0e-297])
_COLOR_MARK = np.array([0.123, -7.5, 3.25e-3, 96.0], np.float32)


def _serialized(array: MarkerArray, fills: list[tuple[np.ndarray, np.ndarray | None]]) -> bytes:
    """CDR bytes of ``array`` with ``fills[k] = (xyz (N, 3), rgba (N, 4) or None)``
    as the points (and colours) of marker k; ``array``'s markers must not hold
    points or colours of their own."""
    for m, (xyz, rgba) in zip(array.markers, fills):
        if len(xyz):
            m.points = [Point(x=float(_POINT_MARK[0]), y=float(_POINT_MARK[1]), z=float(_POINT_MARK[2]))]
            if rgba is not None:
                m.colors = [ColorRGBA(r=float(_COLOR_MARK[0]), g=float(_COLOR_MARK[1]), b=float(_COLOR_MARK[2]), a=float(_COLOR_MARK[3]))]
    raw = serialize_message(array)
    if raw[0] != 0 or raw[1] not in (0, 1):
        # Not plain CDR (an rmw serializing XCDR2, whose headers depend on
        # sizes): build the Python objects after all.
        for m, (xyz, rgba) in zip(array.markers, fills):
            m.points = [Point(x=x, y=y, z=z) for x, y, z in np.asarray(xyz, np.float64).tolist()]
            if rgba is not None:
                m.colors = [ColorRGBA(r=r, g=g, b=b, a=a) for r, g, b, a in np.asarray(rgba, np.float64).tolist()]
        return serialize_message(array)
    order = "<" if raw[1] == 1 else ">"  # encapsulation 0x0001: CDR little endian, 0x0000: big endian
    one = np.array(1, order + "u4").tobytes()
    point_mark, color_mark = _POINT_MARK.astype(order + "f8").tobytes(), _COLOR_MARK.astype(order + "f4").tobytes()
    parts, pos = [], 0
    for xyz, rgba in fills:
        n = len(xyz)
        if not n:
            continue
        count = np.array(n, order + "u4").tobytes()
        i = raw.index(point_mark, pos)
        length_at = i - 4 if raw[i - 4 : i] == one else i - 8  # 4 bytes of padding may align the first float64
        if raw[length_at : length_at + 4] != one:
            raise RuntimeError("unexpected CDR layout around Marker.points")
        parts += [raw[pos:length_at], count, raw[length_at + 4 : i], np.ascontiguousarray(xyz, order + "f8").tobytes()]
        pos = i + len(point_mark)
        if rgba is not None:
            j = raw.index(color_mark, pos)
            if raw[j - 4 : j] != one:
                raise RuntimeError("unexpected CDR layout around Marker.colors")
            parts += [raw[pos : j - 4], count, np.ascontiguousarray(rgba, order + "f4").tobytes()]
            pos = j + len(color_mark)
    parts.append(raw[pos:])
    return b"".join(parts)


def _marker(kind: int, ns: str, frame_id: str, stamp: Time) -> Marker:
    """An ADD marker of ``kind``, id 0, identity pose (unit quaternion: RViz
    rejects a zero one), lasting until replaced."""
    m = Marker(header=Header(stamp=stamp, frame_id=frame_id), ns=ns, id=0, type=kind, action=Marker.ADD)
    m.pose.orientation.w = 1.0
    return m


def voxel_markers(
    centers: np.ndarray,
    values: np.ndarray,
    voxel_size: float,
    frame_id: str,
    stamp: Time,
    ns: str = "voxels",
    colormap: str = "height",
) -> bytes:
    """One CUBE_LIST marker (``ns``, id 0) of voxel ``centers`` (N, 3) in
    ``frame_id``, coloured by ``values`` (N,) through :func:`colorize`, as a
    serialized MarkerArray: publish it as is, or
    ``deserialize_message(data, MarkerArray)`` to look inside. Centers with a
    non-finite coordinate are dropped (RViz would reject the whole marker)."""
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    values = np.asarray(values, np.float64).reshape(-1)
    if values.shape[0] != centers.shape[0]:
        raise ValueError(f"{values.shape[0]} values for {centers.shape[0]} centers")
    if not voxel_size > 0.0:
        raise ValueError(f"voxel_size must be positive, got {voxel_size}")
    keep = np.isfinite(centers).all(axis=1)
    centers, values = centers[keep], values[keep]
    m = _marker(Marker.CUBE_LIST, ns, frame_id, stamp)
    m.scale.x = m.scale.y = m.scale.z = float(voxel_size)
    m.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)  # per-point colours override it; alpha 0 would hide them in some RViz versions
    rgba = np.column_stack([colorize(values, colormap), np.ones(len(values))])
    return _serialized(MarkerArray(markers=[m]), [(centers, rgba)])


def delete_all(frame_id: str, stamp: Time, ns: str = "") -> MarkerArray:
    """A single DELETEALL marker, published on reset. Per Marker.msg, an empty
    ``ns`` clears every marker on the topic, a non-empty one only that
    namespace."""
    m = Marker(header=Header(stamp=stamp, frame_id=frame_id), ns=ns, id=0, action=Marker.DELETEALL)
    m.pose.orientation.w = 1.0
    return MarkerArray(markers=[m])


def _line_list(ns: str, width: float, rgba: tuple[float, float, float, float], frame_id: str, stamp: Time) -> Marker:
    m = _marker(Marker.LINE_LIST, ns, frame_id, stamp)
    m.scale.x = width
    m.color = ColorRGBA(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3])
    return m


def _finite_edges(edges: np.ndarray) -> np.ndarray:
    """Endpoints (2E', 3) of the edges (E, 2, 3) whose both ends are finite."""
    edges = np.asarray(edges, np.float64).reshape(-1, 2, 3)
    return edges[np.isfinite(edges).all(axis=(1, 2))].reshape(-1, 3)


def graph_markers(odom_edges: np.ndarray, obs_edges: np.ndarray, frame_id: str, stamp: Time) -> bytes:
    """Factor-graph edges as two LINE_LIST markers, ns "odometry" and
    "observations" (id 0 each): ``odom_edges`` (E, 2, 3) pose→pose and
    ``obs_edges`` (F, 2, 3) pose→voxel, endpoints in ``frame_id``; a
    serialized MarkerArray (see :func:`voxel_markers`). Edges with a
    non-finite endpoint are dropped. An empty list still yields its marker,
    with no points, so RViz clears the previous lines instead of keeping them."""
    array = MarkerArray(
        markers=[
            _line_list("odometry", 0.03, (1.0, 0.55, 0.0, 1.0), frame_id, stamp),
            _line_list("observations", 0.005, (0.3, 0.7, 1.0, 0.3), frame_id, stamp),
        ]
    )
    return _serialized(array, [(_finite_edges(odom_edges), None), (_finite_edges(obs_edges), None)])


# --- diagnostics ------------------------------------------------------------


def _format(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def diagnostics(stamp: Time, name: str, hardware_id: str, level: int | bytes, message: str, values: Mapping[str, object]) -> DiagnosticArray:
    """One DiagnosticStatus (``level`` 0 OK, 1 WARN, 2 ERROR, 3 STALE, or the
    DiagnosticStatus constants) with ``values`` as KeyValue strings: floats to
    6 significant digits, None as "n/a", booleans as true/false."""
    status = DiagnosticStatus(
        level=level if isinstance(level, bytes) else bytes([level]),  # rclpy: a `byte` field is a length-1 bytes
        name=name,
        message=message,
        hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=_format(v)) for k, v in values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
