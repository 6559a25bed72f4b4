"""The sliding window: marginalization reproduces the batch solution."""

from __future__ import annotations

import jax
import jaxlie
import numpy as np
import pytest

from dsg_ros import se3
from dsg_ros.mapping.voxels import CellObservations
from dsg_ros.mapping.window import ANCHOR_SIGMA, OdometryRow, Window, WindowConfig
from dsg_ros.solve import SolverConfig, solve
from dsg_ros.world import Capacity, Noise, WorldModel

CONVERGED = SolverConfig(relative_tolerance=0.0, step_tolerance=1e-14, gradient_tolerance=1e-12, max_iterations=50, linear_solver="dense")
solver = jax.jit(solve, static_argnames="config")
ODOM = Noise.diagonal([0.05] * 3 + [0.01] * 3)
OBS = Noise.isotropic(0.05, 3)
# The window only stores the odometry velocities (the time offset uses them).
NO_VELOCITY, NO_VELOCITIES = np.zeros(6), np.zeros((2, 6))


def _add(
    win: Window,
    stamp: float,
    T_map_base: np.ndarray,
    step: np.ndarray | None,
    cells: CellObservations,
    p_base: np.ndarray,
    T_odom_base: np.ndarray | None = None,
):
    """A keyframe whose odometry factor measures ``step`` (None: the first keyframe), at rest."""
    return win.add_keyframe(
        stamp=stamp,
        T_odom_base=T_map_base if T_odom_base is None else T_odom_base,
        odom_velocity=NO_VELOCITY,
        T_map_base=T_map_base,
        odom=None if step is None else OdometryRow(step, 1.0, NO_VELOCITIES, step),
        odom_noise=ODOM,
        cells=cells,
        p_base=p_base,
        obs_noise=OBS,
    )


def _window_vs_batch(noise: float, keyframes: int = 9, window: int = 4, seen: int = 3) -> float:
    """Largest pose difference between the window and the batch solution of the
    same data, over every step. Keyframe i observes voxels i … i+seen−1, so no
    voxel is seen again after it was frozen: the window must then equal the
    batch up to the nonlinearity of the factors."""
    rng = np.random.default_rng(0)
    truth = [se3.exp(np.array([1.0 * i, 0.1 * np.sin(i), 0.0, 0.0, 0.0, 0.2 * i])) for i in range(keyframes)]
    voxels = [np.array([i + 0.5, 2.0 + 0.3 * np.cos(i), 0.5 * np.sin(i)]) for i in range(keyframes + seen)]
    win = Window(WindowConfig(keyframes=window, max_voxels=64, max_observations_per_keyframe=seen, max_anchors_per_keyframe=3))
    batch = WorldModel(Capacity(poses=keyframes, points=keyframes + seen, factors={"prior_se3": 1, "odom_se3": keyframes, "voxel_point_obs": keyframes * seen}))
    poses, points, worst = [], {}, 0.0
    for i in range(keyframes):
        z = None if i == 0 else se3.compose(se3.between(truth[i - 1], truth[i]), se3.exp(rng.normal(0, noise, 6)))
        obs = [(j, se3.apply(se3.inverse(truth[i]), voxels[j]) + rng.normal(0, noise, 3)) for j in range(i, i + seen)]
        p = np.array([o[1] for o in obs])
        T_init = truth[0] if z is None else se3.compose(win.pose(win.keyframes[-1]), z)
        cells = CellObservations(keys=np.arange(i, i + seen), p_sensor=p, counts=np.ones(seen, np.int64))
        _add(win, float(i), T_init, z, cells, p, T_odom_base=truth[i])
        x, _ = solver(win.model.graph(), win.model.pack_state(), config=CONVERGED)
        win.model.set_state(x)

        poses.append(batch.add_pose(T_init))
        if i == 0:
            batch.add_factor("prior_se3", [poses[0]], truth[0], Noise.isotropic(ANCHOR_SIGMA, 6))
        else:
            batch.add_factor("odom_se3", [poses[i - 1], poses[i]], z, ODOM)
        for j, pj in obs:
            if j not in points:
                points[j] = batch.add_point(se3.apply(T_init, pj))
            batch.add_factor("voxel_point_obs", [poses[i], points[j]], pj, OBS)
        xb, _ = solver(batch.graph(), batch.pack_state(), config=CONVERGED)
        batch.set_state(xb)
        for kf in win.keyframes:
            T_batch = batch.value(poses[kf.sequence])
            assert isinstance(T_batch, jaxlie.SE3)
            worst = max(worst, float(np.abs(win.pose(kf) - np.asarray(T_batch.wxyz_xyz)).max()))
    assert len(win.keyframes) == window and win.model.counts()["linear_prior_pppp"] == 1
    return worst


def test_marginalized_window_equals_batch():
    # Noise 1e-3 (near-linear): equal to 1e-6.
    assert _window_vs_batch(1e-3) < 1e-6
    # Exact in the linear limit: the gap is the factors' curvature, shrinking
    # with the square of the noise (measured: 8e-8 at 1e-3, 8e-10 at 1e-4).
    assert _window_vs_batch(1e-4) < _window_vs_batch(1e-3) / 30.0


def test_marginalization_freezes_voxels_into_the_map():
    # Same capacities as above, so the compiled kernels are reused.
    win = Window(WindowConfig(keyframes=4, max_voxels=64, max_observations_per_keyframe=3, max_anchors_per_keyframe=3))
    step = se3.exp(np.array([0.1, 0, 0, 0, 0, 0]))
    cells = CellObservations(keys=np.array([10, 11]), p_sensor=np.zeros((2, 3)), counts=np.ones(2, np.int64))
    reports = []
    for i in range(5):
        T = se3.exp(np.array([0.1 * i, 0, 0, 0, 0, 0]))
        p = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]) - [0.1 * i, 0, 0]
        reports.append(_add(win, float(i), T, None if i == 0 else step, cells, p)[1])
    assert reports[:4] == [None] * 4 and reports[4].frozen_voxels == 2
    keys, positions, _ = win.voxel_map.export()
    assert sorted(keys.tolist()) == [10, 11]
    np.testing.assert_allclose(positions[np.argsort(keys)], [[1.0, 0, 0], [2.0, 0, 0]], atol=1e-9)
    # The newest keyframe re-observes both cells: they are constants now,
    # observed through anchor factors that need no voxel slot.
    _, vars_, _ = win.window_voxels()
    assert len(vars_) == 0 and win.model.counts()["voxel_anchor_obs"] == 2
    with pytest.raises(ValueError):
        WindowConfig(keyframes=1)


def test_every_marginalization_graph_size_gives_the_same_prior():
    """A fold is reduced in the smallest packed graph that holds it (or the
    whole window): each size must give the same pose system."""
    win = Window(WindowConfig(keyframes=4, max_voxels=64, max_observations_per_keyframe=3, max_anchors_per_keyframe=3))
    step = se3.exp(np.array([0.1, 0.02, 0, 0, 0, 0.05]))
    for i in range(3):
        T = se3.exp(np.array([0.1 * i, 0.02 * i, 0, 0, 0, 0.05 * i]))
        cells = CellObservations(keys=np.array([10 + i, 11 + i, 12 + i]), p_sensor=np.zeros((3, 3)), counts=np.ones(3, np.int64))
        p = np.array([[1.0 + i, 0.5, 0.1], [2.0 + i, -0.5, 0.2], [3.0 + i, 0.3, -0.1]]) - [0.1 * i, 0.02 * i, 0]
        _add(win, float(i), T, None if i == 0 else step, cells, p)
    wm = win.model
    oldest = win.keyframes[0].var
    obs = wm.slab_rows("voxel_point_obs")
    voxel = int(obs.var_ids[obs.active & (obs.var_ids[:, 0] == oldest), 1][0])
    rows = {name: np.flatnonzero(wm.slab_rows(name).active & np.any(wm.slab_rows(name).var_ids == oldest, axis=1)) for name in wm.capacity.factors}
    rows["voxel_point_obs"] = np.flatnonzero(obs.active & (obs.var_ids[:, 1] == voxel))
    points = np.array([wm.slot(voxel)])
    small, large = win._fold_capacities()
    assert small["voxel_point_obs"] < large["voxel_point_obs"] and small["points"] < large["points"]
    systems = [win._reduce(rows, points, caps) for caps in (small, large, None)]
    assert np.abs(systems[0][0]).max() > 1.0, "the fold must carry information"
    for S, b, involved in systems[1:]:
        np.testing.assert_allclose(S, systems[0][0], rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(b, systems[0][1], rtol=1e-10, atol=1e-8)
        np.testing.assert_array_equal(involved, systems[0][2])


def test_anchor_rows_are_thinned_to_the_best_supported_cells():
    win = Window(WindowConfig(keyframes=2, max_voxels=8, max_observations_per_keyframe=3, max_anchors_per_keyframe=1))
    step = se3.exp(np.array([0.1, 0, 0, 0, 0, 0]))
    p = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    for i in range(3):  # the third keyframe marginalizes the first: cells 10 and 11 freeze
        cells = CellObservations(keys=np.array([10, 11]), p_sensor=p, counts=np.array([1, 5]))
        T = se3.exp(np.array([0.1 * i, 0, 0, 0, 0, 0]))
        _add(win, float(i), T, None if i == 0 else step, cells, p - [0.1 * i, 0, 0])
    _add(win, 3.0, T, step, cells, p)  # sees both frozen cells again
    anchors = win.model.slab_rows("voxel_anchor_obs")
    newest = anchors.active & (anchors.var_ids[:, 0] == win.keyframes[-1].var)
    assert int(newest.sum()) == 1, "one anchor row per keyframe at most"
    kept = win.model.measurements("voxel_anchor_obs")[newest][0, :3]
    frozen_keys, frozen_positions, _ = win.voxel_map.export()
    np.testing.assert_allclose(kept, frozen_positions[frozen_keys == 11][0], err_msg="the cell seen by 5 points is kept")
    with pytest.raises(ValueError, match="anchor"):
        WindowConfig(max_anchors_per_keyframe=0)


def test_a_failed_keyframe_leaves_no_pose_voxel_or_factor_behind():
    win = Window(WindowConfig(keyframes=2, max_voxels=8, max_observations_per_keyframe=3, max_anchors_per_keyframe=1))
    step = se3.exp(np.array([0.1, 0, 0, 0, 0, 0]))
    p = np.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])

    def cells(i: int) -> CellObservations:
        return CellObservations(keys=np.array([10 + i, 11 + i]), p_sensor=p, counts=np.array([1, 1]))

    for i in range(2):
        _add(win, float(i), se3.exp(np.array([0.1 * i, 0, 0, 0, 0, 0])), None if i == 0 else step, cells(i), p)
    far = se3.exp(np.array([1.7e308, 0, 0, 0, 0, 0]))
    for T_bad, bad_points in ((far, np.full((2, 3), 1.7e308)), (step, np.full((2, 3), np.nan))):  # overflows in the map frame; not finite
        counts, keys, mapped = win.model.counts(), dict(win._voxel_of_key), win.voxel_map.export()[0]
        with pytest.raises(ValueError, match="finite"):
            _add(win, 2.0, T_bad, step, cells(7), bad_points)
        # Only the marginalization that made room remains: no pose, voxel or factor of the failed keyframe.
        assert win.model.counts()["poses"] == len(win.keyframes) == 1
        assert win._voxel_of_key.keys() <= keys.keys() and set(win.voxel_map.export()[0].tolist()) == set(mapped.tolist())
        assert win.model.counts()["voxel_point_obs"] <= counts["voxel_point_obs"] and win.model.counts()["odom_se3"] == 0
        _add(win, 2.0, se3.exp(np.array([0.2, 0, 0, 0, 0, 0])), step, cells(2), p)
    for i in range(3, 6):  # and the window keeps sliding
        _add(win, float(i), se3.exp(np.array([0.1 * i, 0, 0, 0, 0, 0])), step, cells(i), p)
    assert len(win.keyframes) == 2 and win.model.counts()["poses"] == 2
