"""sensor_msgs/LaserScan → (N, 3) points in the scan's frame, per REP 117.

Beam i points at bearing ``angle_min + i · angle_increment`` about the frame's
z axis, in its z = 0 plane. A reading is a point only when it is finite, not
negative and in ``[range_min, range_max)``; everything else is "no return":
NaN (an erroneous reading), −inf / below ``range_min`` (too close), +inf / at
or above ``range_max`` (nothing within range).

Counting: ``dropped`` counts only NaN readings. REP 117 makes NaN the one
value that means "the sensor failed on this beam"; ±inf and out-of-range
readings are valid information (free space, too close) and every healthy
scan has many, so counting them would drown the failures.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dsg_ros.msgs.errors import ConversionError


def scan_points(ranges: np.ndarray, angle_min: float, angle_increment: float, range_min: float, range_max: float) -> tuple[np.ndarray, int]:
    """Points ``p_sensor`` (N, 3) float64 of ``ranges`` (B,) metres, and the
    number of NaN readings; the NumPy core of :func:`points_from_scan`."""
    if not math.isfinite(angle_min):
        raise ConversionError(f"non-finite angle_min {angle_min}")
    if not (math.isfinite(angle_increment) and angle_increment > 0.0):
        raise ConversionError(f"angle_increment must be finite and positive, got {angle_increment}")
    if math.isnan(range_min) or math.isnan(range_max):
        raise ConversionError(f"NaN range limits: range_min {range_min}, range_max {range_max}")
    if range_min > range_max:
        raise ConversionError(f"range_min {range_min} > range_max {range_max}")
    r = np.asarray(ranges, np.float64).reshape(-1)
    nan = int(np.count_nonzero(np.isnan(r)))
    bearing = angle_min + angle_increment * np.arange(r.size)
    # A negative reading is no distance at all, whatever range_min a driver
    # sets (-1 under range_min -5 would land 1 m behind the beam).
    with np.errstate(invalid="ignore"):  # NaN compares False: not a point
        valid = (r >= max(range_min, 0.0)) & (r < range_max)
    r, bearing = r[valid], bearing[valid]
    p = np.stack([r * np.cos(bearing), r * np.sin(bearing), np.zeros_like(r)], axis=-1)
    return p, nan


def points_from_scan(msg: Any) -> tuple[np.ndarray, int]:
    """Points ``p_sensor`` (N, 3) of a LaserScan in ``msg.header.frame_id`` and
    its NaN count (see the module docstring).

    ConversionError also when the number of ranges disagrees with
    ``(angle_max − angle_min) / angle_increment + 1`` by more than one beam:
    the bearings would then be wrong for every beam.
    """
    angle_min, angle_max, step = float(msg.angle_min), float(msg.angle_max), float(msg.angle_increment)
    ranges = np.asarray(msg.ranges, np.float64)
    if math.isfinite(angle_min) and math.isfinite(step) and step > 0.0:
        beams = (angle_max - angle_min) / step + 1.0
        if not abs(ranges.size - beams) <= 1.0:  # also rejects a non-finite angle_max
            raise ConversionError(
                f"{ranges.size} ranges, but angle_min {angle_min:.6g} to angle_max {angle_max:.6g} "
                f"in steps of {step:.6g} rad make {beams:.6g} beams"
            )
    return scan_points(ranges, angle_min, step, float(msg.range_min), float(msg.range_max))
