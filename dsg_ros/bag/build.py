"""Messages built as rosbags typestore dataclasses, ready for :class:`BagWriter`.

The bag-side counterpart of the rclpy builders in ``dsg_ros.ros.messages``:
poses are ``wxyz_xyz`` (7,), points (N, 3), stamps integer nanoseconds.
Types and their definitions are ROS 2 Kilted's (:data:`TYPESTORE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_typestore

from dsg_ros.msgs import LASER_SCAN, ODOMETRY, POINT_CLOUD, POSE_STAMPED, TF, ns_to_parts
from dsg_ros.msgs.colors import colorize

TYPESTORE = get_typestore(Stores.ROS2_KILTED)
# Message classes generated at run time: their fields and constants are unknown to type checkers.
_T: Mapping[str, Any] = TYPESTORE.types


def header(stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = ns_to_parts(stamp_ns)
    return _T["std_msgs/msg/Header"](stamp=_T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id)


def _pose(T: np.ndarray) -> Any:
    w, qx, qy, qz, x, y, z = np.asarray(T, np.float64).tolist()
    return _T["geometry_msgs/msg/Pose"](
        position=_T["geometry_msgs/msg/Point"](x=x, y=y, z=z),
        orientation=_T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=w),
    )


def _vector3(v: Sequence[float] | np.ndarray) -> Any:
    x, y, z = (float(c) for c in v)
    return _T["geometry_msgs/msg/Vector3"](x=x, y=y, z=z)


def odometry(stamp_ns: int, frame_id: str, child_frame_id: str, T: np.ndarray, twist: np.ndarray | None = None) -> Any:
    """nav_msgs/Odometry of ``T_frame_child`` (7,); ``twist`` (6,) = linear
    then angular velocity in ``child_frame_id`` (zero if None). Covariances
    are zero (unknown)."""
    twist = np.zeros(6) if twist is None else np.asarray(twist, np.float64)
    return _T[ODOMETRY](
        header=header(stamp_ns, frame_id),
        child_frame_id=child_frame_id,
        pose=_T["geometry_msgs/msg/PoseWithCovariance"](pose=_pose(T), covariance=np.zeros(36)),
        twist=_T["geometry_msgs/msg/TwistWithCovariance"](
            twist=_T["geometry_msgs/msg/Twist"](linear=_vector3(twist[:3]), angular=_vector3(twist[3:])),
            covariance=np.zeros(36),
        ),
    )


def pose_stamped(stamp_ns: int, frame_id: str, T: np.ndarray) -> Any:
    """geometry_msgs/PoseStamped of ``T_frame_body`` (7,)."""
    return _T[POSE_STAMPED](header=header(stamp_ns, frame_id), pose=_pose(T))


def tf_message(edges: Sequence[tuple[str, str, int, np.ndarray]]) -> Any:
    """tf2_msgs/TFMessage of ``(parent, child, stamp_ns, T_parent_child (7,))`` edges."""
    transforms = []
    for parent, child, stamp_ns, T in edges:
        w, qx, qy, qz, x, y, z = np.asarray(T, np.float64).tolist()
        transforms.append(
            _T["geometry_msgs/msg/TransformStamped"](
                header=header(stamp_ns, parent),
                child_frame_id=child,
                transform=_T["geometry_msgs/msg/Transform"](
                    translation=_vector3((x, y, z)), rotation=_T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=w)
                ),
            )
        )
    return _T[TF](transforms=transforms)


def laser_scan(
    stamp_ns: int,
    frame_id: str,
    ranges: np.ndarray,
    angle_min: float,
    angle_increment: float,
    range_min: float,
    range_max: float,
    scan_time: float = 0.0,
) -> Any:
    """sensor_msgs/LaserScan of ``ranges`` (B,) metres (REP 117: +inf for no
    return); ``angle_max`` is the last beam's bearing. No intensities."""
    ranges = np.asarray(ranges, np.float32).reshape(-1)
    return _T[LASER_SCAN](
        header=header(stamp_ns, frame_id),
        angle_min=float(angle_min),
        angle_max=float(angle_min + angle_increment * (ranges.size - 1)),
        angle_increment=float(angle_increment),
        time_increment=0.0,
        scan_time=float(scan_time),
        range_min=float(range_min),
        range_max=float(range_max),
        ranges=ranges,
        intensities=np.zeros(0, np.float32),
    )


def point_cloud(stamp_ns: int, frame_id: str, p: np.ndarray) -> Any:
    """An unorganised (height 1) little-endian PointCloud2 of float32 x, y, z,
    point_step 12, from ``p`` (N, 3) in ``frame_id``; ``is_dense`` says
    whether every point is finite."""
    p = np.asarray(p)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {p.shape}")
    field = _T["sensor_msgs/msg/PointField"]
    return _T[POINT_CLOUD](
        header=header(stamp_ns, frame_id),
        height=1,
        width=p.shape[0],
        fields=[field(name=axis, offset=4 * i, datatype=field.FLOAT32, count=1) for i, axis in enumerate("xyz")],
        is_bigendian=False,
        point_step=12,
        row_step=12 * p.shape[0],
        data=np.ascontiguousarray(p, "<f4").view(np.uint8).reshape(-1),
        is_dense=bool(np.isfinite(p).all()),
    )


def pose_array(stamp_ns: int, frame_id: str, poses: np.ndarray) -> Any:
    """geometry_msgs/PoseArray of poses (K, 7) ``T_frame_body``."""
    return _T["geometry_msgs/msg/PoseArray"](header=header(stamp_ns, frame_id), poses=[_pose(T) for T in np.asarray(poses).reshape(-1, 7)])


def path(stamp_ns: int, frame_id: str, entries: Sequence[Any]) -> Any:
    """nav_msgs/Path of ready-made PoseStamped ``entries`` (:func:`pose_stamped`,
    each at its own stamp); ``stamp_ns`` is the path's. A long replay keeps the
    entries of keyframes that left the window instead of rebuilding them."""
    return _T["nav_msgs/msg/Path"](header=header(stamp_ns, frame_id), poses=list(entries))


def voxel_markers(
    stamp_ns: int, frame_id: str, centers: np.ndarray, values: np.ndarray, voxel_size: float, ns: str = "voxels", colormap: str = "height"
) -> Any:
    """visualization_msgs/MarkerArray holding one CUBE_LIST marker (``ns``, id 0)
    of voxel ``centers`` (N, 3) in ``frame_id``, coloured by ``values`` (N,)
    as the node's ``~/voxels`` (see :func:`dsg_ros.msgs.colors.colorize`).
    Centers with a non-finite coordinate are left out (RViz rejects the whole
    marker otherwise)."""
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    values = np.asarray(values, np.float64).reshape(-1)
    if values.shape[0] != centers.shape[0]:
        raise ValueError(f"{values.shape[0]} values for {centers.shape[0]} centers")
    keep = np.isfinite(centers).all(axis=1)
    centers, rgb = centers[keep], colorize(values[keep], colormap)
    point, color = _T["geometry_msgs/msg/Point"], _T["std_msgs/msg/ColorRGBA"]
    empty = np.zeros(0, np.uint8)
    marker = _T["visualization_msgs/msg/Marker"](
        header=header(stamp_ns, frame_id),
        ns=ns,
        id=0,
        type=_T["visualization_msgs/msg/Marker"].CUBE_LIST,
        action=_T["visualization_msgs/msg/Marker"].ADD,
        pose=_pose(np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])),  # a unit quaternion: RViz rejects a zero one
        scale=_vector3((voxel_size,) * 3),
        color=color(r=1.0, g=1.0, b=1.0, a=1.0),  # per-point colours override it
        lifetime=_T["builtin_interfaces/msg/Duration"](sec=0, nanosec=0),
        frame_locked=False,
        points=[point(x=x, y=y, z=z) for x, y, z in centers.tolist()],
        colors=[color(r=r, g=g, b=b, a=1.0) for r, g, b in rgb.tolist()],
        texture_resource="",
        texture=_T["sensor_msgs/msg/CompressedImage"](header=header(0, ""), format="", data=empty),
        uv_coordinates=[],
        text="",
        mesh_resource="",
        mesh_file=_T["visualization_msgs/msg/MeshFile"](filename="", data=empty),
        mesh_use_embedded_materials=False,
    )
    return _T["visualization_msgs/msg/MarkerArray"](markers=[marker])
