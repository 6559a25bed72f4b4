"""Device-side factor graph: fixed-capacity slabs that cross ``jit``.

``Graph`` holds one ``FactorSlab`` per factor type and the variables' active
masks; ``State`` holds every variable slot's value. All shapes are set by the
capacities, so adding factors or editing measurements changes array contents
only: one compilation per capacity configuration.

Inactive factor rows are masked to zero residual; inactive or unreferenced
variables are held fixed by the solver.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc
import jaxlie
from jax.typing import ArrayLike

from dsg_ros import se3
from dsg_ros.world.factors import TANGENT_DIM, FactorType
from dsg_ros.world.noise import robust_rho, robust_weight


@jdc.pytree_dataclass
class State:
    """Values of every variable slot.

    poses:  (P, 7) ``wxyz_xyz`` of ``T_world_body``; identity in unused slots.
    points: (V, 3) ``p_world``; zero in unused slots.
    """

    poses: jax.Array
    points: jax.Array

    def pose(self, slot: int) -> jaxlie.SE3:
        return jaxlie.SE3(self.poses[slot])

    def retract(self, delta: Tangent) -> State:
        """Right-perturbation update ``T·Exp(δ)``, ``v + δ``."""
        return State(poses=se3.compose(self.poses, se3.exp(delta.poses)), points=self.points + delta.points)

    def pullback(self, value_cotangent: State) -> Tangent:
        """A cotangent on the values (``wxyz_xyz``, ``xyz``) as one on the
        tangent at δ = 0: the VJP of ``retract`` there, in closed form.

        ``T·Exp(δ) ≈ (q ⊗ (1, ω/2), t + R ρ)``, so ``ρ̄ = Rᵀ t̄`` and
        ``ω̄ = ½ vec(q* ⊗ q̄)``; points pass through. Autodiff of ``retract``
        gives the same numbers through far more operations.
        """
        q, q_bar, t_bar = self.poses[:, :4], value_cotangent.poses[:, :4], value_cotangent.poses[:, 4:]
        q_conj = se3.quat_conj(q)
        omega_bar = 0.5 * se3.quat_mul(q_conj, q_bar)[:, 1:]
        rho_bar = se3.quat_rotate(q_conj, t_bar)
        return Tangent(jnp.concatenate([rho_bar, omega_bar], axis=1), value_cotangent.points)


@jdc.pytree_dataclass
class Tangent:
    """A tangent vector (or gradient) of a ``State``: poses (P, 6), points (V, 3)."""

    poses: jax.Array
    points: jax.Array

    @staticmethod
    def zeros_like(state: State) -> Tangent:
        P, V = state.poses.shape[0], state.points.shape[0]
        dtype = state.points.dtype
        return Tangent(jnp.zeros((P, 6), dtype), jnp.zeros((V, 3), dtype))

    def dot(self, other: Tangent) -> jax.Array:
        return jnp.vdot(self.poses, other.poses) + jnp.vdot(self.points, other.points)

    def scale(self, a: jax.Array | float) -> Tangent:
        return Tangent(a * self.poses, a * self.points)

    def __add__(self, other: Tangent) -> Tangent:
        return Tangent(self.poses + other.poses, self.points + other.points)

    def __sub__(self, other: Tangent) -> Tangent:
        return Tangent(self.poses - other.poses, self.points - other.points)

    def __mul__(self, other: Tangent) -> Tangent:
        return Tangent(self.poses * other.poses, self.points * other.points)

    def max_abs(self) -> jax.Array:
        parts = [jnp.max(jnp.abs(x), initial=0.0) for x in (self.poses, self.points)]
        return jnp.maximum(parts[0], parts[1])


@jdc.pytree_dataclass
class FactorSlab:
    """All factors of one type, in fixed-capacity rows.

    slots:        (F, k) int32 variable slot per connected variable.
    measurement:  (F, *measurement_shape).
    sqrt_info:    (F, d, d).
    robust_code:  (F,) int32 (0 none, 1 Huber, 2 Cauchy); robust_scale (F,).
    active:       (F,) bool.
    """

    ftype: jdc.Static[FactorType]
    slots: jax.Array
    measurement: jax.Array
    sqrt_info: jax.Array
    robust_code: jax.Array
    robust_scale: jax.Array
    active: jax.Array

    @property
    def capacity(self) -> int:
        return int(self.active.shape[0])

    def values(self, state: State) -> tuple[jaxlie.SE3 | jax.Array, ...]:
        """Gathered variable values per connected position, batched over rows."""
        out = []
        for pos, kind in enumerate(self.ftype.var_kinds):
            idx = self.slots[:, pos]
            out.append(jaxlie.SE3(state.poses[idx]) if kind == "pose" else state.points[idx])
        return tuple(out)


@jdc.pytree_dataclass
class Graph:
    """Everything a solve needs besides the state; a pytree of fixed shapes."""

    pose_active: jax.Array
    point_active: jax.Array
    slabs: tuple[FactorSlab, ...]

    def slab(self, name: str) -> FactorSlab:
        for slab in self.slabs:
            if slab.ftype.name == name:
                return slab
        raise KeyError(f"graph has no slab of factor type {name!r}; it has {[s.ftype.name for s in self.slabs]}")

    def with_measurements(self, name: str, rows: ArrayLike, measurements: ArrayLike) -> Graph:
        """A copy with ``measurements`` (n, *shape) written at slab ``rows`` (n,).

        This is how learnable parameters enter a solve: differentiable in
        ``measurements``, no change of shapes. Values are cast to the slab's
        dtype (float64 parameters into a float32 graph on a GPU).
        """
        return self._replace_slab(name, lambda s: jdc.replace(s, measurement=s.measurement.at[rows].set(jnp.asarray(measurements, s.measurement.dtype))))

    def with_sqrt_info(self, name: str, rows: ArrayLike, sqrt_info: ArrayLike) -> Graph:
        """A copy with sqrt-information (n, d, d) written at slab ``rows`` (n,), cast to the slab's dtype."""
        return self._replace_slab(name, lambda s: jdc.replace(s, sqrt_info=s.sqrt_info.at[rows].set(jnp.asarray(sqrt_info, s.sqrt_info.dtype))))

    def _replace_slab(self, name: str, fn: Callable[[FactorSlab], FactorSlab]) -> Graph:
        self.slab(name)  # raises a clear error for unknown names
        return jdc.replace(self, slabs=tuple(fn(s) if s.ftype.name == name else s for s in self.slabs))

    def __iter__(self) -> Iterator[FactorSlab]:
        return iter(self.slabs)


def slab_tangent(slab: FactorSlab, t: Tangent) -> jax.Array:
    """Rows of ``t`` for each factor's variables, in Jacobian column order (F, n)."""
    parts = [t.poses[slab.slots[:, pos]] if kind == "pose" else t.points[slab.slots[:, pos]] for pos, kind in enumerate(slab.ftype.var_kinds)]
    return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def free_mask(graph: Graph) -> Tangent:
    """1.0 where a variable is active and touched by an active factor, else 0.0.

    Shapes (P, 6) and (V, 3) so it multiplies tangents directly. Variables that
    are not free are held fixed: nothing constrains them.
    """
    P, V = graph.pose_active.shape[0], graph.point_active.shape[0]
    # One scatter per variable kind over every slab's references: XLA on CPU
    # compiles each scatter into a loop of its own.
    refs: dict[str, tuple[list[jax.Array], list[jax.Array]]] = {"pose": ([], []), "point": ([], [])}
    for slab in graph.slabs:
        act = slab.active.astype(jnp.int32)
        for pos, kind in enumerate(slab.ftype.var_kinds):
            refs[kind][0].append(slab.slots[:, pos])
            refs[kind][1].append(act)

    def referenced(kind: str, n: int) -> jax.Array:
        slots, counts = refs[kind]
        if not slots:
            return jnp.zeros(n, bool)
        return jnp.zeros(n, jnp.int32).at[jnp.concatenate(slots)].add(jnp.concatenate(counts)) > 0

    dtype = slab_dtype(graph)
    pose_free = (graph.pose_active & referenced("pose", P)).astype(dtype)
    point_free = (graph.point_active & referenced("point", V)).astype(dtype)
    return Tangent(jnp.broadcast_to(pose_free[:, None], (P, 6)), jnp.broadcast_to(point_free[:, None], (V, 3)))


def slab_dtype(graph: Graph) -> jnp.dtype:
    for slab in graph.slabs:
        return slab.measurement.dtype
    return jnp.dtype(jnp.float64)


# Longest contraction that batched_matmul unrolls.
UNROLL_MAX = 8


def batched_matmul(A: jax.Array, B: jax.Array) -> jax.Array:
    """(F, m, d) @ (F, d, n) with the short contraction unrolled.

    For d ≤ 6 this is several times faster on CPU than a batched dot (which
    XLA runs as F tiny GEMMs) and close to memory-bound. Longer contractions
    (a marginalization prior over W poses has d = 6W) are one batched dot:
    unrolled, they made the program, and its compile time, grow with W.
    """
    if A.shape[2] > UNROLL_MAX:
        return jnp.einsum("fmd,fdn->fmn", A, B, precision=jax.lax.Precision.HIGHEST)
    out = A[:, :, 0:1] * B[:, 0:1, :]
    for j in range(1, A.shape[2]):
        out = out + A[:, :, j : j + 1] * B[:, j : j + 1, :]
    return out


def _whiten(slab: FactorSlab, residuals: jax.Array) -> jax.Array:
    e = batched_matmul(slab.sqrt_info, residuals[:, :, None])[:, :, 0]
    return jnp.where(slab.active[:, None], e, 0.0)


def slab_whitened(slab: FactorSlab, state: State) -> jax.Array:
    """Whitened residuals ``L r`` (F, d); zero on inactive rows."""
    return _whiten(slab, slab_residuals(slab, state))


def slab_residuals(slab: FactorSlab, state: State) -> jax.Array:
    """Raw residuals (F, d), through the type's batched kernel when it has one."""
    ftype = slab.ftype
    if ftype.batched_residual is not None:
        r = ftype.batched_residual(state.poses, state.points, slab.slots, slab.measurement)
    else:
        r = jax.vmap(ftype.residual)(slab.values(state), slab.measurement)
    # jaxlie's SE(3) ops promote float32 to float64 when x64 is on: keep the
    # slab's dtype so float32 solves (the GPU default) stay float32.
    return r.astype(slab.measurement.dtype)


def slab_costs(slab: FactorSlab, state: State) -> jax.Array:
    """Per-factor cost ``½ ρ(‖L r‖²)`` (F,)."""
    e = slab_whitened(slab, state)
    s = jnp.sum(e * e, axis=1)
    return 0.5 * jnp.where(slab.active, robust_rho(s, slab.robust_code, slab.robust_scale), 0.0)


def cost(graph: Graph, state: State) -> jax.Array:
    """Total cost ``½ Σ ρ(‖whitened residual‖²)``: GTSAM's ``error()`` convention."""
    total = jnp.zeros((), slab_dtype(graph))
    for slab in graph.slabs:
        total = total + jnp.sum(slab_costs(slab, state))
    return total


@jdc.pytree_dataclass
class SlabLinearization:
    """IRLS-weighted whitened residuals (F, d) and the Jacobian (F, d, n).

    The Jacobian's columns hold each connected variable's tangent block in
    position order (n = Σ tangent dims); ``offsets()`` gives where each starts.
    Both carry ``root_weight`` (F,), the square root of the IRLS weight (zero
    on inactive rows).
    """

    slab: FactorSlab | None  # None while detached (``solve.normal.detach_slabs``)
    residual: jax.Array
    jacobian: jax.Array
    root_weight: jax.Array

    @property
    def factors(self) -> FactorSlab:
        """The linearized slab; a detached linearization has none."""
        assert self.slab is not None, "detached linearization: attach_slabs first"
        return self.slab

    @staticmethod
    def zeros(slab: FactorSlab) -> SlabLinearization:
        """A linearization of ``slab``'s shapes, all zeros (a loop's initial carry)."""
        ftype, dtype = slab.ftype, slab.measurement.dtype
        F, d, n = slab.capacity, ftype.residual_dim, sum(TANGENT_DIM[k] for k in ftype.var_kinds)
        return SlabLinearization(slab, jnp.zeros((F, d), dtype), jnp.zeros((F, d, n), dtype), jnp.zeros((F,), dtype))

    def offsets(self) -> tuple[int, ...]:
        out, start = [], 0
        for kind in self.factors.ftype.var_kinds:
            out.append(start)
            start += TANGENT_DIM[kind]
        return tuple(out)


def linearize_slab(slab: FactorSlab, state: State) -> tuple[SlabLinearization, jax.Array]:
    """Linearize one slab at ``state``; also returns its cost (scalar)."""
    ftype = slab.ftype
    if ftype.batched_linearize is not None:
        r, jacs = ftype.batched_linearize(state.poses, state.points, slab.slots, slab.measurement)
    else:
        r, jacs = jax.vmap(ftype.linearize)(slab.values(state), slab.measurement)
    dtype = slab.measurement.dtype  # see slab_residuals
    r, jacs = r.astype(dtype), tuple(j.astype(dtype) for j in jacs)
    e = _whiten(slab, r)
    s = jnp.sum(e * e, axis=1)
    slab_cost = 0.5 * jnp.sum(jnp.where(slab.active, robust_rho(s, slab.robust_code, slab.robust_scale), 0.0))
    # sqrt of the IRLS weight scales residual and Jacobian alike.
    root_w = jnp.sqrt(robust_weight(s, slab.robust_code, slab.robust_scale))
    root_w = jnp.where(slab.active, root_w, 0.0)
    jac = jnp.concatenate(jacs, axis=2) if len(jacs) > 1 else jacs[0]
    jac = jnp.where(slab.active[:, None, None], jac, 0.0)
    jac = batched_matmul(root_w[:, None, None] * slab.sqrt_info, jac)
    return SlabLinearization(slab, root_w[:, None] * e, jac, root_w), slab_cost
