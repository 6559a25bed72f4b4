"""Message <-> NumPy conversion (dsg_ros.ros.pointcloud, dsg_ros.ros.messages): no node, no DDS."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg")
pytest.importorskip("nav_msgs.msg")
pytest.importorskip("visualization_msgs.msg")
pytest.importorskip("diagnostic_msgs.msg")

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import Point
from nav_msgs.msg import Odometry
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from dsg_ros import se3
from dsg_ros.ros import messages as rm
from dsg_ros.ros.pointcloud import CloudError, cloud_to_xyz, xyz_to_cloud

STAMP = Time(sec=12, nanosec=345)
F32, F64 = PointField.FLOAT32, PointField.FLOAT64


def _cloud(records: np.ndarray, fields: list[tuple[str, int, int]], *, height: int = 1, row_pad: int = 0, bigendian: bool = False) -> PointCloud2:
    """A cloud from a structured array (height·width,) with explicit offsets."""
    msg = PointCloud2()
    msg.height, msg.width = height, records.size // height
    msg.fields = [PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in fields]
    msg.point_step = records.dtype.itemsize
    msg.row_step = msg.width * msg.point_step + row_pad
    rows = records.reshape(height, msg.width).view(np.uint8).reshape(height, -1)
    msg.data = np.pad(rows, ((0, 0), (0, row_pad)), constant_values=0xAB).tobytes()
    msg.is_bigendian = bigendian
    msg.is_dense = True
    return msg


def _xyz_records(p: np.ndarray, dtype: np.dtype) -> np.ndarray:
    r = np.zeros(len(p), dtype)
    r["x"], r["y"], r["z"] = p.T
    return r


# --- point clouds -----------------------------------------------------------


def test_cloud_round_trip_is_float32_exact():
    p = np.random.default_rng(0).normal(0, 30, (1000, 3))
    msg = xyz_to_cloud(p, STAMP, "lidar")
    assert (msg.header.frame_id, msg.header.stamp, msg.point_step, msg.height, msg.is_dense) == ("lidar", STAMP, 12, 1, True)
    out, dropped = cloud_to_xyz(msg)
    assert dropped == 0 and out.dtype == np.float64
    np.testing.assert_array_equal(out, p.astype(np.float32))


def test_cloud_out_marks_non_finite_not_dense():
    p = np.array([[1.0, 2.0, 3.0], [np.nan, 0.0, 0.0]])
    msg = xyz_to_cloud(p, STAMP, "lidar")
    assert not msg.is_dense
    out, dropped = cloud_to_xyz(msg)
    assert dropped == 1 and out.tolist() == [[1.0, 2.0, 3.0]]


def test_reversed_fields_with_intensity_between():
    p = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    dtype = np.dtype({"names": ["z", "intensity", "y", "x"], "formats": ["<f4"] * 4, "offsets": [0, 4, 8, 12], "itemsize": 20})
    rec = _xyz_records(p, dtype)
    rec["intensity"] = 7.0
    out, dropped = cloud_to_xyz(_cloud(rec, [("z", 0, F32), ("intensity", 4, F32), ("y", 8, F32), ("x", 12, F32)]))
    assert dropped == 0
    np.testing.assert_array_equal(out, p)


def test_float64_fields_and_extra_ring():
    p = np.random.default_rng(2).normal(size=(20, 3))
    dtype = np.dtype({"names": ["ring", "x", "y", "z"], "formats": ["<u2", "<f8", "<f8", "<f8"], "offsets": [0, 8, 16, 24], "itemsize": 32})
    out, _ = cloud_to_xyz(_cloud(_xyz_records(p, dtype), [("ring", 0, PointField.UINT16), ("x", 8, F64), ("y", 16, F64), ("z", 24, F64)]))
    np.testing.assert_array_equal(out, p)  # float64 fields keep full precision


def test_big_endian():
    p = np.random.default_rng(3).normal(size=(30, 3)).astype(np.float32)
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": [">f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
    out, _ = cloud_to_xyz(_cloud(_xyz_records(p, dtype), [("x", 0, F32), ("y", 4, F32), ("z", 8, F32)], bigendian=True))
    np.testing.assert_array_equal(out, p)


def test_organised_cloud_with_row_padding():
    p = np.arange(60, dtype=np.float32).reshape(20, 3)
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 16})
    msg = _cloud(_xyz_records(p, dtype), [("x", 0, F32), ("y", 4, F32), ("z", 8, F32)], height=4, row_pad=24)
    assert (msg.height, msg.width, msg.row_step) == (4, 5, 5 * 16 + 24)
    out, dropped = cloud_to_xyz(msg)
    assert dropped == 0
    np.testing.assert_array_equal(out, p)  # row-major, padding bytes skipped


def test_not_dense_drops_and_counts_nan_and_inf():
    p = np.random.default_rng(4).normal(size=(10, 3)).astype(np.float32)
    p[2, 0], p[5, 2], p[7, 1] = np.nan, np.inf, -np.inf
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3, "offsets": [0, 4, 8], "itemsize": 12})
    msg = _cloud(_xyz_records(p, dtype), [("x", 0, F32), ("y", 4, F32), ("z", 8, F32)])
    msg.is_dense = False
    out, dropped = cloud_to_xyz(msg)
    assert dropped == 3
    np.testing.assert_array_equal(out, p[[0, 1, 3, 4, 6, 8, 9]])


def test_empty_cloud():
    out, dropped = cloud_to_xyz(PointCloud2())
    assert out.shape == (0, 3) and dropped == 0
    out, dropped = cloud_to_xyz(xyz_to_cloud(np.empty((0, 3)), STAMP, "lidar"))
    assert out.shape == (0, 3) and dropped == 0


def _good() -> PointCloud2:
    return xyz_to_cloud(np.ones((4, 3)), STAMP, "lidar")


def test_missing_field_is_named():
    msg = _good()
    msg.fields = msg.fields[:2]
    with pytest.raises(CloudError, match="no 'z' field"):
        cloud_to_xyz(msg)


def test_integer_datatype_is_named():
    msg = _good()
    msg.fields[0].datatype = PointField.INT16
    with pytest.raises(CloudError, match="'x' has datatype INT16"):
        cloud_to_xyz(msg)


def test_count_must_be_one():
    msg = _good()
    msg.fields[1].count = 3
    with pytest.raises(CloudError, match="'y' has count 3"):
        cloud_to_xyz(msg)


def test_point_step_too_small():
    msg = _good()
    msg.point_step = 10
    with pytest.raises(CloudError, match="'z' ends at byte 12, beyond point_step 10"):
        cloud_to_xyz(msg)


def test_truncated_data_gives_both_byte_counts():
    msg = _good()
    msg.data = bytes(msg.data)[:40]
    with pytest.raises(CloudError, match=r"40 bytes.*48"):
        cloud_to_xyz(msg)


def test_row_step_too_small():
    msg = _good()
    msg.row_step = 47
    with pytest.raises(CloudError, match="row_step 47"):
        cloud_to_xyz(msg)


# --- stamps -----------------------------------------------------------------


@pytest.mark.parametrize("s", [0.0, 1.999999999, 0.000000001, -0.25, -2e-9, 1e9 + 0.123456789, 1.7e9 + 0.987654321, 2**31 - 1.0])
def test_float_stamp_round_trip(s):
    t = rm.sec_to_stamp(s)
    assert 0 <= t.nanosec < 1_000_000_000
    assert rm.stamp_to_sec(t) == s


@pytest.mark.parametrize("sec,nanosec", [(0, 0), (1, 999_999_999), (1_000_000, 1), (4_000_000, 999_999_999), (-3, 5)])
def test_time_round_trip_below_48_days(sec, nanosec):
    t = Time(sec=sec, nanosec=nanosec)
    assert rm.sec_to_stamp(rm.stamp_to_sec(t)) == t


def test_off_grid_stamps_round_to_nearest_nanosecond():
    s = np.random.default_rng(8).uniform(-10.0, 10.0, 1000)
    back = np.array([rm.stamp_to_sec(rm.sec_to_stamp(x)) for x in s])
    assert np.abs(back - s).max() <= 0.5e-9 + 1e-15


def test_stamp_rounding_carries_and_negative_normalizes():
    assert rm.sec_to_stamp(0.9999999999) == Time(sec=1, nanosec=0)
    assert rm.sec_to_stamp(-0.25) == Time(sec=-1, nanosec=750_000_000)
    with pytest.raises(rm.MessageError):
        rm.sec_to_stamp(math.nan)
    with pytest.raises(rm.MessageError, match="int32"):
        rm.sec_to_stamp(2.0**31 + 1.0)


def test_the_newest_valid_stamp_survives_the_float_round_trip():
    # float64 rounds sec 2³¹−1 plus its last 0.12 µs up to 2³¹ s: published as the newest Time, never raising.
    newest = Time(sec=2**31 - 1, nanosec=999_999_999)
    assert rm.stamp_to_sec(newest) == 2.0**31
    assert rm.sec_to_stamp(rm.stamp_to_sec(newest)) == newest
    assert rm.sec_to_stamp(rm.stamp_to_sec(Time(sec=2**31 - 1, nanosec=0))) == Time(sec=2**31 - 1, nanosec=0)


# --- poses ------------------------------------------------------------------


def _odom(q: tuple[float, float, float, float], t: tuple[float, float, float] = (1.0, 2.0, 3.0)) -> Odometry:
    msg = Odometry()
    msg.header.stamp = Time(sec=5, nanosec=500_000_000)
    o, p = msg.pose.pose.orientation, msg.pose.pose.position
    o.w, o.x, o.y, o.z = q
    p.x, p.y, p.z = t
    return msg


def test_odometry_unit_quaternion_no_warning():
    stamp, T, warning = rm.odometry_from_msg(_odom((1.0, 0.0, 0.0, 0.0)))
    assert stamp == 5.5 and warning is None
    np.testing.assert_array_equal(T, [1, 0, 0, 0, 1, 2, 3])


def test_odometry_zero_quaternion_raises():
    with pytest.raises(rm.MessageError, match="zero quaternion"):
        rm.odometry_from_msg(_odom((0.0, 0.0, 0.0, 0.0)))


def test_odometry_non_unit_quaternion_normalized_with_warning():
    q = np.array([1.0, 1.0, 1.0, 1.0])  # norm 2
    stamp, T, warning = rm.odometry_from_msg(_odom(tuple(q)))
    np.testing.assert_allclose(T[:4], q / 2.0)
    np.testing.assert_array_equal(T[4:], [1, 2, 3])
    assert warning is not None and "norm 2" in warning


def test_odometry_nan_position_raises():
    with pytest.raises(rm.MessageError, match="non-finite position"):
        rm.odometry_from_msg(_odom((1.0, 0.0, 0.0, 0.0), (0.0, math.nan, 0.0)))


def test_pose_from_msg_is_strict():
    q = se3.exp(np.array([0.1, 0.2, 0.3, 0.4, -0.5, 0.6]))
    assert np.allclose(rm.pose_from_msg(rm.pose_to_msg(q)), q)
    with pytest.raises(rm.MessageError, match="non-unit"):
        rm.pose_from_msg(_odom((2.0, 0.0, 0.0, 0.0)).pose.pose)


def test_pose_array_odometry_and_path():
    rng = np.random.default_rng(5)
    poses = se3.exp(rng.normal(size=(4, 6)))
    stamps = np.array([10.0, 10.1, 10.25, 1.7e9 + 0.5])
    arr = rm.pose_array(poses, STAMP, "map")
    assert arr.header.frame_id == "map" and len(arr.poses) == 4
    np.testing.assert_allclose([rm.pose_from_msg(p) for p in arr.poses], poses)
    path = rm.path(stamps, poses, "map", STAMP)
    assert path.header.stamp == STAMP and [p.header.frame_id for p in path.poses] == ["map"] * 4
    assert [rm.stamp_to_sec(p.header.stamp) for p in path.poses] == stamps.tolist()
    odom = rm.odometry_msg(poses[1], STAMP, "map", "base_link")
    assert (odom.header.frame_id, odom.child_frame_id) == ("map", "base_link")
    np.testing.assert_allclose(rm.odometry_from_msg(odom)[1], poses[1])
    with pytest.raises(ValueError):
        rm.path(stamps[:3], poses, "map", STAMP)


# --- markers ----------------------------------------------------------------


def _markers(data: bytes) -> list[Marker]:
    return list(deserialize_message(data, MarkerArray).markers)


def test_voxel_markers():
    rng = np.random.default_rng(6)
    centers = rng.uniform(-5, 5, (200, 3))
    centers[[3, 50]] = np.nan
    centers[77, 2] = np.inf
    values = centers[:, 2].copy()
    values[10] = np.nan  # a finite center with a bad value is still drawn
    (m,) = _markers(rm.voxel_markers(centers, values, 0.2, "map", STAMP))
    assert (m.type, m.action, m.id, m.ns, m.header.frame_id) == (Marker.CUBE_LIST, Marker.ADD, 0, "voxels", "map")
    assert len(m.points) == len(m.colors) == 197
    o = m.pose.orientation
    assert (o.w, o.x, o.y, o.z) == (1.0, 0.0, 0.0, 0.0)
    assert (m.scale.x, m.scale.y, m.scale.z) == (0.2, 0.2, 0.2) and m.color.a == 1.0
    rgba = np.array([[c.r, c.g, c.b, c.a] for c in m.colors])
    assert np.all(rgba[:, 3] == 1.0) and np.all((rgba >= 0.0) & (rgba <= 1.0))
    assert len({tuple(c) for c in rgba.round(3)}) > 20  # heights spread over the colormap
    pts = np.array([[p.x, p.y, p.z] for p in m.points])
    np.testing.assert_array_equal(pts, centers[np.isfinite(centers).all(axis=1)])


@pytest.mark.parametrize("frame_id", ["map", "odom_a", "world_frame"])  # shifts the points' alignment padding
@pytest.mark.parametrize("n", [1, 2, 5])
def test_spliced_markers_serialize_as_rclpy_does(frame_id, n):
    rng = np.random.default_rng(n)
    centers, values = rng.normal(size=(n, 3)), rng.normal(size=n)
    reference = Marker(header=Header(stamp=STAMP, frame_id=frame_id), ns="voxels", id=0, type=Marker.CUBE_LIST, action=Marker.ADD)
    reference.pose.orientation.w = 1.0
    reference.scale.x = reference.scale.y = reference.scale.z = 0.2
    reference.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    reference.points = [Point(x=x, y=y, z=z) for x, y, z in centers.tolist()]
    reference.colors = [ColorRGBA(r=r, g=g, b=b, a=1.0) for r, g, b in rm.colorize(values).tolist()]
    # Bytes may differ in CDR padding (unspecified content): compare messages.
    expected = deserialize_message(serialize_message(MarkerArray(markers=[reference])), MarkerArray)  # colours as float32
    assert deserialize_message(rm.voxel_markers(centers, values, 0.2, frame_id, STAMP), MarkerArray) == expected

    edges = rng.normal(size=(n, 2, 3))
    lines = []
    for ns, width, part in (("odometry", 0.03, edges[: n // 2]), ("observations", 0.005, edges)):
        m = Marker(header=Header(stamp=STAMP, frame_id=frame_id), ns=ns, id=0, type=Marker.LINE_LIST, action=Marker.ADD)
        m.pose.orientation.w, m.scale.x = 1.0, width
        m.points = [Point(x=x, y=y, z=z) for x, y, z in part.reshape(-1, 3).tolist()]
        lines.append(m)
    got = _markers(rm.graph_markers(edges[: n // 2], edges, frame_id, STAMP))
    for m, g in zip(lines, got):
        m.color = g.color  # the colours are graph_markers' choice
    assert got == lines


def test_colorize_robust_range_constant_and_unknown():
    middle = rm.colorize(np.array([0.0, 0.5, 1.0]))[1]
    values = np.append(np.linspace(0.0, 1.0, 101), 1e6)  # one outlier must not wash out the map
    np.testing.assert_allclose(rm.colorize(values)[50], middle, atol=0.02)
    np.testing.assert_allclose(rm.colorize(np.full(5, 3.0)), np.tile(middle, (5, 1)))
    with pytest.raises(ValueError, match="unknown colormap"):
        rm.colorize(np.zeros(3), "jet")


def test_empty_voxels_still_publish_marker():
    (m,) = _markers(rm.voxel_markers(np.empty((0, 3)), np.empty(0), 0.2, "map", STAMP))
    assert m.type == Marker.CUBE_LIST and len(m.points) == 0


def test_graph_markers():
    odom = np.arange(4 * 6, dtype=float).reshape(4, 2, 3)
    obs = np.random.default_rng(7).normal(size=(9, 2, 3))
    obs[4, 1, 0] = np.nan
    markers = _markers(rm.graph_markers(odom, obs, "map", STAMP))
    assert [(m.ns, m.id, m.type) for m in markers] == [("odometry", 0, Marker.LINE_LIST), ("observations", 0, Marker.LINE_LIST)]
    assert [len(m.points) for m in markers] == [8, 16]
    assert all(m.pose.orientation.w == 1.0 and m.scale.x > 0 for m in markers)
    assert markers[0].color != markers[1].color
    assert [markers[0].points[1].x, markers[0].points[2].x] == [3.0, 6.0]  # pairwise flattening
    empty = _markers(rm.graph_markers(np.empty((0, 2, 3)), np.empty((0, 2, 3)), "map", STAMP))
    assert len(empty) == 2 and all(len(m.points) == 0 for m in empty)


def test_delete_all():
    (m,) = rm.delete_all("map", STAMP, "").markers
    assert m.action == Marker.DELETEALL and m.header.frame_id == "map"


# --- diagnostics ------------------------------------------------------------


def test_diagnostics_values_are_strings():
    d = rm.diagnostics(STAMP, "dsg_ros: mapper", "cpu", 1, "slow tick", {"tick_ms": 12.3456789, "keyframes": 7, "last_cost": None, "converged": True})
    (status,) = d.status
    assert d.header.stamp == STAMP and status.level == DiagnosticStatus.WARN
    assert (status.name, status.hardware_id, status.message) == ("dsg_ros: mapper", "cpu", "slow tick")
    assert {kv.key: kv.value for kv in status.values} == {"tick_ms": "12.3457", "keyframes": "7", "last_cost": "n/a", "converged": "true"}
    assert rm.diagnostics(STAMP, "n", "h", DiagnosticStatus.ERROR, "m", {}).status[0].level == DiagnosticStatus.ERROR
