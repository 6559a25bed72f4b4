"""Voxel hashing: points to integer grid cells, one observation per occupied cell.

A keyframe's cloud becomes one ``voxel_point_obs`` per occupied cell: the
centroid of that cell's points, in the sensor frame. Cells are keyed in the
map frame (through the keyframe's current pose estimate), so the same surface
seen from two keyframes lands on the same voxel variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cells are packed into one int64 key: 21 bits per axis, offset so negative
# indices fit. At 0.2 m voxels that spans ±209 km: a map frame in UTM or ECEF
# coordinates lies outside, and its cells are refused (see ``in_key_range``)
# rather than wrapped onto distant ones.
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1


def in_key_range(cells: np.ndarray) -> np.ndarray:
    """Which integer cells (N, 3) (as floats) ``pack_cells`` keys uniquely (N,) bool; NaN cells are not."""
    return np.all((cells >= -_OFFSET) & (cells < _OFFSET), axis=1)


def pack_cells(cells: np.ndarray) -> np.ndarray:
    """Integer cells (N, 3) → int64 keys (N,)."""
    c = cells.astype(np.int64) + _OFFSET
    return (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


def unpack_cells(keys: np.ndarray) -> np.ndarray:
    """int64 keys (N,) → integer cells (N, 3)."""
    keys = np.asarray(keys, np.int64)
    return np.stack([(keys >> (2 * _BITS)) & _MASK, (keys >> _BITS) & _MASK, keys & _MASK], axis=1) - _OFFSET


@dataclass(frozen=True)
class CellObservations:
    """One keyframe's voxel observations.

    keys:      (M,) packed map-frame cells, sorted.
    p_sensor:  (M, 3) centroid of the cell's points in the sensor frame.
    counts:    (M,) points that fell in each cell.
    n_sensor:  (M, 3) unit normal of the cell's points (sensor frame) where
               they lie on a plane, zero where they do not (too few points,
               an edge or clutter); None: no cell is known to be planar.
    outside_key_range: points left out because their map cell has no key.
    """

    keys: np.ndarray
    p_sensor: np.ndarray
    counts: np.ndarray
    n_sensor: np.ndarray | None = None
    outside_key_range: int = 0


def voxelize(
    p_sensor: np.ndarray,
    R_map_sensor: np.ndarray,
    t_map_sensor: np.ndarray,
    voxel_size: float,
    min_points: int = 1,
    n_sensor: np.ndarray | None = None,
) -> CellObservations:
    """Group a cloud (N, 3) by the map cell each point falls in.

    ``R_map_sensor`` (3, 3) and ``t_map_sensor`` (3,) place the cloud in the
    map with the current pose estimate. Cells with fewer than ``min_points``
    points are dropped (single returns are mostly noise). ``n_sensor`` (N, 3):
    per-point surface normals (zero where unknown), as :func:`scan_normals`
    gives for a planar scan; without them a cell's normal comes from the
    spread of its own points. Points whose cell lies beyond the keys' range
    are left out and counted in ``outside_key_range``.
    """
    # A contiguous right operand keeps this a single BLAS call (a transposed
    # view makes numpy 10x slower here).
    cells = np.floor((p_sensor.dot(np.ascontiguousarray(R_map_sensor.T)) + t_map_sensor) / voxel_size)
    inside = in_key_range(cells)
    outside = int(inside.shape[0] - np.count_nonzero(inside))
    if outside:
        p_sensor, cells = p_sensor[inside], cells[inside]
        n_sensor = None if n_sensor is None else n_sensor[inside]
    if p_sensor.shape[0] == 0:
        return CellObservations(
            keys=np.zeros(0, np.int64), p_sensor=np.zeros((0, 3)), counts=np.zeros(0, np.int64), n_sensor=np.zeros((0, 3)), outside_key_range=outside
        )
    keys = pack_cells(cells)
    # Sort once and sum contiguous runs: several times faster than np.unique
    # with an inverse index plus np.add.at.
    order = np.argsort(keys)
    keys = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(starts, keys.shape[0]))
    p_sorted = np.take(p_sensor, order, axis=0)
    centroids = np.add.reduceat(p_sorted, starts, axis=0) / counts[:, None]
    # Scatter about each centroid, for the cell's plane normal.
    d = p_sorted - np.repeat(centroids, counts, axis=0)
    cov = np.add.reduceat((d[:, :, None] * d[:, None, :]).reshape(-1, 9), starts, axis=0).reshape(-1, 3, 3)
    keep = counts >= min_points
    normals = plane_normals(cov[keep], counts[keep]) if n_sensor is None else cell_normals(np.take(n_sensor, order, axis=0), starts, counts)[keep]
    return CellObservations(keys=keys[starts][keep], p_sensor=centroids[keep], counts=counts[keep], n_sensor=normals, outside_key_range=outside)


def cell_normals(n_sorted: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """One normal per cell (M, 3) from its points' normals (N, 3) sorted by cell:
    their mean direction where they agree (zero normals count against it)."""
    total = np.add.reduceat(n_sorted, starts, axis=0)
    norm = np.linalg.norm(total, axis=1)
    agree = norm >= 0.8 * counts
    return np.where(agree[:, None], total / np.maximum(norm, 1e-12)[:, None], 0.0)


def scan_normals(p_sensor: np.ndarray, radius: float, neighbours: int = 5) -> np.ndarray:
    """Line normals (N, 3) of a planar scan's points (N, 3), in its plane (z = 0).

    A cell of a 2D scan holds one or two returns, too few for a normal, and
    its points have no spread out of the scan plane (so the least-spread
    direction of a cell is always the plane's normal, never the wall's).
    The normal comes instead from the ``neighbours`` nearest returns within
    ``radius``, when they lie on a line; it points toward the sensor. Zero
    elsewhere (corners, clutter, isolated returns).
    """
    from scipy.spatial import cKDTree

    n = p_sensor.shape[0]
    normals = np.zeros((n, 3))
    k = min(neighbours, n)
    if k < 3:
        return normals
    xy = p_sensor[:, :2]
    dist, idx = cKDTree(xy).query(xy, k=k, distance_upper_bound=radius)
    ok = np.all(np.isfinite(dist), axis=1)
    nb = xy[idx[ok]]
    d = nb - nb.mean(axis=1, keepdims=True)
    w, v = np.linalg.eigh(np.einsum("nki,nkj->nij", d, d))
    line = w[:, 0] <= PLANARITY * w[:, 1]
    nxy = v[:, :, 0]
    nxy *= -np.sign(np.einsum("ni,ni->n", nxy, xy[ok]))[:, None]  # toward the sensor
    rows = np.flatnonzero(ok)[line]
    normals[rows, :2] = nxy[line]
    return normals


# A cell is planar when its points spread at most this fraction as much along
# their thinnest axis as along the middle one (eigenvalue ratio).
PLANARITY = 0.1
MIN_PLANE_POINTS = 4


def plane_normals(cov: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unit normals (M, 3) of cells with scatter matrices ``cov`` (M, 3, 3);
    zero where the points are too few or not flat."""
    w, v = np.linalg.eigh(cov)  # ascending eigenvalues
    planar = (counts >= MIN_PLANE_POINTS) & (w[:, 0] <= PLANARITY * w[:, 1]) & (w[:, 1] > 0.0)
    return np.where(planar[:, None], v[:, :, 0], 0.0)
