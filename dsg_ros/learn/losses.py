"""Losses of a calibration theta on a subsequence of keyframes with a reference.

Both build the subsequence's factors from theta exactly as the mapper does
(``calibration.correct_odometry``, ``observations_in_base``, ``noise_scales``):

* ``joint_nll``: the negative log-likelihood of the reference poses under the
  factor graph, per keyframe. Odometry factors are whitened at the reference;
  each voxel is integrated out under a flat prior, which is its conditional
  optimum given the reference poses plus ½ log det of its information (a
  voxel seen from n keyframes leaves 3(n − 1) residual degrees of freedom,
  so a voxel seen once neither rewards nor punishes a tighter sigma). The
  −log det of every sqrt-information keeps the sigmas from growing without
  bound. No pose solve: cheap, and exact for the noise model's scale.
* ``surrogate``: solve the subsequence (the inner LM from the front-end's
  estimate, first pose held at the reference by a tight prior), then the
  mean squared pose error against the reference, translation plus
  ``rotation_weight_m``² × rotation; differentiated through the solve by
  ``SolverConfig.diff`` (implicit, unroll, truncated).
"""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc

from dsg_ros import se3
from dsg_ros.learn import calibration as cal
from dsg_ros.learn.config import LossConfig
from dsg_ros.learn.dataset import Subsequence
from dsg_ros.solve import SolverConfig, solve
from dsg_ros.world import Capacity, Graph, State, WorldModel
from dsg_ros.world.layout import ODOM_SE3, PRIOR_SE3, VOXEL_POINT_OBS

# The first pose's prior in the surrogate solve: fixes the gauge at the reference.
ANCHOR_SIGMA = 1e-3


def obs_sqrt_info(theta: cal.Theta, L0: jax.Array, obs_sigma: jax.Array) -> jax.Array:
    """Observation sqrt-information (..., 3, 3) under theta's noise scales.

    The mapper builds ``L0 = a I + (b − a) P`` at unit scales (b = 1/σ along
    the normal, a = 1/σ in the plane, P the projector onto the normal and,
    for planar scans, the scan plane's normal); ``obs_sigma`` (2,) is (σ_normal,
    σ_plane). P is recovered from L0, so the scales apply exactly as the
    mapper applies them. Equal sigmas: P is I (a cell without a normal).
    """
    _, normal, plane = cal.noise_scales(theta)
    b0, a0 = 1.0 / obs_sigma[0], 1.0 / obs_sigma[1]
    eye = jnp.eye(3, dtype=L0.dtype)
    differ = jnp.abs(b0 - a0) > 1e-12 * b0
    P = jnp.where(differ, (L0 - a0 * eye) / jnp.where(differ, b0 - a0, 1.0), eye)
    a, b = a0 / plane, b0 / normal
    return a * eye + (b - a) * P


def _odometry(theta: cal.Theta, seq: Subsequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Calibrated increments (L, 7) and their sigmas (L, 6)."""
    measured = cal.correct_odometry(theta, seq.odom_raw, seq.odom_dt, seq.odom_velocity)
    return measured, seq.odom_sigma * cal.noise_scales(theta)[0]


def _observations(theta: cal.Theta, seq: Subsequence[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Base-frame measurements (L, M, 3) and their sqrt-information (L, M, 3, 3)."""
    L, M, _ = seq.p_sensor.shape
    p_base = cal.observations_in_base(theta, seq.T_base_sensor, seq.p_sensor.reshape(-1, 3)).reshape(L, M, 3)
    return p_base, obs_sqrt_info(theta, seq.obs_sqrt_info, seq.obs_sigma)


def _voxels_given_poses(T_world_base: jax.Array, p_base: jax.Array, S: jax.Array, seq: Subsequence[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each voxel's optimum (V, 3) given the poses (L, 7), its information
    (V, 3, 3) and whether any valid observation sees it (V,).

    Observation k, m: residual ``S (R_kᵀ (v − t_k) − p)`` = ``A v − c`` with
    ``A = S R_kᵀ``, ``c = S (R_kᵀ t_k + p)``: v = (Σ AᵀA)⁻¹ Σ Aᵀc per voxel.
    """
    L, M, _ = p_base.shape
    V = L * M
    R = se3.rotation_matrix(T_world_base)  # (L, 3, 3)
    t = T_world_base[:, 4:]
    A = jnp.einsum("kmij,klj->kmil", S, R)  # S Rᵀ
    c = jnp.einsum("kmij,kmj->kmi", S, jnp.einsum("kji,kj->ki", R, t)[:, None, :] + p_base)
    w = seq.obs_valid[..., None, None]
    H = jax.ops.segment_sum((w * jnp.einsum("kmji,kmjl->kmil", A, A)).reshape(V, 3, 3), seq.voxel.reshape(-1), V)
    g = jax.ops.segment_sum((seq.obs_valid[..., None] * jnp.einsum("kmji,kmj->kmi", A, c)).reshape(V, 3), seq.voxel.reshape(-1), V)
    seen = jax.ops.segment_sum(seq.obs_valid.reshape(-1).astype(H.dtype), seq.voxel.reshape(-1), V) > 0
    H_safe = jnp.where(seen[:, None, None], H, jnp.eye(3, dtype=H.dtype))
    v = jnp.einsum("vij,vj->vi", _adjugate3(H_safe), g) / _det3(H_safe)[:, None]
    return v, H_safe, seen


# 3 × 3 determinants and solves in closed form, not LAPACK: XLA's CPU LAPACK
# kernels split a large batch over the intra-op thread pool and wait for it,
# and two of them running at once on a 2-thread pool deadlocked (batches of
# 16-32 real-log subsequences hung in every thread's futex).
def _det3(A: jax.Array) -> jax.Array:
    """Determinants (...,) of 3 × 3 matrices (..., 3, 3)."""
    return jnp.einsum("...i,...i->...", A[..., 0, :], jnp.cross(A[..., 1, :], A[..., 2, :]))


def _adjugate3(A: jax.Array) -> jax.Array:
    """Adjugates (..., 3, 3) of 3 × 3 matrices: ``adj(A) A = det(A) I``."""
    r0, r1, r2 = A[..., 0, :], A[..., 1, :], A[..., 2, :]
    return jnp.stack([jnp.cross(r1, r2), jnp.cross(r2, r0), jnp.cross(r0, r1)], axis=-1)


def joint_nll(theta: cal.Theta, seq: Subsequence[jax.Array]) -> jax.Array:
    """Negative log-likelihood of the reference poses, per keyframe (see the module docstring)."""
    T = seq.reference
    Z, sigma = _odometry(theta, seq)
    err = se3.log(se3.between(Z[1:], se3.between(T[:-1], T[1:])))  # Log(Z⁻¹ T_{k−1}⁻¹ T_k), (L−1, 6)
    valid = seq.odom_valid[1:]
    odom = jnp.sum(jnp.where(valid[:, None], 0.5 * (err / sigma[1:]) ** 2 + jnp.log(sigma[1:]), 0.0))
    p_base, S = _observations(theta, seq)
    v, H, seen = _voxels_given_poses(T, p_base, S, seq)
    L, M, _ = p_base.shape
    v_obs = v[seq.voxel]  # (L, M, 3)
    r = jnp.einsum("kji,kmj->kmi", se3.rotation_matrix(T), v_obs - T[:, None, 4:]) - p_base
    e = jnp.einsum("kmij,kmj->kmi", S, r)
    log_det_S = jnp.log(jnp.abs(_det3(S)))
    obs = jnp.sum(jnp.where(seq.obs_valid, 0.5 * jnp.sum(e * e, axis=-1) - log_det_S, 0.0))
    obs = obs + 0.5 * jnp.sum(jnp.where(seen, jnp.log(jnp.abs(_det3(H))), 0.0))
    return (odom + obs) / L


@cache
def _template(poses: int, per_keyframe: int) -> Graph:
    """An empty host graph with the surrogate's slabs (a prior, L odometry rows, L·M observations)."""
    model = WorldModel(Capacity(poses=poses, points=poses * per_keyframe, factors={PRIOR_SE3: 1, ODOM_SE3: poses, VOXEL_POINT_OBS: poses * per_keyframe}))
    return model.graph(on_device=False)


def subsequence_graph(theta: cal.Theta, seq: Subsequence[jax.Array]) -> tuple[Graph, State]:
    """The subsequence's factor graph under theta and its initial state (the
    front-end's estimate, voxels at their optimum given it)."""
    L, M, _ = seq.p_sensor.shape
    template = _template(L, M)
    Z, sigma = _odometry(theta, seq)
    p_base, S = _observations(theta, seq)
    k = jnp.arange(L, dtype=jnp.int32)
    dtype = template.slab(ODOM_SE3).measurement.dtype
    rows = {
        PRIOR_SE3: dict(
            slots=jnp.zeros((1, 1), jnp.int32), measurement=seq.reference[:1], sqrt_info=jnp.eye(6, dtype=dtype)[None] / ANCHOR_SIGMA,
            active=jnp.ones(1, bool),
        ),
        ODOM_SE3: dict(
            slots=jnp.stack([jnp.maximum(k - 1, 0), k], axis=1), measurement=Z, sqrt_info=jax.vmap(jnp.diag)(1.0 / sigma), active=seq.odom_valid,
        ),
        VOXEL_POINT_OBS: dict(
            slots=jnp.stack([jnp.repeat(k, M), seq.voxel.reshape(-1).astype(jnp.int32)], axis=1), measurement=p_base.reshape(-1, 3),
            sqrt_info=S.reshape(-1, 3, 3), active=seq.obs_valid.reshape(-1),
        ),
    }
    slabs = tuple(
        jdc.replace(slab, **{name: jnp.asarray(value, getattr(slab, name).dtype) for name, value in rows[slab.ftype.name].items()})  # type: ignore[arg-type]
        if slab.ftype.name in rows
        else slab
        for slab in template.slabs
    )
    points, _, seen = _voxels_given_poses(seq.init, p_base, S, seq)
    graph = Graph(pose_active=jnp.ones(L, bool), point_active=seen, slabs=slabs)
    x0 = jax.lax.stop_gradient(State(poses=jnp.asarray(seq.init, dtype), points=points.astype(dtype)))
    return graph, x0


def solve_subsequence(theta: cal.Theta, seq: Subsequence[jax.Array], solver: SolverConfig) -> jax.Array:
    """The subsequence's poses ``T_world_base`` (L, 7) solved under theta."""
    graph, x0 = subsequence_graph(theta, seq)
    x, _ = solve(graph, x0, solver)
    return x.poses


def pose_errors(poses: jax.Array, reference: jax.Array, rotation_weight_m: float) -> jax.Array:
    """Squared error per pose (L,): ‖translation‖² + (w·angle)² of ``reference⁻¹ · pose``."""
    err = se3.between(reference, poses)
    rotation = se3.log(err)[:, 3:]
    return jnp.sum(err[:, 4:] ** 2, axis=1) + rotation_weight_m**2 * jnp.sum(rotation**2, axis=1)


def surrogate(theta: cal.Theta, seq: Subsequence[jax.Array], config: LossConfig) -> jax.Array:
    """Mean squared pose error (m²) of the solved subsequence against the reference (the first pose is anchored)."""
    poses = solve_subsequence(theta, seq, config.solver())
    return jnp.mean(pose_errors(poses, seq.reference, config.rotation_weight_m)[1:])


def loss(theta: cal.Theta, seq: Subsequence[jax.Array], config: LossConfig) -> jax.Array:
    """``config.loss`` of one subsequence."""
    return joint_nll(theta, seq) if config.loss == "joint_nll" else surrogate(theta, seq, config)


def batch_loss(theta: cal.Theta, batch: Subsequence[jax.Array], config: LossConfig) -> jax.Array:
    """Mean loss over a batch (leading axis of every leaf), vmapped."""
    return jnp.mean(jax.vmap(lambda s: loss(theta, s, config))(batch))

