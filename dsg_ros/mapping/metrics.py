"""Trajectory metrics as evo computes them (ATE after SE(3) alignment, RPE), and TUM export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsg_ros import se3


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
    rel_est = se3.between(estimate[:-delta], estimate[delta:])
    rel_ref = se3.between(reference[:-delta], reference[delta:])
    err = se3.log(se3.between(rel_ref, rel_est))
    trans = np.linalg.norm(se3.apply(se3.between(rel_ref, rel_est), np.zeros(3)), axis=-1)
    rot = np.degrees(np.linalg.norm(err[:, 3:], axis=1))
    return float(np.sqrt(np.mean(trans**2))), float(np.sqrt(np.mean(rot**2)))


def write_tum(path: str | Path, stamps: np.ndarray, poses: np.ndarray) -> Path:
    """TUM format: ``stamp tx ty tz qx qy qz qw`` per line (for ``evo_ape tum …``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for t, p in zip(stamps, poses):
            handle.write(f"{t:.6f} {p[4]:.6f} {p[5]:.6f} {p[6]:.6f} {p[1]:.9f} {p[2]:.9f} {p[3]:.9f} {p[0]:.9f}\n")
    return path

