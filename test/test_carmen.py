"""CARMEN log reading: records, stamp repair, reference matching, relations."""

from __future__ import annotations

import bz2
from pathlib import Path

import numpy as np
import pytest

from dsg_ros.tools import carmen

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "realdata"


def _flaser(ranges, pose, odom, stamp):
    values = " ".join(f"{r:.2f}" for r in ranges)
    return f"FLASER {len(ranges)} {values} {pose[0]} {pose[1]} {pose[2]} {odom[0]} {odom[1]} {odom[2]} {stamp} host {stamp}\n"


def _odom(pose, stamp):
    return f"ODOM {pose[0]} {pose[1]} {pose[2]} 0.1 0.0 0.0 {stamp} host {stamp}\n"


def test_reads_records_params_and_geometry(tmp_path):
    path = tmp_path / "small.clf"
    path.write_text(
        "# comment\nPARAM robot_frontlaser_offset 0.25 host 0\nPARAM robot_front_laser_max 50 host 0\n"
        + _odom((0, 0, 0), 1.0)
        + _flaser([1.0, 2.0, 50.0, 3.0], (0.25, 0, 0), (0, 0, 0), 1.05)
        + _odom((0.1, 0, 0.1), 1.1)
        + _flaser([1.5, 2.5, 3.5, 4.5], (0.35, 0, 0.1), (0.1, 0, 0.1), 1.15)
        + "SYNC whatever\n"
    )
    log = carmen.read_log(path)
    assert len(log.scans) == 2 and log.beams == 4
    assert log.max_range_m == 50.0 and log.laser_offset_m == 0.25
    np.testing.assert_allclose(log.scans.odom_pose[1], [0.1, 0, 0.1])
    np.testing.assert_allclose(log.odometry.stamps, [1.0, 1.1])
    # Even beam counts step 180°/beams from −90°.
    np.testing.assert_allclose(np.degrees(carmen.beam_angles(180))[[0, 1, -1]], [-90.0, -89.0, 89.0])
    np.testing.assert_allclose(np.degrees(carmen.beam_angles(181))[[0, -1]], [-90.0, 90.0])


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.clf"
    path.write_text(_odom((0, 0, 0), 1.0) + "FLASER 3 1.0 oops 2.0 0 0 0 0 0 0 1.0 host 1.0\n")
    with pytest.raises(carmen.CarmenError, match=r"bad.clf:2"):
        carmen.read_log(path)


def test_truncated_archive_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.clf.bz2"
    data = bz2.compress(((_odom((0, 0, 0), 1.0) + _flaser([1, 2, 3], (0, 0, 0), (0, 0, 0), 1.0)) * 200).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(carmen.CarmenError, match="cut.clf.bz2"):
        carmen.read_log(path)


def test_stamp_repair_spreads_bursts_and_keeps_steady_streams():
    steady = 100.0 + 0.2 * np.arange(50)
    fixed, changed = carmen.repair_stamps(steady)
    np.testing.assert_array_equal(fixed, steady)
    assert changed == 0
    # A 2 s stall, then ten records delivered at once, and one record stamped late.
    t = np.concatenate([0.2 * np.arange(20), 3.8 + 0.001 * np.arange(10), 3.9 + 0.2 * np.arange(1, 20)])
    t[5] += 0.5
    fixed, changed = carmen.repair_stamps(t)
    assert np.all(np.diff(fixed) > 0) and changed > 0
    # The burst now spans the stall at a plausible rate, not 1 ms per record.
    assert np.min(np.diff(fixed)) > 0.05


@pytest.mark.skipif(not REALDATA.is_dir(), reason="shared real-data logs not present")
def test_reference_matches_every_corrected_aces_scan_and_relations_parse():
    raw = carmen.read_log(REALDATA / "aces.clf.bz2")
    corrected = carmen.read_log(REALDATA / "aces-corrected.log.gz")
    rows, reference = carmen.match_reference(raw, corrected)
    assert rows.shape == (440,) and reference.shape == (440, 3)
    assert np.all(np.diff(rows) > 0)
    # Matched by ranges: the raw logger stamp equals the corrected one to 1 ms.
    relations = carmen.read_relations(REALDATA / "aces.relations")
    assert relations.shape == (1279, 8)
    stamps = raw.scans.raw_stamps
    assert np.all(np.isin(np.round(relations[:, 0], 3), np.round(stamps, 3)))
