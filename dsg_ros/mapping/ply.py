"""The voxel map as a PLY point cloud (binary little endian), for CloudCompare, Open3D, MeshLab.

One vertex per voxel: its estimated position (float32 x, y, z in the map
frame) and how many observations it has (``uint observations``, a scalar
field in CloudCompare; readers that only know x y z ignore it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsg_ros.files import atomic_path

_VERTEX = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("observations", "<u4")])


def write_ply(path: str | Path, positions: np.ndarray, counts: np.ndarray) -> Path:
    """Write voxel ``positions`` (N, 3) with their observation ``counts`` (N,) to
    ``path``, atomically (:func:`dsg_ros.files.atomic_path`)."""
    positions = np.asarray(positions, np.float64).reshape(-1, 3)
    counts = np.asarray(counts).reshape(-1)
    if counts.shape[0] != positions.shape[0]:
        raise ValueError(f"{counts.shape[0]} counts for {positions.shape[0]} positions")
    vertices = np.empty(positions.shape[0], _VERTEX)
    for i, axis in enumerate("xyz"):
        vertices[axis] = positions[:, i]
    vertices["observations"] = np.clip(counts, 0, np.iinfo(np.uint32).max)
    header = (
        "ply\n"
        "format binary_little_endian 1.0\n"
        "comment dsg_ros voxel map (map frame, metres)\n"
        f"element vertex {positions.shape[0]}\n"
        "property float x\n"
        "property float y\n"
        "property float z\n"
        "property uint observations\n"
        "end_header\n"
    )
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(vertices.tobytes())
    return path

