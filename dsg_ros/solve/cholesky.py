"""Supernodal multifrontal Cholesky of block-sparse SPD matrices, on the host.

The sparse path's normal equations are symmetric positive definite with
dense 6×6 (pose) and 3×3 (point) blocks. Factorizing them as a Cholesky over
groups of whole variables (supernodes), with LAPACK on each dense front, does
half the arithmetic of a general sparse LU, in dense kernels.

``analyze`` runs once per sparsity pattern (the caller caches it): a
fill-reducing ordering of the variables (minimum degree), the elimination
tree over variables, and supernodes: chains of variables with the same
structure, then small children merged into their parents ("relaxed": a few
explicit zeros buy fewer, larger dense kernels). ``factor`` assembles each
front from the matrix entries and its children's update matrices, factorizes
its pivot columns and passes the Schur complement up; ``Factor.solve`` runs
the two triangular sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.linalg import blas, lapack
from threadpoolctl import ThreadpoolController

# Relaxed amalgamation: a child supernode is merged into its parent while the
# merged one has at most this many scalar pivot columns and at most this share
# of explicit zeros in them.
MERGE_MAX_COLUMNS = 48
MERGE_MAX_ZEROS = 0.5

_BLAS: ThreadpoolController | None = None


def single_threaded_blas():
    """A context with BLAS on one thread. The fronts are small: OpenBLAS's
    threads cost more to wake than they save (sphere2500: 570 vs 25 ms in
    the triangular solves and products on 2 cores)."""
    global _BLAS
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class Symbolic:
    """Supernodes in children-first order; every index is a scalar index.

    Supernode s's front is indexed by ``pivots[s]`` (k) then ``below[s]``
    (the later rows its pivot columns reach); ``relative[s]`` is where s's
    update matrix (below × below) adds into its parent's (m, m) front, as
    flat indices. ``offset[s]``: where s's pivot columns, an (m, k)
    row-major block with m = k + len(below), start in the entry buffer of
    length ``size``.
    """

    n: int
    pivots: tuple[np.ndarray, ...]
    below: tuple[np.ndarray, ...]
    children: tuple[tuple[int, ...], ...]
    relative: tuple[np.ndarray, ...]
    offset: np.ndarray
    size: int
    owner: np.ndarray  # (n,) supernode whose pivots hold each scalar
    front_keys: np.ndarray  # sorted s·n + scalar over every front
    front_positions: np.ndarray  # position in that front

    def position(self, s: np.ndarray, scalars: np.ndarray) -> np.ndarray:
        """Position of each scalar in front s, or −1 where it is not there."""
        keys = s.astype(np.int64) * self.n + scalars
        at = np.minimum(np.searchsorted(self.front_keys, keys), self.front_keys.size - 1)
        return np.where(self.front_keys[at] == keys, self.front_positions[at], -1)

    def entry_targets(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Buffer position of each matrix entry (rows[i], cols[i]), or ``size``
        for entries not stored: those whose row is not in the front of the
        column's supernode (the matrix is symmetric and every pair comes both
        ways, so the mirrored entry is stored instead)."""
        s = self.owner[cols]
        k = np.array([p.size for p in self.pivots], np.int64)[s]
        row_pos = self.position(s, rows)
        col_pos = self.position(s, cols)
        return np.where(row_pos >= 0, self.offset[s] + row_pos * k + col_pos, self.size)


@dataclass(frozen=True)
class Factor:
    """L's pivot blocks (k, k) and the blocks below them (m − k, k), per supernode."""

    symbolic: Symbolic
    diagonal: tuple[np.ndarray, ...]
    lower: tuple[np.ndarray, ...]

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """x with L Lᵀ x = rhs (n,)."""
        sym, x = self.symbolic, np.array(rhs, np.float64)
        for piv, below, L11, L21 in zip(sym.pivots, sym.below, self.diagonal, self.lower):
            y = blas.dtrsv(L11, x[piv], lower=1)
            x[piv] = y
            if below.size:
                x[below] -= L21 @ y
        for piv, below, L11, L21 in zip(sym.pivots[::-1], sym.below[::-1], self.diagonal[::-1], self.lower[::-1]):
            z = x[piv]
            if below.size:
                z = z - L21.T @ x[below]
            x[piv] = blas.dtrsv(L11, z, lower=1, trans=1)
        return x


def analyze(dims: np.ndarray, edges: np.ndarray) -> Symbolic:
    """Ordering, elimination tree and supernodes of a block pattern.

    dims:  (N,) scalar size of each variable, laid out consecutively.
    edges: (E, 2) variable pairs that share a factor (either order, repeats allowed).
    """
    N = int(dims.shape[0])
    start = np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)
    n = int(start[-1])
    a, b = edges[:, 0], edges[:, 1]
    keep = a != b
    rows, cols = np.concatenate([a[keep], b[keep]]), np.concatenate([b[keep], a[keep]])
    pattern = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(N, N))
    pattern.sum_duplicates()
    # SuperLU's multiple minimum degree on the variable graph; the values
    # (diagonally dominant) do not matter. perm_c[v] is v's elimination rank.
    ordering = (pattern + sp.identity(N, format="csr") * (N + 1.0)).tocsc()
    rank = spla.splu(ordering, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}).perm_c
    order = np.argsort(rank)
    # Symbolic factorization over variables, in rank space.
    struct: list[set[int]] = []
    parent = np.full(N, -1, np.int64)
    kids: list[list[int]] = [[] for _ in range(N)]
    for j in range(N):
        v = order[j]
        s = {r for r in rank[pattern.indices[pattern.indptr[v] : pattern.indptr[v + 1]]].tolist() if r > j}
        for c in kids[j]:
            s |= struct[c]
        s.discard(j)
        struct.append(s)
        if s:
            parent[j] = min(s)
            kids[parent[j]].append(j)
    nodes = _supernodes(struct, parent, kids, dims[order])

    def scalars(ranks: list[int]) -> np.ndarray:
        vs = order[np.asarray(ranks, np.int64)]
        return np.concatenate([np.arange(start[v], start[v + 1]) for v in vs]) if len(vs) else np.zeros(0, np.int64)

    pivots = tuple(scalars(piv) for piv, _, _ in nodes)
    below = tuple(scalars(sorted(rows_)) for _, rows_, _ in nodes)
    children = tuple(tuple(ch) for _, _, ch in nodes)
    fronts = [np.concatenate([p, q]) for p, q in zip(pivots, below)]
    keys = np.concatenate([i * n + f for i, f in enumerate(fronts)])
    positions = np.concatenate([np.arange(f.size) for f in fronts])
    sort = np.argsort(keys)
    owner = np.empty(n, np.int64)
    for i, piv in enumerate(pivots):
        owner[piv] = i
    sizes = np.array([p.size * f.size for p, f in zip(pivots, fronts)], np.int64)
    symbolic = Symbolic(
        n=n,
        pivots=pivots,
        below=below,
        children=children,
        relative=(),
        offset=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        size=int(sizes.sum()),
        owner=owner,
        front_keys=keys[sort],
        front_positions=positions[sort],
    )
    # Where each child's update matrix adds into its parent's front, as flat
    # indices (one 1-D scatter per child instead of a 2-D fancy index).
    relative = [np.zeros(0, np.int64)] * len(nodes)
    for p, ch in enumerate(children):
        m = fronts[p].size
        for c in ch:
            rel = symbolic.position(np.full(below[c].size, p), below[c])
            relative[c] = (rel[:, None] * m + rel[None, :]).reshape(-1)
    return replace(symbolic, relative=tuple(relative))


def _supernodes(
    struct: list[set[int]], parent: np.ndarray, kids: list[list[int]], dims: np.ndarray
) -> list[tuple[list[int], set[int], list[int]]]:
    """(pivot ranks, update-row ranks, child supernodes) per supernode, children first."""
    N = len(struct)
    # Fundamental supernodes: j continues j−1's when it is j−1's parent, has
    # no other child, and has the same structure below.
    node_of = np.empty(N, np.int64)
    pivots: list[list[int]] = []
    for j in range(N):
        if j > 0 and parent[j - 1] == j and len(kids[j]) == 1 and len(struct[j - 1]) == len(struct[j]) + 1:
            pivots[-1].append(j)
        else:
            pivots.append([j])
        node_of[j] = len(pivots) - 1
    below = [struct[p[-1]] for p in pivots]
    width = [int(dims[p].sum()) for p in pivots]
    height = [w + int(dims[sorted(b)].sum()) if b else w for w, b in zip(width, below)]
    zeros = [0] * len(pivots)
    children: list[list[int]] = [[] for _ in pivots]
    for i, piv in enumerate(pivots):
        if parent[piv[-1]] >= 0:
            children[node_of[parent[piv[-1]]]].append(i)
    # Relaxed amalgamation, children before parents: c's pivot columns gain
    # explicit zeros in the rows of the parent's front that c does not reach.
    merged_into = [-1] * len(pivots)
    for p in range(len(pivots)):
        kept = []
        for c in children[p]:
            k = width[c] + width[p]
            new_zeros = width[c] * (height[p] - (height[c] - width[c]))
            total = zeros[c] + zeros[p] + new_zeros
            if k <= MERGE_MAX_COLUMNS and total <= MERGE_MAX_ZEROS * k * (height[p] + width[c]):
                pivots[p] = pivots[c] + pivots[p]
                width[p], height[p], zeros[p] = k, height[p] + width[c], total
                kept.extend(children[c])
                merged_into[c] = p
            else:
                kept.append(c)
        children[p] = kept
    final = [i for i in range(len(pivots)) if merged_into[i] < 0]
    index = {old: new for new, old in enumerate(final)}
    return [(pivots[i], below[i], [index[c] for c in children[i]]) for i in final]


def factor(symbolic: Symbolic, entries: np.ndarray) -> Factor | None:
    """Factorize the matrix whose entries ``entry_targets`` placed in ``entries``
    (length ``symbolic.size``); None if it is not positive definite."""
    sym = symbolic
    diagonal: list[np.ndarray] = []
    lower: list[np.ndarray] = []
    updates: dict[int, np.ndarray] = {}  # per supernode, until its parent adds it in
    for s, (piv, below) in enumerate(zip(sym.pivots, sym.below)):
        k, m = piv.size, piv.size + below.size
        front = np.zeros((m, m))
        front[:, :k] = entries[sym.offset[s] : sym.offset[s] + m * k].reshape(m, k)
        flat = front.reshape(-1)
        for c in sym.children[s]:
            flat[sym.relative[c]] += updates.pop(c).reshape(-1)
        L11, info = lapack.dpotrf(front[:k, :k], lower=1, clean=1)
        if info != 0:
            return None
        diagonal.append(L11)
        if m > k:
            # L21 = F21 L11⁻ᵀ; the Schur complement goes to the parent.
            L21 = blas.dtrsm(1.0, L11, front[k:, :k], side=1, lower=1, trans_a=1)
            updates[s] = front[k:, k:] - L21 @ L21.T
            lower.append(L21)
        else:
            lower.append(np.zeros((0, k)))
    return Factor(sym, tuple(diagonal), tuple(lower))
