"""The persistent voxel map: every voxel ever estimated, in and out of the window."""

from __future__ import annotations

from itertools import repeat

import numpy as np


def lookup(table: dict[int, int], keys: np.ndarray) -> np.ndarray:
    """``table[k]`` per key (n,), −1 where absent (vectorized enough for 100k keys a second)."""
    return np.fromiter(map(table.get, np.asarray(keys).tolist(), repeat(-1)), np.int64, count=len(keys))


class VoxelMap:
    """Cell key → position (map frame), observation count, frozen flag.

    Rows grow by doubling; a dict maps keys to rows. Frozen voxels left the
    window and keep their last estimate; the window may still reference them
    as constants.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self._row: dict[int, int] = {}
        self._keys = np.zeros(capacity, np.int64)
        self._positions = np.zeros((capacity, 3))
        self._counts = np.zeros(capacity, np.int64)
        self._frozen = np.zeros(capacity, bool)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def rows(self, keys: np.ndarray) -> np.ndarray:
        """Row per key (n,), −1 where the key is unknown."""
        return lookup(self._row, keys)

    def update(self, keys: np.ndarray, positions: np.ndarray, add_counts: np.ndarray | int = 0, frozen: bool | None = None) -> None:
        """Insert or overwrite positions (n, 3) of ``keys`` (n,); add to their counts."""
        keys = np.asarray(keys, np.int64)
        rows = self.rows(keys)
        new = rows < 0
        if np.any(new):
            n_new = int(new.sum())
            self._grow(self._size + n_new)
            fresh = np.arange(self._size, self._size + n_new)
            self._row.update(zip(keys[new].tolist(), fresh.tolist()))
            self._keys[fresh] = keys[new]
            rows[new] = fresh
            self._size += n_new
        self._positions[rows] = positions
        self._counts[rows] += np.broadcast_to(np.asarray(add_counts, np.int64), rows.shape)
        if frozen is not None:
            self._frozen[rows] = frozen

    def observe(self, keys: np.ndarray, initial_positions: np.ndarray) -> None:
        """Count one observation of each of ``keys`` (n,); unknown keys enter
        at ``initial_positions`` (n, 3), free (not frozen)."""
        keys = np.asarray(keys, np.int64)
        rows = self.rows(keys)
        unknown = rows < 0
        if np.any(unknown):
            self.update(keys[unknown], initial_positions[unknown], frozen=False)
            rows = self.rows(keys)
        np.add.at(self._counts, rows, 1)

    def positions(self, rows: np.ndarray) -> np.ndarray:
        return self._positions[rows]

    def frozen(self, rows: np.ndarray) -> np.ndarray:
        return self._frozen[rows]

    def near(self, center: np.ndarray, radius: float) -> np.ndarray:
        """Positions (n, 3) of the voxels within ``radius`` of ``center`` (3,)."""
        p = self._positions[: self._size]
        d = p - np.asarray(center)
        return p[np.einsum("ij,ij->i", d, d) <= radius * radius]

    def export(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of (keys (N,), positions (N, 3), observation counts (N,))."""
        n = self._size
        return self._keys[:n].copy(), self._positions[:n].copy(), self._counts[:n].copy()

    def clear(self) -> None:
        self._row.clear()
        self._size = 0

    def _grow(self, need: int) -> None:
        if need <= self._keys.shape[0]:
            return
        size = max(need, 2 * self._keys.shape[0])
        for name in ("_keys", "_positions", "_counts", "_frozen"):
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
