"""dsg-ros replay: a real ACES excerpt and a sim bag through the mapper, bad input, outputs.

Every replay runs in this process through ``dsg_ros.cli.main``, so the
mapper compiles once for the whole file.
"""

from __future__ import annotations

import bz2
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dsg_ros import msgs, se3
from dsg_ros.bag import Bag, BagWriter, build
from dsg_ros.cli import main
from dsg_ros.config import section
from dsg_ros.learn import calibration as cal
from dsg_ros.progress import ProgressBar
from dsg_ros.tools.carmen_bag import CarmenBagConfig, convert
from dsg_ros.tools.sim.scenario import SimConfig, simulate
from dsg_ros.tools.sim_bag import SimBagConfig, write_sim_bag

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "realdata"
S = msgs.NS_PER_S
OUTPUTS = ("estimate.tum", "smoothed.tum", "odometry.tum", "reference.tum", "calibration.yaml", "map.ply", "map.png", "summary.json")
RECORDED = {
    "/dsg_mapper/poses": "geometry_msgs/msg/PoseArray",
    "/dsg_mapper/path": "nav_msgs/msg/Path",
    "/dsg_mapper/odometry": msgs.ODOMETRY,
    "/dsg_mapper/voxels": "visualization_msgs/msg/MarkerArray",
    "/tf": msgs.TF,
}


def _replay(capsys, *args: str) -> tuple[int, Any, str]:
    """Exit status, the JSON summary (with --json, else None) and stderr of an in-process `dsg-ros replay`."""
    code = main(["replay", *args])
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in args else None), out.err


def _tum(path: Path) -> np.ndarray:
    rows = np.loadtxt(path, ndmin=2)
    assert rows.shape[1] == 8 and np.isfinite(rows).all()
    return rows


def _log_head(name: str, seconds: float, dest: Path) -> Path:
    """The first ``seconds`` of a real-data CARMEN log, written as text to ``dest``."""
    head, start = [], None
    with bz2.open(REALDATA / name, "rt") as f:
        for line in f:
            fields = line.split()
            if fields and fields[0] in ("FLASER", "ODOM"):
                start = float(fields[-3]) if start is None else start
                if float(fields[-3]) - start > seconds:
                    break
            head.append(line)
    dest.write_text("".join(head))
    return dest


@pytest.fixture(scope="module")
def aces_bag(tmp_path_factory) -> Path:
    """The first ~25 s of ACES (~160 scans, 4 reference poses) as an mcap bag."""
    if not REALDATA.is_dir():
        pytest.skip("shared real-data logs not present")
    tmp = tmp_path_factory.mktemp("aces")
    convert(_log_head("aces.clf.bz2", 25.0, tmp / "aces25.clf"), tmp / "aces25", REALDATA / "aces-corrected.log.gz", CarmenBagConfig(storage="mcap"))
    return tmp / "aces25"


def test_aces_excerpt_writes_every_output_and_records_what_the_node_publishes(aces_bag, tmp_path, capsys):
    out, rec = tmp_path / "out", tmp_path / "rec"
    code, summary, _ = _replay(
        capsys, str(aces_bag), "--reference-topic", "/ground_truth", "--relations", str(REALDATA / "aces.relations"),
        "--output", str(out), "--record", str(rec), "--json",
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # and no temporary files left
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["sensors"] == ["/scan"] and summary["extrinsic_source"].startswith("/tf_static")
    consumed = summary["clouds_consumed"]
    assert consumed >= 150 and summary["keyframes"] >= 5 and summary["skipped"] == {}
    for key in ("realtime_factor", "ticks", "tick_ms_p50", "tick_ms_p99", "keyframe_tick_ms_p50", "keyframe_tick_ms_p99", "rss_mb"):
        assert summary[key] > 0, key
    for name in ("estimate", "smoothed", "odometry"):  # the keyframes may end before the last reference pose
        score = summary["scores"][name]
        assert math.isfinite(score["ate_m"]) and score["poses"] >= 3 and score["relations_used"] > 0, (name, score)
    assert summary["scores"]["estimate"]["poses"] == summary["scores"]["odometry"]["poses"] == 4
    assert summary["scores"]["estimate"]["ate_m"] < 0.2

    estimate, odometry = _tum(out / "estimate.tum"), _tum(out / "odometry.tum")
    assert len(estimate) == len(odometry) == consumed
    np.testing.assert_array_equal(estimate[:, 0], odometry[:, 0])
    assert np.all(np.diff(estimate[:, 0]) > 0)
    assert len(_tum(out / "smoothed.tum")) == summary["keyframes"]
    assert len(_tum(out / "reference.tum")) == summary["messages"]["/ground_truth"] == 4
    assert cal.CalibrationSummary.of(cal.load(out / "calibration.yaml")).odom_scale == pytest.approx(tuple(summary["calibration"]["odom_scale"]))
    assert (out / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ply = (out / "map.ply").read_bytes()
    header = ply[: ply.index(b"end_header\n") + len(b"end_header\n")].decode().splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"] and "property uint observations" in header
    (vertices,) = [int(line.split()[2]) for line in header if line.startswith("element vertex")]
    assert vertices > 50 and len(ply) == len("\n".join(header)) + 1 + 16 * vertices

    with Bag(rec) as bag:
        assert {t: bag.info.topics[t].msgtype for t in RECORDED} == RECORDED
        got = {t: [m.msg for m in bag.messages([t], types=None)] for t in RECORDED}
    stamps = [msgs.stamp_to_sec(m.header.stamp) for m in got["/dsg_mapper/odometry"]]
    np.testing.assert_allclose(stamps, estimate[:, 0], atol=1e-6)  # one corrected pose per mapped scan, at its stamp
    np.testing.assert_allclose([m.pose.pose.position.x for m in got["/dsg_mapper/odometry"]], estimate[:, 1], atol=1e-6)
    assert got["/tf"][0].transforms[0].header.frame_id == "map" and got["/tf"][0].transforms[0].child_frame_id == "odom"
    assert len(got["/dsg_mapper/path"][-1].poses) == summary["keyframes"]
    assert 0 < len(got["/dsg_mapper/poses"][-1].poses) <= summary["keyframes"]
    marker = got["/dsg_mapper/voxels"][-1].markers[0]
    assert marker.type == marker.CUBE_LIST and len(marker.points) == len(marker.colors) == vertices
    assert len(got["/dsg_mapper/voxels"]) <= 25 * 0.5 + 2  # at most the node's 0.5 Hz over 25 s, and the final map


def test_sim_bag_replays_its_points_with_the_extrinsic_from_tf_static(tmp_path, capsys):
    data = simulate(SimConfig(duration_s=3.0))
    write_sim_bag(data, tmp_path / "sim", SimBagConfig(storage="mcap"))
    code, summary, err = _replay(capsys, str(tmp_path / "sim"), "--reference-topic", "/ground_truth", "--no-calibration", "--start", "0.5", "--json")
    assert code == 0 and err == ""  # --json: no progress either
    assert summary["sensors"] == ["/points"] and summary["sensor_frame"] == "lidar"
    np.testing.assert_allclose(summary["T_base_sensor"], data.T_base_sensor, atol=1e-12)
    assert summary["clouds_consumed"] == len(data.clouds) - 5 and summary["calibration_steps"] == 0  # 10 Hz, from 0.5 s on
    assert summary["scores"]["estimate"]["ate_m"] < 0.2


def _ranges(n: int = 180) -> np.ndarray:
    """A scan of a 6 m × 4 m room from its middle, 1° beams from −90°."""
    bearing = np.radians(-90.0 + np.arange(n))
    with np.errstate(divide="ignore"):
        return np.minimum(np.abs(3.0 / np.cos(bearing)), np.abs(2.0 / np.sin(bearing))).astype(np.float32)


def test_bad_messages_are_counted_skips_with_their_reason(tmp_path, capsys):
    bag = tmp_path / "bad"
    step = math.radians(1.0)
    with BagWriter(bag, "mcap") as w:
        w.write("/tf_static", msgs.TF, build.tf_message([("base_link", "laser", 0, se3.IDENTITY)]), 0)
        odometry_stamps = [1.0 + 0.1 * k for k in range(20)]
        odometry_stamps[12] = odometry_stamps[11]  # repeated: the mapper refuses it
        for k, t in enumerate(odometry_stamps):
            T = np.array([1.0, 0, 0, 0, 0.02 * k, 0, 0])
            w.write("/odom", msgs.ODOMETRY, build.odometry(int(t * S), "odom", "base_link", T), int(t * S) + k)
        for k in range(20):
            t = 1.0 + 0.1 * min(k, 18) + 0.001  # the last scan repeats the one before
            scan = build.laser_scan(int(t * S), "laser", _ranges(), -math.pi / 2, step, 0.1, 30.0)
            if k == 5:
                scan.angle_max = 0.0  # 180 ranges for half the angles
            w.write("/scan", msgs.LASER_SCAN, scan, int(t * S) + 500 + k)
    # The node's parameters file works as is; --rate 10 paces the 2 s of bag over ~0.2 s.
    params = Path(__file__).resolve().parents[1] / "config" / "hybrid.yaml"
    code, summary, _ = _replay(capsys, str(bag), "--params-file", str(params), "--rate", "10", "--json")
    assert code == 0 and summary["realtime_factor"] < 11.0
    assert summary["skipped"] == {
        "/scan: # ranges, but angle_min # to angle_max # in steps of # rad make # beams": 1,
        "odom refused by the mapper": 1,
        "cloud refused by the mapper": 1,
    }
    assert summary["clouds_consumed"] == 18 and summary["messages"] == {"/odom": 20, "/scan": 19}
    assert any("not after the previous" in reason for reason in summary["warnings"])


def test_missing_topic_lists_the_bag_and_corrupt_bag_names_the_file(aces_bag, tmp_path, capsys):
    code, _, err = _replay(capsys, str(aces_bag), "--points-topic", "/velodyne_points", "--output", str(tmp_path / "out"))
    assert code == 2 and "no topic /velodyne_points" in err
    assert "/scan (sensor_msgs/msg/LaserScan, " in err and "/odom (nav_msgs/msg/Odometry, " in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    code, _, err = _replay(capsys, str(aces_bag), "--odom-topic", "/wheel_odom")  # and no /tf either
    assert code == 2 and "no odometry: neither /wheel_odom nor /tf; the bag has:" in err and "/scan (sensor_msgs" in err
    (tmp_path / "typo.yaml").write_text("/**:\n  ros__parameters:\n    mapper:\n      window:\n        keyframs: 3\n")
    code, _, err = _replay(capsys, str(aces_bag), "--params-file", str(tmp_path / "typo.yaml"))
    assert code == 2 and "mapper.window: unknown key(s) ['keyframs']" in err
    (tmp_path / "typo.yaml").unlink()

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (storage,) = aces_bag.glob("*.mcap")
    data = bytearray(storage.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = b"\xff" * 2000  # a damaged chunk: found halfway through the replay
    (corrupt / storage.name).write_bytes(bytes(data))
    (corrupt / "metadata.yaml").write_text((aces_bag / "metadata.yaml").read_text())
    code, _, err = _replay(capsys, str(corrupt), "--output", str(tmp_path / "out"), "--record", str(tmp_path / "rec"))
    assert code == 2 and f"{corrupt}: cannot read" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt"]  # no output folder, no recorded bag, no partial files


def test_a_params_file_gives_the_mapper_section_in_either_form():
    node_file = {"/**": {"ros__parameters": {"map_frame": "map", "mapper": {"window": {"keyframes": 7}}, "mapper.voxel_size": 0.3}}}
    assert section(node_file, "mapper") == {"window": {"keyframes": 7}, "voxel_size": 0.3}
    assert section({"mapper": {"voxel_size": 0.3}, "sim": {}}, "mapper") == {"voxel_size": 0.3}
    assert section({"/**": {"ros__parameters": {"rate_hz": 5.0}}}, "mapper") is None  # all defaults
    with pytest.raises(ValueError, match="neither a 'mapper:' section nor a ROS parameters file"):
        section({"maper": {}}, "mapper", "p.yaml")
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "hybrid.yaml").read_text())
    mapper = section(shipped, "mapper")
    assert mapper is not None and mapper["window"]["keyframes"] == 10


def test_progress_bar_line_says_fraction_rate_and_eta():
    bar = ProgressBar("replay", enabled=False)
    bar.update(0.25, 500)
    line = bar.line(bar.started + 10.0)
    assert "25.0 %" in line and "50 msg/s" in line and "ETA 0:30" in line and "[" + "#" * 8 + "." * 22 + "]" in line


def test_reference_poses_fed_as_odometry_are_kept(tmp_path):
    """A mapper given perfect odometry must keep it: FR079's first 30 s (a
    reference pose at almost every scan), the reference as /odom, scored
    against itself (goal: ATE ≤ 0.2 m; the whole-log rows are in bench realdata)."""
    if not REALDATA.is_dir():
        pytest.skip("shared real-data logs not present")
    from dsg_ros.bag.replay import ReplayConfig, replay
    from dsg_ros.mapping import MapperConfig

    log = _log_head("fr079.clf.bz2", 30.0, tmp_path / "fr079.clf")
    convert(log, tmp_path / "bag", REALDATA / "freiburg-079-corrected.log.gz", CarmenBagConfig(storage="mcap"))
    config = ReplayConfig(scan_topic="/scan", odom_topic="/ground_truth", reference_topic="/ground_truth", sensor_stamps_topic="/ground_truth",
                          calibrate=False, supervise=False)
    result = replay(tmp_path / "bag", config, MapperConfig())
    scores = result.summary["scores"]["estimate"]
    assert result.summary["clouds_consumed"] > 100
    assert scores["ate_m"] <= 0.2, scores


def test_base_frame_points_move_by_the_mappers_current_extrinsic(tmp_path):
    """Points stamped in the base frame reach the mapper in the sensor frame
    through the extrinsic the mapper applies (calibrated, possibly learned
    while replaying), not the nominal one; sensor-frame points pass as they are."""
    from dsg_ros.bag.replay import _SensorFrames

    with BagWriter(tmp_path / "bag", "mcap") as w:
        w.write("/tf_static", msgs.TF, build.tf_message([("base_link", "laser", 0, se3.IDENTITY)]), 0)
    nominal = np.array([1.0, 0, 0, 0, 0.2, 0, 0])
    with Bag(tmp_path / "bag") as bag:
        frames = _SensorFrames(bag, "base_link", "laser", nominal)
    p_base = np.array([[1.0, 2.0, 0.0]])
    np.testing.assert_allclose(frames.to_sensor("base_link", p_base)[0], [[0.8, 2.0, 0.0]])
    calibrated = np.array([1.0, 0, 0, 0, 0.5, 0, 0.1])
    frames.T_base_sensor = lambda: calibrated
    moved, was_moved = frames.to_sensor("base_link", p_base)
    assert was_moved
    np.testing.assert_allclose(moved, [[0.5, 2.0, -0.1]])
    assert frames.to_sensor("laser", p_base) == (p_base, False)
