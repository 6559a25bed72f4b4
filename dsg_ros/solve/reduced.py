"""Differentiable Gauss–Newton on the pose system, the other factors frozen.

For learning problems where the parameters enter a few pose-only factors
(the window's odometry) and not the thousands of voxel observations: those
other factors are linearized once at ``x0`` and their voxels eliminated by
the Schur complement, leaving a quadratic in the pose tangents,
``q(δ) = ½ δᵀ S δ + bᵀ δ``. Gauss–Newton then runs on the varying factors
plus ``q``: a (6P, 6P) system per step instead of the whole window.

The first step is exactly the full problem's first Gauss–Newton step (the
quadratic is that step's model of the frozen factors); voxels follow by
back-substitution, ``δv = −C⁻¹(g_v + Bᵀ δp)``. The derivative w.r.t. the
varying factors' parameters holds Jacobians and the Hessian fixed and
differentiates the gradient, as the full solver's
``implicit_hessian="gauss_newton"`` does, so both learn the same thing; the
frozen part is never differentiated, which is what makes a step cheap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax_dataclasses as jdc

from dsg_ros import se3
from dsg_ros.solve import schur
from dsg_ros.solve.normal import linearize
from dsg_ros.world.graph import Graph, State, batched_matmul, free_mask, linearize_slab


def solve_poses(graph: Graph, x0: State, varying: tuple[str, ...], iterations: int = 1) -> State:
    """``iterations`` Gauss–Newton steps from ``x0``; differentiable in the ``varying`` slabs.

    graph: the full problem; ``varying`` names slabs whose factors connect
    poses only (``odom_se3``). Returns poses (P, 7) after the steps and
    points (V, 3) placed by back-substitution at the final pose step.
    A step whose system cannot be factorized (or is not finite) is skipped.
    """
    for name in varying:
        if any(kind != "pose" for kind in graph.slab(name).ftype.var_kinds):
            raise ValueError(f"solve_poses: varying slab {name!r} must connect poses only")
    moving = tuple(s for s in graph.slabs if s.ftype.name in varying)
    frozen = jax.lax.stop_gradient(
        jdc.replace(graph, slabs=tuple(jdc.replace(s, active=jnp.zeros_like(s.active)) if s.ftype.name in varying else s for s in graph.slabs))
    )
    system, _ = linearize(frozen, jax.lax.stop_gradient(x0), True)
    # Free poses of the whole graph: the frozen factors' (from their
    # linearization) or the varying ones' (a few rows), not a second pass
    # over every observation row.
    free = jnp.maximum(system.free.poses, free_mask(jdc.replace(graph, slabs=moving)).poses).reshape(-1)
    S, C_inv, W = schur.reduce(system, jnp.zeros((), x0.points.dtype))
    # linearize() puts a unit diagonal on poses the frozen factors leave
    # unconstrained; here the varying factors may constrain them.
    S = S - jnp.diag(1.0 - system.free.poses.reshape(-1))
    b = schur.reduced_gradient(system, W)

    P = x0.poses.shape[0]

    def offset_from_x0(poses: jax.Array) -> jax.Array:
        """Stacked tangents (6P,) of ``poses`` relative to ``x0``."""
        return se3.log(se3.between(x0.poses, poses)).reshape(-1)

    poses = x0.poses
    eye = jnp.eye(6 * P, dtype=S.dtype)
    for _ in range(iterations):
        H, g = _moving_system(moving, poses)
        # The quadratic's gradient at the current offset from x0.
        g = (g + S @ offset_from_x0(poses) + b) * free
        H = H + S + jnp.diag(1.0 - free)
        chol = jnp.linalg.cholesky(jax.lax.stop_gradient(0.5 * (H + H.T)))
        # A failed factorization (or a non-finite gradient) skips the step;
        # solving with a stand-in keeps NaN out of the derivative too.
        ok = jnp.all(jnp.isfinite(chol)) & jnp.all(jnp.isfinite(g))
        step = -jsl.cho_solve((jnp.where(ok, chol, eye), True), jnp.where(ok, g, 0.0)) * free
        poses = se3.compose(poses, se3.exp(step.reshape(P, 6)))
    # Voxels minimize the frozen factors' model given the pose offset.
    V = x0.points.shape[0]
    d_points = -(jnp.einsum("vab,vb->va", C_inv, system.grad.points) + ((offset_from_x0(poses) * free) @ W).reshape(V, 3))
    return State(poses=poses, points=x0.points + d_points * system.free.points)


def _moving_system(slabs: tuple, poses: jax.Array) -> tuple[jax.Array, jax.Array]:
    """JᵀJ (6P, 6P) held fixed and Jᵀe (6P,) differentiable in the slabs' measurements."""
    P, dtype = poses.shape[0], poses.dtype
    H = jnp.zeros((P, P, 6, 6), dtype)
    g = jnp.zeros((P, 6), dtype)
    state = State(poses=poses, points=jnp.zeros((1, 3), dtype))
    for slab in slabs:
        lin, _ = linearize_slab(slab, state)
        J = jax.lax.stop_gradient(lin.jacobian)  # (F, d, 6k)
        Jt_e = batched_matmul(lin.residual[:, None, :], J)[:, 0, :]
        JtJ = batched_matmul(jnp.swapaxes(J, 1, 2), J)
        k = len(slab.ftype.var_kinds)
        for a in range(k):
            g = g.at[slab.slots[:, a]].add(Jt_e[:, 6 * a : 6 * a + 6])
            for c in range(k):
                H = H.at[slab.slots[:, a], slab.slots[:, c]].add(JtJ[:, 6 * a : 6 * a + 6, 6 * c : 6 * c + 6])
    return jnp.transpose(H, (0, 2, 1, 3)).reshape(6 * P, 6 * P), g.reshape(-1)

