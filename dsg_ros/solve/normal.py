"""Gauss–Newton normal equations from a graph's linearization.

``H δ = −g`` with ``H = Σ Jᵀ J`` and ``g = Σ Jᵀ e`` over IRLS-weighted,
whitened residuals. Jacobian columns of variables that are not free (inactive
slots, or slots no active factor touches) are zeroed, and those variables get
an identity diagonal, so they never move and never make ``H`` singular.

Two storage layouts, chosen once per graph shape:

* dense: pose–pose blocks as a dense (6P, 6P) matrix, pose–point blocks as
  (P, 6, V, 3) (a free reshape to the (6P, 3V) matrix B), point–point blocks
  as (V, 3, 3); points are eliminated by the Schur complement
  (``dsg_ros.solve.schur``).
* sparse: every block of every factor, flat; assembled and factorized on the
  host (``dsg_ros.solve.sparse``) for pose graphs too large for a dense system.

Contributions of all slabs are gathered first and scattered once per target
array: each scatter is costly for XLA to compile.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc
from jax.typing import DTypeLike

from dsg_ros.world.factors import TANGENT_DIM
from dsg_ros.world.graph import Graph, SlabLinearization, State, Tangent, batched_matmul, free_mask, linearize_slab, slab_tangent

# Marquardt damping scales each diagonal entry; clamping keeps unconstrained
# directions damped and huge ones finite (GTSAM clamps the same way).
MIN_DIAGONAL = 1e-6
MAX_DIAGONAL = 1e32


@jdc.pytree_dataclass
class DenseBlocks:
    """H_pp (6P, 6P), H_pl (P, 6, V, 3), H_ll (V, 3, 3).

    H_pl is laid out so that ``reshape(6P, 3V)`` is the pose–point block
    matrix without a transpose: on CPU, moving these megabytes took a third
    of an LM iteration of a mapping window.
    """

    H_pp: jax.Array
    H_pl: jax.Array
    H_ll: jax.Array


@jdc.pytree_dataclass
class SparseBlocks:
    """Per slab: slots (F, k) and every (a ≤ b) block of JᵀJ flattened (F, n)."""

    slots: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


@jdc.pytree_dataclass
class NormalSystem:
    """A linearized problem: gradient, damping diagonal, free mask, H's blocks,
    and the per-slab linearizations they were assembled from."""

    grad: Tangent
    diag: Tangent
    free: Tangent
    blocks: DenseBlocks | SparseBlocks
    slabs: tuple[SlabLinearization, ...]

    def without_slabs(self) -> NormalSystem:
        """The state-dependent parts (what a solver loop carries); see ``detach_slabs``."""
        return jdc.replace(self, slabs=detach_slabs(self.slabs))

    def with_slabs(self, graph: Graph) -> NormalSystem:
        """Inverse of ``without_slabs``."""
        return jdc.replace(self, slabs=attach_slabs(self.slabs, graph))


def detach_slabs(lins: tuple[SlabLinearization, ...]) -> tuple[SlabLinearization, ...]:
    """The per-slab linearizations without their graph slabs: the graph does
    not change inside a solver loop, so a loop carries only these parts."""
    return tuple(jdc.replace(lin, slab=None) for lin in lins)


def attach_slabs(lins: tuple[SlabLinearization, ...], graph: Graph) -> tuple[SlabLinearization, ...]:
    """Inverse of ``detach_slabs``."""
    return tuple(jdc.replace(lin, slab=slab) for lin, slab in zip(lins, graph.slabs))


def linearize(graph: Graph, state: State, dense: bool) -> tuple[NormalSystem, jax.Array]:
    """Normal equations at ``state`` and the cost there."""
    lins, total = linearize_slabs(graph, state)
    return assemble(graph, lins, state, dense), total


# Jitted, so that a program calling it several times (a solver loop's body,
# the shapes of its carry) traces it once.
linearize_jit = jax.jit(linearize, static_argnums=2)


def linearize_slabs(graph: Graph, state: State) -> tuple[tuple[SlabLinearization, ...], jax.Array]:
    """Every slab's linearization at ``state`` and the cost there."""
    total = jnp.zeros((), state.points.dtype)
    lins = []
    for slab in graph.slabs:
        lin, slab_cost = linearize_slab(slab, state)
        total = total + slab_cost
        lins.append(lin)
    return tuple(lins), total


def assemble(graph: Graph, lins: tuple[SlabLinearization, ...], state: State, dense: bool) -> NormalSystem:
    """The normal equations from the slabs' linearizations at ``state``."""
    free = free_mask(graph)
    P, V = state.poses.shape[0], state.points.shape[0]
    dtype = state.points.dtype
    grads: dict[str, list[tuple[jax.Array, jax.Array]]] = {"pose": [], "point": []}
    grams: list[tuple[SlabLinearization, jax.Array]] = []
    for lin in lins:
        jac = lin.jacobian * slab_tangent(lin.factors, free)[:, None, :]
        _add_gradient(grads, lin, jac)
        grams.append((lin, batched_matmul(jnp.swapaxes(jac, 1, 2), jac)))
    grad = _gradient(grads, state)
    blocks: DenseBlocks | SparseBlocks
    if dense:
        blocks, diag = _dense_blocks(grams, free, P, V, dtype)
    else:
        blocks, diag = _sparse_blocks(grams, free, P, V, dtype)
    return NormalSystem(grad=grad, diag=diag, free=free, blocks=blocks, slabs=lins)


def gradient(graph: Graph, state: State) -> Tangent:
    """The cost's gradient ``Σ Jᵀ e`` in the tangent at ``state`` (zero where
    not free): ``linearize``'s ``grad`` without the Hessian blocks.

    From the slabs' Jacobians (analytic for the built-ins), it is the same
    vector as autodiff of the cost through the retraction; gradient descent
    uses it because differentiating it (unrolled) is a first-order pass
    through those kernels, where autodiff's gradient would be second-order.
    """
    return slabs_gradient(graph, linearize_slabs(graph, state)[0], state)


def slabs_gradient(graph: Graph, lins: tuple[SlabLinearization, ...], state: State) -> Tangent:
    """``gradient`` from the slabs' linearizations at ``state``."""
    grads: dict[str, list[tuple[jax.Array, jax.Array]]] = {"pose": [], "point": []}
    for lin in lins:
        _add_gradient(grads, lin, lin.jacobian)
    return _gradient(grads, state) * free_mask(graph)


def _add_gradient(grads: dict[str, list[tuple[jax.Array, jax.Array]]], lin: SlabLinearization, jac: jax.Array) -> None:
    """Append one slab's ``Jᵀ e`` rows per variable kind (slots, (F, dof))."""
    g = batched_matmul(lin.residual[:, None, :], jac)[:, 0, :]
    for pos, (kind, offset) in enumerate(zip(lin.factors.ftype.var_kinds, lin.offsets())):
        grads[kind].append((lin.factors.slots[:, pos], g[:, offset : offset + TANGENT_DIM[kind]]))


def _gradient(grads: dict[str, list[tuple[jax.Array, jax.Array]]], state: State) -> Tangent:
    P, V = state.poses.shape[0], state.points.shape[0]
    dtype = state.points.dtype
    return Tangent(_scatter_rows((P, 6), grads["pose"], dtype), _scatter_rows((V, 3), grads["point"], dtype))


def _scatter_rows(shape: tuple[int, ...], parts: Sequence[tuple[jax.Array, ...]], dtype: DTypeLike) -> jax.Array:
    """Sum ``values`` into a zero array at ``indices``, one scatter for all parts."""
    out = jnp.zeros(shape, dtype)
    if not parts:
        return out
    index = tuple(jnp.concatenate([p[i] for p in parts]) for i in range(len(parts[0]) - 1))
    values = jnp.concatenate([p[-1] for p in parts])
    return out.at[index].add(values)


def _blocks(lin: SlabLinearization, gram: jax.Array) -> Iterator[tuple[int, int, jax.Array]]:
    """(a, b, block (F, dof_a, dof_b)) for every position pair a ≤ b."""
    kinds, offsets = lin.factors.ftype.var_kinds, lin.offsets()
    for a in range(len(kinds)):
        for b in range(a, len(kinds)):
            oa, ob = offsets[a], offsets[b]
            yield a, b, gram[:, oa : oa + TANGENT_DIM[kinds[a]], ob : ob + TANGENT_DIM[kinds[b]]]


def _dense_blocks(
    grams: list[tuple[SlabLinearization, jax.Array]], free: Tangent, P: int, V: int, dtype: DTypeLike
) -> tuple[DenseBlocks, Tangent]:
    pose_pose: list[tuple[jax.Array, jax.Array, jax.Array]] = []
    pose_point: list[tuple[jax.Array, jax.Array, jax.Array]] = []
    point_point: list[tuple[jax.Array, jax.Array]] = []
    for lin, gram in grams:
        kinds, slots = lin.factors.ftype.var_kinds, lin.factors.slots
        if len(kinds) > 2 and all(k == "pose" for k in kinds):
            # Many poses (a marginalization prior): all k² blocks in one go.
            k, F = len(kinds), slots.shape[0]
            blocks = jnp.transpose(gram.reshape(F, k, 6, k, 6), (0, 1, 3, 2, 4)).reshape(F * k * k, 6, 6)
            rows = jnp.broadcast_to(slots[:, :, None], (F, k, k)).reshape(-1)
            cols = jnp.broadcast_to(slots[:, None, :], (F, k, k)).reshape(-1)
            pose_pose.append((rows, cols, blocks))
            continue
        for a, b, blk in _blocks(lin, gram):
            sa, sb = slots[:, a], slots[:, b]
            if kinds[a] == "pose" and kinds[b] == "pose":
                pose_pose.append((sa, sb, blk))
                if a != b:
                    pose_pose.append((sb, sa, jnp.swapaxes(blk, 1, 2)))
            elif kinds[a] == "pose":
                pose_point.append((sa, sb, blk))
            elif kinds[b] == "pose":
                pose_point.append((sb, sa, jnp.swapaxes(blk, 1, 2)))
            else:
                point_point.append((sa, blk))
    H_pp = _scatter_rows((P, P, 6, 6), pose_pose, dtype)
    H_pl = jnp.zeros((P, 6, V, 3), dtype)
    if pose_point:
        p, v, blk = (jnp.concatenate([part[i] for part in pose_point]) for i in range(3))
        H_pl = H_pl.at[p, :, v, :].add(blk)
    H_ll = _scatter_rows((V, 3, 3), point_point, dtype)
    H_pp = jnp.transpose(H_pp, (0, 2, 1, 3)).reshape(6 * P, 6 * P)
    H_pp = H_pp + jnp.diag(1.0 - free.poses.reshape(-1))
    H_ll = H_ll + (1.0 - free.points)[:, :, None] * jnp.eye(3, dtype=dtype)
    diag = Tangent(jnp.diagonal(H_pp).reshape(P, 6), jnp.diagonal(H_ll, axis1=1, axis2=2))
    return DenseBlocks(H_pp, H_pl, H_ll), _clamp(diag)


def _sparse_blocks(
    grams: list[tuple[SlabLinearization, jax.Array]], free: Tangent, P: int, V: int, dtype: DTypeLike
) -> tuple[SparseBlocks, Tangent]:
    diag_parts: dict[str, list[tuple[jax.Array, jax.Array]]] = {"pose": [], "point": []}
    values = []
    for lin, gram in grams:
        kinds, slots = lin.factors.ftype.var_kinds, lin.factors.slots
        flat = []
        for a, b, blk in _blocks(lin, gram):
            flat.append(blk.reshape(blk.shape[0], -1))
            if a == b:
                diag_parts[kinds[a]].append((slots[:, a], jnp.diagonal(blk, axis1=1, axis2=2)))
        values.append(jnp.concatenate(flat, axis=1))
    diag = Tangent(
        1.0 - free.poses + _scatter_rows((P, 6), diag_parts["pose"], dtype),
        1.0 - free.points + _scatter_rows((V, 3), diag_parts["point"], dtype),
    )
    blocks = SparseBlocks(slots=tuple(lin.factors.slots for lin, _ in grams), values=tuple(values))
    return blocks, _clamp(diag)


def _clamp(diag: Tangent) -> Tangent:
    return Tangent(jnp.clip(diag.poses, MIN_DIAGONAL, MAX_DIAGONAL), jnp.clip(diag.points, MIN_DIAGONAL, MAX_DIAGONAL))
