"""dsg_ros.bag and the bag converters: real bags written and read with rosbags in tmp_path."""

from __future__ import annotations

import bz2
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Ros1Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from dsg_ros import msgs, se3
from dsg_ros.bag import Bag, BagError, BagWriter, bag_info, build, tf
from dsg_ros.cli import main
from dsg_ros.tools import carmen
from dsg_ros.tools.carmen_bag import CarmenBagConfig, convert

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "realdata"
STORAGES = ("sqlite3", "mcap")
S = msgs.NS_PER_S


def _T(seed: int) -> np.ndarray:
    return se3.exp(np.random.default_rng(seed).normal(size=6))


def _write_sample(path: Path, storage: str) -> dict[str, object]:
    """A small bag with one of each supported type, written out of time order."""
    cloud = np.random.default_rng(3).normal(size=(50, 3)).astype(np.float32)
    ranges = np.array([1.0, np.inf, 2.5, np.nan], np.float32)
    with BagWriter(path, storage) as w:
        for k in (2, 0, 1):  # the reader must return these in time order
            w.write("/odom", msgs.ODOMETRY, build.odometry((10 + k) * S, "odom", "base_link", _T(k)), (10 + k) * S)
        w.write("/points", msgs.POINT_CLOUD, build.point_cloud(11 * S + 5, "lidar", cloud), 11 * S + 5)
        w.write("/scan", msgs.LASER_SCAN, build.laser_scan(11 * S + 7, "laser", ranges, -0.5, 0.25, 0.1, 30.0), 11 * S + 7)
        w.write("/pose", msgs.POSE_STAMPED, build.pose_stamped(12 * S, "map", _T(9)), 12 * S)
        static = build.tf_message([("base_link", "mount", 10 * S, _T(4)), ("mount", "laser", 10 * S, _T(5))])
        w.write("/tf_static", msgs.TF, static, 10 * S)
        w.write("/chatter", "std_msgs/msg/String", {"data": "hello"}, 12 * S + 1)
    return {"cloud": cloud, "ranges": ranges}


@pytest.mark.parametrize("storage", STORAGES)
def test_round_trip(tmp_path, storage):
    sample = _write_sample(tmp_path / "bag", storage)
    assert sorted(os.listdir(tmp_path)) == ["bag"]  # no temporary directory left beside it
    info = bag_info(tmp_path / "bag")
    assert info.topics["/odom"] == ("nav_msgs/msg/Odometry", 3) and info.topics["/chatter"] == ("std_msgs/msg/String", 1)
    assert (info.start_ns, info.end_ns, info.message_count) == (10 * S, 12 * S + 1, 8)
    with Bag(tmp_path / "bag") as bag:
        got = list(bag.messages(["/odom", "/points", "/scan", "/pose"]))
        assert [m.log_time_ns for m in got] == sorted(m.log_time_ns for m in got)
        odom = [msgs.odometry_from_msg(m.msg) for m in got if m.topic == "/odom"]
        assert [o.stamp for o in odom] == [10.0, 11.0, 12.0]
        np.testing.assert_allclose([o.T for o in odom], [_T(0), _T(1), _T(2)], atol=1e-15)
        (cloud,) = [m.msg for m in got if m.topic == "/points"]
        np.testing.assert_array_equal(msgs.points_from_cloud(cloud)[0], sample["cloud"])
        (scan,) = [m.msg for m in got if m.topic == "/scan"]
        np.testing.assert_array_equal(scan.ranges, sample["ranges"])
        assert msgs.points_from_scan(scan)[0].shape == (2, 3)
        (pose,) = [m.msg for m in got if m.topic == "/pose"]
        np.testing.assert_allclose(msgs.pose_stamped_from_msg(pose).T, _T(9), atol=1e-15)
        T_base_laser = tf.extrinsic(bag, "base_link", "laser")
        assert T_base_laser is not None
        np.testing.assert_allclose(T_base_laser, se3.compose(_T(4), _T(5)), atol=1e-12)
        assert tf.extrinsic(bag, "base_link", "camera") is None
        assert tf.odometry(bag).source == "/odom"
    # The storage file alone opens too.
    (storage_file,) = [p for p in (tmp_path / "bag").iterdir() if p.suffix in (".db3", ".mcap")]
    assert bag_info(storage_file).topics == info.topics


def test_ros1_bag(tmp_path):
    store = get_typestore(Stores.ROS1_NOETIC)
    store.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms", msgs.TF))  # not in rosbags' noetic store
    T: Mapping[str, Any] = store.types  # classes generated at run time
    path = tmp_path / "old.bag"
    with Ros1Writer(path) as w:
        odom = w.add_connection("/odom", msgs.ODOMETRY, typestore=store)
        tfc = w.add_connection("/tf", msgs.TF, typestore=store)
        for k in range(3):
            header = T["std_msgs/msg/Header"](seq=k, stamp=T["builtin_interfaces/msg/Time"](sec=100 + k, nanosec=0), frame_id="/odom")
            pose = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=float(k), y=0.0, z=0.0),
                orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0),
            )
            msg = T[msgs.ODOMETRY](
                header=header,
                child_frame_id="/base_link",
                pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                twist=T["geometry_msgs/msg/TwistWithCovariance"](
                    twist=T["geometry_msgs/msg/Twist"](linear=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0),
                                                       angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)),
                    covariance=np.zeros(36),
                ),
            )
            w.write(odom, (100 + k) * S, store.serialize_ros1(msg, msgs.ODOMETRY))
            transform = T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=float(k), y=0.0, z=0.0),
                                                         rotation=pose.orientation)
            stamped = T["geometry_msgs/msg/TransformStamped"](header=header, child_frame_id="/base_link", transform=transform)
            w.write(tfc, (100 + k) * S, store.serialize_ros1(T[msgs.TF](transforms=[stamped]), msgs.TF))
    with Bag(path) as bag:
        assert bag.info.topics == {"/odom": (msgs.ODOMETRY, 3), "/tf": (msgs.TF, 3)}
        from_topic, from_tf = tf.odometry(bag), tf.odometry(bag, topic="/no_odom")  # ROS 1 "/odom" frames are stripped
        assert from_tf.source == "/tf"
        for track in (from_topic, from_tf):
            np.testing.assert_array_equal(track.stamps, [100.0, 101.0, 102.0])
            np.testing.assert_array_equal(track.T[:, 4], [0.0, 1.0, 2.0])


def test_odometry_from_tf_through_static_base_footprint(tmp_path):
    T_fp_base = np.array([1.0, 0, 0, 0, 0, 0, 0.1])
    with BagWriter(tmp_path / "b") as w:
        w.write("/tf_static", msgs.TF, build.tf_message([("base_footprint", "base_link", 0, T_fp_base)]), 1)
        for k in range(1, 4):
            w.write("/tf", msgs.TF, build.tf_message([("odom", "base_footprint", k * S, _T(k)), ("map", "odom", k * S, _T(7))]), k * S)
    with Bag(tmp_path / "b") as bag:
        track = tf.odometry(bag)
        np.testing.assert_allclose(track.T, se3.compose(np.array([_T(k) for k in range(1, 4)]), T_fp_base), atol=1e-12)
        with pytest.raises(BagError, match=r"no odom → robot transform on /tf \(transforms seen: map → odom, odom → base_footprint\)"):
            tf.odometry(bag, base_frame="robot")


def test_missing_and_unsupported_topics_list_the_bag(tmp_path):
    _write_sample(tmp_path / "bag", "sqlite3")
    with Bag(tmp_path / "bag") as bag:
        with pytest.raises(BagError) as err:
            list(bag.messages(["/odom", "/lidar"]))
        text = str(err.value)
        assert str(tmp_path / "bag") in text and "no topic /lidar" in text
        for topic, (msgtype, count) in bag.info.topics.items():
            assert f"{topic} ({msgtype}, {count} messages)" in text
        with pytest.raises(BagError, match="topic /chatter has type std_msgs/msg/String, which is not supported"):
            next(bag.messages(["/chatter"]))
        assert next(bag.messages(["/chatter"], types=None)).msg.data == "hello"


@pytest.mark.parametrize("storage", STORAGES)
def test_truncated_or_corrupt_bag_is_a_bag_error(tmp_path, storage):
    _write_sample(tmp_path / "bag", storage)
    (storage_file,) = [p for p in (tmp_path / "bag").iterdir() if p.suffix in (".db3", ".mcap")]
    data = storage_file.read_bytes()
    for damage in (data[: len(data) // 2], data[: len(data) - 100], b""):
        storage_file.write_bytes(damage)
        with pytest.raises(BagError, match=str(tmp_path / "bag")):
            with Bag(tmp_path / "bag") as bag:
                list(bag.messages(list(bag.info.topics), types=None))
    # Garbage anywhere (index intact): the file reads, or fails as a BagError
    # at open or halfway through the messages, never with another exception.
    failures = 0
    for offset in range(0, len(data), len(data) // 40):
        storage_file.write_bytes(data[:offset] + b"\xff" * 8 + data[offset + 8 :])
        try:
            with Bag(tmp_path / "bag") as bag:
                list(bag.messages(list(bag.info.topics), types=None))
        except BagError as exc:
            assert str(tmp_path / "bag") in str(exc)
            failures += 1
    assert failures > 0


def test_not_a_bag(tmp_path):
    with pytest.raises(BagError, match="no such file"):
        Bag(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="notes.txt: not a bag"):
        Bag(tmp_path / "notes.txt")
    (tmp_path / "fake.bag").write_text("hello")
    with pytest.raises(BagError, match="fake.bag: cannot read bag"):
        Bag(tmp_path / "fake.bag")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="empty: not a bag"):
        Bag(tmp_path / "empty")


def test_writer_is_atomic_and_does_not_overwrite(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with BagWriter(out, "mcap") as w:
            w.write("/odom", msgs.ODOMETRY, build.odometry(S, "odom", "base_link", se3.IDENTITY), S)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []  # nothing at the destination, no temporary left
    _write_sample(out, "sqlite3")
    with pytest.raises(BagError, match="already exists"):
        with BagWriter(out):
            pass
    with pytest.raises(BagError, match="/odom has type nav_msgs/msg/Odometry, cannot also write"):
        with BagWriter(out, overwrite=True) as w:
            w.write("/odom", msgs.ODOMETRY, build.odometry(S, "odom", "base_link", se3.IDENTITY), S)
            w.write("/odom", msgs.POSE_STAMPED, build.pose_stamped(S, "odom", se3.IDENTITY), S)
    assert bag_info(out).message_count == 8  # the failed overwrite left the old bag as it was
    with BagWriter(out, "mcap", overwrite=True) as w:
        w.write("/odom", msgs.ODOMETRY, build.odometry(S, "odom", "base_link", se3.IDENTITY), S)
    assert os.listdir(tmp_path) == ["out"] and bag_info(out).topics == {"/odom": (msgs.ODOMETRY, 1)}
    with pytest.raises(BagError, match="unknown storage 'rosbag3'"):
        BagWriter(tmp_path / "x", "rosbag3")


# --- CARMEN → bag -------------------------------------------------------------

_BEAMS = 4
_CARMEN = """\
# a tiny CARMEN log
PARAM robot_frontlaser_offset 0.25 nohost 0
PARAM robot_front_laser_max 8.0 nohost 0
ODOM 0.0 0.0 0.0 0.5 0.1 0.0 1.00 nohost 1.00
FLASER 4 1.0 8.0 2.5 9.0 0.25 0.0 0.0 0.0 0.0 0.0 1.05 nohost 1.05
ODOM 0.1 0.0 0.05 0.5 0.1 0.0 1.10 nohost 1.10
FLASER 4 1.5 2.0 8.0 3.0 0.35 0.0 0.05 0.1 0.0 0.05 1.35 nohost 1.35
ODOM 0.2 0.01 0.1 0.5 0.1 0.0 1.20 nohost 1.20
FLASER 4 1.5 2.0 8.0 3.5 0.45 0.01 0.1 0.2 0.01 0.1 1.25 nohost 1.25
"""


def _corrected(text: str) -> str:
    """The log's corrected version: FLASER poses shifted by +1 m in y, one scan dropped."""
    lines = []
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == "FLASER":
            if f[2] == "1.0":
                continue
            for i in (2 + _BEAMS + 1, 2 + _BEAMS + 4):
                f[i] = f"{float(f[i]) + 1.0:.2f}"
        lines.append(" ".join(f))
    return "\n".join(lines) + "\n"


def _read_carmen_bag(path: Path) -> dict[str, list]:
    with Bag(path) as bag:
        return {t: [m.msg for m in bag.messages([t])] for t in bag.info.topics}


@pytest.mark.parametrize("storage", STORAGES)
def test_carmen_synthetic(tmp_path, storage):
    (tmp_path / "run.log").write_text(_CARMEN)
    (tmp_path / "corrected.log").write_text(_corrected(_CARMEN))
    summary = convert(tmp_path / "run.log", tmp_path / "bag", tmp_path / "corrected.log", CarmenBagConfig(storage=storage, odometry="scan"))
    assert summary["counts"] == {"/tf_static": 1, "/scan": 3, "/odom": 3, "/ground_truth": 2}
    assert summary["stamps_repaired"] == 1  # the scan stamped 1.35 before one stamped 1.25
    got = _read_carmen_bag(tmp_path / "bag")
    scans = got["/scan"]
    # The late record is pulled back and its neighbours spread by the moving average over file order.
    assert [msgs.stamp_to_sec(s.header.stamp) for s in scans] == pytest.approx([1.05, (1.05 + 1.25 + 1.25) / 3, 1.25], abs=1e-6)
    np.testing.assert_array_equal(scans[0].ranges, [1.0, np.inf, 2.5, np.inf])  # max range 8 and beyond: no return
    assert (scans[0].header.frame_id, scans[0].range_min, scans[0].range_max) == ("laser", 0.0, 8.0)
    assert scans[0].angle_min == pytest.approx(-math.pi / 2) and scans[0].angle_increment == pytest.approx(math.pi / 4)
    assert scans[0].angle_max == pytest.approx(math.pi / 4)
    odom = [msgs.odometry_from_msg(m) for m in got["/odom"]]
    assert [o.stamp for o in odom] == [msgs.stamp_to_sec(s.header.stamp) for s in scans]  # one per scan, same stamp
    np.testing.assert_allclose([o.T for o in odom], carmen.se2_to_se3(np.array([[0, 0, 0], [0.1, 0, 0.05], [0.2, 0.01, 0.1]])), atol=1e-12)
    assert (got["/odom"][0].header.frame_id, got["/odom"][0].child_frame_id) == ("odom", "base_link")
    (edge,) = msgs.transforms_from_tf(got["/tf_static"][0])
    assert (edge.parent, edge.child) == ("base_link", "laser")
    np.testing.assert_array_equal(edge.T, [1, 0, 0, 0, 0.25, 0, 0])
    # Reference: the corrected laser pose moved back 0.25 m along the laser's heading.
    truth = [msgs.odometry_from_msg(m) for m in got["/ground_truth"]]
    assert [t.stamp for t in truth] == [msgs.stamp_to_sec(s.header.stamp) for s in scans[1:]]
    x, y, th = 0.35, 1.0, 0.05
    np.testing.assert_allclose(truth[0].T, carmen.se2_to_se3(np.array([x - 0.25 * np.cos(th), y - 0.25 * np.sin(th), th])), atol=1e-12)
    assert got["/ground_truth"][0].header.frame_id == "map"


def test_carmen_odom_records(tmp_path):
    (tmp_path / "run.log").write_text(_CARMEN)
    convert(tmp_path / "run.log", tmp_path / "bag", config=CarmenBagConfig(odometry="odom"))
    odom = _read_carmen_bag(tmp_path / "bag")["/odom"]
    assert [msgs.stamp_to_sec(m.header.stamp) for m in odom] == pytest.approx([1.0, 1.1, 1.2])
    assert (odom[1].twist.twist.linear.x, odom[1].twist.twist.angular.z) == (0.5, 0.1)


def test_carmen_bad_line_names_it_and_writes_nothing(tmp_path):
    lines = _CARMEN.splitlines()
    lines[6] = "FLASER 4 1.5 2.0 oops 3.0 0.35 0.0 0.05 0.1 0.0 0.05 1.35 nohost 1.35"
    (tmp_path / "bad.log").write_text("\n".join(lines) + "\n")
    with pytest.raises(carmen.CarmenError, match=r"bad.log:7: cannot parse FLASER"):
        convert(tmp_path / "bad.log", tmp_path / "bag")
    assert sorted(os.listdir(tmp_path)) == ["bad.log"]


def test_carmen_aces_head_through_the_cli(tmp_path, capsys):
    with bz2.open(REALDATA / "aces.clf.bz2", "rt") as f:
        head = [next(f) for _ in range(300)]
    (tmp_path / "aces_head.clf").write_text("".join(head))
    log = carmen.read_log(tmp_path / "aces_head.clf")
    argv = ["convert", "carmen", str(tmp_path / "aces_head.clf"), "--out", str(tmp_path / "aces"), "--storage", "mcap", "--odometry", "scan"]
    assert main([*argv, "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["counts"]["/scan"] == len(log.scans) > 100
    got = _read_carmen_bag(tmp_path / "aces")
    ranges = np.array([s.ranges for s in got["/scan"]])
    no_return = log.scans.ranges >= log.max_range_m
    assert no_return.any() and np.isposinf(ranges[no_return]).all()
    np.testing.assert_array_equal(ranges[~no_return], log.scans.ranges[~no_return])
    odom = np.array([msgs.odometry_from_msg(m).T for m in got["/odom"]])
    np.testing.assert_allclose(odom, carmen.se2_to_se3(log.scans.odom_pose), atol=1e-12)
    assert main(["convert", "carmen", str(tmp_path / "aces_head.clf"), "--out", str(tmp_path / "aces"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err


# --- simulator → bag ----------------------------------------------------------


def test_sim_bag_through_the_cli(tmp_path, capsys):
    from dsg_ros.tools.sim.scenario import SIM_EPOCH_S, SimConfig, simulate

    assert main(["sim", "--bag", str(tmp_path / "sim"), "--duration", "1", "--seed", "3", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    data = simulate(SimConfig(duration_s=1.0, seed=3))
    assert summary["counts"] == {"/tf_static": 1, "/odom": len(data.odom_stamps), "/ground_truth": len(data.gt_stamps), "/points": len(data.clouds)}
    with Bag(tmp_path / "sim") as bag:
        T_base_lidar = tf.extrinsic(bag, "base_link", "lidar")
        assert T_base_lidar is not None
        np.testing.assert_allclose(T_base_lidar, data.T_base_sensor, atol=1e-15)
        track = tf.odometry(bag)
        np.testing.assert_allclose(track.stamps - SIM_EPOCH_S, data.odom_stamps, atol=1e-9)
        np.testing.assert_allclose(track.T, data.T_odom_base, atol=1e-15)
        clouds = [m.msg for m in bag.messages(["/points"])]
        truth = [msgs.odometry_from_msg(m.msg) for m in bag.messages(["/ground_truth"])]
    assert clouds[1].header.frame_id == "lidar"
    assert msgs.stamp_to_sec(clouds[1].header.stamp) == pytest.approx(SIM_EPOCH_S + data.cloud_stamps[1], abs=1e-9)
    np.testing.assert_array_equal(msgs.points_from_cloud(clouds[1])[0], data.clouds[1])
    np.testing.assert_allclose([t.T for t in truth], data.T_world_base, atol=1e-15)
