"""Trajectory metrics: ATE after SE(3) alignment and RPE as evo computes them,
relation errors (Kuemmerle et al. 2009) at time gaps or from a relations
file, poses looked up at given stamps, and TUM export.

Poses are ``wxyz_xyz`` (N, 7); stamps are float seconds, increasing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsg_ros import se3
from dsg_ros.files import atomic_path


def umeyama(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The rigid transform ``wxyz_xyz`` (7,) minimizing Σ‖T·sᵢ − tᵢ‖² (no scale), points (N, 3)."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    cov = (target - mu_t).T @ (source - mu_s) / source.shape[0]
    U, _, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    R = U @ D @ Vt
    t = mu_t - R @ mu_s
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return se3.from_matrix(T)


def ate(estimate: np.ndarray, reference: np.ndarray, align: bool = True) -> float:
    """RMSE of translation (m) between matched poses (N, 7), after aligning the estimate."""
    estimate, reference = np.asarray(estimate), np.asarray(reference)
    if estimate.shape != reference.shape or estimate.shape[0] == 0:
        raise ValueError(f"ATE needs matched, non-empty pose arrays; got {estimate.shape} and {reference.shape}")
    p = estimate[:, 4:]
    if align and estimate.shape[0] >= 3:
        p = se3.apply(umeyama(p, reference[:, 4:]), p)
    return float(np.sqrt(np.mean(np.sum((p - reference[:, 4:]) ** 2, axis=1))))


def rpe(estimate: np.ndarray, reference: np.ndarray, delta: int = 1) -> tuple[float, float]:
    """RMSE of relative-pose error over ``delta`` steps: (translation m, rotation deg)."""
    if estimate.shape[0] <= delta:
        return float("nan"), float("nan")
    trans, rot = relation_errors(se3.between(estimate[:-delta], estimate[delta:]), se3.between(reference[:-delta], reference[delta:]))
    return _rms(trans), _rms(rot)


def relation_errors(relative_estimate: np.ndarray, relative_reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per relation (P, 7), the error ``(ref_i⁻¹ ref_j)⁻¹ (est_i⁻¹ est_j)`` as its
    translation norm (m) and rotation angle (deg), each (P,).

    Kuemmerle et al. 2009's metric: only relative motions are compared, so
    a drift long before a pair does not count against it (unlike the ATE).
    """
    error = se3.between(np.asarray(relative_reference), np.asarray(relative_estimate))
    trans = np.linalg.norm(error[..., 4:], axis=-1)
    rot = np.degrees(np.linalg.norm(se3.log(error)[..., 3:], axis=-1))
    return trans, rot


def poses_at(stamps: np.ndarray, poses: np.ndarray, query: np.ndarray, tolerance_s: float = 1e-3) -> np.ndarray:
    """Poses (Q, 7) at the ``query`` stamps (Q,): the pose of a stamp within
    ``tolerance_s`` where there is one (the nearest), else the geodesic
    interpolation of the two around it; NaN rows outside ``stamps``' span.
    ``stamps`` (N,) increasing, ``poses`` (N, 7)."""
    stamps, poses, query = np.asarray(stamps, np.float64), np.asarray(poses, np.float64), np.asarray(query, np.float64)
    out = np.full((query.size, 7), np.nan)
    if stamps.size == 0:
        return out
    after = np.searchsorted(stamps, query)  # stamps[after - 1] < query <= stamps[after]
    before = np.clip(after - 1, 0, stamps.size - 1)
    after_c = np.clip(after, 0, stamps.size - 1)
    nearest = np.where(np.abs(stamps[after_c] - query) <= np.abs(query - stamps[before]), after_c, before)
    exact = np.abs(stamps[nearest] - query) <= tolerance_s
    out[exact] = poses[nearest[exact]]
    inside = ~exact & (after > 0) & (after < stamps.size)
    if np.any(inside):
        i, j = before[inside], after_c[inside]
        alpha = (query[inside] - stamps[i]) / (stamps[j] - stamps[i])
        out[inside] = se3.interpolate(poses[i], poses[j], alpha)
    return out


def pairs_at_gap(stamps: np.ndarray, gap_s: float, slack: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), one per i: j the first stamp at least ``gap_s``
    after stamp i, kept when it is at most ``(1 + slack) · gap_s`` after it
    (sparse references have no partner for some i)."""
    stamps = np.asarray(stamps, np.float64)
    i = np.arange(stamps.size)
    j = np.searchsorted(stamps, stamps + gap_s - 1e-9)
    keep = j < stamps.size
    i, j = i[keep], j[keep]
    keep = stamps[j] - stamps[i] <= (1.0 + slack) * gap_s
    return i[keep], j[keep]


def relation_poses(relations: np.ndarray) -> np.ndarray:
    """Relative poses (R, 7) of Kuemmerle relations ``t1 t2 x y z roll pitch yaw``
    (R, 8): rotation Rz(yaw)·Ry(pitch)·Rx(roll), translation x y z."""
    relations = np.asarray(relations, np.float64).reshape(-1, 8)

    def about(axis: int) -> np.ndarray:  # rotations (R, 7) by the angle in column 5 + axis
        twist = np.zeros((relations.shape[0], 6))
        twist[:, 3 + axis] = relations[:, 5 + axis]
        return se3.exp(twist)

    q = se3.compose(about(2), se3.compose(about(1), about(0)))
    return np.concatenate([q[:, :4], relations[:, 2:5]], axis=1)


def score(
    stamps: np.ndarray, poses: np.ndarray, reference_stamps: np.ndarray, reference: np.ndarray, gaps_s: tuple[float, ...] = (1.0, 10.0)
) -> dict[str, float | int | None]:
    """A trajectory (``stamps`` (N,), ``poses`` (N, 7)) scored at the reference
    stamps (K,): ATE after rigid alignment (``ate_m``) and, per gap, the RMSE
    of the relation errors of pose pairs about that far apart
    (``rel_1s_m``, ``rel_1s_deg``, ``rel_1s_pairs``). Reference stamps outside
    the trajectory are left out (``poses`` counts the rest)."""
    estimate = poses_at(stamps, poses, reference_stamps)
    ok = np.isfinite(estimate).all(axis=1)
    estimate, reference, reference_stamps = estimate[ok], np.asarray(reference)[ok], np.asarray(reference_stamps)[ok]
    out: dict[str, float | int | None] = {"poses": int(ok.sum()), "ate_m": ate(estimate, reference) if ok.sum() else None}
    for gap in gaps_s:
        i, j = pairs_at_gap(reference_stamps, gap)
        trans, rot = relation_errors(se3.between(estimate[i], estimate[j]), se3.between(reference[i], reference[j]))
        name = f"rel_{gap:g}s"
        out.update({f"{name}_m": _rmse(trans), f"{name}_deg": _rmse(rot), f"{name}_pairs": int(i.size)})
    return out


def score_relations(stamps: np.ndarray, poses: np.ndarray, relations: np.ndarray) -> dict[str, float | int | None]:
    """RMSE of the relation errors of a trajectory over Kuemmerle relations
    (R, 8) (``relations_m``, ``relations_deg``); relations with a stamp
    outside the trajectory are left out (``relations_used`` counts the rest)."""
    relations = np.asarray(relations, np.float64).reshape(-1, 8)
    start, end = poses_at(stamps, poses, relations[:, 0]), poses_at(stamps, poses, relations[:, 1])
    ok = np.isfinite(start).all(axis=1) & np.isfinite(end).all(axis=1)
    trans, rot = relation_errors(se3.between(start[ok], end[ok]), relation_poses(relations[ok]))
    return {"relations_m": _rmse(trans), "relations_deg": _rmse(rot), "relations_used": int(ok.sum()), "relations_total": int(relations.shape[0])}


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def _rmse(values: np.ndarray) -> float | None:
    """Root mean square, None for no values (JSON null rather than NaN)."""
    return _rms(values) if np.size(values) else None


def write_tum(path: str | Path, stamps: np.ndarray, poses: np.ndarray) -> Path:
    """TUM format: ``stamp tx ty tz qx qy qz qw`` per line (for ``evo_ape tum …``),
    written atomically (:func:`dsg_ros.files.atomic_path`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w") as handle:
        for t, p in zip(stamps, poses):
            handle.write(f"{t:.6f} {p[4]:.6f} {p[5]:.6f} {p[6]:.6f} {p[1]:.9f} {p[2]:.9f} {p[3]:.9f} {p[0]:.9f}\n")
    return path

