"""Learning from bags: the loss gradients, folds, resume, cross-validation,
and `dsg-ros learn` on a short sim bag end to end (its calibration loads
into replay), with the bad inputs it must name.

The sim bag run compiles one mapper (the front-end that fills the cache)
and the training step; the rest trains on a small synthetic cache.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from dsg_ros import se3
from dsg_ros.cli import main
from dsg_ros.learn import calibration as cal, experiment as ex
from dsg_ros.learn.config import LearnConfig, LossConfig
from dsg_ros.learn.dataset import DatasetError, KeyframeLog, split, subsequence, windows
from dsg_ros.learn.losses import _adjugate3, _det3, joint_nll, surrogate
from dsg_ros.learn.train import train
from dsg_ros.mapping import metrics
from dsg_ros.tools.sim.scenario import SimConfig, simulate
from dsg_ros.tools.sim_bag import SimBagConfig, write_sim_bag

# --------------------------------------------------------------- synthetic data


def _synthetic_log(keyframes: int = 24, cells: int = 6, seed: int = 0, bags: int = 1, yaw_bias: float = 0.02) -> KeyframeLog:
    """A robot driving an arc past a few landmarks, its odometry biased in yaw
    by ``yaw_bias`` rad/s: every cell is a landmark (key = its index) seen from
    every keyframe, the sensor is the base."""
    rng = np.random.default_rng(seed)
    landmarks = rng.uniform([-5, -5, -1], [15, 15, 1], size=(cells, 3))
    per_bag = keyframes // bags
    rows: dict[str, list[Any]] = {k: [] for k in ("bag", "stamp", "raw", "dt", "vel", "valid", "p", "ref")}
    for b in range(bags):
        twist = np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.1])  # per 1 s keyframe interval
        truth = [se3.IDENTITY]
        for _ in range(per_bag - 1):
            truth.append(se3.compose(truth[-1], se3.exp(twist + rng.normal(0, 0.01, 6) * [1, 1, 0, 0, 0, 1])))
        for k, T in enumerate(truth):
            rows["bag"].append(b)
            rows["stamp"].append(100.0 * b + k)
            true_step = se3.between(truth[k - 1], T) if k else se3.IDENTITY
            rows["raw"].append(se3.compose(true_step, se3.exp(np.array([0, 0, 0, 0, 0, yaw_bias * (k > 0)]))))
            rows["dt"].append(1.0)
            rows["vel"].append(np.tile(twist, (2, 1)))
            rows["valid"].append(k > 0)
            rows["p"].append(se3.apply(se3.inverse(T), landmarks) + rng.normal(0, 0.01, (cells, 3)))
            rows["ref"].append(T)
    K = len(rows["stamp"])
    reference = np.array(rows["ref"])
    return KeyframeLog(
        bag=np.array(rows["bag"], np.int32),
        stamp=np.array(rows["stamp"]),
        odom_raw=np.array(rows["raw"]),
        odom_dt=np.array(rows["dt"]),
        odom_velocity=np.array(rows["vel"]),
        odom_sigma=np.tile([0.03, 0.03, 0.03, 0.01, 0.01, 0.01], (K, 1)),
        odom_valid=np.array(rows["valid"]),
        p_sensor=np.array(rows["p"]),
        # Planar cells with the normal along x: b = 1/0.05 along it, a = 1/0.25 across.
        obs_sqrt_info=np.broadcast_to(np.diag([20.0, 4.0, 4.0]), (K, cells, 3, 3)).copy(),
        obs_key=np.tile(np.arange(cells, dtype=np.int64), (K, 1)),
        obs_valid=np.ones((K, cells), bool),
        estimate=se3.compose(se3.exp(np.array([1.0, 2.0, 0.0, 0.0, 0.0, 0.3]))[None], reference),  # another map frame
        reference=reference,
        T_base_sensor=np.tile(se3.IDENTITY, (bags, 1)),
        obs_sigma=np.array([0.05, 0.25]),
        sources=tuple(f"synthetic{b}" for b in range(bags)),
        fingerprint="synthetic",
    )


def _theta(**values: Any) -> cal.Theta:
    theta = {k: jnp.asarray(v, jnp.float64) for k, v in cal.zero_theta().items()}
    theta.update({k: jnp.asarray(v, jnp.float64) for k, v in values.items()})
    return theta


# Coordinates (group, flat index) whose derivatives are checked.
COORDINATES = [("odom_log_scale", 0), ("odom_bias", 5), ("time_offset", 0), ("log_sigma_odom_axes", 5), ("log_sigma_obs", 0),
               ("log_sigma_obs_plane", 0), ("extrinsic", 5)]


def _check_gradient(f, theta: cal.Theta, eps: float, rel: float, abs: float) -> None:
    """``jax.grad`` of ``f`` against central differences on COORDINATES; one
    compiled value-and-gradient program serves both (compiling is most of the time)."""
    value_and_grad = jax.jit(jax.value_and_grad(f))
    grad = value_and_grad(theta)[1]

    def at(name: str, i: int, delta: float) -> float:
        moved = dict(theta)
        moved[name] = jnp.reshape(jnp.reshape(theta[name], -1).at[i].add(delta), jnp.shape(theta[name]))
        return float(value_and_grad(moved)[0])

    for name, i in COORDINATES:
        difference = (at(name, i, eps) - at(name, i, -eps)) / (2 * eps)
        assert float(jnp.reshape(grad[name], -1)[i]) == pytest.approx(difference, rel=rel, abs=abs), name


def test_joint_nll_gradient_matches_finite_differences():
    seq = jax.tree.map(jnp.asarray, subsequence(_synthetic_log(keyframes=4, cells=5), np.arange(4)))
    theta = _theta(odom_log_scale=[0.02, 0, 0], odom_bias=[0, 0, 0, 0, 0, 0.01], time_offset=0.01, log_sigma_obs=0.1, log_sigma_obs_plane=-0.2,
                   log_sigma_odom_axes=[0.1] * 6, extrinsic=[0.01, 0, 0, 0, 0, 0.02])
    _check_gradient(lambda t: joint_nll(t, seq), theta, 1e-6, 1e-5, 1e-6)


@pytest.mark.parametrize(
    ("inner", "rel"),
    # unroll differentiates the fixed iterations exactly; implicit (the default)
    # the optimum the solve converges to. Each compiles for ~40 s on 2 busy
    # cores, so only the default runs unless slow tests are asked for.
    [pytest.param("unroll", 1e-3, marks=pytest.mark.slow), ("implicit", 1e-3)],
)
def test_surrogate_gradient_matches_finite_differences(inner, rel):
    seq = jax.tree.map(jnp.asarray, subsequence(_synthetic_log(keyframes=4, cells=5), np.arange(4)))
    config = LossConfig("surrogate", inner, inner_steps=8)
    theta = _theta(odom_log_scale=[0.05, 0, 0], odom_bias=[0, 0, 0, 0, 0, 0.05], log_sigma_obs=0.5, log_sigma_odom_axes=[-0.3] * 6)
    _check_gradient(lambda t: surrogate(t, seq, config), theta, 1e-5, rel, 1e-7)


def test_time_folds_keep_a_gap_and_bag_folds_hold_out_whole_bags():
    log = _synthetic_log(keyframes=40)
    assert len(windows(log, 4)) == 10
    for fold in range(3):
        parts = split(log, 4, fold, 3)
        assert parts.by == "time"
        train_rows = np.concatenate(parts.train)
        for w in parts.validation:  # no training keyframe next to (or in) a validation window
            assert np.min(np.abs(train_rows[:, None] - w[None, :])) > 4
    by_bag = split(_synthetic_log(keyframes=40, bags=4), 4, 1, 4)
    assert by_bag.by == "bags"
    log4 = _synthetic_log(keyframes=40, bags=4)
    assert {int(log4.bag[w[0]]) for w in by_bag.validation} == {1}
    assert 1 not in {int(log4.bag[w[0]]) for w in by_bag.train}
    with pytest.raises(DatasetError, match=r"synthetic0: 10 subsequences of 4 keyframes in 1 bag\(s\) cannot make 20 folds"):
        split(log, 4, 0, 20, what="synthetic0")


def test_cache_round_trip_and_a_corrupt_cache_names_its_file(tmp_path):
    log = _synthetic_log(keyframes=6)
    back = KeyframeLog.load(log.save(tmp_path / "cache.npz"))
    assert back.sources == log.sources and np.array_equal(back.p_sensor, log.p_sensor)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.npz"):
        KeyframeLog.load(tmp_path / "bad.npz")


# -------------------------------------------------------------------- training

# The shapes and settings of the sim bag run below: one compilation serves both.
SMALL = LearnConfig(train_sequence_length=6, batch_size=4, num_folds=2, num_epochs=3, learning_rate=0.02, warmup_steps=0, cells_per_keyframe=64)


def _training_log() -> KeyframeLog:
    """Ten windows of six keyframes: a time fold of two has four for training (one batch) and five for validation."""
    return _synthetic_log(keyframes=60, cells=64)


def _lines(folder: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "epoch_s"} for line in ex.read_metrics(folder)]


def test_resume_after_an_interrupt_ends_where_an_uninterrupted_run_ends(tmp_path):
    log = _training_log()
    whole = train(log, SMALL, tmp_path / "whole", metrics.score)

    def interrupt(step: int) -> None:
        if step == 3:  # epoch 3's step is taken, its checkpoint never written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(log, SMALL, tmp_path / "cut", metrics.score, on_step=interrupt)
    assert [line["epoch"] for line in ex.read_metrics(tmp_path / "cut")] == [0, 1, 2]
    resumed = train(log, SMALL, tmp_path / "cut", metrics.score, resume=True)
    assert resumed.resumed_from == 2
    assert _lines(tmp_path / "cut") == _lines(tmp_path / "whole")
    for k, v in whole.theta.items():
        np.testing.assert_array_equal(resumed.theta[k], v, err_msg=k)
    assert yaml.safe_load((tmp_path / "cut" / ex.CALIBRATION_FILE).read_text())["theta"] == yaml.safe_load(
        (tmp_path / "whole" / ex.CALIBRATION_FILE).read_text()
    )["theta"]
    # A finished experiment is not overwritten by accident.
    with pytest.raises(ex.ExperimentError, match="checkpoint.npz: the experiment exists; pass --resume"):
        train(log, SMALL, tmp_path / "whole", metrics.score)


def test_an_incompatible_experiment_or_corrupt_checkpoint_is_named(tmp_path):
    log = _training_log()
    folder = tmp_path / "run"
    train(log, LearnConfig(**{**SMALL.__dict__, "num_epochs": 0}), folder, metrics.score)
    with pytest.raises(ex.ExperimentError, match="experiment_config.yaml: made with other settings \\(learning_rate\\)"):
        train(log, LearnConfig(**{**SMALL.__dict__, "learning_rate": 0.5}), folder, metrics.score, resume=True)
    (folder / ex.CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ex.ExperimentError, match=r"checkpoint.npz: corrupt checkpoint"):
        train(log, SMALL, folder, metrics.score, resume=True)
    document = yaml.safe_load((folder / ex.CONFIG_FILE).read_text())
    document["dsg_ros_experiment"] = 99
    (folder / ex.CONFIG_FILE).write_text(yaml.safe_dump(document))
    with pytest.raises(ex.ExperimentError, match="experiment_config.yaml: experiment version 99 is not supported"):
        train(log, SMALL, folder, metrics.score, resume=True)


def test_cross_validation_gives_mean_and_standard_error_of_each_folds_best_epoch(tmp_path, capsys):
    best = [1.0, 2.0, 4.0]
    for fold, value in enumerate(best):
        folder = tmp_path / "exp" / f"fold_{fold}"
        folder.mkdir(parents=True)
        ex.write_metrics(folder, [{"epoch": 0, "validation_ate_m": 10.0, "train_loss": None},
                                  {"epoch": 1, "validation_ate_m": value, "validation_rel_1s_m": value / 10, "train_loss": -1.0}])
    assert main(["cross-validate", "--experiment-paths", str(tmp_path / "**"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ate = summary[str(tmp_path / "exp")]["validation_ate_m"]
    # mean 7/3; sample variance ((4/3)² + (1/3)² + (5/3)²) / 2 = 7/3; s.e. √(7/3) / √3 = √7 / 3.
    assert ate["n"] == 3 and ate["mean"] == pytest.approx(7 / 3) and ate["standard_error"] == pytest.approx(math.sqrt(7) / 3)
    assert main(["cross-validate", "--experiment-paths", str(tmp_path / "**"), "--disaggregate"]) == 0
    out = capsys.readouterr().out
    assert "validation_ate_m" in out and "2.333 ± 0.8819 (n=3)" in out and "fold_2: train_loss -1, validation_ate_m 4" in out
    assert main(["cross-validate", "--experiment-paths", str(tmp_path / "nothing")]) == 2


# ----------------------------------------------------------------- sim bag end to end


@pytest.fixture(scope="module")
def sim_bag(tmp_path_factory) -> Path:
    """30 s of the default sim: its odometry over-reads forward motion by 3 % and drifts 1 deg/s in yaw."""
    path = tmp_path_factory.mktemp("learn") / "sim"
    write_sim_bag(simulate(SimConfig(duration_s=30.0)), path, SimBagConfig(storage="mcap"))
    return path


BAG_FLAGS = ["--train-sequence-length", "6", "--batch-size", "4", "--num-folds", "2", "--learning-rate", "0.02", "--warmup-steps", "0",
             "--cells-per-keyframe", "64", "--quiet", "--json"]


def test_learning_on_a_sim_bag_lowers_validation_error_and_its_calibration_loads_into_replay(sim_bag, tmp_path, capsys):
    experiments = tmp_path / "experiments"
    code = main(["learn", str(sim_bag), "--reference-topic", "/ground_truth", "--num-epochs", "10", "--experiments-dir", str(experiments), *BAG_FLAGS])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out.strip().splitlines()[-1])
    folder = experiments / "constant_joint_nll" / "fold_0"
    assert result["experiment"] == str(folder)
    for name in (ex.CONFIG_FILE, ex.CHECKPOINT_FILE, ex.METRICS_FILE, ex.CALIBRATION_FILE):
        assert (folder / name).is_file(), name
    assert (folder / ex.CURVES_FILE).is_file() == _has_matplotlib()
    before, best = result["before"], result["best"]
    assert best["validation_ate_m"] < 0.95 * before["validation_ate_m"]
    theta = cal.load(folder / ex.CALIBRATION_FILE)
    summary = cal.CalibrationSummary.of(theta)
    assert summary.odom_scale[0] > 1.0 and summary.odom_bias_angular_deg_s[2] > 0.3  # toward the sim's 3 % and 1 deg/s
    code = main(["replay", str(sim_bag), "--calibration", str(folder / ex.CALIBRATION_FILE), "--no-calibration", "--duration", "5", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out.strip().splitlines()[-1])["calibration"]["odom_scale"][0] == pytest.approx(summary.odom_scale[0])

    # The cache is reused; folds the data cannot make are named with the bag.
    code = main(["learn", str(sim_bag), "--reference-topic", "/ground_truth", "--experiments-dir", str(experiments), *BAG_FLAGS[:4],
                 "--num-folds", "40", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"{sim_bag}: " in err and "cannot make 40 folds" in err


def test_a_bag_without_the_reference_topic_is_named(sim_bag, tmp_path, capsys):
    code = main(["learn", str(sim_bag), "--reference-topic", "/mocap", "--experiments-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and f"{sim_bag}: no topic /mocap" in err
    assert not (tmp_path / "constant_joint_nll").exists()


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None



def test_the_mapper_applies_the_learned_noise_model_as_the_losses_do():
    """What is learned is what runs: the node's mapper builds its sqrt-information
    from a loaded theta exactly as the losses rebuild it from the cached one."""
    from dsg_ros.learn.losses import obs_sqrt_info
    from dsg_ros.mapping import Mapper, MapperConfig
    from dsg_ros.mapping.voxels import CellObservations

    config = MapperConfig()
    cells = CellObservations(keys=np.arange(3), p_sensor=np.ones((3, 3)), counts=np.full(3, 5),
                             n_sensor=np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 0.0]]))
    learned = {"log_sigma_odom_axes": np.log([2.0, 1.0, 1.0, 1.0, 1.0, 3.0]), "log_sigma_obs": np.log(0.5), "log_sigma_obs_plane": np.log(4.0)}
    nominal, calibrated = Mapper(config), Mapper(config, {**cal.as_host(cal.zero_theta()), **learned})
    odom = np.diag(calibrated._odom_noise(None).sqrt_info)
    np.testing.assert_allclose(odom, 1.0 / (np.array([config.odom_sigma_m] * 3 + [config.odom_sigma_rad] * 3) * [2, 1, 1, 1, 1, 3]))
    for axis in (None, np.array([0.0, 0.0, 1.0])):  # a lidar's cells; a planar scanner's
        L0 = nominal._obs_sqrt_info(cells, se3.IDENTITY, axis)
        expected = calibrated._obs_sqrt_info(cells, se3.IDENTITY, axis)
        sigma = jnp.array([config.obs_sigma_m, config.obs_plane_sigma_m])
        np.testing.assert_allclose(obs_sqrt_info(_theta(**learned), jnp.asarray(L0), sigma), expected, rtol=1e-12)


def test_closed_form_3x3_determinant_and_adjugate_match_lapack():
    """The losses' 3 × 3 algebra avoids XLA's LAPACK kernels (they deadlocked a
    2-thread pool on large batches); it must agree with them."""
    A = np.random.default_rng(3).normal(size=(64, 3, 3))
    np.testing.assert_allclose(_det3(jnp.asarray(A)), np.linalg.det(A), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(_adjugate3(jnp.asarray(A))), np.linalg.inv(A) * np.linalg.det(A)[:, None, None], rtol=1e-9, atol=1e-9)
