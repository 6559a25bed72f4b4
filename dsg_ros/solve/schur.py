"""Dense solve of the damped normal equations with points eliminated.

    [A  B] [δp]   [r_p]        A = H_pp + λ D_p   (6P, 6P)
    [Bᵀ C] [δl] = [r_l]        C = H_ll + λ D_l   block-diagonal 3×3

S = A − B C⁻¹ Bᵀ is the reduced pose system, factorized by Cholesky; points
are recovered by back-substitution. The factorization is kept so the implicit
gradient can reuse it as a preconditioner.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax_dataclasses as jdc

from dsg_ros.solve.normal import DenseBlocks, NormalSystem
from dsg_ros.world.graph import Tangent


@jdc.pytree_dataclass
class DenseFactor:
    """Cholesky factor of S (6P, 6P), C⁻¹ (V, 3, 3) and W = B C⁻¹ (6P, 3V)."""

    chol: jax.Array
    C_inv: jax.Array
    W: jax.Array


def reduce(system: NormalSystem, lam: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """S = A − B C⁻¹ Bᵀ (6P, 6P), C⁻¹ (V, 3, 3) and W = B C⁻¹ (6P, 3V)."""
    blocks = system.blocks
    assert isinstance(blocks, DenseBlocks)
    P, V = system.grad.poses.shape[0], system.grad.points.shape[0]
    A = blocks.H_pp + jnp.diag(lam * system.diag.poses.reshape(-1))
    C = blocks.H_ll + (lam * system.diag.points)[:, :, None] * jnp.eye(3, dtype=A.dtype)
    C_inv = _inv3_spd(C)
    B = blocks.H_pl.reshape(6 * P, 3 * V)
    # W = H_pl C⁻¹ per voxel, as three broadcast multiply-adds: XLA on CPU
    # turns the equivalent einsum into a batched dot wrapped in transposes.
    H = blocks.H_pl
    terms = [H[..., c : c + 1] * C_inv[None, None, :, c, :] for c in range(3)]
    W = (terms[0] + terms[1] + terms[2]).reshape(6 * P, 3 * V)
    S = A - W @ B.T
    return 0.5 * (S + S.T), C_inv, W


def factor(system: NormalSystem, lam: jax.Array) -> DenseFactor:
    S, C_inv, W = reduce(system, lam)
    chol = jnp.linalg.cholesky(S) if S.shape[0] > 0 else S
    return DenseFactor(chol=chol, C_inv=C_inv, W=W)


def reduced_pose_system(system: NormalSystem) -> tuple[jax.Array, jax.Array]:
    """Undamped pose system with every free point eliminated: S (6P, 6P) and
    the reduced gradient g_p − W g_l (6P,). The quadratic model of the cost in
    the pose tangents alone; marginalization builds its prior from it."""
    S, _, W = reduce(system, jnp.zeros((), system.grad.points.dtype))
    return S, reduced_gradient(system, W)


def reduced_gradient(system: NormalSystem, W: jax.Array) -> jax.Array:
    """The pose gradient with the points eliminated, g_p − W g_l (6P,), for W from :func:`reduce`."""
    return system.grad.poses.reshape(-1) - W @ system.grad.points.reshape(-1)


def apply(system: NormalSystem, fac: DenseFactor, rhs: Tangent) -> Tangent:
    """Solve the damped system for ``rhs``; NaN if the factorization failed."""
    blocks = system.blocks
    assert isinstance(blocks, DenseBlocks)
    P, V = rhs.poses.shape[0], rhs.points.shape[0]
    r_l = rhs.points.reshape(-1)
    r_p = rhs.poses.reshape(-1) - fac.W @ r_l
    if P > 0:
        d_p = jsl.cho_solve((fac.chol, True), r_p)
    else:
        d_p = r_p
    B = blocks.H_pl.reshape(6 * P, 3 * V)
    t_l = (r_l - d_p @ B).reshape(V, 3)  # dᵀB, not Bᵀd: XLA on CPU copies a transposed B first
    d_l = jnp.einsum("vab,vb->va", fac.C_inv, t_l)
    return Tangent(d_p.reshape(P, 6), d_l)


def _inv3_spd(C_raw: jax.Array) -> jax.Array:
    """Inverses of SPD 3×3 blocks (V, 3, 3) by the adjugate: one fused op, no LAPACK loop.

    Jacobi scaling to a unit diagonal first keeps the determinant well inside
    float32 range for very confident (large-information) points.
    """
    s = jax.lax.rsqrt(jnp.abs(jnp.diagonal(C_raw, axis1=1, axis2=2)))
    C = C_raw * s[:, :, None] * s[:, None, :]
    a, b, c = C[:, 0, 0], C[:, 0, 1], C[:, 0, 2]
    d, e = C[:, 1, 1], C[:, 1, 2]
    f = C[:, 2, 2]
    A00 = d * f - e * e
    A01 = c * e - b * f
    A02 = b * e - c * d
    A11 = a * f - c * c
    A12 = b * c - a * e
    A22 = a * d - b * b
    det = a * A00 + b * A01 + c * A02
    adj = jnp.stack(
        [
            jnp.stack([A00, A01, A02], -1),
            jnp.stack([A01, A11, A12], -1),
            jnp.stack([A02, A12, A22], -1),
        ],
        -2,
    )
    return adj / det[:, None, None] * s[:, :, None] * s[:, None, :]
