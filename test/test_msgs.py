"""dsg_ros.msgs: message → NumPy conversion without ROS, on rosbags dataclasses
and plain objects with the ROS field names."""

from __future__ import annotations

import math
import subprocess
import sys
from types import SimpleNamespace as NS

import numpy as np
import pytest

from dsg_ros import msgs, se3
from dsg_ros.bag import build
from dsg_ros.msgs import ConversionError

F32, F64, INT16 = 7, 8, 3


def _time(sec: int, nanosec: int) -> NS:
    return NS(sec=sec, nanosec=nanosec)


# --- stamps -----------------------------------------------------------------


def test_stamps_are_exact_integer_nanoseconds():
    assert msgs.stamp_to_ns(_time(1_700_000_000, 987_654_321)) == 1_700_000_000_987_654_321
    assert msgs.stamp_to_sec(_time(5, 500_000_000)) == 5.5
    assert msgs.sec_to_ns(1.7e9 + 0.5) == 1_700_000_000_500_000_000  # s * 1e9 would be off by tens of ns
    assert msgs.ns_to_parts(msgs.sec_to_ns(-0.25)) == (-1, 750_000_000)
    header = build.header(msgs.sec_to_ns(12.000000345), "x")
    assert (header.stamp.sec, header.stamp.nanosec) == (12, 345)
    with pytest.raises(ConversionError, match="non-finite"):
        msgs.sec_to_ns(math.nan)
    with pytest.raises(ConversionError, match="int32"):
        msgs.ns_to_parts(2**31 * 10**9)


# --- point clouds -----------------------------------------------------------


def _cloud(records: np.ndarray, fields: list[tuple[str, int, int]], *, height: int = 1, row_pad: int = 0, bigendian: bool = False) -> NS:
    """A cloud with ``data`` as bytes (rclpy-like) from a structured array."""
    width = records.size // height
    rows = records.reshape(height, width).view(np.uint8).reshape(height, -1)
    return NS(
        height=height,
        width=width,
        fields=[NS(name=n, offset=o, datatype=d, count=1) for n, o, d in fields],
        is_bigendian=bigendian,
        point_step=records.dtype.itemsize,
        row_step=width * records.dtype.itemsize + row_pad,
        data=np.pad(rows, ((0, 0), (0, row_pad)), constant_values=0xAB).tobytes(),
        is_dense=True,
    )


def test_cloud_from_rosbags_message_float32_exact():
    p = np.random.default_rng(0).normal(0, 30, (500, 3))
    msg = build.point_cloud(10, "lidar", p)
    assert isinstance(msg.data, np.ndarray)
    out, dropped = msgs.points_from_cloud(msg)
    assert dropped == 0 and out.dtype == np.float64
    np.testing.assert_array_equal(out, p.astype(np.float32))


def test_cloud_big_endian_float64_padded_rows_any_field_order():
    p = np.random.default_rng(1).normal(size=(12, 3))
    dtype = np.dtype({"names": ["ring", "z", "x", "y"], "formats": [">u2", ">f8", ">f8", ">f8"], "offsets": [0, 8, 16, 24], "itemsize": 40})
    rec = np.zeros(12, dtype)
    rec["x"], rec["y"], rec["z"] = p.T
    p[3, 1] = rec["y"][3] = np.nan
    msg = _cloud(rec, [("ring", 0, 4), ("z", 8, F64), ("x", 16, F64), ("y", 24, F64)], height=3, row_pad=5, bigendian=True)
    out, dropped = msgs.points_from_cloud(msg)
    assert dropped == 1
    np.testing.assert_array_equal(out, np.delete(p, 3, axis=0))
    msg.data = list(msg.data)  # a plain sequence of ints works too
    np.testing.assert_array_equal(msgs.points_from_cloud(msg)[0], out)


def _good() -> NS:
    rec = np.zeros(4, np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")]))
    return _cloud(rec, [("x", 0, F32), ("y", 4, F32), ("z", 8, F32)])


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda m: setattr(m, "fields", m.fields[:2]), "no 'z' field"),
        (lambda m: setattr(m.fields[0], "datatype", INT16), "'x' has datatype INT16"),
        (lambda m: setattr(m.fields[0], "datatype", 42), "'x' has datatype unknown"),
        (lambda m: setattr(m.fields[1], "count", 3), "'y' has count 3"),
        (lambda m: setattr(m, "point_step", 10), "'z' ends at byte 12, beyond point_step 10"),
        (lambda m: setattr(m, "row_step", 47), "row_step 47 < width 4"),
        (lambda m: setattr(m, "data", m.data[:40]), r"truncated data: 40 bytes.*48"),
        (lambda m: setattr(m, "height", 2), r"truncated data: 48 bytes.*96"),
        (lambda m: setattr(m, "data", m.data + bytes(12)), r"60 bytes, more than row_step × height = 48"),
    ],
)
def test_malformed_cloud_raises(breakage, match):
    msg = _good()
    breakage(msg)
    with pytest.raises(ConversionError, match=match):
        msgs.points_from_cloud(msg)


def test_empty_cloud():
    out, dropped = msgs.points_from_cloud(NS(height=1, width=0, fields=[], data=b""))
    assert out.shape == (0, 3) and dropped == 0


# --- laser scans ------------------------------------------------------------


def test_scan_bearings_and_no_return_values():
    inf = np.inf
    ranges = np.array([1.0, np.nan, inf, -inf, 0.05, 30.0, 31.0, 2.0, np.nan])
    p, dropped = msgs.scan_points(ranges, -0.5, 0.125, 0.1, 30.0)
    assert dropped == 2  # only NaN counts; ±inf, too close, >= range_max are no return
    bearing = -0.5 + 0.125 * np.array([0, 7])
    np.testing.assert_allclose(p, np.stack([[1.0, 2.0] * np.cos(bearing), [1.0, 2.0] * np.sin(bearing), [0.0, 0.0]], axis=-1))


def test_scan_message_from_rosbags_and_plain_object():
    ranges = np.array([1.0, 2.0, np.inf, 3.0], np.float32)
    msg = build.laser_scan(5, "laser", ranges, -math.pi / 2, math.pi / 3, 0.0, 10.0)
    assert msg.angle_max == pytest.approx(math.pi / 2)
    p, dropped = msgs.points_from_scan(msg)
    assert dropped == 0 and p.shape == (3, 3)
    np.testing.assert_allclose(p[0], [0.0, -1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(p[2], [0.0, 3.0, 0.0], atol=1e-6)  # the last beam, at +90°
    plain = NS(angle_min=-1.0, angle_max=1.0, angle_increment=1.0, range_min=0.0, range_max=5.0, ranges=[1.0, 1.0, 1.0])
    assert msgs.points_from_scan(plain)[0].shape == (3, 3)


def _scan(**kw) -> NS:
    base = dict(angle_min=-1.0, angle_max=1.0, angle_increment=0.5, range_min=0.1, range_max=10.0, ranges=[1.0] * 5)
    return NS(**(base | kw))


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(angle_increment=0.0), "angle_increment must be finite and positive"),
        (dict(angle_increment=-0.5), "angle_increment must be finite and positive"),
        (dict(angle_increment=math.nan), "angle_increment must be finite and positive"),
        (dict(angle_min=math.nan), "non-finite angle_min"),
        (dict(range_min=11.0), "range_min 11.0 > range_max 10.0"),
        (dict(range_max=math.nan), "NaN range limits"),
        (dict(ranges=[1.0] * 7), "7 ranges, but angle_min -1 to angle_max 1 in steps of 0.5 rad make 5 beams"),
        (dict(ranges=[1.0] * 3), "3 ranges"),
        (dict(angle_max=math.inf), "make inf beams"),
    ],
)
def test_malformed_scan_raises(fields, match):
    with pytest.raises(ConversionError, match=match):
        msgs.points_from_scan(_scan(**fields))


def test_scan_length_within_one_beam_is_accepted():
    for n in (4, 5, 6):  # drivers disagree on whether angle_max is the last bearing
        assert msgs.points_from_scan(_scan(ranges=[1.0] * n))[0].shape == (n, 3)


# --- poses and TF -----------------------------------------------------------


def test_odometry_and_pose_stamped_from_rosbags_messages():
    T = se3.exp(np.array([0.1, -0.2, 0.3, 0.4, -0.5, 0.6]))
    stamp, out, warning = msgs.odometry_from_msg(build.odometry(msgs.sec_to_ns(3.25), "odom", "base_link", T))
    assert stamp == 3.25 and warning is None
    np.testing.assert_allclose(out, T, atol=1e-15)
    stamped = msgs.pose_stamped_from_msg(build.pose_stamped(7, "map", T))
    assert stamped.stamp == 7e-9
    np.testing.assert_allclose(stamped.T, T, atol=1e-15)
    wrong = build.odometry(0, "odom", "base_link", np.array([2.0, 0, 0, 0, 1, 2, 3]))
    assert "norm 2" in (msgs.odometry_from_msg(wrong).warning or "")
    np.testing.assert_array_equal(msgs.odometry_from_msg(wrong).T, [1, 0, 0, 0, 1, 2, 3])
    with pytest.raises(ConversionError, match="zero quaternion"):
        msgs.odometry_from_msg(build.odometry(0, "odom", "base_link", np.zeros(7)))
    with pytest.raises(ConversionError, match="non-finite position"):
        msgs.pose_stamped_from_msg(build.pose_stamped(0, "map", np.array([1, 0, 0, 0, np.nan, 0, 0])))


def test_a_quaternion_too_large_for_its_norm_is_normalized_not_zeroed():
    huge = build.odometry(0, "odom", "base_link", np.array([3e155, 0.0, 0.0, 4e155, 1.0, 2.0, 3.0]))
    out = msgs.odometry_from_msg(huge)
    np.testing.assert_allclose(out.T, [0.6, 0.0, 0.0, 0.8, 1.0, 2.0, 3.0], atol=1e-15)
    assert "norm 5e+155" in (out.warning or "")
    with pytest.raises(ConversionError, match="non-unit quaternion"):
        msgs.pose_from_msg(huge.pose.pose)
    with pytest.raises(ConversionError, match="non-unit quaternion"):  # the largest component alone is 1
        msgs.pose_from_msg(build.odometry(0, "odom", "base_link", np.array([1e155, 1e154, 0.0, 0.0, 0.0, 0.0, 0.0])).pose.pose)


def test_transforms_from_tf_strip_slashes_and_are_strict():
    T = se3.exp(np.array([1.0, 2.0, 3.0, 0.1, 0.2, 0.3]))
    msg = build.tf_message([("/odom", "/base_link", msgs.sec_to_ns(2.5), T), ("base_link", "laser", 0, se3.IDENTITY)])
    (a, b) = msgs.transforms_from_tf(msg)
    assert (a.parent, a.child, a.stamp, b.parent, b.child) == ("odom", "base_link", 2.5, "base_link", "laser")
    np.testing.assert_allclose(a.T, T, atol=1e-15)
    bad = build.tf_message([("odom", "base_link", 0, np.array([1.1, 0, 0, 0, 0, 0, 0]))])
    with pytest.raises(ConversionError, match="non-unit quaternion.*transform odom → base_link"):
        msgs.transforms_from_tf(bad)


def test_msgs_and_bag_import_no_ros():
    """The layering: message conversion and bags work without rclpy or any
    *_msgs package, and bag/ never imports the node's ros/."""
    code = (
        "import sys; import dsg_ros.msgs, dsg_ros.bag, dsg_ros.bag.tf, dsg_ros.bag.replay, dsg_ros.tools.carmen_bag, dsg_ros.tools.sim_bag; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'sensor_msgs', 'nav_msgs', 'geometry_msgs', "
        "'tf2_msgs', 'builtin_interfaces', 'std_msgs') or m.startswith('dsg_ros.ros')); print(bad); assert not bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
