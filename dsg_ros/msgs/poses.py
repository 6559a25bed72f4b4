"""Poses out of Pose, PoseStamped, Odometry and TFMessage, as ``wxyz_xyz`` (7,).

Duck-typed: any object with the ROS field names works (rclpy messages,
rosbags dataclasses). Stamps are float seconds from ``header.stamp``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from dsg_ros import se3
from dsg_ros.msgs.errors import ConversionError
from dsg_ros.msgs.stamps import stamp_to_sec


class StampedPose(NamedTuple):
    """``T`` (7,) ``T_frame_child`` at ``stamp`` seconds; ``warning`` says
    what was repaired (a normalized quaternion), or None."""

    stamp: float
    T: np.ndarray
    warning: str | None


class Transform(NamedTuple):
    """One TF edge: ``T`` (7,) is ``T_parent_child`` at ``stamp`` seconds."""

    parent: str
    child: str
    stamp: float
    T: np.ndarray


def _raw(q: Any, t: Any, what: str) -> tuple[np.ndarray, float]:
    """(7,) as stored, and its quaternion norm; rejects what no normalization fixes."""
    T = np.array([q.w, q.x, q.y, q.z, t.x, t.y, t.z], np.float64)
    if not np.isfinite(T).all():
        part = "orientation" if not np.isfinite(T[:4]).all() else "position"
        raise ConversionError(f"non-finite {part} in {what}: {T.tolist()}")
    # Finite components above ~1e154 overflow the norm (normalizing would
    # give an all-zero quaternion): scaled by the largest, the rotation is the
    # same. (Python floats: the product may overflow to inf, without a warning.)
    largest = float(np.abs(T[:4]).max())
    if largest > 1e150:
        T[:4] /= largest
        norm = largest * float(np.linalg.norm(T[:4]))
    else:
        norm = float(np.linalg.norm(T[:4]))
    if norm < 1e-6:
        raise ConversionError(f"zero quaternion (norm {norm:.3g}) in {what}: no rotation can be recovered")
    return T, norm


def _strict(q: Any, t: Any, what: str, tolerance: float) -> np.ndarray:
    T, norm = _raw(q, t, what)
    # The norm, not T's: _raw may have rescaled an overflowing quaternion.
    unit = se3.normalized(T, tolerance) if abs(norm - 1.0) <= tolerance else None
    if unit is None:
        raise ConversionError(f"non-unit quaternion (norm {norm:.6g}, tolerance {tolerance:g}) in {what}")
    return unit


def _lenient(pose: Any, stamp: float, what: str, tolerance: float) -> StampedPose:
    T, norm = _raw(pose.orientation, pose.position, what)
    warning = None
    if abs(norm - 1.0) > tolerance:
        warning = f"{what} at t={stamp:.9f} has a non-unit quaternion (norm {norm:.6g}); normalized"
    unit = se3.normalized(T, math.inf)
    assert unit is not None  # finite (checked by _raw), and no tolerance
    return StampedPose(stamp, unit, warning)


def pose_from_msg(pose: Any, tolerance: float = 1e-3) -> np.ndarray:
    """Strict: geometry_msgs/Pose → (7,) with its quaternion renormalized;
    ConversionError if a value is non-finite or the quaternion norm is further
    than ``tolerance`` from 1 (a corrupt pose, not round-off)."""
    return _strict(pose.orientation, pose.position, "pose", tolerance)


def odometry_from_msg(msg: Any, tolerance: float = 1e-3) -> StampedPose:
    """nav_msgs/Odometry → ``T_frame_child`` (7,), frame = ``header.frame_id``,
    child = ``child_frame_id``.

    Lenient on the quaternion, because odometry drivers that publish slightly
    or grossly unnormalized quaternions exist and the rotation is still
    meaningful: a non-zero quaternion whose norm is off by more than
    ``tolerance`` is normalized and reported in the warning. Non-finite values
    and zero quaternions raise ConversionError. Covariance and twist are ignored.
    """
    return _lenient(msg.pose.pose, stamp_to_sec(msg.header.stamp), "odometry", tolerance)


def pose_stamped_from_msg(msg: Any, tolerance: float = 1e-3) -> StampedPose:
    """geometry_msgs/PoseStamped → ``T_frame_body`` (7,), frame =
    ``header.frame_id``; lenient on the quaternion as :func:`odometry_from_msg`."""
    return _lenient(msg.pose, stamp_to_sec(msg.header.stamp), "pose", tolerance)


def frame_name(frame_id: str) -> str:
    """``frame_id`` without the leading '/' that ROS 1 (tf) allowed and tf2 strips."""
    return frame_id.lstrip("/")


def transforms_from_tf(msg: Any, tolerance: float = 1e-3) -> list[Transform]:
    """tf2_msgs/TFMessage → its edges ``T_parent_child``, in message order.

    Strict on quaternions, as tf2 itself rejects unnormalized ones: a bad
    transform raises ConversionError naming the edge.
    """
    edges = []
    for ts in msg.transforms:
        parent, child = frame_name(ts.header.frame_id), frame_name(ts.child_frame_id)
        what = f"transform {parent} → {child}"
        T = _strict(ts.transform.rotation, ts.transform.translation, what, tolerance)
        edges.append(Transform(parent, child, stamp_to_sec(ts.header.stamp), T))
    return edges
