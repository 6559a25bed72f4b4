"""Derivatives of the solution: every mode against finite differences, and no NaN.

Parameters enter the graph as measurement offsets and a noise scale, so the
problem has non-zero residuals at the optimum (the hard case for implicit
gradients) and a noise parameter whose gradient only exists because of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jaxlie
import numpy as np
import pytest
from conftest import se3, small_hybrid

from dsg_ros.solve import SolverConfig, solve
from dsg_ros.solve.reduced import solve_poses
from dsg_ros.tools import hero
from dsg_ros.world import Capacity, Noise, WorldModel

CONVERGED = SolverConfig(relative_tolerance=0.0, step_tolerance=1e-13, gradient_tolerance=1e-13, max_iterations=60)


@pytest.fixture(scope="module")
def problem():
    wm, pose_ids, point_ids, _, _ = small_hybrid(seed=3, poses=3, points=3, noisy=True)
    graph, x0 = wm.graph(), wm.pack_state()
    odom, obs = graph.slab("odom_se3"), graph.slab("voxel_point_obs")
    odom_rows = jnp.nonzero(odom.active)[0]
    obs_rows = jnp.nonzero(obs.active)[0]
    rng = np.random.default_rng(7)
    w_poses = jnp.asarray(rng.normal(size=x0.poses[:, 4:].shape))
    w_points = jnp.asarray(rng.normal(size=x0.points.shape))

    def graph_of(theta):
        Z = jaxlie.SE3(odom.measurement[odom_rows]) @ jaxlie.SE3.exp(theta["odom"])
        g = graph.with_measurements("odom_se3", odom_rows, Z.wxyz_xyz)
        g = g.with_measurements("voxel_point_obs", obs_rows, obs.measurement[obs_rows] + theta["obs"])
        return g.with_sqrt_info("voxel_point_obs", obs_rows, obs.sqrt_info[obs_rows] * jnp.exp(-theta["log_sigma"]))

    def loss(theta, config):
        x, _ = solve(graph_of(theta), x0, config)
        return jnp.sum(w_poses * x.poses[:, 4:]) + jnp.sum(w_points * x.points)

    theta = {
        "odom": jnp.zeros((len(odom_rows), 6)),
        "obs": jnp.zeros((len(obs_rows), 3)),
        "log_sigma": jnp.zeros((len(obs_rows), 1, 1)),
    }
    reference = jax.jit(lambda t: loss(t, CONVERGED))
    directions = [jax.tree.map(lambda a, k=k: jnp.asarray(np.random.default_rng(k).normal(size=a.shape)), theta) for k in range(3)]

    def finite_difference(u, eps=1e-4):
        plus = jax.tree.map(lambda a, b: a + eps * b, theta, u)
        minus = jax.tree.map(lambda a, b: a - eps * b, theta, u)
        return float((reference(plus) - reference(minus)) / (2 * eps))

    fd = [finite_difference(u) for u in directions]
    return loss, theta, directions, fd


def _directional(grad, u) -> float:
    return float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(u))))


@pytest.mark.parametrize(
    "name, config, rtol",
    [
        # Exact Hessian by CG: matches finite differences to their precision.
        ("implicit-exact", CONVERGED.updated({"implicit_iterations": 50}), 1e-6),
        # Unrolled LM steps from x0: converged within the budget, so exact.
        ("unroll", SolverConfig(diff="unroll", unroll_iterations=15, relative_tolerance=0.0), 1e-5),
        # Gauss-Newton steps from the solution converge to the exact derivative
        # (measured here: 3e-5 off after 3 steps; one step would be 7 % off).
        ("truncated", SolverConfig(diff="truncated", truncated_iterations=3), 2e-4),
        # Gauss-Newton Hessian: approximate when residuals do not vanish
        # (measured: up to 7 % off on this noisy problem; exact below).
        ("implicit-gauss-newton", CONVERGED.updated({"implicit_hessian": "gauss_newton"}), 1e-1),
    ],
)
def test_gradient_matches_finite_differences(problem, name, config, rtol):
    loss, theta, directions, fd = problem
    grad = jax.jit(jax.grad(lambda t: loss(t, config)))(theta)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad)), name
    assert abs(_directional(grad["log_sigma"], directions[0]["log_sigma"])) > 1e-6, "noise scale must get a gradient"
    for u, expected in zip(directions, fd):
        assert _directional(grad, u) == pytest.approx(expected, rel=rtol, abs=1e-8), name


def test_unrolled_gradient_descent_matches_finite_differences():
    """The seed's gradient descent (lr 0.05, 80 steps) unrolled, on HERO (a
    problem that step size suits): the derivative of its 80-step output, not
    of the optimum, against finite differences of that same output."""
    problem = hero.build_problem()
    config = SolverConfig(method="gd", diff="unroll")

    def loss(theta):
        x, _ = solve(hero.inject(problem, theta), problem.x0, config)
        return hero.supervised_loss(problem, x)

    theta = {k: jnp.asarray(v) for k, v in hero.theta0().items()}
    value, grad = jax.jit(loss), jax.jit(jax.grad(loss))(theta)
    eps = 1e-5
    for seed in range(2):
        u = jax.tree.map(lambda a, k=seed: jnp.asarray(np.random.default_rng(k).normal(size=a.shape)), theta)
        plus = jax.tree.map(lambda a, b: a + eps * b, theta, u)
        minus = jax.tree.map(lambda a, b: a - eps * b, theta, u)
        fd = float((value(plus) - value(minus)) / (2 * eps))
        assert abs(fd) > 1e-3
        assert _directional(grad, u) == pytest.approx(fd, rel=1e-6)


def test_gauss_newton_implicit_is_exact_without_residuals():
    wm, _, _, _, _ = small_hybrid(seed=5, poses=3, points=3, noisy=False)
    graph, x0 = wm.graph(), wm.pack_state()
    obs = graph.slab("voxel_point_obs")
    rows = jnp.nonzero(obs.active)[0]
    w = jnp.asarray(np.random.default_rng(1).normal(size=x0.points.shape))

    def loss(offset, config):
        x, _ = solve(graph.with_measurements("voxel_point_obs", rows, obs.measurement[rows] + offset), x0, config)
        return jnp.sum(w * x.points)

    zero = jnp.zeros((len(rows), 3))
    grad = jax.jit(jax.grad(lambda o: loss(o, CONVERGED.updated({"implicit_hessian": "gauss_newton"}))))(zero)
    ref = jax.jit(lambda o: loss(o, CONVERGED))
    u = jnp.asarray(np.random.default_rng(2).normal(size=zero.shape))
    eps = 1e-4
    fd = (ref(zero + eps * u) - ref(zero - eps * u)) / (2 * eps)
    assert float(jnp.vdot(grad, u)) == pytest.approx(float(fd), rel=1e-5)


@pytest.mark.parametrize("diff", ["implicit", "unroll"])
def test_no_nan_at_zero_rotation_or_near_pi(diff):
    wm = WorldModel(Capacity(poses=2, factors={"prior_se3": 1, "odom_se3": 1}))
    a, b = wm.add_pose(se3()), wm.add_pose(se3(1.0))
    wm.add_factor("prior_se3", [a], se3(), Noise.isotropic(0.01, 6))
    wm.add_factor("odom_se3", [a, b], se3(1.0), Noise.isotropic(0.1, 6))
    graph, x0 = wm.graph(), wm.pack_state()
    config = SolverConfig(diff=diff, unroll_iterations=8)

    @jax.jit
    def value_and_grad(twist):
        def f(t):
            g = graph.with_measurements("odom_se3", jnp.array([0]), jaxlie.SE3.exp(t).wxyz_xyz[None])
            x, _ = solve(g, x0, config)
            return jnp.sum(x.poses[1]), x

        return jax.value_and_grad(f, has_aux=True)(twist)

    for angle in (0.0, np.pi - 1e-6):
        twist = jnp.array([1.0, 0.0, 0.0, 0.0, 0.0, angle])
        (value, x), grad = value_and_grad(twist)
        assert np.isfinite(float(value)) and bool(jnp.all(jnp.isfinite(grad))), (diff, angle)
        expected = jaxlie.SE3.exp(twist).wxyz_xyz
        # q and −q are the same rotation.
        got = np.asarray(x.poses[1])
        assert min(np.abs(got - expected).max(), np.abs(got[:4] + expected[:4]).max()) < 1e-4, (diff, angle)


# ----------------------------------------------- pose-system solve (calibration)


def _odom_offsets(graph):
    odom = graph.slab("odom_se3")
    rows = jnp.nonzero(odom.active)[0]

    def graph_of(twists):
        Z = jaxlie.SE3(odom.measurement[rows]) @ jaxlie.SE3.exp(twists)
        return graph.with_measurements("odom_se3", rows, Z.wxyz_xyz)

    return graph_of, jnp.zeros((len(rows), 6))


def test_pose_system_step_is_the_full_gauss_newton_step():
    """Freezing the observations into a Schur quadratic at x0 changes nothing
    about the first Gauss–Newton step: poses and back-substituted points agree."""
    wm, _, _, _, _ = small_hybrid(seed=4, poses=4, points=5, noisy=True)
    graph, x0 = wm.graph(), wm.pack_state()
    graph_of, zero = _odom_offsets(graph)
    twists = zero + 0.02 * jnp.asarray(np.random.default_rng(0).normal(size=zero.shape))
    one_gn_step = SolverConfig(method="gn", max_iterations=1, linear_solver="dense")
    full, _ = jax.jit(lambda t: solve(graph_of(t), x0, one_gn_step))(twists)
    reduced = jax.jit(lambda t: solve_poses(graph_of(t), x0, ("odom_se3",)))(twists)
    assert not np.allclose(np.asarray(full.poses), np.asarray(x0.poses), atol=1e-3), "the step must move the poses"
    np.testing.assert_allclose(np.asarray(reduced.poses), np.asarray(full.poses), atol=1e-9)
    np.testing.assert_allclose(np.asarray(reduced.points), np.asarray(full.points), atol=1e-9)


def test_pose_system_gradient_is_exact_at_a_zero_residual_optimum():
    """At an optimum with vanishing residuals the Gauss–Newton derivative is
    exact: against finite differences of the converged full solve, for a loss
    on both poses and (back-substituted) points."""
    wm, _, _, _, _ = small_hybrid(seed=5, poses=4, points=4, noisy=False)
    graph, x0 = wm.graph(), wm.pack_state()
    x_star, _ = jax.jit(lambda: solve(graph, x0, CONVERGED))()
    graph_of, zero = _odom_offsets(graph)
    rng = np.random.default_rng(3)
    w_poses, w_points = jnp.asarray(rng.normal(size=x0.poses[:, 4:].shape)), jnp.asarray(rng.normal(size=x0.points.shape))

    def loss(x):
        return jnp.sum(w_poses * x.poses[:, 4:]) + jnp.sum(w_points * x.points)

    grad = jax.jit(jax.grad(lambda t: loss(solve_poses(graph_of(t), x_star, ("odom_se3",)))))(zero)
    reference = jax.jit(lambda t: loss(solve(graph_of(t), x_star, CONVERGED)[0]))
    u = jnp.asarray(rng.normal(size=zero.shape))
    # Each reference solve stops within ~1e-10 of its optimum (where depends
    # on the BLAS build); eps = 1e-5 amplified that to a 3e-5 relative error
    # in fd, eps = 1e-4 keeps both it and the O(eps²) truncation below 1e-6.
    eps = 1e-4
    fd = (reference(zero + eps * u) - reference(zero - eps * u)) / (2 * eps)
    assert abs(float(fd)) > 1e-3
    assert float(jnp.vdot(grad, u)) == pytest.approx(float(fd), rel=1e-5)


def test_pose_system_solve_refuses_varying_factors_on_points():
    wm, _, _, _, _ = small_hybrid(seed=0, poses=2, points=2)
    with pytest.raises(ValueError, match="voxel_point_obs.*poses only"):
        solve_poses(wm.graph(), wm.pack_state(), ("voxel_point_obs",))


def test_pose_system_solve_skips_a_step_it_cannot_take():
    """A non-finite odometry measurement leaves the state where it was instead of spreading NaN."""
    wm, _, _, _, _ = small_hybrid(seed=0, poses=3, points=2)
    graph, x0 = wm.graph(), wm.pack_state()
    graph_of, zero = _odom_offsets(graph)
    x = jax.jit(lambda t: solve_poses(graph_of(t), x0, ("odom_se3",)))(zero.at[0, 0].set(jnp.nan))
    np.testing.assert_allclose(np.asarray(x.poses), np.asarray(x0.poses), atol=1e-12)
    assert np.all(np.isfinite(np.asarray(x.points)))
