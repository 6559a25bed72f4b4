"""Trajectory metrics on synthetic trajectories: known offsets give known errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsg_ros import se3
from dsg_ros.mapping import metrics
from dsg_ros.tools.carmen import se2_to_se3
from dsg_ros.tools.sim.trajectory import planar_pose

RADIUS = 5.0


def _circle(n: int = 40, seconds: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Stamps (n,) and poses (n, 7) once around a circle, heading along it."""
    t = np.linspace(0.0, seconds, n, endpoint=False)
    angle = 2.0 * math.pi * t / seconds
    xyz = np.stack([RADIUS * np.cos(angle), RADIUS * np.sin(angle), np.zeros(n)], axis=1)
    return t, planar_pose(angle + math.pi / 2.0, xyz)


def _shift(poses: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Each pose moved by ``forward`` (n,) metres along its own x axis."""
    local = np.zeros((len(poses), 7))
    local[:, 0], local[:, 4] = 1.0, forward
    return se3.compose(poses, local)


def test_poses_at_matches_within_a_millisecond_else_interpolates():
    stamps = np.array([0.0, 1.0, 2.0])
    poses = planar_pose(np.zeros(3), np.array([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]))
    got = metrics.poses_at(stamps, poses, np.array([1.0005, 1.5, -0.1, 2.0, 2.01]))
    np.testing.assert_allclose(got[0], poses[1])  # within 1 ms: that pose, not an interpolation
    np.testing.assert_allclose(got[1, 4:], [2.0, 0.0, 0.0])  # halfway from 1 m to 3 m
    assert np.isnan(got[2]).all() and np.isnan(got[4]).all()  # outside the span
    np.testing.assert_allclose(got[3], poses[2])
    assert np.isnan(metrics.poses_at(np.zeros(0), np.zeros((0, 7)), np.array([1.0]))).all()


def test_pairs_at_gap_take_the_first_partner_and_skip_sparse_stretches():
    stamps = np.array([0.0, 0.5, 1.0, 1.5, 5.0, 6.2])
    i, j = metrics.pairs_at_gap(stamps, 1.0)
    assert list(zip(i, j)) == [(0, 2), (1, 3), (4, 5)]  # 1.5 → 5.0 is 3.5 s: no partner


def test_rigidly_moved_estimate_has_no_error():
    t, ref = _circle()
    T = se3.exp(np.array([3.0, -2.0, 0.5, 0.1, -0.2, 0.7]))
    moved = se3.compose(T, ref)
    score = metrics.score(t, moved, t, ref, gaps_s=(1.0, 5.0))
    assert score["poses"] == 40 and score["ate_m"] == pytest.approx(0.0, abs=1e-9)
    for key in ("rel_1s_m", "rel_1s_deg", "rel_5s_m", "rel_5s_deg"):
        assert score[key] == pytest.approx(0.0, abs=1e-6), key
    assert score["rel_1s_pairs"] == 38 and score["rel_5s_pairs"] == 30


def test_alternating_offsets_give_known_ate_and_relation_errors():
    t, ref = _circle(n=40, seconds=20.0)  # a pose every 0.5 s, 9 degrees apart
    offset = 0.05 * np.where(np.arange(40) % 2 == 0, 1.0, -1.0)
    est = _shift(ref, offset)
    score = metrics.score(t, est, t, ref, gaps_s=(0.5, 1.0))
    # The offsets cancel in the alignment (even count, symmetric): every pose is 5 cm off.
    assert score["ate_m"] == pytest.approx(0.05, abs=1e-6)
    # Neighbours (0.5 s apart) are offset oppositely: |t_j − R⁻¹ t_i| = 0.1 cos(θ/2), θ = 9°.
    assert score["rel_0.5s_m"] == pytest.approx(0.1 * math.cos(math.radians(4.5)), abs=1e-9)
    assert score["rel_0.5s_deg"] == pytest.approx(0.0, abs=1e-9)
    # Two steps apart the offsets agree: 2 · 0.05 · sin(θ/2), θ = 18°.
    assert score["rel_1s_m"] == pytest.approx(0.1 * math.sin(math.radians(9.0)), abs=1e-9)


def test_relations_file_errors_from_a_heading_drift():
    t, ref = _circle()
    rel = se3.between(ref[:-4], ref[4:])  # 2 s apart
    yaw = se3.yaw(rel)
    relations = np.column_stack([t[:-4], t[4:], rel[:, 4], rel[:, 5], np.zeros((len(rel), 3)), yaw])
    np.testing.assert_allclose(metrics.relation_poses(relations), se2_to_se3(np.column_stack([rel[:, 4], rel[:, 5], yaw])), atol=1e-12)
    exact = metrics.score_relations(t, ref, relations)
    assert exact["relations_m"] == pytest.approx(0.0, abs=1e-9) and exact["relations_used"] == exact["relations_total"] == 36
    # A heading drift of 2 deg/s turns every 2-second relation by 4 degrees.
    drift = se3.compose(ref, planar_pose(np.radians(2.0) * t, np.zeros((len(t), 3))))
    assert metrics.score_relations(t, drift, relations)["relations_deg"] == pytest.approx(4.0, abs=1e-9)
    # Relations outside the trajectory are left out, not scored as errors.
    assert metrics.score_relations(t[:20], ref[:20], relations)["relations_used"] == 16


def test_a_relation_with_roll_pitch_and_yaw_is_z_y_x():
    roll, pitch, yaw = 0.1, -0.2, 0.3
    T = metrics.relation_poses(np.array([[0.0, 1.0, 1.0, 2.0, 3.0, roll, pitch, yaw]]))[0]
    c, s = np.cos, np.sin
    Rz = np.array([[c(yaw), -s(yaw), 0], [s(yaw), c(yaw), 0], [0, 0, 1]])
    Ry = np.array([[c(pitch), 0, s(pitch)], [0, 1, 0], [-s(pitch), 0, c(pitch)]])
    Rx = np.array([[1, 0, 0], [0, c(roll), -s(roll)], [0, s(roll), c(roll)]])
    np.testing.assert_allclose(se3.rotation_matrix(T), Rz @ Ry @ Rx, atol=1e-12)
    np.testing.assert_allclose(T[4:], [1.0, 2.0, 3.0])
