"""Sparse solve of the damped normal equations on the host.

For pose graphs with thousands of poses a dense (6P, 6P) system is too big.
JAX computes every factor's JᵀJ blocks; a host callback scatters them into
the fronts of a supernodal Cholesky (``dsg_ros.solve.cholesky``), whose
ordering, supernodes and scatter map are cached per graph layout, and
factorizes it. The call sits inside the jitted LM loop through
``jax.pure_callback``, so both paths share one loop.

Not differentiable by unrolling (the callback has no JAX derivative); the
implicit mode works, using this solve as its preconditioner.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from dsg_ros.solve import cholesky
from dsg_ros.solve.normal import NormalSystem, SparseBlocks
from dsg_ros.world.factors import TANGENT_DIM
from dsg_ros.world.graph import Graph, Tangent


@dataclass(frozen=True)
class _Pattern:
    """The factorization's symbolic analysis and where each value goes."""

    symbolic: cholesky.Symbolic
    target: np.ndarray  # (n_values,) position in the entry buffer per value


class _PatternCache:
    def __init__(self, size: int = 4) -> None:
        self._items: OrderedDict[bytes, _Pattern] = OrderedDict()
        self._size = size

    def get(self, key: bytes, build: Callable[[], _Pattern]) -> _Pattern:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        pattern = build()
        self._items[key] = pattern
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return pattern


_CACHE = _PatternCache()


def _offsets(kind: str, slots: np.ndarray, P: int) -> np.ndarray:
    return 6 * slots if kind == "pose" else 6 * P + 3 * slots


def _build_pattern(kinds_per_slab: Sequence[Sequence[str]], slots_per_slab: Sequence[np.ndarray], P: int, V: int) -> _Pattern:
    n = 6 * P + 3 * V
    # Values arrive per slab as (F, Σ blocks) row-major, then the off-diagonal
    # blocks again mirrored (each pair both ways), then the diagonal.
    direct_rows, direct_cols, mirror_rows, mirror_cols, edges = [], [], [], [], []
    for kinds, slots in zip(kinds_per_slab, slots_per_slab):
        rows, cols, m_rows, m_cols = [], [], [], []
        for a in range(len(kinds)):
            for b in range(a, len(kinds)):
                da, db = TANGENT_DIM[kinds[a]], TANGENT_DIM[kinds[b]]
                ra = _offsets(kinds[a], slots[:, a], P)[:, None, None] + np.arange(da)[None, :, None]
                cb = _offsets(kinds[b], slots[:, b], P)[:, None, None] + np.arange(db)[None, None, :]
                r = np.broadcast_to(ra, (slots.shape[0], da, db)).reshape(slots.shape[0], -1)
                c = np.broadcast_to(cb, (slots.shape[0], da, db)).reshape(slots.shape[0], -1)
                rows.append(r)
                cols.append(c)
                if a != b:
                    m_rows.append(c)
                    m_cols.append(r)
                    edges.append(np.stack([_variable(kinds[a], slots[:, a], P), _variable(kinds[b], slots[:, b], P)], axis=1))
        direct_rows.append(np.concatenate(rows, axis=1).reshape(-1))
        direct_cols.append(np.concatenate(cols, axis=1).reshape(-1))
        if m_rows:
            mirror_rows.append(np.concatenate(m_rows, axis=1).reshape(-1))
            mirror_cols.append(np.concatenate(m_cols, axis=1).reshape(-1))
    all_rows = np.concatenate(direct_rows + mirror_rows + [np.arange(n)]).astype(np.int64)
    all_cols = np.concatenate(direct_cols + mirror_cols + [np.arange(n)]).astype(np.int64)
    dims = np.concatenate([np.full(P, 6), np.full(V, 3)]).astype(np.int64)
    pairs = np.unique(np.concatenate(edges), axis=0) if edges else np.zeros((0, 2), np.int64)
    symbolic = cholesky.analyze(dims, pairs)
    return _Pattern(symbolic=symbolic, target=symbolic.entry_targets(all_rows, all_cols))


def _variable(kind: str, slots: np.ndarray, P: int) -> np.ndarray:
    """Variable index: poses first, then points."""
    return slots.astype(np.int64) if kind == "pose" else P + slots.astype(np.int64)


def _mirror_values(kinds_per_slab: Sequence[Sequence[str]], values: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The off-diagonal block values again, in the mirrored-entry order."""
    out = []
    for kinds, vals in zip(kinds_per_slab, values):
        parts, col = [], 0
        for a in range(len(kinds)):
            for b in range(a, len(kinds)):
                width = TANGENT_DIM[kinds[a]] * TANGENT_DIM[kinds[b]]
                if a != b:
                    parts.append(vals[:, col : col + width])
                col += width
        if parts:
            out.append(np.concatenate(parts, axis=1).reshape(-1))
    return out


def _host_solve(
    kinds_per_slab: Sequence[Sequence[str]], P: int, V: int, diag_add: np.ndarray, rhs: np.ndarray, *slots_and_values: np.ndarray
) -> np.ndarray:
    n_slabs = len(kinds_per_slab)
    slots = [np.asarray(s) for s in slots_and_values[:n_slabs]]
    values = [np.asarray(v, np.float64) for v in slots_and_values[n_slabs:]]
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((kinds_per_slab, P, V)).encode())
    for s in slots:
        digest.update(np.ascontiguousarray(s).tobytes())
    pattern = _CACHE.get(digest.digest(), lambda: _build_pattern(kinds_per_slab, slots, P, V))
    weights = np.concatenate(
        [v.reshape(-1) for v in values] + _mirror_values(kinds_per_slab, values) + [np.asarray(diag_add, np.float64)]
    )
    symbolic = pattern.symbolic
    with cholesky.single_threaded_blas():
        entries = np.bincount(pattern.target, weights=weights, minlength=symbolic.size + 1)[: symbolic.size]
        factor = cholesky.factor(symbolic, entries)
        # Not positive definite: report NaN, the LM loop rejects the step.
        sol = factor.solve(np.asarray(rhs, np.float64)) if factor is not None else np.full(symbolic.n, np.nan)
    return sol.astype(np.asarray(rhs).dtype)


def solve(graph: Graph, system: NormalSystem, lam: jax.Array, rhs: Tangent) -> Tangent:
    """(H + λ D) δ = rhs through the host sparse factorization."""
    blocks = system.blocks
    assert isinstance(blocks, SparseBlocks)
    P, V = rhs.poses.shape[0], rhs.points.shape[0]
    kinds = tuple(slab.ftype.var_kinds for slab in graph.slabs)
    # Damping plus an identity diagonal for variables that are held fixed
    # (their Jacobian columns are zero, so H has nothing there).
    diag_add = jnp.concatenate(
        [(lam * system.diag.poses + 1.0 - system.free.poses).reshape(-1),
         (lam * system.diag.points + 1.0 - system.free.points).reshape(-1)]
    )
    flat_rhs = jnp.concatenate([rhs.poses.reshape(-1), rhs.points.reshape(-1)])
    out = jax.pure_callback(
        lambda d, r, *sv: _host_solve(kinds, P, V, d, r, *sv),
        jax.ShapeDtypeStruct(flat_rhs.shape, flat_rhs.dtype),
        diag_add,
        flat_rhs,
        *blocks.slots,
        *blocks.values,
        vmap_method="sequential",
    )
    return Tangent(out[: 6 * P].reshape(P, 6), out[6 * P :].reshape(V, 3))

