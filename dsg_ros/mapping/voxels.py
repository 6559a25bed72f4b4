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
# indices fit. At 0.2 m voxels that spans ±209 km, far beyond any map here.
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_MASK = (1 << _BITS) - 1


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
    """

    keys: np.ndarray
    p_sensor: np.ndarray
    counts: np.ndarray
    n_sensor: np.ndarray | None = None


def voxelize(p_sensor: np.ndarray, R_map_sensor: np.ndarray, t_map_sensor: np.ndarray, voxel_size: float, min_points: int = 1) -> CellObservations:
    """Group a cloud (N, 3) by the map cell each point falls in.

    ``R_map_sensor`` (3, 3) and ``t_map_sensor`` (3,) place the cloud in the
    map with the current pose estimate. Cells with fewer than ``min_points``
    points are dropped (single returns are mostly noise).
    """
    # A contiguous right operand keeps this a single BLAS call (a transposed
    # view makes numpy 10x slower here).
    if p_sensor.shape[0] == 0:
        return CellObservations(keys=np.zeros(0, np.int64), p_sensor=np.zeros((0, 3)), counts=np.zeros(0, np.int64), n_sensor=np.zeros((0, 3)))
    p_map = p_sensor.dot(np.ascontiguousarray(R_map_sensor.T)) + t_map_sensor
    keys = pack_cells(np.floor(p_map / voxel_size))
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
    return CellObservations(
        keys=keys[starts][keep], p_sensor=centroids[keep], counts=counts[keep], n_sensor=plane_normals(cov[keep], counts[keep])
    )


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
