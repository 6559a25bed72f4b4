"""Generated hostile messages through the conversion (property-based, ``hypothesis``).

Real rclpy message classes, as the node receives them; the TF edges are
plain objects with the ROS field names, as the bag side reads them. Every
message must either convert to finite points / unit-quaternion poses, or
raise ConversionError (the node and the replay count it as a skip by its
reason): never another exception, never a NaN or a non-unit pose.
"""

from __future__ import annotations

import math
import struct
import time
from types import SimpleNamespace as NS

import numpy as np
import pytest
from hypothesis import example, given, strategies as st

pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("nav_msgs.msg")

from builtin_interfaces.msg import Time
from nav_msgs.msg import Odometry
from sensor_msgs.msg import LaserScan, PointCloud2, PointField

from dsg_ros import msgs
from dsg_ros.msgs import ConversionError
from dsg_ros.ros import messages as rm

_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 8: 8}
_FLOAT = {7: "f", 8: "d"}

# Coordinates a broken driver sends: ordinary values, NaN, ±inf, and finite
# values whose squares overflow.
coordinates = st.one_of(
    st.floats(-100.0, 100.0),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 3.4e38, 0.0, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _unit(q: np.ndarray) -> bool:
    return bool(np.isfinite(q).all() and abs(np.linalg.norm(q) - 1.0) < 1e-9)


# --- PointCloud2 ----------------------------------------------------------


@st.composite
def clouds(draw) -> PointCloud2:
    """A PointCloud2 that is well formed or broken in any of the ways the
    converter must notice: fields missing, duplicated-in-layout, of integer
    type or count, beyond ``point_step``; ``row_step`` short or padded;
    ``data`` truncated or too long; either byte order."""
    height, width = draw(st.integers(0, 4)), draw(st.integers(0, 12))
    names = draw(st.lists(st.sampled_from(["x", "y", "z", "intensity", "ring", "t"]), unique=True, max_size=6))
    if draw(st.booleans()):  # most clouds have all three axes, in any order
        names = draw(st.permutations(sorted(set(names) | {"x", "y", "z"})))
    fields, offset = [], 0
    for name in names:
        datatype = draw(st.sampled_from([7, 7, 7, 8, 8, 1, 2, 3, 4, 5, 6]))
        offset = draw(st.sampled_from([offset, offset, max(0, offset - 4), offset + 2, draw(st.integers(0, 40))]))
        count = draw(st.sampled_from([1, 1, 1, 1, 0, 3]))
        fields.append(PointField(name=name, offset=offset, datatype=datatype, count=count))
        offset += _SIZES[datatype] * max(count, 1)
    point_step = max(0, offset + draw(st.integers(-6, 8)))
    row_step = max(0, width * point_step + draw(st.sampled_from([0, 0, 0, 3, -1, draw(st.integers(-20, 20))])))
    size = max(0, row_step * height + draw(st.sampled_from([0, 0, 0, 0, -1, 4, -row_step, draw(st.integers(-30, 30))])))
    bigendian = draw(st.booleans())
    data = bytearray(draw(st.binary(min_size=size, max_size=size)) if size <= 64 else bytes(size))
    # Real coordinates where the axes are floats, so finite points are common.
    order = ">" if bigendian else "<"
    for f in fields:
        if f.datatype in _FLOAT and f.name in "xyz":
            code = order + _FLOAT[f.datatype]
            for r in range(height):
                for c in range(width):
                    at = r * row_step + c * point_step + f.offset
                    if at + struct.calcsize(code) <= len(data):
                        struct.pack_into(code, data, at, draw(coordinates) if f.datatype == 8 else float(np.float32(draw(st.floats(-100, 100)))))
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=bigendian, point_step=point_step, row_step=row_step, is_dense=draw(st.booleans()))
    msg.data = bytes(data)
    return msg


def _decode(msg: PointCloud2) -> np.ndarray | None:
    """An independent reference: every point's x, y, z by ``struct``, one at a
    time, or None when the layout cannot be read as such a cloud."""
    n = msg.width * msg.height
    if n == 0:
        return np.empty((0, 3))
    by_name = {f.name: f for f in msg.fields}
    if any(a not in by_name or by_name[a].datatype not in _FLOAT or by_name[a].count != 1 for a in "xyz"):
        return None
    if any(by_name[a].offset + _SIZES[by_name[a].datatype] > msg.point_step for a in "xyz"):
        return None
    if msg.row_step < msg.width * msg.point_step or len(msg.data) != msg.row_step * msg.height:
        return None
    data, order = bytes(msg.data), ">" if msg.is_bigendian else "<"
    rows = []
    for r in range(msg.height):
        for c in range(msg.width):
            base = r * msg.row_step + c * msg.point_step
            rows.append([struct.unpack_from(order + _FLOAT[by_name[a].datatype], data, base + by_name[a].offset)[0] for a in "xyz"])
    return np.array(rows, np.float64)


@given(clouds())
def test_a_cloud_converts_exactly_as_an_independent_decoder_or_is_refused(msg: PointCloud2):
    expected = _decode(msg)
    if expected is None:
        with pytest.raises(ConversionError):
            msgs.points_from_cloud(msg)
        return
    p, dropped = msgs.points_from_cloud(msg)
    finite = np.isfinite(expected).all(axis=1)
    assert p.dtype == np.float64 and p.shape == (int(finite.sum()), 3) and np.isfinite(p).all()
    assert dropped == expected.shape[0] - p.shape[0]
    np.testing.assert_array_equal(p, expected[finite])


def test_a_very_large_organised_cloud_converts_in_one_pass():
    """2 million big-endian float64 points in padded rows (64 MB): no per-point
    work, no offset overflow; NumPy's structured view is the reference."""
    height, width, pad = 1000, 2000, 7
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": [">f8"] * 3, "offsets": [16, 0, 8], "itemsize": 32})
    records = np.zeros((height, width), dtype)
    rng = np.random.default_rng(0)
    for axis in "xyz":
        records[axis] = rng.normal(0.0, 50.0, (height, width))
    records["x"][::97, ::13] = np.nan
    rows = np.pad(records.view(np.uint8).reshape(height, -1), ((0, 0), (0, pad)))
    fields = [PointField(name=a, offset=o, datatype=PointField.FLOAT64, count=1) for a, o in (("y", 0), ("z", 8), ("x", 16))]
    msg = PointCloud2(height=height, width=width, fields=fields, is_bigendian=True, point_step=32, row_step=32 * width + pad, is_dense=False)
    msg.data = rows.tobytes()
    started = time.perf_counter()
    p, dropped = msgs.points_from_cloud(msg)
    seconds = time.perf_counter() - started
    expected = np.column_stack([records[a].ravel() for a in "xyz"])
    finite = np.isfinite(expected).all(axis=1)
    assert dropped == int((~finite).sum()) > 0
    np.testing.assert_array_equal(p, expected[finite])
    assert seconds < 5.0, f"{seconds:.1f} s for {height * width} points"


# --- LaserScan ------------------------------------------------------------

float32s = st.floats(width=32)
ranges_values = st.one_of(st.floats(0.0, 50.0, width=32), st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 3.4e38]), float32s)


@st.composite
def scans(draw) -> tuple[LaserScan, bool]:
    """(scan, consistent): a consistent scan has a positive increment, range
    limits in order and one range per beam; the rest mangle any of them."""
    beams = draw(st.integers(0, 40))
    angle_min = float(np.float32(draw(st.floats(-math.pi, math.pi))))
    step = float(np.float32(draw(st.floats(1e-4, 0.5))))
    range_min = float(np.float32(draw(st.floats(0.0, 1.0))))
    range_max = float(np.float32(draw(st.floats(range_min, 100.0))))
    msg = LaserScan(angle_min=angle_min, angle_max=float(np.float32(angle_min + step * max(beams - 1, 0))), angle_increment=step,
                    range_min=range_min, range_max=range_max, ranges=draw(st.lists(ranges_values, min_size=beams, max_size=beams)))
    consistent = not draw(st.integers(0, 2)) == 0  # a third of the scans are mangled
    if not consistent:
        field = draw(st.sampled_from(["angle_min", "angle_max", "angle_increment", "range_min", "range_max", "ranges"]))
        if field == "ranges":
            msg.ranges = draw(st.lists(ranges_values, max_size=60))
        else:
            setattr(msg, field, draw(st.one_of(float32s, st.sampled_from([0.0, -0.0, -step, math.nan, math.inf, -math.inf]))))
    return msg, consistent


@given(scans())
@example((LaserScan(angle_min=0.0, angle_max=1.0, angle_increment=0.0, range_min=0.1, range_max=10.0, ranges=[1.0, 1.0]), False))
@example((LaserScan(angle_min=0.0, angle_max=1.0, angle_increment=-0.5, range_min=0.1, range_max=10.0, ranges=[1.0] * 3), False))
@example((LaserScan(angle_min=0.0, angle_max=1.0, angle_increment=0.5, range_min=5.0, range_max=1.0, ranges=[1.0] * 3), False))
@example((LaserScan(angle_min=0.0, angle_max=1.0, angle_increment=0.5, range_min=0.1, range_max=10.0, ranges=[1.0] * 7), False))
@example((LaserScan(angle_min=0.0, angle_max=0.0, angle_increment=0.5, range_min=-1.0, range_max=0.0, ranges=[-1.0]), True))  # was a point 1 m behind
def test_a_scan_gives_finite_in_range_points_or_is_refused(case: tuple[LaserScan, bool]):
    msg, consistent = case
    try:
        p, nan = msgs.points_from_scan(msg)
    except ConversionError:
        assert not consistent, "a consistent scan was refused"
        return
    ranges = np.asarray(msg.ranges, np.float64)
    assert nan == int(np.isnan(ranges).sum())
    assert p.shape[1] == 3 and p.shape[0] <= ranges.size and np.isfinite(p).all()
    assert np.all(p[:, 2] == 0.0)
    # Each point is its own beam's reading: at that beam's bearing, as far as it says.
    bearing = msg.angle_min + msg.angle_increment * np.arange(ranges.size)
    with np.errstate(invalid="ignore"):  # NaN and ±inf readings: never kept
        kept = (ranges >= max(msg.range_min, 0.0)) & (ranges < msg.range_max)
        expected = np.column_stack([ranges * np.cos(bearing), ranges * np.sin(bearing)])[kept]
    np.testing.assert_allclose(p[:, :2], expected, rtol=1e-12, atol=0.0)


# --- Odometry and TF ------------------------------------------------------

quaternion_parts = st.one_of(st.floats(-1.0, 1.0), st.sampled_from([0.0, 1e-9, 1e155, -1e155, 1e300, math.nan, math.inf]), st.floats())
stamps = st.builds(Time, sec=st.integers(-(2**31), 2**31 - 1), nanosec=st.integers(0, 999_999_999))


def _odometry(q: tuple[float, ...], t: tuple[float, ...], stamp: Time, covariance: list[float]) -> Odometry:
    msg = Odometry()
    msg.header.stamp = stamp
    o, p = msg.pose.pose.orientation, msg.pose.pose.position
    o.w, o.x, o.y, o.z = q
    p.x, p.y, p.z = t
    msg.pose.covariance = covariance
    return msg


odometries = st.builds(
    _odometry,
    st.tuples(*[quaternion_parts] * 4),
    st.tuples(*[coordinates] * 3),
    stamps,
    st.lists(st.floats(), min_size=36, max_size=36),  # ignored, whatever it holds
)


def _quaternion(m) -> np.ndarray:
    return np.array([m.w, m.x, m.y, m.z], np.float64)


def _norm(q: np.ndarray) -> float:
    """|q| without overflow (components up to 1.8e308)."""
    largest = float(np.abs(q).max())
    return largest * float(np.linalg.norm(q / largest)) if largest > 0 else 0.0


@given(odometries)
@example(_odometry((1e155, 1e155, 0.0, 0.0), (1.0, 2.0, 3.0), Time(sec=1), [0.0] * 36))  # |q|² overflows
@example(_odometry((0.0, 0.0, 0.0, 0.0), (1.0, 2.0, 3.0), Time(sec=1), [math.nan] * 36))
@example(_odometry((2.0, 0.0, 0.0, 0.0), (1e30, 0.0, 0.0), Time(sec=2**31 - 1, nanosec=999_999_999), [0.0] * 36))
def test_odometry_gives_a_finite_unit_pose_of_the_same_rotation_or_is_refused(msg: Odometry):
    q = _quaternion(msg.pose.pose.orientation)
    t = np.array([msg.pose.pose.position.x, msg.pose.pose.position.y, msg.pose.pose.position.z])
    try:
        stamp, T, warning = msgs.odometry_from_msg(msg)
    except ConversionError:
        assert not (np.isfinite(q).all() and np.isfinite(t).all() and _norm(q) >= 1e-6), "a finite, non-zero pose was refused"
        return
    assert math.isfinite(stamp) and np.isfinite(T).all() and _unit(T[:4])
    assert abs(abs(float(np.dot(T[:4], q / np.abs(q).max()))) - _norm(q) / np.abs(q).max()) < 1e-9  # the same rotation
    np.testing.assert_array_equal(T[4:], t)
    assert (warning is not None) == (abs(_norm(q) - 1.0) > 1e-3)
    # What goes out again is a valid message: the stamp fits, the pose is unit.
    assert rm.sec_to_stamp(stamp) is not None
    assert _unit(_quaternion(rm.pose_to_msg(T).orientation))


@st.composite
def tf_messages(draw) -> NS:
    def edge() -> NS:
        q = NS(w=draw(quaternion_parts), x=draw(quaternion_parts), y=draw(quaternion_parts), z=draw(quaternion_parts))
        if draw(st.booleans()):  # a unit quaternion, as most edges carry
            v = np.array([q.w, q.x, q.y, q.z])
            if np.isfinite(v).all() and _norm(v) > 1e-6:
                v /= np.abs(v).max()
                q.w, q.x, q.y, q.z = (v / np.linalg.norm(v)).tolist()
        t = NS(x=draw(coordinates), y=draw(coordinates), z=draw(coordinates))
        return NS(header=NS(stamp=draw(stamps), frame_id=draw(st.sampled_from(["odom", "/odom", "map"]))),
                  child_frame_id=draw(st.sampled_from(["base_link", "/base_link", "laser"])), transform=NS(rotation=q, translation=t))

    return NS(transforms=[edge() for _ in range(draw(st.integers(0, 4)))])


@given(tf_messages())
def test_tf_edges_are_finite_and_unit_or_the_message_is_refused(msg: NS):
    try:
        edges = msgs.transforms_from_tf(msg)
    except ConversionError as exc:
        assert "transform" in str(exc)  # names the edge
        return
    assert len(edges) == len(msg.transforms)
    for e in edges:
        assert math.isfinite(e.stamp) and np.isfinite(e.T).all() and _unit(e.T[:4])
        assert not e.parent.startswith("/") and not e.child.startswith("/")


@given(st.one_of(st.floats(), st.floats(-(2.0**31), 2.0**31)))
def test_a_stamp_goes_out_as_a_valid_time_or_is_refused(s: float):
    try:
        t = rm.sec_to_stamp(s)
    except ConversionError:
        assert not (math.isfinite(s) and -(2.0**31) <= s < 2.0**31 - 0.5e-9)
        return
    assert 0 <= t.nanosec < 1_000_000_000 and abs(msgs.stamp_to_sec(t) - s) <= max(1e-9, abs(s) * 2**-52)
