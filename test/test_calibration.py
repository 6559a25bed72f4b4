"""Calibration: self-supervised online learning, the calibration file, the
config loader, and the trajectory metrics runs are scored with.

The self-supervised run compiles one mapper (calibration on, ~1 min cold);
everything else here is numpy and YAML. Supervised learning is checked in
test_mapper.py on that module's supervised run, which saves a second compile.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax_dataclasses as jdc
import numpy as np
import pytest
import yaml

from dsg_ros import se3
from dsg_ros.config import from_mapping, load_yaml, to_mapping
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping import Mapper, MapperConfig, TickResult, WindowConfig, metrics
from dsg_ros.mapping.calibrator import CalibrationConfig, OnlineCalibrator, inject, learned_coordinates, snapshot_loss
from dsg_ros.mapping.replay import RunRecord, drive
from dsg_ros.solve import SolverConfig
from dsg_ros.tools.evaluate import summarize
from dsg_ros.tools.sim import LidarConfig, OdometryConfig, SimConfig, SimData, interpolate, simulate
from dsg_ros.world.layout import ODOM_SE3, VOXEL_ANCHOR_OBS, VOXEL_POINT_OBS

DURATION_S = 30.0
# Odometry over-reads forward motion by 3 % and drifts 1 deg/s in yaw.
ODOMETRY = OdometryConfig(scale=(1.03, 1.0, 1.0), yaw_rate_bias_deg_s=1.0)
TRUE_SCALE = ODOMETRY.true_calibration().scale
TRUE_YAW_BIAS_DEG_S = ODOMETRY.yaw_rate_bias_deg_s


@dataclass
class Learning:
    sim: SimData
    mapper: Mapper
    record: RunRecord = field(default_factory=RunRecord)
    losses: list[float] = field(default_factory=list)

    def final(self) -> cal.CalibrationSummary:
        return cal.CalibrationSummary.of(self.mapper.theta)


@pytest.fixture(scope="module")
def self_supervised() -> Learning:
    """30 s with no reference stream: calibration every 3 keyframes from held-out scans alone."""
    sim = simulate(SimConfig(duration_s=DURATION_S, lidar=LidarConfig(azimuths=256), odometry=ODOMETRY, seed=0))
    mapper = Mapper(
        MapperConfig(
            window=WindowConfig(keyframes=5, max_voxels=1024, max_observations_per_keyframe=400, max_anchors_per_keyframe=200),
            voxel_size=0.4,
            calibration=CalibrationConfig(every_keyframes=3),
            T_base_sensor=tuple(float(v) for v in sim.T_base_sensor),
        )
    )
    out = Learning(sim, mapper)

    def on_tick(_: TickResult) -> None:
        loss = mapper.calibrator.last_loss
        if mapper.calibrator.steps > len(out.losses) and loss is not None:  # a step sets the loss
            out.losses.append(loss)

    out.record = drive(mapper, sim.events(), use_reference=False, on_tick=on_tick)
    return out


# ------------------------------------------------------------ online learning


def test_self_supervised_calibration_moves_the_forward_scale_toward_the_truth(self_supervised: Learning):
    calibrator = self_supervised.mapper.calibrator
    # A step every snapshot (each scores the candidate before it steps on it).
    assert calibrator.steps >= 10 and len(self_supervised.losses) == calibrator.steps
    assert calibrator.accepted >= 1
    assert np.all(np.isfinite(self_supervised.losses))
    assert calibrator.snapshots and not any(bool(s.has_reference) for s in calibrator.snapshots), "no reference: self-supervised loss"
    last = self_supervised.record.last
    assert last is not None and self_supervised.record.warnings == 0 and last.diagnostics.stats["rollbacks"] == 0
    learned = self_supervised.final()
    # With no reference the held-out scans alone pull the scale from 1.0 past 1.03 (measured
    # 1.055, time offset learned too, 1.040 without it: the scans' own ~2 % bias at these 0.4 m
    # voxels, which the least-squares steps converge to) and the yaw-rate bias to 1.10 deg/s.
    # The loss is dominated by scan-to-map noise and does not fall visibly in 30 s, so it is
    # not asserted.
    assert 1.01 < learned.odom_scale[0] < TRUE_SCALE[0] + 0.03
    assert abs(learned.odom_bias_angular_deg_s[2] - TRUE_YAW_BIAS_DEG_S) < 0.3
    # Groups switched off by default stay exactly where they were.
    assert learned.odom_bias_linear_m_s == (0.0, 0.0, 0.0) and learned.extrinsic_translation_m == (0.0, 0.0, 0.0)


def test_self_supervised_mapping_beats_raw_odometry(self_supervised: Learning):
    sim = self_supervised.sim
    summary = summarize(
        self_supervised.mapper,
        self_supervised.record,
        DURATION_S,
        ground_truth=lambda t: interpolate(sim.gt_stamps, sim.T_world_base, t),
        odometry=lambda t: interpolate(sim.odom_stamps, sim.T_odom_base, t),
    )
    assert summary["ate_estimate"] < 0.5 * summary["ate_odom"]
    assert summary["compilations_after_warmup"] == 0


def test_a_gauss_newton_step_fits_the_snapshot_and_accumulates_its_information(self_supervised: Learning):
    """On one snapshot, a step from no information lands at (nearly) the
    least-squares fit of its residuals over the learned coordinates: a
    second step with that information (forgetting 1) barely moves, and
    moving a learned coordinate lowers the loss by no more than 0.1 %."""
    config = dataclasses.replace(self_supervised.mapper.config.calibration, forgetting=1.0)
    T_base_sensor = np.asarray(self_supervised.mapper.config.T_base_sensor)
    calibrator = OnlineCalibrator(config, cal.zero_theta(), T_base_sensor)
    snapshot = self_supervised.mapper.calibrator.snapshots[-1]
    calibrator.add(snapshot)
    theta0 = cal.zero_theta()
    theta1 = calibrator.step(theta0)
    information = calibrator.information
    assert information is not None and information.shape == (3, 3) and np.all(np.linalg.eigvalsh(information) > 0.0)
    theta2 = calibrator.step(theta1)
    # The same snapshot twice: twice the information (J moves a little with theta).
    twice = calibrator.information
    assert twice is not None and np.linalg.norm(twice - 2.0 * information) < 0.1 * np.linalg.norm(2.0 * information)

    def learned(t: cal.AnyTheta) -> np.ndarray:
        return np.array([float(t["odom_log_scale"][0]), float(t["odom_bias"][5]), float(t["time_offset"])])

    first = learned(theta1)
    second = learned(theta2) - first
    assert np.linalg.norm(first) > 1e-4 and np.linalg.norm(second) < 0.05 * np.linalg.norm(first)
    jitted = jax.jit(snapshot_loss, static_argnames="config")

    def loss(theta: cal.AnyTheta) -> float:
        return float(jitted(theta, snapshot, T_base_sensor, config))

    best = loss(theta1)
    assert best < loss(theta0)
    for key, index in learned_coordinates(config):
        for sign in (-1.0, 1.0):
            moved = {k: np.array(v) for k, v in theta1.items()}
            moved[key].reshape(-1)[index] += sign * 0.05 * max(abs(first).max(), 1e-3)
            assert loss(moved) >= best * (1.0 - 1e-3)  # one Gauss-Newton step of a capped, nonlinear loss
    # A resumed calibration (a loaded file) counts as a full memory of such
    # snapshots, 1/(1 - forgetting) of them: the first step moves 1/(1 + that) as far.
    resumed = OnlineCalibrator(dataclasses.replace(config, forgetting=0.99), theta0, T_base_sensor, resumed=True)
    resumed.add(snapshot)
    theta_r = resumed.step(theta0)
    moved_r = learned(theta_r)
    assert np.allclose(moved_r, first / 101.0, rtol=1e-3)
    # Unlearned groups stay exactly zero.
    assert not np.any(np.asarray(theta1["extrinsic"])) and float(theta1["log_sigma_obs"]) == 0.0


def test_a_step_is_applied_only_after_it_lowers_the_loss_on_later_snapshots(self_supervised: Learning):
    """The validation protocol: learning moves a candidate calibration; each
    snapshot scores it against the calibration in use before it steps on
    that snapshot, and the candidate is applied once it scored lower on
    ``validation_snapshots`` snapshots. A candidate that scores worse is
    rolled back, optimizer state included, and counted."""
    T_base_sensor = np.asarray(self_supervised.mapper.config.T_base_sensor)
    snapshot = self_supervised.mapper.calibrator.snapshots[-1]
    config = dataclasses.replace(self_supervised.mapper.config.calibration, buffer=4, batch=1, validation_snapshots=2)
    calibrator = OnlineCalibrator(config, cal.zero_theta(), T_base_sensor)
    theta = cal.as_host(cal.zero_theta())
    assert calibrator.learn(snapshot, theta) == (None, None)  # a first step: a candidate, not applied
    assert calibrator.learn(snapshot, theta) == (None, None)  # scored once of twice (and stepped again)
    assert calibrator.steps == 2
    applied, note = calibrator.learn(snapshot, theta)  # the snapshot it fits is its own best validation
    assert applied is not None and note is None and calibrator.accepted == 1 and calibrator.steps == 3
    # Training data that contradicts the rest: the same snapshot with its held-out scan seen
    # 0.3 m further ahead (as if the robot had moved 0.3 m less). The candidate steps toward it,
    # and the next plain snapshot, which it was not fitted to since, scores it worse than
    # ``applied``: rolled back.
    p_sensor = np.array(snapshot.inputs.obs_p_sensor)
    p_sensor[np.asarray(snapshot.held_obs_rows)[np.asarray(snapshot.held_obs)]] += [0.3, 0.0, 0.0]
    wrong = jdc.replace(snapshot, inputs=jdc.replace(snapshot.inputs, obs_p_sensor=p_sensor))
    information = calibrator.information  # three steps on ``snapshot``
    assert information is not None
    assert calibrator.learn(wrong, applied) == (None, None)
    assert calibrator.rejected == 0
    assert calibrator.learn(snapshot, applied) == (None, None)
    assert calibrator.rejected == 1 and calibrator.steps == 5
    # The wrong snapshot's information is gone with the rollback: back to the state that produced
    # ``applied`` (two steps on ``snapshot``), then one more step on it: three steps' worth again.
    rolled_back = calibrator.information
    assert rolled_back is not None and np.linalg.norm(rolled_back - information) < 0.05 * np.linalg.norm(information)


def test_the_window_and_the_calibration_step_measure_alike(self_supervised: Learning):
    """One theta, one set of measurements: ``Window.remeasure`` (NumPy, what
    the mapper solves) and ``inject`` (JAX, what a calibration step
    differentiates) rebuild the odometry, observation and anchor rows alike."""
    mapper = self_supervised.mapper
    in_use = cal.as_host(mapper.theta)
    theta = cal.as_host(in_use)
    theta["odom_log_scale"][0] = np.log(1.02)
    theta["odom_bias"][5] = np.radians(0.5)
    theta["time_offset"] = np.asarray(0.05)
    theta["extrinsic"] = np.array([0.05, -0.02, 0.01, 0.01, -0.02, 0.03])
    config = dataclasses.replace(mapper.config.calibration, optimizer="adam", learn_extrinsic=True)
    T_base_sensor = se3.normalized(np.asarray(mapper.config.T_base_sensor))
    try:
        mapper.set_theta(theta)
        graph = jax.jit(inject, static_argnames="config")(theta, mapper.calibration_snapshot(), T_base_sensor, config=config)
        wm = mapper.window.model
        for name in (ODOM_SE3, VOXEL_POINT_OBS, VOXEL_ANCHOR_OBS):
            rows = np.flatnonzero(wm.slab_rows(name).active)
            assert rows.size or name == VOXEL_ANCHOR_OBS
            np.testing.assert_allclose(np.asarray(graph.slab(name).measurement)[rows], wm.measurements(name)[rows], atol=1e-12, err_msg=name)
    finally:
        mapper.set_theta(in_use)


def test_learned_parameters_are_clipped_into_their_bounds():
    bounds = cal.CalibrationBounds()
    theta = cal.as_host(cal.zero_theta())
    theta["odom_log_scale"][0] = np.log(0.0006)  # what an unbounded self-supervised loss once learned
    theta["odom_bias"][5] = np.radians(30.0)
    theta["log_sigma_obs"] = np.asarray(-50.0)
    clipped, outside = bounds.clip(theta)
    assert sorted(outside) == ["log_sigma_obs", "odom_bias", "odom_log_scale"]
    assert np.exp(clipped["odom_log_scale"][0]) == pytest.approx(0.8) and np.degrees(clipped["odom_bias"][5]) == pytest.approx(5.0)
    assert np.exp(clipped["log_sigma_obs"]) == pytest.approx(0.1)
    # A calibration loaded from outside the bounds is clipped by the mapper too, with a warning.
    mapper = Mapper(MapperConfig(window=WindowConfig(keyframes=2, max_voxels=8, max_observations_per_keyframe=4, max_anchors_per_keyframe=2)), theta)
    assert np.exp(mapper.theta["odom_log_scale"][0]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="odom_scale"):
        cal.CalibrationBounds(odom_scale=(1.1, 1.3))


def test_odometry_correction_is_the_same_on_the_host_and_differentiable_in_jax():
    import jax.numpy as jnp

    theta = cal.as_host(cal.zero_theta())
    theta["odom_log_scale"][0] = np.log(1.03)
    theta["odom_bias"][5] = np.radians(1.0)
    theta["time_offset"] = np.asarray(0.08)
    raw = se3.exp(np.array([[0.5, 0.02, 0.0, 0.0, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.3, 0.0, 0.0, 0.0, 0.0, np.pi - 1e-6]]))
    dt = np.array([0.5, 0.1, 0.4])
    velocity = np.zeros((3, 2, 6))
    velocity[2] = [[0.5, 0.0, 0.0, 0.0, 0.0, 0.2], [0.2, 0.0, 0.0, 0.0, 0.0, 1.5]]
    host = cal.correct_odometry(theta, raw, dt, velocity)
    assert isinstance(host, np.ndarray)  # the mapper's per-tick path: no JAX dispatch
    device = jax.jit(cal.correct_odometry)({k: jnp.asarray(v) for k, v in theta.items()}, jnp.asarray(raw), jnp.asarray(dt), jnp.asarray(velocity))
    np.testing.assert_allclose(np.asarray(device), host, atol=1e-12)
    # Scale and yaw-rate bias act as documented: x shrinks by 1.03, yaw loses 1 deg/s.
    np.testing.assert_allclose(se3.log(host)[0, 0], se3.log(raw)[0, 0] / 1.03, rtol=1e-12)
    np.testing.assert_allclose(se3.log(host)[0, 5], 0.1 - np.radians(1.0) * 0.5, rtol=1e-12)
    # Finite derivatives at zero rotation (the identity increment) and near pi.
    grads = jax.grad(lambda t: jnp.sum(cal.correct_odometry(t, jnp.asarray(raw), jnp.asarray(dt), jnp.asarray(velocity)) ** 2))(
        {k: jnp.asarray(v) for k, v in theta.items()}
    )
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads.values())


def test_time_offset_shifts_the_increment_to_later_odometry_readings():
    """A robot turning ever faster: its odometry read at stamps + δ is what the
    offset-corrected increment between the plain stamps must equal."""
    def odometry(t):  # yaw(t) = t², x(t) = t (in the odom frame)
        return np.concatenate([se3.exp(np.array([0.0, 0.0, 0.0, 0.0, 0.0, t * t]))[:4], [t, 0.0, 0.0]])

    def velocity(t, h=1e-6):
        return se3.log(se3.between(odometry(t - h), odometry(t + h))) / (2 * h)

    t_i, t_j, delta = 0.5, 1.0, 0.05
    theta = cal.as_host(cal.zero_theta())
    raw = se3.between(odometry(t_i), odometry(t_j))[None]
    v = np.stack([velocity(t_i), velocity(t_j)])[None]
    shifted = se3.between(odometry(t_i + delta), odometry(t_j + delta))
    theta["time_offset"] = np.asarray(delta)
    corrected = cal.correct_odometry(theta, raw, np.array([t_j - t_i]), v)[0]
    # Exact for constant velocity over δ; here the rate changes, so to O(δ²).
    error = se3.log(se3.between(shifted, corrected))
    assert np.linalg.norm(error) < 5 * delta**2
    theta["time_offset"] = np.asarray(0.0)
    unshifted_error = se3.log(se3.between(shifted, cal.correct_odometry(theta, raw, np.array([t_j - t_i]), v)[0]))
    assert np.linalg.norm(unshifted_error) > 10 * np.linalg.norm(error)


# ------------------------------------------------------------ calibration file


def _theta(seed: int = 0) -> cal.HostTheta:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=np.shape(v)) * 10.0 ** rng.integers(-12, 3) for k, v in cal.zero_theta().items()}


def _leftovers(folder: Path, keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_calibration_file_round_trips_exactly_and_is_versioned_yaml(tmp_path: Path):
    theta = _theta()
    path = cal.save(tmp_path / "nested" / "calibration.yaml", theta, {"source": "test", "seed": 3})
    assert path == tmp_path / "nested" / "calibration.yaml"
    loaded = cal.load(path)
    assert set(loaded) == set(theta)
    for name, value in theta.items():
        assert np.asarray(loaded[name]).shape == np.shape(value)
        np.testing.assert_array_equal(np.asarray(loaded[name], np.float64), value)
    document = yaml.safe_load(path.read_text())
    assert document["dsg_ros_calibration"] == cal.FILE_VERSION == 1
    assert set(document["theta"]) == set(theta) and document["metadata"] == {"source": "test", "seed": 3}
    assert document["summary"]["odom_scale"] == pytest.approx(np.exp(theta["odom_log_scale"]).tolist())
    assert _leftovers(path.parent, path.name) == []


def test_saving_replaces_a_file_atomically_and_a_failed_save_leaves_it_intact(tmp_path: Path):
    path = tmp_path / "calibration.yaml"
    cal.save(path, _theta(0))
    cal.save(path, _theta(1))
    np.testing.assert_array_equal(np.asarray(cal.load(path)["odom_bias"]), _theta(1)["odom_bias"])
    assert _leftovers(tmp_path, path.name) == []
    before = path.read_bytes()
    # Fails while writing (numpy scalars are not safe YAML) ...
    with pytest.raises(yaml.YAMLError):
        cal.save(path, _theta(2), {"seed": np.int64(3)})
    # ... or before (a non-finite calibration is refused).
    broken = _theta(2)
    broken["odom_bias"][1] = np.nan
    with pytest.raises(ValueError, match="odom_bias"):
        cal.save(path, broken)
    assert path.read_bytes() == before and _leftovers(tmp_path, path.name) == []


# Keys of any YAML type join these in the tests below.
_GOOD: dict[Any, Any] = {"odom_log_scale": [0.01, 0.0, 0.0], "odom_bias": [0.0] * 6, "extrinsic": [0.0] * 6, "log_sigma_odom": 0.0, "log_sigma_obs": 0.0}


def _document(**theta_changes) -> dict:
    theta = {**_GOOD, **theta_changes}
    return {"dsg_ros_calibration": 1, "theta": {k: v for k, v in theta.items() if v is not None}}


@pytest.mark.parametrize(
    "text, problem",
    [
        (yaml.safe_dump({**_document(), "dsg_ros_calibration": 2}), "version 2"),
        (yaml.safe_dump(_document()["theta"]), "dsg_ros_calibration"),  # no version key
        (yaml.safe_dump([1, 2, 3]), "not a dsg_ros calibration file"),
        ("dsg_ros_calibration: 1\ntheta: {odom_bias: [0, 0\n", "cannot read"),  # broken YAML
        (yaml.safe_dump(_document(odom_log_scale=[0.0, 0.0])), "odom_log_scale"),  # wrong shape
        (yaml.safe_dump(_document(log_sigma_obs=[0.0])), "log_sigma_obs"),  # a vector for a scalar
        (yaml.safe_dump(_document(odom_bias=[0.0, float("nan"), 0, 0, 0, 0])), "odom_bias"),
        (yaml.safe_dump(_document(extrinsic=[0.0, 0, 0, 0, 0, float("inf")])), "extrinsic"),
        (yaml.safe_dump({**_document(), "theta": {**_GOOD, "odom_skew": [1.0]}}), "odom_skew"),  # unknown parameter
    ],
    ids=["wrong_version", "no_version", "not_a_mapping", "broken_yaml", "wrong_shape", "vector_for_scalar", "nan", "inf", "unknown_key"],
)
def test_loading_a_bad_calibration_file_names_the_file_and_the_problem(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "calibration.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem) as error:
        cal.load(path)
    assert str(path) in str(error.value)


def test_loading_a_missing_calibration_file_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="cannot read"):
        cal.load(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"dsg_ros_calibration: 1\ntheta: {odom_bias: \xff}\n", "UnicodeDecodeError"),
        (("[" * 1000).encode(), "RecursionError"),
        (yaml.safe_dump({**_document(), "theta": {**_GOOD, 3: 1.0, None: 2.0}}).encode(), "unknown"),  # keys that do not sort together
        (b"dsg_ros_calibration: 1\ntheta: {? [a, b] : 1.0}\n", "cannot read"),  # an unhashable key
        (yaml.safe_dump(_document(log_sigma_obs=10**310)).encode(), "log_sigma_obs"),  # beyond float64
        (yaml.safe_dump(_document(log_sigma_odom=False)).encode(), "log_sigma_odom"),  # not 0.0
        (yaml.safe_dump(_document(odom_log_scale=[True, 0.0, 0.0])).encode(), "odom_log_scale"),
        (yaml.safe_dump(_document(odom_log_scale=[[0.0], 0.0, 0.0])).encode(), "odom_log_scale"),  # ragged
    ],
    ids=["non_utf8", "deep_nesting", "odd_keys", "unhashable_key", "huge_integer", "false", "bool_in_vector", "ragged"],
)
def test_every_unusable_calibration_file_is_one_error_type_naming_the_file(tmp_path: Path, content: bytes, problem: str):
    path = tmp_path / "calibration.yaml"
    path.write_bytes(content)
    with pytest.raises(cal.CalibrationFileError, match=problem) as error:
        cal.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "name, value",
    [("log_sigma_odom", -1e300), ("log_sigma_obs", -1e300), ("log_sigma_obs", 710.0), ("odom_log_scale", [-1e300] * 3), ("extrinsic", [-1e300] * 6)],
)
def test_a_finite_but_absurd_calibration_file_is_clipped_into_the_bounds(tmp_path: Path, name: str, value):
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(_document(**{name: value})))
    mapper = Mapper(MapperConfig(window=WindowConfig(keyframes=2, max_voxels=8, max_observations_per_keyframe=4, max_anchors_per_keyframe=2)), cal.load(path))
    low, high = mapper.config.calibration.bounds.limits()[name]
    assert np.all(mapper.theta[name] >= low) and np.all(mapper.theta[name] <= high)


@pytest.mark.parametrize("document", [{"dsg_ros_calibration": 1}, _document(odom_log_scale=None)], ids=["no_theta", "missing_parameter"])
def test_loading_a_file_that_lacks_parameters_is_refused(tmp_path: Path, document: dict):
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        cal.load(path)


@pytest.mark.parametrize("value", [{"x": 1.0}, ["a", "b", "c"]], ids=["mapping", "strings"])
def test_loading_a_non_numeric_parameter_names_the_file_and_the_parameter(tmp_path: Path, value):
    path = tmp_path / "calibration.yaml"
    path.write_text(yaml.safe_dump(_document(odom_log_scale=value)))
    with pytest.raises(ValueError, match="odom_log_scale") as error:
        cal.load(path)
    assert str(path) in str(error.value)


# ------------------------------------------------------------ config loader


def test_a_nested_yaml_overrides_only_what_it_names(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "mapper:\n"
        "  voxel_size: 1        # an int where a float is expected is fine\n"
        "  T_base_sensor: [1, 0, 0, 0, 0.2, 0, 0.5]\n"
        "  window:\n"
        "    keyframes: 7\n"
        "  keyframes: {distance_m: 0.8}\n"
        "  calibration: {every_keyframes: 0}\n"
        "sim:\n"
        "  lidar: {azimuths: 64}\n"
    )
    data = load_yaml(path)
    config = from_mapping(MapperConfig, data["mapper"], "mapper")
    default = MapperConfig()
    assert config.window == dataclasses.replace(default.window, keyframes=7)
    assert config.keyframes == dataclasses.replace(default.keyframes, distance_m=0.8)
    assert config.calibration == dataclasses.replace(default.calibration, every_keyframes=0)
    assert config.voxel_size == 1.0 and isinstance(config.voxel_size, float)
    assert config.T_base_sensor == (1.0, 0.0, 0.0, 0.0, 0.2, 0.0, 0.5)
    assert config == dataclasses.replace(
        default, window=config.window, keyframes=config.keyframes, calibration=config.calibration, voxel_size=1.0, T_base_sensor=config.T_base_sensor
    )
    sim = from_mapping(SimConfig, data["sim"], "sim")
    assert sim == dataclasses.replace(SimConfig(), lidar=LidarConfig(azimuths=64))


@pytest.mark.parametrize(
    "data, problem",
    [
        ({"window": {"keyframs": 3}}, r"mapper\.window: unknown key.*keyframs"),
        ({"voxelsize": 0.1}, r"mapper: unknown key.*voxelsize"),
        ({"calibration": {"solver": {"max_iters": 3}}}, r"mapper\.calibration\.solver: unknown key.*max_iters"),
        ({"window": {"keyframes": "five"}}, r"mapper\.window\.keyframes: expected a number"),
        ({"window": {"keyframes": 2.5}}, r"mapper\.window\.keyframes: expected an integer"),
        ({"window": {"keyframes": True}}, r"mapper\.window\.keyframes"),
        ({"window": 5}, r"mapper\.window: expected a mapping"),
        ({"voxel_size": "0.2"}, r"mapper\.voxel_size: expected a number"),
        ({"solver": {"method": "newton"}}, r"mapper\.solver\.method: 'newton' is not one of"),
        ({"calibration": {"learn_extrinsic": "yes"}}, r"mapper\.calibration\.learn_extrinsic: expected true/false"),
        ({"T_base_sensor": 1.0}, r"mapper\.T_base_sensor: expected a list"),
        ({"T_base_sensor": [1, 0, 0, "x", 0, 0, 0]}, r"mapper\.T_base_sensor\[3\]"),
        ({"voxel_size": -0.2}, r"mapper: .*voxel_size must be positive"),
        ({"window": {"keyframes": 1}}, r"mapper\.window: .*at least 2 keyframes"),
        ({"T_base_sensor": [2, 0, 0, 0, 0, 0, 0]}, r"mapper: .*T_base_sensor"),
        ({"calibration": {"learn_noise": True}}, r"mapper\.calibration: .*needs optimizer: adam"),
        ({"calibration": {"optimizer": "lbfgs"}}, r"mapper\.calibration\.optimizer: 'lbfgs' is not one of"),
        ({"calibration": {"forgetting": 1.5}}, r"mapper\.calibration: .*forgetting must be in \(0, 1\]"),
    ],
)
def test_config_errors_name_the_full_path(data: dict, problem: str):
    with pytest.raises(ValueError, match=problem):
        from_mapping(MapperConfig, data, "mapper")


@pytest.mark.parametrize("text, problem", [("- a\n- b\n", "mapping at the top level"), ("mapper: [\n", "cannot read")])
def test_load_yaml_refuses_what_is_not_a_config(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        load_yaml(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_yaml(tmp_path / "absent.yaml")
    path.write_text("")
    assert load_yaml(path) == {}


def test_to_mapping_round_trips_through_yaml(tmp_path: Path):
    mapper = dataclasses.replace(
        MapperConfig(),
        window=WindowConfig(keyframes=6, max_voxels=100, max_observations_per_keyframe=10, max_anchors_per_keyframe=5),
        solver=SolverConfig(max_iterations=4, linear_solver="dense", relative_tolerance=1e-7),
        calibration=CalibrationConfig(every_keyframes=2, learn_extrinsic=True, optimizer="adam", forgetting=0.95),
        obs_sigma_m=0.07,
    )
    sim = dataclasses.replace(SimConfig(), lidar=LidarConfig(azimuths=32, fov_deg=(-10.0, 12.5)), odometry=ODOMETRY, seed=4)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"mapper": to_mapping(mapper), "sim": to_mapping(sim)}))
    data = load_yaml(path)
    assert from_mapping(MapperConfig, data["mapper"], "mapper") == mapper
    assert from_mapping(SimConfig, data["sim"], "sim") == sim
    assert to_mapping(MapperConfig())["window"]["keyframes"] == WindowConfig().keyframes


@pytest.mark.parametrize("section", ["solver", "calibration"])
def test_a_partial_nested_override_keeps_the_other_defaults(section: str):
    if section == "solver":
        config = from_mapping(MapperConfig, {"solver": {"max_iterations": 5}}, "mapper")
        assert config.solver == dataclasses.replace(MapperConfig().solver, max_iterations=5)
    else:
        config = from_mapping(MapperConfig, {"calibration": {"solver": {"max_iterations": 2}}}, "mapper")
        assert config.calibration.solver == dataclasses.replace(CalibrationConfig().solver, max_iterations=2)


def test_a_fixed_length_tuple_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"sim\.lidar\.fov_deg"):
        from_mapping(SimConfig, {"lidar": {"fov_deg": [-15.0, 0.0, 15.0]}}, "sim")


# ------------------------------------------------------------ metrics


def _trajectory(n: int = 12) -> np.ndarray:
    """A 3D corkscrew with turning orientation, (n, 7)."""
    k = np.arange(n, dtype=float)
    xi = np.stack([np.cos(0.5 * k) * 3, np.sin(0.5 * k) * 3, 0.2 * k, 0.1 * np.sin(k), 0.05 * k, 0.3 * k], axis=1)
    return se3.exp(xi)


def test_ate_removes_a_rigid_transform_but_not_a_shape_error():
    reference = _trajectory()
    T = se3.exp(np.array([5.0, -2.0, 1.0, 0.3, -0.2, 1.1]))
    moved = se3.compose(np.broadcast_to(T, reference.shape), reference)
    assert metrics.ate(moved, reference) == pytest.approx(0.0, abs=1e-9)
    assert metrics.ate(moved, reference, align=False) > 1.0
    # A pattern no rigid motion can absorb: ±d along z, alternating around a flat ring (Σ z·x = Σ z·y = Σ z = 0).
    angles = np.arange(8) * np.pi / 4
    ring = np.zeros((8, 7))
    ring[:, 0], ring[:, 4], ring[:, 5] = 1.0, 2.0 * np.cos(angles), 2.0 * np.sin(angles)
    bumpy = ring.copy()
    bumpy[:, 6] = 0.1 * (-1.0) ** np.arange(8)
    assert metrics.ate(bumpy, ring) == pytest.approx(0.1, abs=1e-9)
    assert metrics.ate(se3.compose(np.broadcast_to(T, bumpy.shape), bumpy), ring) == pytest.approx(0.1, abs=1e-9)
    # Without alignment a constant offset (0.3, 0.4, 0) is its length.
    shifted = reference.copy()
    shifted[:, 4:6] += [0.3, 0.4]
    assert metrics.ate(shifted, reference, align=False) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        metrics.ate(reference[:3], reference[:4])


def test_rpe_is_zero_for_identical_or_rigidly_moved_trajectories_and_measures_step_errors():
    reference = _trajectory()
    assert metrics.rpe(reference, reference) == pytest.approx((0.0, 0.0), abs=1e-9)
    T = se3.exp(np.array([1.0, 2.0, 3.0, 0.4, 0.0, -0.7]))
    assert metrics.rpe(se3.compose(np.broadcast_to(T, reference.shape), reference), reference, delta=3) == pytest.approx((0.0, 0.0), abs=1e-9)
    # Straight 1 m steps against 1.1 m steps: 0.1 m per step, no rotation error.
    line = se3.exp(np.stack([np.arange(6.0), np.zeros(6), np.zeros(6), np.zeros(6), np.zeros(6), np.zeros(6)], axis=1))
    longer = se3.exp(np.stack([1.1 * np.arange(6.0), np.zeros(6), np.zeros(6), np.zeros(6), np.zeros(6), np.zeros(6)], axis=1))
    assert metrics.rpe(longer, line) == pytest.approx((0.1, 0.0), abs=1e-12)
    assert metrics.rpe(longer, line, delta=2) == pytest.approx((0.2, 0.0), abs=1e-12)
    # A 2 deg yaw error on every step.
    turned = se3.exp(np.stack([np.arange(6.0), np.zeros(6), np.zeros(6), np.zeros(6), np.zeros(6), np.deg2rad(2.0) * np.arange(6.0)], axis=1))
    assert metrics.rpe(turned, line)[1] == pytest.approx(2.0, abs=1e-9)
    assert all(np.isnan(metrics.rpe(line[:2], line[:2], delta=2)))


def test_write_tum_writes_stamp_translation_then_xyzw_quaternion(tmp_path: Path):
    # 90 deg about z: wxyz = (cos 45, 0, 0, sin 45); a 10 deg roll, to tell qx from the rest.
    yaw = se3.exp(np.array([1.0, 2.0, 3.0, 0.0, 0.0, np.pi / 2]))
    roll = se3.exp(np.array([-1.5, 0.25, 0.0, np.deg2rad(10.0), 0.0, 0.0]))
    poses = np.stack([yaw, roll])
    path = metrics.write_tum(tmp_path / "out" / "trajectory.tum", np.array([1.5, 2.25]), poses)
    rows = [line.split() for line in path.read_text().splitlines()]
    assert [len(r) for r in rows] == [8, 8]
    values = np.array(rows, float)
    np.testing.assert_allclose(values[:, 0], [1.5, 2.25])
    np.testing.assert_allclose(values[:, 1:4], poses[:, 4:], atol=1e-6)
    np.testing.assert_allclose(values[0, 4:], [0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)], atol=1e-9)
    np.testing.assert_allclose(values[1, 4:], [np.sin(np.deg2rad(5.0)), 0.0, 0.0, np.cos(np.deg2rad(5.0))], atol=1e-9)
    np.testing.assert_allclose(values[:, 4:], poses[:, [1, 2, 3, 0]], atol=1e-9)
