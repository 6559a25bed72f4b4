"""Odometry and sensor extrinsics out of a bag's ``/tf`` and ``/tf_static``.

Bags recorded on robots often carry odometry only as the ``odom → base_link``
transform on ``/tf``, and the sensor mounting only as ``/tf_static`` chains
(``base_link → laser_mount → laser``). These helpers turn them into the
plain arrays the mapper takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from dsg_ros import se3
from dsg_ros.bag.errors import BagError
from dsg_ros.bag.reader import Bag
from dsg_ros.msgs import ODOMETRY, TF, ConversionError, Transform, frame_name, odometry_from_msg, transforms_from_tf


class Trajectory(NamedTuple):
    """Poses ``T`` (K, 7) ``T_frame_child`` at ``stamps`` (K,) seconds (header
    stamps, in bag order), and where they came from (a topic)."""

    stamps: np.ndarray
    T: np.ndarray
    source: str


def _to_root(edges: dict[str, Transform], frame: str) -> list[tuple[str, np.ndarray]]:
    """``[(frame, I), (parent, T_parent_frame), (grandparent, T_grandparent_frame), …]``
    up the tree to its root."""
    chain, T, seen = [(frame, se3.IDENTITY)], se3.IDENTITY, {frame}
    while frame in edges:
        edge = edges[frame]
        T, frame = se3.compose(edge.T, T), edge.parent
        if frame in seen:  # a malformed tree; stop rather than loop
            break
        seen.add(frame)
        chain.append((frame, T))
    return chain


def relative_transform(transforms: Iterable[Transform], target: str, source: str) -> np.ndarray | None:
    """``T_target_source`` (7,) through the tree of ``transforms`` (the last
    edge given for a child wins, as in tf2), or None if the frames are not
    connected. Any path through a common ancestor works, so
    ``base_link → laser_mount → laser`` and ``base_link ← base_footprint → laser``
    both give ``T_base_link_laser``."""
    edges = {e.child: e for e in transforms}
    up_target = dict(_to_root(edges, target))
    for frame, T_frame_source in _to_root(edges, source):
        if frame in up_target:
            return se3.compose(se3.inverse(up_target[frame]), T_frame_source)
    return None


def static_transforms(bag: Bag, topic: str = "/tf_static") -> list[Transform]:
    """Every edge on ``topic`` (empty if the bag lacks it)."""
    if topic not in bag.info.topics:
        return []
    edges = []
    for m in bag.messages([topic], {TF}):
        try:
            edges += transforms_from_tf(m.msg)
        except ConversionError as exc:
            raise BagError(f"{bag.path}: {topic}: {exc}") from None
    return edges


def extrinsic(bag: Bag, base_frame: str = "base_link", sensor_frame: str = "laser", topic: str = "/tf_static") -> np.ndarray | None:
    """``T_base_sensor`` (7,) from the static transforms, or None when the bag
    does not connect the two frames."""
    return relative_transform(static_transforms(bag, topic), frame_name(base_frame), frame_name(sensor_frame))


def odometry(
    bag: Bag,
    topic: str = "/odom",
    odom_frame: str = "odom",
    base_frame: str = "base_link",
    tf_topic: str = "/tf",
    tf_static_topic: str = "/tf_static",
) -> Trajectory:
    """``T_odom_base`` from the Odometry ``topic`` if the bag has it, else from
    the ``odom_frame → X`` transforms on ``tf_topic`` where X is
    ``base_frame`` or joined to it by static transforms (``odom →
    base_footprint`` plus a static ``base_footprint → base_link``).

    Odometry messages with a non-unit quaternion are normalized (as the node
    does); BagError if there is no odometry at all.
    """
    if topic in bag.info.topics:
        stamps, poses = [], []
        for m in bag.messages([topic], {ODOMETRY}):
            try:
                stamp, T, _ = odometry_from_msg(m.msg)
            except ConversionError as exc:
                raise BagError(f"{bag.path}: {topic}: {exc}") from None
            stamps.append(stamp)
            poses.append(T)
        return Trajectory(np.array(stamps), np.array(poses).reshape(-1, 7), topic)
    if tf_topic not in bag.info.topics:
        raise BagError(f"{bag.path}: no odometry: neither {topic} nor {tf_topic}; the bag has:\n{bag.info.describe()}")
    odom_frame, base_frame = frame_name(odom_frame), frame_name(base_frame)
    static = static_transforms(bag, tf_static_topic)
    to_base: dict[str, np.ndarray | None] = {}  # T_child_base per child of odom_frame, None if not joined
    seen: set[tuple[str, str]] = set()
    stamps, poses = [], []
    for m in bag.messages([tf_topic], {TF}):
        try:
            edges = transforms_from_tf(m.msg)
        except ConversionError as exc:
            raise BagError(f"{bag.path}: {tf_topic}: {exc}") from None
        for e in edges:
            seen.add((e.parent, e.child))
            if e.parent != odom_frame:
                continue
            if e.child not in to_base:
                to_base[e.child] = se3.IDENTITY if e.child == base_frame else relative_transform(static, e.child, base_frame)
            T_child_base = to_base[e.child]
            if T_child_base is not None:
                stamps.append(e.stamp)
                poses.append(se3.compose(e.T, T_child_base))
    if not stamps:
        found = ", ".join(f"{p} → {c}" for p, c in sorted(seen)) or "none"
        raise BagError(f"{bag.path}: no {odom_frame} → {base_frame} transform on {tf_topic} (transforms seen: {found})")
    return Trajectory(np.array(stamps), np.array(poses), tf_topic)
