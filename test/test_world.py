"""WorldModel: ids, slots, validation, residual registry and Jacobians."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import jaxlie
import numpy as np
import pytest
from conftest import se3, small_hybrid

from dsg_ros.world import Capacity, FactorRegistry, Noise, WorldModel, cost, huber
from dsg_ros.world.factors import TANGENT_DIM, retract_value
from dsg_ros.world.graph import State, Tangent, slab_costs
from dsg_ros.world.noise import cauchy, robust_rho, robust_weight


def _model(**factors: int) -> WorldModel:
    return WorldModel(Capacity(poses=3, points=2, factors=factors or {"prior_se3": 2, "odom_se3": 2, "voxel_point_obs": 2}))


def _pose(wm: WorldModel, var_id: int) -> jaxlie.SE3:
    value = wm.value(var_id)
    assert isinstance(value, jaxlie.SE3)
    return value


def test_ids_are_stable_and_slots_are_reused():
    wm = _model()
    a, b = wm.add_pose(se3()), wm.add_pose(se3(1.0))
    v = wm.add_point([1.0, 2.0, 3.0])
    assert (a, b, v) == (0, 1, 2)
    slot_b = wm.slot(b)
    wm.remove_variable(b)
    c = wm.add_pose(se3(2.0))
    assert c == 3, "ids are never reused"
    assert wm.slot(c) == slot_b, "the freed slot is reused"
    np.testing.assert_allclose(_pose(wm, c).translation(), [2.0, 0.0, 0.0])
    assert wm.pose_ids() == [a, c] and wm.point_ids() == [v]


def test_removed_and_unknown_ids_are_named_in_errors():
    wm = _model()
    a = wm.add_pose(se3())
    wm.remove_variable(a)
    with pytest.raises(KeyError, match="variable 0 was removed"):
        wm.value(a)
    with pytest.raises(KeyError, match="no variable with id 42"):
        wm.add_factor("prior_se3", [42], se3())
    b = wm.add_pose(se3())
    f = wm.add_factor("prior_se3", [b], se3())
    wm.remove_factor(f)
    with pytest.raises(KeyError, match=f"factor {f} was removed"):
        wm.set_measurement(f, se3())


def test_factor_rows_match_factor_row_and_name_bad_ids():
    wm = _model(prior_se3=4)
    a = wm.add_pose(se3())
    ids = [wm.add_factor("prior_se3", [a], se3(float(i))) for i in range(4)]
    wm.remove_factor(ids[1])
    again = wm.add_factor("prior_se3", [a], se3(9.0))  # reuses the freed row
    live = [ids[3], again, ids[0], ids[2]]
    np.testing.assert_array_equal(wm.factor_rows("prior_se3", live), [wm.factor_row(f)[1] for f in live])
    assert wm.factor_rows("prior_se3", []).shape == (0,)
    with pytest.raises(KeyError, match=f"factor {ids[1]} was removed"):
        wm.factor_rows("prior_se3", [ids[0], ids[1]])
    with pytest.raises(KeyError, match="no factor with id 99"):
        wm.factor_rows("prior_se3", [99])


def test_variables_in_use_need_cascade():
    wm = _model()
    a, b = wm.add_pose(se3()), wm.add_pose(se3(1.0))
    f = wm.add_factor("odom_se3", [a, b], se3(1.0))
    with pytest.raises(ValueError, match=rf"variable\(s\) \[{a}\] still used by factor\(s\) \[{f}\]"):
        wm.remove_variable(a)
    wm.remove_variable(a, cascade=True)
    assert wm.factor_ids() == []
    assert not bool(wm.graph().slab("odom_se3").active.any())


def test_bad_input_gets_specific_errors():
    wm = _model()
    a = wm.add_pose(se3())
    v = wm.add_point([0.0, 0.0, 0.0])
    with pytest.raises(KeyError, match="unknown factor type 'nope'"):
        wm.add_factor("nope", [a], se3())
    with pytest.raises(ValueError, match=r"odom_se3 connects 2 variable\(s\)"):
        wm.add_factor("odom_se3", [a], se3())
    with pytest.raises(ValueError, match="variable 1 at position 0 is a point, expected a pose"):
        wm.add_factor("voxel_point_obs", [v, a], np.zeros(3))
    with pytest.raises(ValueError, match=r"voxel_point_obs measurement must have shape \(3,\), got \(2,\)"):
        wm.add_factor("voxel_point_obs", [a, v], np.zeros(2))
    with pytest.raises(ValueError, match="residuals are 3-dimensional; noise model is 6-dimensional"):
        wm.add_factor("voxel_point_obs", [a, v], np.zeros(3), Noise.isotropic(1.0, 6))
    with pytest.raises(ValueError, match="non-finite"):
        wm.add_point([np.nan, 0.0, 0.0])
    with pytest.raises(ValueError, match="has norm 2"):
        wm.add_pose(np.array([2.0, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="no capacity for factor type 'prior_point'"):
        wm.add_factor("prior_point", [v], np.zeros(3))
    with pytest.raises(ValueError, match="not positive definite"):
        Noise.from_information(-np.eye(3))
    full = WorldModel(Capacity(poses=1))
    full.add_pose(se3())
    with pytest.raises(RuntimeError, match=r"pose capacity \(1\) exhausted"):
        full.add_pose(se3())


def test_pack_unpack_round_trip_and_fixed_shapes():
    wm, pose_ids, point_ids, _, _ = small_hybrid()
    state = wm.pack_state()
    graph = wm.graph()
    assert state.poses.shape == (5, 7) and state.points.shape == (7, 3)
    moved = State(poses=state.poses.at[wm.slot(pose_ids[1]), 4].add(0.5), points=state.points.at[wm.slot(point_ids[0])].add(1.0))
    values = wm.unpack_state(moved)
    moved_pose = values[pose_ids[1]]
    assert isinstance(moved_pose, jaxlie.SE3)
    np.testing.assert_allclose(moved_pose.translation()[0], float(state.poses[wm.slot(pose_ids[1]), 4]) + 0.5)
    np.testing.assert_allclose(np.asarray(wm.value(point_ids[0])), np.asarray(state.points[wm.slot(point_ids[0])]) + 1.0)
    # Adding a factor writes into a slot: same shapes, same pytree structure.
    wm.add_factor("prior_point", [point_ids[0]], np.zeros(3))
    after = wm.graph()
    assert jax.tree.structure(after) == jax.tree.structure(graph)  # type: ignore[operator]  # jax's stubs leave PyTreeDef unresolved
    assert [x.shape for x in jax.tree.leaves(after)] == [x.shape for x in jax.tree.leaves(graph)]


def test_every_edit_reaches_the_next_device_graph():
    """graph() reuses its device copy between edits; each kind of edit must still show."""
    wm, pose_ids, point_ids, _, _ = small_hybrid()

    def leaves() -> list[np.ndarray]:
        return [np.asarray(x) for x in jax.tree.leaves(wm.graph())]

    assert wm.graph() is wm.graph(), "an unedited graph is uploaded once"
    obs = wm.factor_ids("voxel_point_obs")
    edits = {
        "set_measurement": lambda: wm.set_measurement(obs[0], np.array([9.0, 9.0, 9.0])),
        "set_measurements": lambda: wm.set_measurements("voxel_point_obs", wm.factor_rows("voxel_point_obs", obs[1:3]), np.full((2, 3), 7.0)),
        "set_noise": lambda: wm.set_noise(obs[3], Noise.isotropic(0.5, 3)),
        "add_factor": lambda: wm.add_factor("prior_point", [point_ids[0]], np.zeros(3)),
        "remove_factor": lambda: wm.remove_factor(obs[4]),
        "set_active": lambda: wm.set_active(point_ids[1], False),
        "add_point": lambda: wm.add_point(np.ones(3)),
        "remove_variable": lambda: wm.remove_variable(point_ids[2], cascade=True),
    }
    for name, edit in edits.items():
        before = leaves()
        edit()
        after = leaves()
        assert any(not np.array_equal(a, b) for a, b in zip(before, after)), f"{name} did not reach graph()"
        host = [np.asarray(x) for x in jax.tree.leaves(wm.graph(on_device=False))]
        assert all(np.array_equal(a, b) for a, b in zip(after, host)), f"device graph after {name} differs from the host's"
    # Moving variables is state, not graph: the upload is reused.
    g = wm.graph()
    wm.set_value(pose_ids[1], se3(5.0, 0.0, 0.0))
    assert wm.graph() is g



def test_float64_parameters_enter_a_float32_graph_differentiably():
    """On a GPU the graph is float32 while learned parameters stay float64; the
    values must be cast (JAX warns that an implicit narrowing scatter will become
    an error) and gradients must still reach them."""
    wm = WorldModel(Capacity(poses=2, points=1, factors={"prior_se3": 1, "odom_se3": 1, "voxel_point_obs": 1}), dtype=jnp.float32)
    a, b = wm.add_pose(se3()), wm.add_pose(se3(1.0))
    wm.add_factor("prior_se3", [a], se3())
    wm.add_factor("odom_se3", [a, b], se3(1.0))
    graph, x = wm.graph(), wm.pack_state()
    rows = jnp.array([0])

    def total(z: jax.Array) -> jax.Array:
        return cost(graph.with_measurements("odom_se3", rows, z).with_sqrt_info("odom_se3", rows, jnp.eye(6, dtype=jnp.float64)[None]), x)

    z = jnp.asarray(se3(1.5).parameters(), jnp.float64)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edited = graph.with_measurements("odom_se3", rows, z)
        value, grad = jax.value_and_grad(total)(z)
    assert edited.slab("odom_se3").measurement.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(edited.slab("odom_se3").measurement[0]), np.asarray(z[0]), rtol=1e-6)
    assert float(value) > 0.1, "the 0.5 m odometry error is in the cost"
    assert grad.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0.0
def test_cost_is_half_sum_of_squared_whitened_residuals():
    wm = WorldModel(Capacity(poses=1, points=1, factors={"voxel_point_obs": 1, "prior_point": 1}))
    a = wm.add_pose(se3(1.0, 0.0, 0.0))
    v = wm.add_point([2.0, 1.0, 0.0])
    wm.add_factor("voxel_point_obs", [a, v], np.array([1.0, 1.0, 0.5]), Noise.diagonal([0.5, 1.0, 2.0]))
    wm.add_factor("prior_point", [v], np.array([2.0, 0.0, 0.0]), Noise.isotropic(0.1, 3))
    # residuals: (0, 0, -0.5) whitened (0, 0, -0.25); (0, 1, 0) whitened (0, 10, 0)
    expected = 0.5 * (0.25**2 + 10.0**2)
    assert float(cost(wm.graph(), wm.pack_state())) == pytest.approx(expected, rel=1e-12)


def test_robust_losses_match_their_definitions():
    s = jnp.array([0.25, 4.0, 100.0])
    k = jnp.full(3, 1.0)
    hub = robust_rho(s, jnp.full(3, 1), k)
    np.testing.assert_allclose(hub, [0.25, 2 * 2 - 1, 2 * 10 - 1])
    cau = robust_rho(s, jnp.full(3, 2), k)
    np.testing.assert_allclose(cau, np.log1p(np.asarray(s)))
    # Weights are the derivatives of ρ.
    for code in (0, 1, 2):
        grad = jax.vmap(jax.grad(lambda x, c=code: robust_rho(x, jnp.asarray(c), jnp.asarray(1.0))))(s)
        np.testing.assert_allclose(robust_weight(s, jnp.full(3, code), k), grad, rtol=1e-12)


def test_huber_factor_cost_uses_the_loss():
    wm = WorldModel(Capacity(poses=0, points=1, factors={"prior_point": 2}))
    v = wm.add_point([3.0, 0.0, 0.0])
    wm.add_factor("prior_point", [v], np.zeros(3), robust=huber(1.0))
    wm.add_factor("prior_point", [v], np.zeros(3), robust=cauchy(1.0))
    costs = slab_costs(wm.graph().slab("prior_point"), wm.pack_state())
    np.testing.assert_allclose(costs, [0.5 * (2 * 3 - 1), 0.5 * np.log1p(9.0)])


def _autodiff_jacobians(ftype, values, meas):
    dims = [TANGENT_DIM[k] for k in ftype.var_kinds]
    out = []
    for pos, kind in enumerate(ftype.var_kinds):

        def f(d, pos=pos, kind=kind):
            moved = list(values)
            moved[pos] = retract_value(kind, values[pos], d)
            return ftype.residual(tuple(moved), meas)

        out.append(jax.jacfwd(f)(jnp.zeros(dims[pos])))
    return out


@pytest.mark.parametrize("angle", [0.0, 1e-9, 0.7, np.pi - 1e-6, np.pi])
def test_builtin_analytic_jacobians_match_autodiff(angle):
    registry = FactorRegistry()
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    T_i = jaxlie.SE3.exp(jnp.concatenate([jnp.array([0.4, -1.0, 2.0]), 0.2 * jnp.asarray(axis)]))
    T_j = T_i @ jaxlie.SE3.exp(jnp.concatenate([jnp.array([1.0, 0.2, -0.3]), angle * jnp.asarray(axis)]))
    z = jaxlie.SE3.exp(jnp.array([0.9, 0.1, -0.2, 0.0, 0.0, 0.05]))
    cases = {
        "prior_se3": ((T_j,), jaxlie.SE3.exp(jnp.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0])).wxyz_xyz),
        "odom_se3": ((T_i, T_j), z.wxyz_xyz),
        "voxel_point_obs": ((T_j, jnp.array([3.0, -1.0, 0.5])), jnp.array([0.1, 0.2, 0.3])),
        "prior_point": ((jnp.array([3.0, -1.0, 0.5]),), jnp.array([0.1, 0.2, 0.3])),
    }
    for name, (values, meas) in cases.items():
        ftype = registry.get(name)
        r, jacs = ftype.linearize(values, meas)
        np.testing.assert_allclose(r, ftype.residual(values, meas), atol=1e-12)
        for analytic, numeric in zip(jacs, _autodiff_jacobians(ftype, values, meas)):
            assert np.all(np.isfinite(np.asarray(analytic))), name
            np.testing.assert_allclose(analytic, numeric, atol=1e-7, err_msg=name)


def test_state_pullback_is_the_vjp_of_retract_at_zero():
    """The closed-form pullback of value cotangents to the tangent at δ = 0
    (what implicit gradients use) equals autodiff of ``retract``."""
    rng = np.random.default_rng(0)
    twists = rng.normal(size=(5, 6)) * np.array([1, 1, 1, 2, 2, 2])
    twists[0, 3:] = 0.0  # identity rotation
    x = State(jaxlie.SE3.exp(jnp.asarray(twists)).wxyz_xyz, jnp.asarray(rng.normal(size=(4, 3))))
    x_bar = State(jnp.asarray(rng.normal(size=(5, 7))), jnp.asarray(rng.normal(size=(4, 3))))
    _, pull = jax.vjp(lambda d: x.retract(d), Tangent.zeros_like(x))
    (expected,) = pull(x_bar)
    got = x.pullback(x_bar)
    np.testing.assert_allclose(got.poses, expected.poses, atol=1e-12)
    np.testing.assert_allclose(got.points, expected.points, atol=0)


def test_user_registered_residual_solves_with_autodiff_jacobians():
    registry = FactorRegistry()

    def height(values, z):
        (T,) = values
        return T.translation()[2:3] - z

    registry.register("pose_height", ["pose"], 1, [1], height)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("pose_height", ["pose"], 1, [1], height)
    with pytest.raises(ValueError, match=r"residual returns shape \(1,\), declared \(2,\)"):
        registry.register("bad_dim", ["pose"], 2, [1], height)
    with pytest.raises(ValueError, match="unknown variable kind"):
        registry.register("bad_kind", ["line"], 1, [1], height)  # type: ignore[list-item]  # deliberately not a kind
    wm = WorldModel(Capacity(poses=1, factors={"prior_se3": 1, "pose_height": 1}), registry=registry)
    a = wm.add_pose(se3(1.0, 2.0, 0.0))
    wm.add_factor("prior_se3", [a], se3(1.0, 2.0, 0.0), Noise.diagonal([0.01, 0.01, 10.0, 0.01, 0.01, 0.01]))
    wm.add_factor("pose_height", [a], np.array([1.5]), Noise.isotropic(0.01, 1))
    from dsg_ros.solve import solve

    x, report = solve(wm.graph(), wm.pack_state())
    assert report.as_dict()["converged"]
    assert float(x.poses[wm.slot(a), 6]) == pytest.approx(1.5, abs=1e-4)
