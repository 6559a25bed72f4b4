"""sensor_msgs/PointCloud2 → (N, 3) NumPy points, in the cloud's own frame.

Reading goes through strided views on the message buffer (one per axis), so
any field order, extra fields, row padding and either byte order cost nothing
beyond the final float64 copy. ``data`` may be bytes, an ``array.array``
(rclpy) or a uint8 NumPy array (rosbags).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsg_ros.msgs.errors import ConversionError

# sensor_msgs/PointField datatype constants.
_DATATYPE_NAMES = {1: "INT8", 2: "UINT8", 3: "INT16", 4: "UINT16", 5: "INT32", 6: "UINT32", 7: "FLOAT32", 8: "FLOAT64"}
_FLOAT_CODES = {7: "f4", 8: "f8"}


def _buffer(data: Any, count: int) -> np.ndarray:
    """The first ``count`` bytes of ``data`` as a uint8 array, without a copy
    where the container exposes its buffer."""
    try:
        return np.frombuffer(data, np.uint8, count=count)
    except TypeError:  # a plain sequence of ints
        return np.asarray(data, np.uint8)[:count]


def points_from_cloud(msg: Any) -> tuple[np.ndarray, int]:
    """Points ``p_sensor`` (N, 3) float64 in ``msg.header.frame_id``, and how many
    non-finite points were dropped (checked whatever ``is_dense`` claims).

    Only x, y, z are read and validated: a malformed extra field (intensity,
    ring, …) does not reject the cloud. ConversionError for a missing or
    non-float x/y/z, a field beyond ``point_step``, a ``row_step`` shorter than
    a row, or ``data`` whose length is not ``row_step × height``.
    """
    n = msg.width * msg.height
    if n == 0:
        return np.empty((0, 3)), 0
    fields = {f.name: f for f in msg.fields}
    for axis in "xyz":
        if axis not in fields:
            raise ConversionError(f"PointCloud2 has no '{axis}' field (fields: {sorted(fields)})")
        f = fields[axis]
        if f.datatype not in _FLOAT_CODES:
            name = _DATATYPE_NAMES.get(f.datatype, "unknown")
            raise ConversionError(f"field '{axis}' has datatype {name} ({f.datatype}); only FLOAT32 and FLOAT64 are supported")
        if f.count != 1:
            raise ConversionError(f"field '{axis}' has count {f.count}; expected 1")
        end = f.offset + np.dtype(_FLOAT_CODES[f.datatype]).itemsize
        if end > msg.point_step:
            raise ConversionError(f"field '{axis}' ends at byte {end}, beyond point_step {msg.point_step}")
    if msg.row_step < msg.width * msg.point_step:
        raise ConversionError(f"row_step {msg.row_step} < width {msg.width} × point_step {msg.point_step}")
    expected, size = msg.row_step * msg.height, len(msg.data)
    if size < expected:
        raise ConversionError(f"truncated data: {size} bytes, expected row_step × height = {expected}")
    if size > expected:
        raise ConversionError(f"data has {size} bytes, more than row_step × height = {expected} (wrong height or row_step?)")

    buf = _buffer(msg.data, expected)
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
