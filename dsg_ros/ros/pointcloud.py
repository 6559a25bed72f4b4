"""sensor_msgs/PointCloud2 <-> (N, 3) NumPy points, in the cloud's own frame.

Reading goes through strided views on the message buffer (one per axis), so
any field order, extra fields, row padding and either byte order cost nothing
beyond the final float64 copy.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import PointCloud2, PointField

_FLOAT_CODES = {PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}
_DATATYPE_NAMES = {getattr(PointField, n): n for n in ("INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "FLOAT32", "FLOAT64")}


class CloudError(ValueError):
    """A PointCloud2 that cannot be read as x, y, z points; the message says why."""


def cloud_to_xyz(msg: PointCloud2) -> tuple[np.ndarray, int]:
    """Points ``p_sensor`` (N, 3) float64 in ``msg.header.frame_id``, and how many
    non-finite points were dropped (checked whatever ``is_dense`` claims).

    Only x, y, z are read and validated: a malformed extra field (intensity,
    ring, …) does not reject the cloud.
    """
    n = msg.width * msg.height
    if n == 0:
        return np.empty((0, 3)), 0
    fields = {f.name: f for f in msg.fields}
    for axis in "xyz":
        if axis not in fields:
            raise CloudError(f"PointCloud2 has no '{axis}' field (fields: {sorted(fields)})")
        f = fields[axis]
        if f.datatype not in _FLOAT_CODES:
            name = _DATATYPE_NAMES.get(f.datatype, "unknown")
            raise CloudError(f"field '{axis}' has datatype {name} ({f.datatype}); only FLOAT32 and FLOAT64 are supported")
        if f.count != 1:
            raise CloudError(f"field '{axis}' has count {f.count}; expected 1")
        end = f.offset + np.dtype(_FLOAT_CODES[f.datatype]).itemsize
        if end > msg.point_step:
            raise CloudError(f"field '{axis}' ends at byte {end}, beyond point_step {msg.point_step}")
    if msg.row_step < msg.width * msg.point_step:
        raise CloudError(f"row_step {msg.row_step} < width {msg.width} × point_step {msg.point_step}")
    expected = msg.row_step * msg.height
    if len(msg.data) < expected:
        raise CloudError(f"truncated data: {len(msg.data)} bytes, expected row_step × height = {expected}")

    buf = np.frombuffer(msg.data, np.uint8, count=expected)
    order = ">" if msg.is_bigendian else "<"
    p = np.empty((n, 3))
    for i, axis in enumerate("xyz"):
        f = fields[axis]
        view = np.ndarray(
            (msg.height, msg.width),
            dtype=order + _FLOAT_CODES[f.datatype],
            buffer=buf,
            offset=f.offset,
            strides=(msg.row_step, msg.point_step),
        )
        p[:, i] = view.ravel()
    finite = np.isfinite(p).all(axis=1)
    dropped = n - int(np.count_nonzero(finite))
    return (p[finite] if dropped else p), dropped


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
