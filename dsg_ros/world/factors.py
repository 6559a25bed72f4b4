"""Factor types and the residual registry.

A factor type names the kinds of variables it connects, its residual
dimension and measurement shape, and a per-factor residual function. Built-in
types carry analytic Jacobians; user-registered types get theirs from
``jax.jacfwd`` through the same right-perturbation retraction the solver uses
(``T ⊕ δ = T · Exp(δ)``, ``v ⊕ δ = v + δ``), so both paths agree by
construction.

Residual functions see one factor at a time: poses as ``jaxlie.SE3``, points
as ``(3,)`` arrays, and the raw measurement array (SE(3) measurements are
stored as ``wxyz_xyz`` (7,)). The solver ``vmap``s them over a slab; the
built-in types bring whole-slab kernels instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import jax
import jax.numpy as jnp
import jaxlie
import numpy as np

from dsg_ros import se3
from dsg_ros.world.layout import (
    ANCHOR_POINT,
    ANCHOR_VOXEL,
    ODOM_SE3,
    PRIOR_POINT,
    PRIOR_SE3,
    VOXEL_ANCHOR_OBS,
    VOXEL_POINT_OBS,
    linear_prior_name,
)

VarKind = Literal["pose", "point"]
TANGENT_DIM: dict[str, int] = {"pose": 6, "point": 3}
VALUE_DIM: dict[str, int] = {"pose": 7, "point": 3}

Value = jaxlie.SE3 | jax.Array
ResidualFn = Callable[[tuple[Value, ...], jax.Array], jax.Array]
JacobianFn = Callable[[tuple[Value, ...], jax.Array], tuple[jax.Array, tuple[jax.Array, ...]]]
# Whole-slab kernels: (poses (P, 7), points (V, 3), slots (F, k), measurements (F, …)).
BatchedResidualFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
BatchedLinearizeFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, tuple[jax.Array, ...]]]


def _pose(value: Value) -> jaxlie.SE3:
    """A value at a pose position (values come in the order of the type's var_kinds)."""
    assert isinstance(value, jaxlie.SE3)
    return value


def _point(value: Value) -> jax.Array:
    """A value at a point position."""
    assert not isinstance(value, jaxlie.SE3)
    return value


@dataclass(frozen=True, eq=False)
class FactorType:
    """One kind of factor; hashed by identity so it can be a static jit argument."""

    name: str
    var_kinds: tuple[VarKind, ...]
    residual_dim: int
    measurement_shape: tuple[int, ...]
    residual: ResidualFn
    jacobian: JacobianFn | None = None
    se3_measurement: bool = False  # measurement is an SE(3) ``wxyz_xyz`` (7,)
    # Optional whole-slab versions of ``residual``/``linearize`` for hot
    # factor types: they can compute per-variable quantities (a pose's
    # rotation matrix) once instead of once per factor.
    batched_residual: BatchedResidualFn | None = None
    batched_linearize: BatchedLinearizeFn | None = None
    # Measurement of unused rows: must keep residuals *and their derivatives*
    # finite (masking a NaN still poisons gradients). Default: zeros, or the
    # identity for SE(3) measurements.
    neutral_measurement: tuple[float, ...] | None = None

    def neutral(self) -> np.ndarray:
        if self.neutral_measurement is not None:
            return np.asarray(self.neutral_measurement, np.float64).reshape(self.measurement_shape)
        if self.se3_measurement:
            return np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        return np.zeros(self.measurement_shape)

    def linearize(self, values: tuple[Value, ...], measurement: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Residual (d,) and one Jacobian (d, tangent_dim) per variable, at δ = 0."""
        if self.jacobian is not None:
            return self.jacobian(values, measurement)
        return _autodiff_jacobian(self, values, measurement)


def retract_value(kind: str, value: Value, delta: jax.Array) -> Value:
    """Right-perturbation retraction for one variable."""
    if kind == "pose":
        return _pose(value) @ jaxlie.SE3.exp(delta)
    return _point(value) + delta


def _autodiff_jacobian(
    ftype: FactorType, values: tuple[Value, ...], measurement: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    dims = [TANGENT_DIM[k] for k in ftype.var_kinds]
    splits = [sum(dims[:i]) for i in range(1, len(dims))]

    def perturbed(delta: jax.Array) -> jax.Array:
        parts = jnp.split(delta, splits)
        moved = tuple(retract_value(k, v, d) for k, v, d in zip(ftype.var_kinds, values, parts))
        return ftype.residual(moved, measurement)

    zero = jnp.zeros(sum(dims), dtype=measurement.dtype)
    jac = jax.jacfwd(perturbed)(zero)
    return ftype.residual(values, measurement), tuple(jnp.split(jac, splits, axis=1))


# ---------------------------------------------------------------------------
# Built-in residuals (analytic Jacobians; checked against jacfwd in the tests).


def _skew(v: jax.Array) -> jax.Array:
    """[v]× (…, 3, 3) of vectors (…, 3)."""
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = jnp.zeros_like(x)
    return jnp.stack([jnp.stack([zero, -z, y], -1), jnp.stack([z, zero, -x], -1), jnp.stack([-y, x, zero], -1)], -2)


def _outer(a: jax.Array, b: jax.Array) -> jax.Array:
    return a[..., :, None] * b[..., None, :]


def _mat3(A: jax.Array, B: jax.Array) -> jax.Array:
    """Batched 3×3 products as broadcast-and-sum: no dot op, cheap for XLA to compile."""
    return jnp.sum(A[..., :, :, None] * B[..., None, :, :], axis=-2)


def _se3_jr_inv(xi: jax.Array) -> jax.Array:
    """Right-Jacobian inverse of SE(3) at ξ = (ρ, ω) (…, 6) → (…, 6, 6): ∂Log(Exp(ξ)·Exp(δ))/∂δ at 0.

    Closed form: [[J⁻¹, −J⁻¹ Q(−ρ, −ω) J⁻¹], [0, J⁻¹]] with J⁻¹ the SO(3) right
    Jacobian inverse and Q Barfoot's coupling block, every matrix product of
    skews expanded into outer products. Below θ = 0.1 (0.3 in float32) the
    coefficients switch to their Taylor series, before cancellation bites;
    the safe-``where`` pattern keeps derivatives finite at θ = 0 (jaxlie's
    ``jlog()`` has NaN reverse-mode derivatives there, which unrolled
    differentiation would hit). Checked against autodiff in the tests.
    """
    rho, w = xi[..., :3], xi[..., 3:]
    th2 = jnp.sum(w * w, axis=-1)
    small = th2 < (0.01 if xi.dtype == jnp.float64 else 0.09)
    th2s = jnp.where(small, 1.0, th2)
    th = jnp.sqrt(th2s)
    sin, cos = jnp.sin(th), jnp.cos(th)
    t4 = th2 * th2
    c1 = jnp.where(small, 1 / 6 - th2 / 120 + t4 / 5040, (th - sin) / (th2s * th))
    c2 = jnp.where(small, 1 / 24 - th2 / 720 + t4 / 40320, (th2s + 2 * cos - 2) / (2 * th2s * th2s))
    c3 = jnp.where(small, 1 / 120 - th2 / 2520 + t4 / 120960, (2 * th - 3 * sin + th * cos) / (2 * th2s * th2s * th))
    d = jnp.where(small, 1 / 12 + th2 / 720 + t4 / 30240, 1 / th2s - jnp.cos(0.5 * th) / (2 * th * jnp.sin(0.5 * th)))
    c1, c2, c3, d, th2 = (c[..., None, None] for c in (c1, c2, c3, d, th2))
    eye = jnp.eye(3, dtype=xi.dtype)
    j_inv = eye + 0.5 * _skew(w) + d * (_outer(w, w) - th2 * eye)
    a, b = -rho, -w
    ab = jnp.sum(a * b, axis=-1)[..., None, None]
    A, B = _skew(a), _skew(b)
    Q = (
        0.5 * A
        + c1 * (_outer(a, b) + _outer(b, a) - 2 * ab * eye - ab * B)
        + c2 * (_outer(b, jnp.cross(b, a)) + _outer(jnp.cross(a, b), b) - 2 * th2 * A + 3 * ab * B)
        - c3 * 2 * ab * (_outer(b, b) - th2 * eye)
    )
    top_right = -_mat3(_mat3(j_inv, Q), j_inv)
    return jnp.concatenate([jnp.concatenate([j_inv, top_right], -1), jnp.concatenate([jnp.zeros_like(j_inv), j_inv], -1)], -2)


# Per-factor residuals (the definitions; user-facing and the reference the
# tests differentiate) and whole-slab kernels that the solver runs. Kernels
# use ``dsg_ros.se3`` on raw ``wxyz_xyz`` arrays: jaxlie's methods are
# separately jitted functions, and vmapping hundreds of them made tracing a
# differentiated solve slow.


def _prior_se3(values: tuple[Value, ...], z: jax.Array) -> jax.Array:
    (T_world_body,) = values
    return (jaxlie.SE3(z).inverse() @ _pose(T_world_body)).log()


def _prior_se3_batched(poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array) -> jax.Array:
    return se3.log(se3.between(z, poses[slots[:, 0]]))


def _prior_se3_batched_jac(
    poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    r = _prior_se3_batched(poses, points, slots, z)
    return r, (_se3_jr_inv(r),)


def _odom_se3(values: tuple[Value, ...], z: jax.Array) -> jax.Array:
    T_world_i, T_world_j = values
    return (jaxlie.SE3(z).inverse() @ _pose(T_world_i).inverse() @ _pose(T_world_j)).log()


def _odom_se3_batched(poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array) -> jax.Array:
    return se3.log(se3.between(z, se3.between(poses[slots[:, 0]], poses[slots[:, 1]])))


def _odom_se3_batched_jac(
    poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    # E = Z⁻¹ Tᵢ⁻¹ Tⱼ.  Tⱼ·Exp(δ) gives E·Exp(δ);  Tᵢ·Exp(δ) gives E·Exp(−Ad(Tⱼ⁻¹Tᵢ) δ).
    # Jr⁻¹ = [[A, B], [0, A]] and Ad(R, t) = [[R, t^R], [0, R]], so their
    # product is [[AR, (A t^ + B) R], [0, AR]]: three 3×3 products.
    T_i_j = se3.between(poses[slots[:, 0]], poses[slots[:, 1]])
    r = se3.log(se3.between(z, T_i_j))
    jac_j = _se3_jr_inv(r)
    T_j_i = se3.inverse(T_i_j)
    R = se3.rotation_matrix(T_j_i)
    A, B = jac_j[:, :3, :3], jac_j[:, :3, 3:]
    AR = _mat3(A, R)
    top_right = _mat3(_mat3(A, _skew(T_j_i[:, 4:])) + B, R)
    jac_i = -jnp.concatenate([jnp.concatenate([AR, top_right], -1), jnp.concatenate([jnp.zeros_like(AR), AR], -1)], -2)
    return r, (jac_i, jac_j)


def _prior_point(values: tuple[Value, ...], z: jax.Array) -> jax.Array:
    (p_world,) = values
    return _point(p_world) - z


def _obs_frames(poses: jax.Array, slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    """R_world_body (F, 3, 3) and t_world_body (F, 3) per row: matrices built per pose, then gathered."""
    R_world_body = se3.rotation_matrix(poses)
    return R_world_body[slots[:, 0]], poses[slots[:, 0], 4:]


def _voxel_point_obs_batched(poses: jax.Array, points: jax.Array, slots: jax.Array, p_body: jax.Array) -> jax.Array:
    R, t = _obs_frames(poses, slots)
    d = points[slots[:, 1]] - t
    return jnp.sum(R * d[:, :, None], axis=1) - p_body  # Rᵀ (v − t) − p


def _voxel_point_obs_batched_jac(
    poses: jax.Array, points: jax.Array, slots: jax.Array, p_body: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    # q = T⁻¹v; (T·Exp(δ))⁻¹ v ≈ q − δ_v − δ_ω × q, so ∂/∂δ = [−I, [q]×]; ∂/∂v = Rᵀ.
    R, t = _obs_frames(poses, slots)
    d = points[slots[:, 1]] - t
    q_body = jnp.sum(R * d[:, :, None], axis=1)
    minus_eye = jnp.broadcast_to(-jnp.eye(3, dtype=q_body.dtype), R.shape)
    jac_pose = jnp.concatenate([minus_eye, _skew(q_body)], axis=2)
    return q_body - p_body, (jac_pose, jnp.swapaxes(R, 1, 2))


def _voxel_anchor_batched(poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array) -> jax.Array:
    R, t = _obs_frames(poses, slots)
    d = z[:, ANCHOR_VOXEL] - t
    return jnp.sum(R * d[:, :, None], axis=1) - z[:, ANCHOR_POINT]


def _voxel_anchor_batched_jac(
    poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    R, t = _obs_frames(poses, slots)
    q_body = jnp.sum(R * (z[:, ANCHOR_VOXEL] - t)[:, :, None], axis=1)
    minus_eye = jnp.broadcast_to(-jnp.eye(3, dtype=q_body.dtype), R.shape)
    return q_body - z[:, ANCHOR_POINT], (jnp.concatenate([minus_eye, _skew(q_body)], axis=2),)


def _voxel_anchor(values: tuple[Value, ...], z: jax.Array) -> jax.Array:
    (T_world_body,) = values
    return _pose(T_world_body).inverse() @ z[ANCHOR_VOXEL] - z[ANCHOR_POINT]


def _prior_point_batched(poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array) -> jax.Array:
    return points[slots[:, 0]] - z


def _prior_point_batched_jac(
    poses: jax.Array, points: jax.Array, slots: jax.Array, z: jax.Array
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    r = points[slots[:, 0]] - z
    return r, (jnp.broadcast_to(jnp.eye(3, dtype=r.dtype), (r.shape[0], 3, 3)),)


def _voxel_point_obs(values: tuple[Value, ...], p_body: jax.Array) -> jax.Array:
    T_world_body, v_world = values
    return _pose(T_world_body).inverse() @ _point(v_world) - p_body


def _one_row(kernel: BatchedLinearizeFn, var_kinds: tuple[VarKind, ...]) -> JacobianFn:
    """A whole-slab kernel run on one factor: the per-factor Jacobian of a
    built-in type, so each type's analytic Jacobian is written once."""
    slots, counts = [], {"pose": 0, "point": 0}
    for kind in var_kinds:
        slots.append(counts[kind])
        counts[kind] += 1

    def jacobian(values: tuple[Value, ...], z: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        poses = [_pose(v).wxyz_xyz for k, v in zip(var_kinds, values) if k == "pose"]
        points = [_point(v) for k, v in zip(var_kinds, values) if k == "point"]
        P = jnp.stack(poses) if poses else jnp.zeros((0, 7), z.dtype)
        V = jnp.stack(points) if points else jnp.zeros((0, 3), z.dtype)
        r, jacs = kernel(P, V, jnp.asarray([slots], jnp.int32), z[None])
        return r[0], tuple(j[0] for j in jacs)

    return jacobian


def _builtin(
    name: str,
    var_kinds: tuple[VarKind, ...],
    residual_dim: int,
    measurement_shape: tuple[int, ...],
    residual: ResidualFn,
    batched_residual: BatchedResidualFn,
    batched_linearize: BatchedLinearizeFn,
    se3_measurement: bool = False,
) -> FactorType:
    return FactorType(
        name, var_kinds, residual_dim, measurement_shape, residual, _one_row(batched_linearize, var_kinds),
        se3_measurement=se3_measurement, batched_residual=batched_residual, batched_linearize=batched_linearize,
    )


BUILTIN_TYPES: tuple[FactorType, ...] = (
    _builtin(PRIOR_SE3, ("pose",), 6, (7,), _prior_se3, _prior_se3_batched, _prior_se3_batched_jac, se3_measurement=True),
    _builtin(ODOM_SE3, ("pose", "pose"), 6, (7,), _odom_se3, _odom_se3_batched, _odom_se3_batched_jac, se3_measurement=True),
    _builtin(PRIOR_POINT, ("point",), 3, (3,), _prior_point, _prior_point_batched, _prior_point_batched_jac),
    _builtin(VOXEL_POINT_OBS, ("pose", "point"), 3, (3,), _voxel_point_obs, _voxel_point_obs_batched, _voxel_point_obs_batched_jac),
    # A voxel_point_obs whose voxel is a constant (frozen in the map): its
    # position travels in the measurement (layout.ANCHOR_VOXEL), so it needs
    # no variable slot and adds nothing to the Schur complement.
    _builtin(VOXEL_ANCHOR_OBS, ("pose",), 3, (6,), _voxel_anchor, _voxel_anchor_batched, _voxel_anchor_batched_jac),
)


def linear_prior_type(var_kinds: Sequence[VarKind]) -> FactorType:
    """A Gaussian prior over several variables, as marginalization leaves behind.

    One FactorType object per ``var_kinds`` (cached): factor types are static
    parts of a jitted graph, so equal windows share their compiled solves.

    Measurement (n_values + n_tangent,), ``layout.linear_prior_measurement``:
    each variable's linearization point then an offset ``c`` in their stacked tangents.
    Residual ``[x_i ⊖ x̄_i]_i + c`` with ``T ⊖ T̄ = Log(T̄⁻¹T)``, ``v ⊖ v̄ = v − v̄``;
    whitened by ``L`` it gives the cost ``½‖L(δ + c)‖²`` of a prior with
    information ``LᵀL`` and gradient ``LᵀL c`` at the linearization point.
    Named by its variable kinds (``layout.linear_prior_name``).
    """
    return _linear_prior_type(tuple(var_kinds))


@cache
def _linear_prior_type(kinds: tuple[VarKind, ...]) -> FactorType:
    value_dims = [VALUE_DIM[k] for k in kinds]
    tangent_dims = [TANGENT_DIM[k] for k in kinds]
    value_starts = np.cumsum([0, *value_dims])
    tangent_starts = np.cumsum([0, *tangent_dims])
    n_values, n = int(value_starts[-1]), int(tangent_starts[-1])
    # Poses and points are each handled as one batch (one log, one Jacobian
    # kernel for all of them): a prior over ten poses must not compile ten
    # copies of the SE(3) code.
    pose_pos = [i for i, k in enumerate(kinds) if k == "pose"]
    point_pos = [i for i, k in enumerate(kinds) if k == "point"]
    pose_values = np.concatenate([np.arange(value_starts[i], value_starts[i] + 7) for i in pose_pos]).astype(np.int32) if pose_pos else None
    point_values = np.concatenate([np.arange(value_starts[i], value_starts[i] + 3) for i in point_pos]).astype(np.int32) if point_pos else None
    order = np.argsort(np.concatenate([np.arange(tangent_starts[i], tangent_starts[i + 1]) for i in pose_pos + point_pos]))

    def deltas(values: tuple[Value, ...], z: jax.Array) -> tuple[jax.Array | None, jax.Array]:
        """Pose deltas (n_pose, 6) and all deltas stacked in position order (n,)."""
        parts, pose_d = [], None
        if pose_pos:
            T = jnp.stack([_pose(values[i]).wxyz_xyz for i in pose_pos])
            ref = z[pose_values].reshape(-1, 7)
            pose_d = se3.log(se3.between(ref, T))
            parts.append(pose_d.reshape(-1))
        if point_pos:
            v = jnp.stack([_point(values[i]) for i in point_pos])
            parts.append((v - z[point_values].reshape(-1, 3)).reshape(-1))
        return pose_d, jnp.concatenate(parts)[order]

    def residual(values: tuple[Value, ...], z: jax.Array) -> jax.Array:
        return deltas(values, z)[1] + z[n_values:]

    def jacobian(values: tuple[Value, ...], z: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        pose_d, d = deltas(values, z)
        full = jnp.zeros((n, n), d.dtype)
        if pose_d is not None:
            rows = np.concatenate([np.repeat(np.arange(tangent_starts[i], tangent_starts[i] + 6), 6) for i in pose_pos])
            cols = np.concatenate([np.tile(np.arange(tangent_starts[i], tangent_starts[i] + 6), 6) for i in pose_pos])
            full = full.at[rows, cols].set(_se3_jr_inv(pose_d).reshape(-1))
        for i in point_pos:
            full = full.at[tangent_starts[i] : tangent_starts[i + 1], tangent_starts[i] : tangent_starts[i + 1]].set(jnp.eye(3, dtype=d.dtype))
        jacs = tuple(full[:, tangent_starts[i] : tangent_starts[i + 1]] for i in range(len(kinds)))
        return d + z[n_values:], jacs

    name = linear_prior_name(kinds)
    neutral: list[float] = []
    for kind in kinds:
        neutral += [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] if kind == "pose" else [0.0, 0.0, 0.0]
    neutral += [0.0] * n
    return FactorType(name, kinds, n, (n_values + n,), residual, jacobian, neutral_measurement=tuple(neutral))


class FactorRegistry:
    """Name → FactorType. Starts with the built-ins; users add their own."""

    def __init__(self, types: Sequence[FactorType] = BUILTIN_TYPES) -> None:
        self._types: dict[str, FactorType] = {}
        for ftype in types:
            self.add(ftype)

    def add(self, ftype: FactorType) -> FactorType:
        if ftype.name in self._types:
            raise ValueError(f"factor type {ftype.name!r} is already registered")
        _validate(ftype)
        self._types[ftype.name] = ftype
        return ftype

    def register(
        self,
        name: str,
        var_kinds: Sequence[VarKind],
        residual_dim: int,
        measurement_shape: Sequence[int],
        residual: ResidualFn,
        *,
        jacobian: JacobianFn | None = None,
        se3_measurement: bool = False,
    ) -> FactorType:
        """Register a new residual; Jacobians come from autodiff unless given.

        ``se3_measurement=True`` declares the measurement an SE(3) ``wxyz_xyz``
        (7,): it is then validated as a unit quaternion and accepts a ``jaxlie.SE3``.
        """
        shape = tuple(int(s) for s in measurement_shape)
        return self.add(FactorType(name, tuple(var_kinds), int(residual_dim), shape, residual, jacobian, se3_measurement))

    def ensure(self, ftype: FactorType) -> FactorType:
        """``ftype``, or the already registered type of the same name."""
        return self._types[ftype.name] if ftype.name in self._types else self.add(ftype)

    def get(self, name: str) -> FactorType:
        try:
            return self._types[name]
        except KeyError:
            raise KeyError(f"unknown factor type {name!r}; registered types: {', '.join(sorted(self._types))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[FactorType]:
        return iter(self._types.values())

    def names(self) -> list[str]:
        return sorted(self._types)


def _validate(ftype: FactorType) -> None:
    if not ftype.name or not ftype.name.replace("_", "").isalnum():
        raise ValueError(f"factor type name {ftype.name!r} must be a non-empty identifier")
    if not ftype.var_kinds:
        raise ValueError(f"factor type {ftype.name!r} must connect at least one variable")
    bad = [k for k in ftype.var_kinds if k not in TANGENT_DIM]
    if bad:
        raise ValueError(f"factor type {ftype.name!r}: unknown variable kind(s) {bad}; expected 'pose' or 'point'")
    if ftype.var_kinds.count("point") > 1:
        # The Schur complement eliminates points with independent 3×3 blocks.
        raise ValueError(f"factor type {ftype.name!r} connects {ftype.var_kinds.count('point')} points; at most one is supported")
    if ftype.se3_measurement and ftype.measurement_shape != (7,):
        raise ValueError(f"factor type {ftype.name!r}: an SE(3) measurement has shape (7,), declared {ftype.measurement_shape}")
    if ftype.residual_dim <= 0:
        raise ValueError(f"factor type {ftype.name!r}: residual_dim must be positive")
    # Trace the residual once on placeholders so shape mistakes surface here,
    # with the factor's name, rather than deep inside a jitted solve.
    values = tuple(
        jaxlie.SE3.identity() if k == "pose" else jnp.zeros(3) for k in ftype.var_kinds
    )
    meas: jax.ShapeDtypeStruct | jax.Array = jax.ShapeDtypeStruct(ftype.measurement_shape, jnp.float64)
    if ftype.se3_measurement:
        meas = jaxlie.SE3.identity().wxyz_xyz
    try:
        out = jax.eval_shape(lambda m: ftype.residual(values, m), meas)
    except Exception as exc:  # report any tracing failure against the type's name
        raise ValueError(f"factor type {ftype.name!r}: residual function failed on placeholder inputs: {exc}") from exc
    if out.shape != (ftype.residual_dim,):
        raise ValueError(
            f"factor type {ftype.name!r}: residual returns shape {out.shape}, declared ({ftype.residual_dim},)"
        )


DEFAULT_REGISTRY = FactorRegistry()


# Register a residual in the default registry (see ``FactorRegistry.register``).
register_factor_type = DEFAULT_REGISTRY.register
