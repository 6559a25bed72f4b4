"""Read 3D g2o pose graphs (VERTEX_SE3:QUAT, EDGE_SE3:QUAT) into a WorldModel.

Edge information matrices are given in g2o's (translation, rotation) tangent
order, which is jaxlie's order too, so they are used as they are; the residual
is ``Log(Z⁻¹·Tᵢ⁻¹·Tⱼ)`` (GTSAM's BetweenFactor), so costs compare directly with
GTSAM's ``error()``. The first vertex (or every ``FIX``ed one) is anchored by a
tight prior (σ = 1e-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jax.typing import DTypeLike

from dsg_ros.world.model import Capacity, WorldModel
from dsg_ros.world.noise import Noise

ANCHOR_SIGMA = 1e-6
_UPPER = np.triu_indices(6)


class G2OError(ValueError):
    """A g2o file that cannot be read; the message names file and line."""


@dataclass(frozen=True)
class G2OGraph:
    """A parsed g2o file: vertex ids → poses and edges with information."""

    vertex_ids: np.ndarray  # (N,) g2o ids in file order
    poses: np.ndarray  # (N, 7) wxyz_xyz
    edges: np.ndarray  # (M, 2) g2o ids (from, to)
    measurements: np.ndarray  # (M, 7) wxyz_xyz of T_from_to
    information: np.ndarray  # (M, 6, 6)
    fixed: tuple[int, ...]


def read_g2o(path: str | Path) -> G2OGraph:
    """Parse a 3D g2o file; any malformed line raises ``G2OError`` with its line number."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise G2OError(f"{path}: cannot read: {exc.strerror or exc}") from None
    ids: list[int] = []
    poses: list[np.ndarray] = []
    edges: list[tuple[int, int]] = []
    meas: list[np.ndarray] = []
    infos: list[np.ndarray] = []
    fixed: list[int] = []
    seen: dict[int, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        tag = tokens[0]
        where = f"{path}:{lineno}"
        if tag == "VERTEX_SE3:QUAT":
            vals = _numbers(tokens, 9, where)
            vid = _int_id(tokens[1], where)
            if vid in seen:
                raise G2OError(f"{where}: vertex {vid} defined twice (first on line {seen[vid]})")
            seen[vid] = lineno
            ids.append(vid)
            poses.append(_pose(vals[2:9], where))
        elif tag == "EDGE_SE3:QUAT":
            vals = _numbers(tokens, 31, where)
            a, b = _int_id(tokens[1], where), _int_id(tokens[2], where)
            edges.append((a, b))
            meas.append(_pose(vals[3:10], where))
            info = np.zeros((6, 6))
            info[_UPPER] = vals[10:31]
            info = info + np.triu(info, 1).T
            try:
                np.linalg.cholesky(info)
            except np.linalg.LinAlgError:
                raise G2OError(f"{where}: edge {a}->{b} information matrix is not positive definite") from None
            infos.append(info)
        elif tag == "FIX":
            fixed.extend(_int_id(t, where) for t in tokens[1:])
        elif tag in ("VERTEX_SE2", "EDGE_SE2"):
            raise G2OError(f"{where}: {tag} is a 2D g2o record; only 3D (VERTEX_SE3:QUAT/EDGE_SE3:QUAT) is supported")
        else:
            raise G2OError(f"{where}: unsupported g2o record {tag!r}")
    if not ids:
        raise G2OError(f"{path}: no VERTEX_SE3:QUAT records")
    known = set(ids)
    for lineno_edge, (a, b) in enumerate(edges):
        missing = [v for v in (a, b) if v not in known]
        if missing:
            raise G2OError(f"{path}: edge #{lineno_edge} ({a}->{b}) refers to undefined vertex {missing[0]}")
    for v in fixed:
        if v not in known:
            raise G2OError(f"{path}: FIX names undefined vertex {v}")
    return G2OGraph(
        vertex_ids=np.asarray(ids, np.int64),
        poses=np.asarray(poses).reshape(-1, 7),
        edges=np.asarray(edges, np.int64).reshape(-1, 2),
        measurements=np.asarray(meas).reshape(-1, 7),
        information=np.asarray(infos).reshape(-1, 6, 6),
        fixed=tuple(fixed),
    )


def to_world_model(g2o: G2OGraph, dtype: DTypeLike | None = None) -> tuple[WorldModel, dict[int, int]]:
    """A WorldModel sized exactly to the file; returns it and g2o id → variable id."""
    anchors = list(g2o.fixed) or [int(g2o.vertex_ids[0])]
    capacity = Capacity(
        poses=len(g2o.vertex_ids),
        factors={"odom_se3": len(g2o.edges), "prior_se3": len(anchors)},
    )
    wm = WorldModel(capacity, dtype=dtype)
    var_of = {int(v): wm.add_pose(p) for v, p in zip(g2o.vertex_ids, g2o.poses)}
    anchor = Noise.isotropic(ANCHOR_SIGMA, 6)
    for v in anchors:
        wm.add_factor("prior_se3", [var_of[v]], wm.value(var_of[v]), anchor)
    for (a, b), z, info in zip(g2o.edges, g2o.measurements, g2o.information):
        wm.add_factor("odom_se3", [var_of[int(a)], var_of[int(b)]], z, Noise.from_information(info))
    return wm, var_of


def load_g2o(path: str | Path, dtype: DTypeLike | None = None) -> tuple[WorldModel, dict[int, int]]:
    """``read_g2o`` then ``to_world_model``."""
    return to_world_model(read_g2o(path), dtype=dtype)


def _numbers(tokens: list[str], count: int, where: str) -> np.ndarray:
    if len(tokens) != count:
        raise G2OError(f"{where}: {tokens[0]} expects {count - 1} fields, got {len(tokens) - 1}")
    try:
        vals = np.array([float(t) for t in tokens[1:]])
    except ValueError as exc:
        raise G2OError(f"{where}: {tokens[0]} has a non-numeric field ({exc})") from None
    if not np.all(np.isfinite(vals)):
        raise G2OError(f"{where}: {tokens[0]} has a non-finite field")
    return np.concatenate([[0.0], vals])  # index 1.. matches token positions


def _int_id(token: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise G2OError(f"{where}: vertex id {token!r} is not an integer") from None


def _pose(xyz_qxyzw: np.ndarray, where: str) -> np.ndarray:
    """g2o's ``x y z qx qy qz qw`` → unit ``wxyz_xyz``."""
    t, q_xyzw = xyz_qxyzw[:3], xyz_qxyzw[3:7]
    norm = np.linalg.norm(q_xyzw)
    if norm < 1e-6:
        raise G2OError(f"{where}: zero quaternion")
    if abs(norm - 1.0) > 1e-2:
        raise G2OError(f"{where}: quaternion norm {norm:.4g} is far from 1")
    q = q_xyzw / norm
    return np.array([q[3], q[0], q[1], q[2], *t])


def write_g2o(path: str | Path, g2o: G2OGraph, poses: np.ndarray) -> None:
    """Write ``g2o`` with vertex poses replaced by ``poses`` (N, 7) ``wxyz_xyz`` in file order."""
    poses = np.asarray(poses, np.float64)
    if poses.shape != g2o.poses.shape:
        raise ValueError(f"expected poses of shape {g2o.poses.shape}, got {poses.shape}")
    lines = []
    for vid, p in zip(g2o.vertex_ids, poses):
        w, x, y, z = p[:4]
        lines.append(f"VERTEX_SE3:QUAT {vid} " + " ".join(f"{v:.9g}" for v in (*p[4:], x, y, z, w)))
    for (a, b), m, info in zip(g2o.edges, g2o.measurements, g2o.information):
        w, x, y, z = m[:4]
        fields = [*m[4:], x, y, z, w, *info[_UPPER]]
        lines.append(f"EDGE_SE3:QUAT {a} {b} " + " ".join(f"{v:.9g}" for v in fields))
    if g2o.fixed:
        lines.append("FIX " + " ".join(str(v) for v in g2o.fixed))
    Path(path).write_text("\n".join(lines) + "\n")
