"""The simulator: SE(3) helpers, ray casting, lidar, trajectory, odometry, whole runs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jaxlie
import numpy as np
import pytest
from scipy.linalg import expm

from dsg_ros import se3
from dsg_ros.tools.sim import (
    LidarConfig,
    OdometryConfig,
    SimConfig,
    TrajectoryConfig,
    World,
    WorldConfig,
    build_world,
    ground_truth,
    increments,
    integrate_odometry,
    interpolate,
    scan,
    scan_organized,
    simulate,
)

_QUIET_ODOMETRY = OdometryConfig(
    scale=(1.0, 1.0, 1.0), yaw_rate_bias_deg_s=0.0, translation_noise_std_m=0.0, rotation_noise_std_rad=0.0
)


def _short_run(seed: int = 0, azimuths: int = 128) -> SimConfig:
    return SimConfig(duration_s=2.0, lidar=LidarConfig(azimuths=azimuths), seed=seed)


def _hat(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


@pytest.fixture(scope="module")
def world() -> World:
    return build_world(WorldConfig(), np.random.default_rng(0))


@pytest.fixture(scope="module")
def path(world: World) -> tuple[np.ndarray, np.ndarray]:
    return ground_truth(world, TrajectoryConfig(), 60.0)


@pytest.mark.parametrize("angle", [0.0, 1e-7, 1e-3, 0.5, 3.0, np.pi - 1e-6])
def test_host_se3_the_simulator_builds_on_matches_jaxlie_and_expm(angle):
    rng = np.random.default_rng(1)
    xi = rng.normal(size=(8, 6))
    xi[:, 3:] *= angle / np.linalg.norm(xi[:, 3:], axis=1, keepdims=True)
    T = se3.exp(xi)
    p = rng.normal(size=(8, 3))
    # Same conventions as jaxlie (whose small-angle series are coarser: hence 1e-6), exact against expm.
    np.testing.assert_allclose(T, [np.asarray(jaxlie.SE3.exp(x).wxyz_xyz) for x in xi], atol=1e-6)
    ref = [jaxlie.SE3(t) for t in T]
    for x, T_x in zip(xi, T):
        M = expm(np.block([[_hat(x[3:]), x[:3, None]], [np.zeros((1, 4))]]))
        np.testing.assert_allclose(se3.rotation_matrix(T_x), M[:3, :3], atol=1e-12)
        np.testing.assert_allclose(T_x[4:], M[:3, 3], atol=1e-12)
    np.testing.assert_allclose(se3.log(T), xi, atol=1e-12)
    np.testing.assert_allclose(se3.apply(T, p), [np.asarray(r @ q) for r, q in zip(ref, p)], atol=1e-12)
    products = [np.asarray((a @ b).wxyz_xyz) for a, b in zip(ref[:-1], ref[1:])]
    np.testing.assert_allclose(se3.compose(T[:-1], T[1:]), products, atol=1e-12)
    np.testing.assert_allclose(se3.compose(se3.inverse(T), T), np.broadcast_to(se3.IDENTITY, T.shape), atol=1e-12)


def test_raycast_hits_known_faces_misses_and_respects_max_range():
    # A unit-thick wall x in [2, 3] and a small box behind it, seen from the origin.
    box_min = np.array([[2.0, -1.0, -1.0], [5.0, -0.5, -0.5]])
    box_max = np.array([[3.0, 1.0, 1.0], [6.0, 0.5, 0.5]])
    w = World(WorldConfig(), box_min, box_max, np.array(["wall", "box"]), np.zeros((2, 2)), np.zeros((1, 2)))
    diag = np.array([1.0, 0.5, 0.0]) / np.linalg.norm([1.0, 0.5, 0.0])
    origins = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0], [4, 0, 0], [2.5, 0, 0], [0, 0, 0]], dtype=float)
    directions = np.array([[1, 0, 0], diag, [0, 1, 0], [1, 0, 0], [1, 0, 0], [-1, 0, 0]], dtype=float)
    ranges = w.raycast(origins, directions)
    # +x: the wall's near face; diagonal: x = 2 at distance 2/cos; +y and -x: nothing; from between: the box;
    # from inside the wall: 0.
    np.testing.assert_allclose(ranges, [2.0, 2.0 * np.linalg.norm([1.0, 0.5]), np.inf, 1.0, 0.0, np.inf])
    np.testing.assert_array_equal(w.raycast(origins[:1], directions[:1], max_range=1.5), [np.inf])
    np.testing.assert_array_equal(w.raycast(origins[:1], directions[:1], max_range=2.0), [2.0])


def test_noise_free_lidar_points_lie_on_the_world_in_the_sensor_frame(world, path):
    _, T_world_base = path
    T_world_sensor = se3.compose(T_world_base[700], np.array(SimConfig().T_base_sensor))
    exact = LidarConfig(azimuths=256, range_noise_std_m=0.0, dropout_prob=0.0)
    p_sensor = scan(world, T_world_sensor, exact, np.random.default_rng(0))
    assert p_sensor.dtype == np.float32 and p_sensor.shape == (16 * 256, 3), "a closed room returns every beam"
    assert world.surface_distance(se3.apply(T_world_sensor, p_sensor)).max() < 1e-4
    # Read in the base frame instead, the same points miss the surfaces: the frame matters.
    assert world.surface_distance(se3.apply(T_world_base[700], p_sensor)).max() > 0.05


def test_noisy_lidar_stays_within_range_noise_and_drops_about_dropout(world, path):
    _, T_world_base = path
    T_world_sensor = se3.compose(T_world_base[1500], np.array(SimConfig().T_base_sensor))
    config = LidarConfig(azimuths=512)
    grid = scan_organized(world, T_world_sensor, config, np.random.default_rng(3))
    p_sensor = scan(world, T_world_sensor, config, np.random.default_rng(3))
    assert grid.shape == (16, 512, 3)
    np.testing.assert_array_equal(grid[~np.isnan(grid[..., 0])], p_sensor)
    assert 0.96 < len(p_sensor) / (16 * 512) < 0.995
    ranges = np.linalg.norm(p_sensor, axis=1)
    assert ranges.min() >= config.min_range_m and ranges.max() <= config.max_range_m
    assert world.surface_distance(se3.apply(T_world_sensor, p_sensor)).max() < 6 * config.range_noise_std_m


def test_trajectory_is_planar_clear_loops_and_revisits(world, path):
    stamps, T_world_base = path
    config = TrajectoryConfig()
    assert len(stamps) == 60 * 50 + 1
    np.testing.assert_allclose(np.diff(stamps), 1.0 / config.rate_hz)
    np.testing.assert_array_equal(T_world_base[:, [1, 2, 6]], 0.0)  # no roll, no pitch, z = 0
    assert world.clearance(T_world_base[:, 4:6]).min() >= config.clearance_m
    xi = increments(T_world_base)
    assert np.abs(xi[:, 1:5]).max() < 1e-9, "a unicycle: no sideslip, no roll or pitch"
    assert (xi[:, 0] * config.rate_hz).max() <= config.speed_m_s + 1e-6
    assert (np.abs(xi[:, 5]) * config.rate_hz).max() <= config.max_yaw_rate_rad_s + 1e-6
    xy = T_world_base[:, 4:6]
    # Every room of the default 2 × 2 world is passed through within 60 s.
    assert np.linalg.norm(xy[:, None] - world.room_centers, axis=-1).min(axis=0).max() < 1.5
    # A revisit: some later pose within 1 m of an early one after having been more than 5 m away.
    d = np.linalg.norm(xy[:, None] - xy[None, :500], axis=-1)  # (K, first 10 s)
    left = np.maximum.accumulate(d, axis=0) > 5.0
    assert np.any((d < 1.0) & left)


@pytest.mark.parametrize("rooms", [(1, 3), (3, 2)])
def test_other_layouts_give_a_clear_path(rooms):
    w = build_world(WorldConfig(rooms=rooms), np.random.default_rng(5))
    config = TrajectoryConfig()
    _, T_world_base = ground_truth(w, config, 30.0)
    assert w.clearance(T_world_base[:, 4:6]).min() >= config.clearance_m


def test_world_config_rejects_a_single_room():
    with pytest.raises(ValueError, match="at least 2 rooms"):
        WorldConfig(rooms=(1, 1))


def test_interpolate_returns_the_stamped_poses_and_a_constant_twist_between(path):
    stamps, T_world_base = path
    np.testing.assert_allclose(interpolate(stamps, T_world_base, stamps[:100]), T_world_base[:100], atol=1e-12)
    mid = interpolate(stamps, T_world_base, stamps[10:12].mean(keepdims=True))[0]
    half = se3.exp(0.5 * increments(T_world_base[10:12]))[0]
    np.testing.assert_allclose(se3.compose(se3.inverse(T_world_base[10]), mid), half, atol=1e-12)
    with pytest.raises(ValueError):
        interpolate(stamps, T_world_base, np.array([stamps[-1] + 0.01]))


def test_noise_free_uncalibrated_odometry_is_ground_truth_from_the_start(path):
    stamps, T_world_base = path
    T_odom_base = integrate_odometry(stamps, T_world_base, _QUIET_ODOMETRY, np.random.default_rng(0))
    np.testing.assert_allclose(T_odom_base, se3.compose(se3.inverse(T_world_base[0]), T_world_base), atol=1e-9)


def test_odometry_scale_and_yaw_bias_drift_as_configured(path):
    stamps, T_world_base = path
    config = dataclasses.replace(_QUIET_ODOMETRY, scale=(1.03, 1.0, 1.0), yaw_rate_bias_deg_s=1.0)
    T_odom_base = integrate_odometry(stamps, T_world_base, config, np.random.default_rng(0))
    distance = np.linalg.norm(np.diff(T_odom_base[:, 4:], axis=0), axis=1).sum()
    truth = np.linalg.norm(np.diff(T_world_base[:, 4:], axis=0), axis=1).sum()
    assert distance / truth == pytest.approx(1.03, rel=1e-4)
    calib = config.true_calibration()
    yaw_drift = se3.yaw(T_odom_base[-1]) - (se3.yaw(T_world_base[-1]) - se3.yaw(T_world_base[0]))
    assert np.angle(np.exp(1j * yaw_drift)) == pytest.approx(calib.yaw_rate_bias * 60.0, abs=1e-9)
    # The true calibration undoes the corruption exactly.
    recovered = calib.correct(increments(T_odom_base), np.diff(stamps))
    np.testing.assert_allclose(recovered, increments(T_world_base), atol=1e-9)


def test_noisy_odometry_drifts_in_yaw_at_about_the_bias(path):
    stamps, T_world_base = path
    config = OdometryConfig()
    T_odom_base = integrate_odometry(stamps[:501], T_world_base[:501], config, np.random.default_rng(2))
    yaw_drift = se3.yaw(T_odom_base[-1]) - (se3.yaw(T_world_base[500]) - se3.yaw(T_world_base[0]))
    # 500 steps of 0.0005 rad white noise: a random walk of about 0.011 rad.
    assert yaw_drift == pytest.approx(config.true_calibration().yaw_rate_bias * 10.0, abs=0.05)


def test_simulate_is_deterministic_in_the_seed():
    a, b, c = simulate(_short_run(0)), simulate(_short_run(0)), simulate(_short_run(1))
    for name in ("odom_stamps", "T_odom_base", "gt_stamps", "T_world_base", "cloud_stamps", "T_base_sensor"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert len(a.clouds) == len(b.clouds) == 20
    for p, q in zip(a.clouds, b.clouds):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a.world.box_min, c.world.box_min)
    assert not np.array_equal(a.T_odom_base, c.T_odom_base)
    assert not np.array_equal(a.clouds[0], c.clouds[0])


def test_noise_streams_are_independent_of_other_sensors_settings():
    a = simulate(_short_run(0))
    b = simulate(_short_run(0, azimuths=64))
    np.testing.assert_array_equal(a.T_odom_base, b.T_odom_base)


def test_clouds_are_10hz_off_the_odometry_grid_and_events_are_time_ordered():
    calls: list[float] = []
    data = simulate(_short_run(0), progress=calls.append)
    np.testing.assert_allclose(np.diff(data.cloud_stamps), 0.1)
    gap = np.abs(data.cloud_stamps[:, None] - data.odom_stamps[None]).min(axis=1)
    assert gap.min() > 1e-3, "clouds fall between odometry stamps, so consumers must interpolate"
    assert data.odom_stamps[0] <= data.cloud_stamps[0] and data.cloud_stamps[-1] <= data.odom_stamps[-1]
    events = list(data.events())
    stamps = [t for _, t, _ in events]
    assert stamps == sorted(stamps)
    kinds = [k for k, _, _ in events]
    assert kinds.count("odom") == kinds.count("ground_truth") == len(data.odom_stamps)
    assert kinds.count("cloud") == len(data.clouds)
    first_cloud = next(d for k, _, d in events if k == "cloud")
    np.testing.assert_array_equal(first_cloud, data.clouds[0])
    assert calls == sorted(calls) and calls[0] == 0.0 and calls[-1] == 1.0


def test_sim_imports_without_jax():
    code = "import sys, dsg_ros.tools.sim; sys.exit('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "dsg_ros.tools.sim must stay numpy-only"
