"""Gauss–Newton normal equations from a graph's linearization.

``H δ = −g`` with ``H = Σ Jᵀ J`` and ``g = Σ Jᵀ e`` over IRLS-weighted,
whitened residuals. Jacobian columns of variables that are not free (inactive
slots, or slots no active factor touches) are zeroed, and those variables get
an identity diagonal, so they never move and never make ``H`` singular.

Two storage layouts, chosen once per graph shape:

* dense: pose–pose blocks as a dense (6P, 6P) matrix, pose–point blocks as
  (P, V, 6, 3), point–point blocks as (V, 3, 3); points are eliminated by the
  Schur complement (``dsg_ros.solve.schur``).
* sparse: every block of every factor, flat; assembled and factorized on the
  host (``dsg_ros.solve.sparse``) for pose graphs too large for a dense system.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc

from dsg_ros.world.graph import Graph, SlabLinearization, State, Tangent, free_mask, linearize_slab

# Marquardt damping scales each diagonal entry; clamping keeps unconstrained
# directions damped and huge ones finite (GTSAM clamps the same way).
MIN_DIAGONAL = 1e-6
MAX_DIAGONAL = 1e32


@jdc.pytree_dataclass
class DenseBlocks:
    """H_pp (6P, 6P), H_pl (P, V, 6, 3), H_ll (V, 3, 3)."""

    H_pp: jax.Array
    H_pl: jax.Array
    H_ll: jax.Array


@jdc.pytree_dataclass
class SparseBlocks:
    """Per slab: slots (F, k) and every (a, b) block of JᵀJ flattened (F, n)."""

    slots: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


@jdc.pytree_dataclass
class NormalSystem:
    """A linearized problem: gradient, damping diagonal, free mask and H's blocks."""

    grad: Tangent
    diag: Tangent
    free: Tangent
    blocks: DenseBlocks | SparseBlocks


def linearize(graph: Graph, state: State, dense: bool) -> tuple[NormalSystem, jax.Array]:
    """Normal equations at ``state`` and the cost there."""
    free = free_mask(graph)
    P, V = state.poses.shape[0], state.points.shape[0]
    dtype = state.points.dtype
    g_p = jnp.zeros((P, 6), dtype)
    g_l = jnp.zeros((V, 3), dtype)
    total = jnp.zeros((), dtype)
    lins: list[SlabLinearization] = []
    for slab in graph.slabs:
        lin, slab_cost = linearize_slab(slab, state)
        total = total + slab_cost
        jacs = tuple(
            j * _free_of(free, kind, slab.slots[:, pos])[:, None, :]
            for pos, (kind, j) in enumerate(zip(slab.ftype.var_kinds, lin.jacobians))
        )
        lin = jdc.replace(lin, jacobians=jacs)
        lins.append(lin)
        for pos, kind in enumerate(slab.ftype.var_kinds):
            g = jnp.einsum("fdk,fd->fk", jacs[pos], lin.residual)
            if kind == "pose":
                g_p = g_p.at[slab.slots[:, pos]].add(g)
            else:
                g_l = g_l.at[slab.slots[:, pos]].add(g)
    grad = Tangent(g_p, g_l)
    if dense:
        blocks, diag = _dense_blocks(lins, free, P, V, dtype)
    else:
        blocks, diag = _sparse_blocks(lins, free, P, V, dtype)
    return NormalSystem(grad=grad, diag=diag, free=free, blocks=blocks), total


def _free_of(free: Tangent, kind: str, slots: jax.Array) -> jax.Array:
    return free.poses[slots] if kind == "pose" else free.points[slots]


def _pairs(lin: SlabLinearization):
    """Ordered position pairs (a ≤ b) and their JᵀJ blocks (F, dof_a, dof_b)."""
    kinds = lin.slab.ftype.var_kinds
    for a in range(len(kinds)):
        for b in range(a, len(kinds)):
            yield a, b, jnp.einsum("fdk,fdl->fkl", lin.jacobians[a], lin.jacobians[b])


def _dense_blocks(lins: list[SlabLinearization], free: Tangent, P: int, V: int, dtype) -> tuple[DenseBlocks, Tangent]:
    H_pp = jnp.zeros((P, P, 6, 6), dtype)
    H_pl = jnp.zeros((P, V, 6, 3), dtype)
    H_ll = jnp.zeros((V, 3, 3), dtype)
    for lin in lins:
        kinds, slots = lin.slab.ftype.var_kinds, lin.slab.slots
        for a, b, blk in _pairs(lin):
            sa, sb = slots[:, a], slots[:, b]
            if kinds[a] == "pose" and kinds[b] == "pose":
                H_pp = H_pp.at[sa, sb].add(blk)
                if a != b:
                    H_pp = H_pp.at[sb, sa].add(jnp.swapaxes(blk, 1, 2))
            elif kinds[a] == "pose":
                H_pl = H_pl.at[sa, sb].add(blk)
            elif kinds[b] == "pose":
                H_pl = H_pl.at[sb, sa].add(jnp.swapaxes(blk, 1, 2))
            else:
                H_ll = H_ll.at[sa].add(blk)
    H_pp = jnp.transpose(H_pp, (0, 2, 1, 3)).reshape(6 * P, 6 * P)
    H_pp = H_pp + jnp.diag(1.0 - free.poses.reshape(-1))
    H_ll = H_ll + (1.0 - free.points)[:, :, None] * jnp.eye(3, dtype=dtype)
    diag = Tangent(jnp.diagonal(H_pp).reshape(P, 6), jnp.diagonal(H_ll, axis1=1, axis2=2))
    return DenseBlocks(H_pp, H_pl, H_ll), _clamp(diag)


def _sparse_blocks(lins: list[SlabLinearization], free: Tangent, P: int, V: int, dtype) -> tuple[SparseBlocks, Tangent]:
    diag_p = 1.0 - free.poses
    diag_l = 1.0 - free.points
    values = []
    for lin in lins:
        kinds, slots = lin.slab.ftype.var_kinds, lin.slab.slots
        flat = []
        for a, b, blk in _pairs(lin):
            flat.append(blk.reshape(blk.shape[0], -1))
            if a == b:
                d = jnp.diagonal(blk, axis1=1, axis2=2)
                if kinds[a] == "pose":
                    diag_p = diag_p.at[slots[:, a]].add(d)
                else:
                    diag_l = diag_l.at[slots[:, a]].add(d)
        values.append(jnp.concatenate(flat, axis=1))
    blocks = SparseBlocks(slots=tuple(lin.slab.slots for lin in lins), values=tuple(values))
    return blocks, _clamp(Tangent(diag_p, diag_l))


def _clamp(diag: Tangent) -> Tangent:
    return Tangent(jnp.clip(diag.poses, MIN_DIAGONAL, MAX_DIAGONAL), jnp.clip(diag.points, MIN_DIAGONAL, MAX_DIAGONAL))
