"""sensor_msgs/PointCloud2 <-> (N, 3) NumPy points, in the cloud's own frame.

Reading is :func:`dsg_ros.msgs.points_from_cloud`, shared with the bag code;
``cloud_to_xyz`` and ``CloudError`` are its names on the node's side.
Building a cloud needs the rclpy message classes, so it lives here.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField

from dsg_ros.msgs import ConversionError as CloudError, points_from_cloud as cloud_to_xyz

__all__ = ["CloudError", "cloud_to_xyz", "xyz_to_cloud"]


def xyz_to_cloud(p: np.ndarray, stamp: Time, frame_id: str) -> PointCloud2:
    """An unorganised (height 1) little-endian cloud of float32 x, y, z with
    point_step 12 (no padding: the smallest message; readers use the offsets).
    ``p`` (N, 3) is in ``frame_id``; non-finite points are kept and flagged
    by ``is_dense = False``."""
    p = np.asarray(p)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got {p.shape}")
    msg = PointCloud2()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = 1, p.shape[0]
    msg.fields = [PointField(name=axis, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, axis in enumerate("xyz")]
    msg.is_bigendian = False
    msg.point_step = 12
    msg.row_step = 12 * p.shape[0]
    # bytes go into the message's array.array('B') by one copy; a NumPy array
    # would be iterated element by element (~100× slower at 30k points).
    msg.data = np.ascontiguousarray(p, dtype="<f4").tobytes()
    msg.is_dense = bool(np.isfinite(p).all())
    return msg
