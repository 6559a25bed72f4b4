"""The host supernodal Cholesky behind the sparse solver path."""

from __future__ import annotations

import numpy as np

from dsg_ros.solve import cholesky


def _block_spd(seed: int, poses: int = 40, points: int = 60, extra_edges: int = 15):
    """A random SPD matrix with 6×6 pose and 3×3 point blocks: a pose chain,
    loop closures, and each point seen from two poses (plus a few isolated
    variables with only a diagonal)."""
    rng = np.random.default_rng(seed)
    dims = np.array([6] * poses + [3] * points)
    start = np.concatenate([[0], np.cumsum(dims)])
    pairs = [(i, i + 1) for i in range(poses - 1)]
    pairs += [(int(rng.integers(poses)), int(rng.integers(poses))) for _ in range(extra_edges)]
    pairs += [(int(rng.integers(poses)), poses + v) for v in range(points - 3) for _ in range(2)]
    edges = np.array(pairs)
    n = int(start[-1])
    A = 1e-3 * np.eye(n)
    for a, b in edges:
        idx = np.concatenate([np.arange(start[a], start[a + 1]), np.arange(start[b], start[b + 1])]) if a != b else np.arange(start[a], start[a + 1])
        J = rng.normal(size=(idx.size + 2, idx.size))
        A[np.ix_(idx, idx)] += J.T @ J
    return A, dims, edges


def _factor(A: np.ndarray, dims: np.ndarray, edges: np.ndarray):
    symbolic = cholesky.analyze(dims, edges)
    rows, cols = np.nonzero(A)
    targets = symbolic.entry_targets(rows, cols)
    entries = np.bincount(targets, weights=A[rows, cols], minlength=symbolic.size + 1)[: symbolic.size]
    return symbolic, cholesky.factor(symbolic, entries)


def test_solves_block_sparse_spd_systems_like_a_dense_solver():
    for seed in range(3):
        A, dims, edges = _block_spd(seed)
        symbolic, factor = _factor(A, dims, edges)
        assert factor is not None
        # Relaxed supernodes: fewer dense fronts than variables.
        assert len(symbolic.pivots) < dims.size
        assert sorted(np.concatenate(symbolic.pivots).tolist()) == list(range(A.shape[0]))
        b = np.random.default_rng(seed + 10).normal(size=A.shape[0])
        np.testing.assert_allclose(factor.solve(b), np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)


def test_an_indefinite_matrix_is_refused():
    A, dims, edges = _block_spd(0)
    A[7, 7] = -1e6
    assert _factor(A, dims, edges)[1] is None
