"""Scan-to-map registration and the line normals of planar scans."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from dsg_ros import se3
from dsg_ros.mapping.registration import RegistrationConfig, _surface_normals, register
from dsg_ros.mapping.voxels import scan_normals, voxelize

UP = np.array([0.0, 0.0, 1.0])


def _room_scan(T_map_base: np.ndarray, size=(10.0, 6.0), beams: int = 181) -> np.ndarray:
    """A planar scan (N, 3, base frame) of a rectangular room [0, w] × [0, h] from ``T_map_base``."""
    w, h = size
    x, y, yaw = T_map_base[4], T_map_base[5], float(se3.yaw(T_map_base))
    points = []
    for bearing in np.linspace(-np.pi / 2, np.pi / 2, beams):
        a = yaw + bearing
        d = np.array([np.cos(a), np.sin(a)])
        # Distance along the beam to the wall it faces, per axis; the nearer one is hit.
        to_x = ((w if d[0] > 0 else 0.0) - x) / d[0] if abs(d[0]) > 1e-9 else np.inf
        to_y = ((h if d[1] > 0 else 0.0) - y) / d[1] if abs(d[1]) > 1e-9 else np.inf
        r = min(to_x, to_y)
        points.append([r * np.cos(bearing), r * np.sin(bearing), 0.0])
    return np.array(points)


def _pose(x: float, y: float, yaw_deg: float) -> np.ndarray:
    half = np.radians(yaw_deg) / 2.0
    return np.array([np.cos(half), 0.0, 0.0, np.sin(half), x, y, 0.0])


def _map_of(scans: list[tuple[np.ndarray, np.ndarray]], voxel: float = 0.2) -> np.ndarray:
    cells = [voxelize(p, se3.rotation_matrix(T), T[4:], voxel) for T, p in scans]
    return np.concatenate([se3.apply(T, c.p_sensor) for (T, _), c in zip(scans, cells)])


def _error(T: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    xi = se3.log(se3.between(truth, T))
    return float(np.linalg.norm(xi[:3])), float(np.degrees(np.linalg.norm(xi[3:])))


def test_planar_registration_recovers_odometry_errors_of_decimetres_and_degrees():
    truth = _pose(4.0, 3.0, 20.0)
    room = _map_of([(_pose(3.0, 2.5, 0.0), _room_scan(_pose(3.0, 2.5, 0.0))), (_pose(6.0, 3.5, 180.0), _room_scan(_pose(6.0, 3.5, 180.0)))])
    scan = _room_scan(truth)
    predicted = se3.compose(truth, se3.exp(np.array([0.25, -0.15, 0.0, 0.0, 0.0, np.radians(8.0)])))
    result = register(scan, room, predicted, RegistrationConfig(), UP, motion=(0.5, np.radians(10.0)))
    assert result.accepted and result.matches > 100
    meters, degrees = _error(result.T_map_base, truth)
    assert meters < 0.03 and degrees < 0.5
    # Planar: z, roll and pitch stay exactly where the prediction put them.
    assert abs(result.T_map_base[6] - predicted[6]) < 1e-12
    assert abs(np.linalg.norm(result.T_map_base[1:3])) < 1e-12


def test_a_heading_far_off_is_found_by_the_heading_screen():
    """After a logging gap in a turn the prediction's heading may be 30° off:
    ICP from it alone settles on the wrong walls; the heading screen finds a
    start near the truth, and the better fit is the true pose."""
    truth = _pose(4.0, 3.0, 20.0)
    room = _map_of([(_pose(3.0, 2.5, 0.0), _room_scan(_pose(3.0, 2.5, 0.0))), (_pose(6.0, 3.5, 180.0), _room_scan(_pose(6.0, 3.5, 180.0)))])
    scan = _room_scan(truth)
    motion = (0.3, np.radians(75.0))  # what the odometry turned since the last scan: a wide prior
    single = dataclasses.replace(RegistrationConfig(), heading_search_sigmas=0.0)
    for error_deg in (-30.0, 30.0):
        predicted = se3.compose(truth, se3.exp(np.array([0.1, -0.1, 0.0, 0.0, 0.0, np.radians(error_deg)])))
        assert _error(register(scan, room, predicted, single, UP, motion=motion).T_map_base, truth)[1] > 10.0
        result = register(scan, room, predicted, RegistrationConfig(), UP, motion=motion)
        meters, degrees = _error(result.T_map_base, truth)
        assert result.accepted and result.screened and meters < 0.03 and degrees < 0.5


def test_a_corridor_axis_is_left_to_odometry():
    """Two parallel walls constrain the cross-corridor offset and the heading,
    not the position along the corridor: that stays at the prediction."""
    walls = np.array([[x, y, 0.0] for x in np.arange(-20.0, 20.0, 0.05) for y in (-1.0, 1.0)])
    truth = _pose(0.0, 0.0, 0.0)
    rel = walls - truth[4:]
    scan = rel[np.linalg.norm(rel, axis=1) < 8.0]
    predicted = _pose(0.3, 0.2, 3.0)
    result = register(scan, walls[::4], predicted, RegistrationConfig(), UP)
    assert result.accepted
    T = result.T_map_base
    assert abs(T[5]) < 0.02 and abs(np.degrees(se3.yaw(T))) < 0.3  # across and heading: from the walls
    assert abs(T[4] - 0.3) < 0.05  # along: from the prediction, not dragged anywhere


def test_three_dimensional_registration_recovers_six_degrees_of_freedom():
    rng = np.random.default_rng(0)
    # A box room 8 × 6 × 3 m sampled on all six faces.
    faces = []
    for axis, value in [(0, 0.0), (0, 8.0), (1, 0.0), (1, 6.0), (2, 0.0), (2, 3.0)]:
        p = rng.uniform([0, 0, 0], [8, 6, 3], (1500, 3))
        p[:, axis] = value
        faces.append(p)
    room = np.concatenate(faces)
    truth = se3.compose(_pose(4.0, 3.0, 30.0), se3.exp(np.array([0, 0, 1.5, 0.02, -0.01, 0.0])))
    scan = se3.apply(se3.inverse(truth), room[rng.choice(room.shape[0], 3000, replace=False)])
    predicted = se3.compose(truth, se3.exp(np.array([0.2, -0.1, 0.1, 0.03, 0.02, 0.1])))
    result = register(scan, room, predicted, RegistrationConfig(), None, motion=(0.5, 0.2))
    meters, degrees = _error(result.T_map_base, truth)
    assert result.accepted and meters < 0.02 and degrees < 0.3


def test_too_few_matches_keep_the_prediction():
    predicted = _pose(50.0, 50.0, 0.0)
    room = _map_of([(_pose(3.0, 2.5, 0.0), _room_scan(_pose(3.0, 2.5, 0.0)))])
    result = register(_room_scan(_pose(3.0, 2.5, 0.0)), room, predicted)
    assert not result.accepted
    np.testing.assert_array_equal(result.T_map_base, predicted)


def test_scan_normals_are_wall_normals_in_the_scan_plane_facing_the_sensor():
    scan = _room_scan(_pose(3.0, 2.0, 0.0))
    n = scan_normals(scan, radius=0.4)
    has = np.any(n != 0.0, axis=1)
    assert has.mean() > 0.8  # corners and the sparsest returns have none
    assert np.allclose(n[has, 2], 0.0) and np.allclose(np.linalg.norm(n[has], axis=1), 1.0)
    # Facing the sensor, and perpendicular to an axis-aligned wall (but where
    # a neighbourhood reaches round a corner).
    assert np.all(np.einsum("ij,ij->i", n[has], scan[has]) < 0.0)
    assert np.mean(np.abs(n[has, :2]).max(axis=1) > 0.999) > 0.95


def test_closed_form_surface_normals_are_the_directions_of_least_spread():
    """The normals (no eigensolver) agree with ``eigh`` on noisy planes and
    lines of 3 to 6 neighbours, some of them masked out."""
    rng = np.random.default_rng(1)
    n, k = 2000, 6
    axes = np.linalg.qr(rng.normal(size=(n, 3, 3)))[0]
    neighbours = (rng.normal(size=(n, k, 3)) * [1.0, 0.4, 0.02]) @ axes + rng.uniform(-50.0, 50.0, (n, 1, 3))
    valid = np.arange(k) < rng.integers(3, k + 1, n)[:, None]
    mu, normal = _surface_normals(neighbours, valid, None)
    m = valid[..., None]
    np.testing.assert_allclose(mu, (neighbours * m).sum(axis=1) / m.sum(axis=1), atol=1e-9)
    d = (neighbours - mu[:, None]) * m
    w, v = np.linalg.eigh(np.einsum("nki,nkj->nij", d, d))
    np.testing.assert_allclose(np.linalg.norm(normal, axis=1), 1.0, atol=1e-12)
    assert np.all(np.abs(np.einsum("ni,ni->n", normal, v[:, :, 0])) > 1.0 - 1e-6)
    # A planar scanner's lines: the normal lies in the scan plane, across the line.
    flat = neighbours.copy()
    flat[..., 2] = rng.uniform(-1.0, 1.0, (n, 1))  # the plane's offset does not matter
    _, line_normal = _surface_normals(flat, valid, UP)
    d2 = (flat[..., :2] - flat[..., :2].mean(axis=1, where=m, keepdims=True)) * m
    w2, v2 = np.linalg.eigh(np.einsum("nki,nkj->nij", d2, d2))
    assert np.all(line_normal[:, 2] == 0.0)
    assert np.all(np.abs(np.einsum("ni,ni->n", line_normal[:, :2], v2[:, :, 0])) > 1.0 - 1e-6)
    # Degenerate neighbourhoods: collinear points have some normal across the
    # line, coincident ones none (zero), never NaN.
    degenerate = np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], [[5.0, 5.0, 5.0]] * 3])
    _, normal = _surface_normals(degenerate, np.ones((2, 3), bool), None)
    assert abs(np.linalg.norm(normal[0]) - 1.0) < 1e-12 and abs(normal[0, 0]) < 1e-12
    np.testing.assert_array_equal(normal[1], 0.0)


@pytest.mark.parametrize(
    "field, value", [("heading_search_step_rad", 0.0), ("heading_search_sigmas", -1.0), ("heading_search_points", -1), ("icp_basin_rad", -0.1)]
)
def test_a_heading_screen_without_a_step_or_with_negative_settings_is_refused(field: str, value: float):
    changes: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match="heading_search"):
        dataclasses.replace(RegistrationConfig(), **changes)
