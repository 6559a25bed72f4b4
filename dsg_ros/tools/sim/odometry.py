"""Drifting odometry: true motion increments, corrupted, integrated from identity.

Model, per step k between stamps t_k and t_{k+1} (Δt_k = t_{k+1} - t_k):

    ξ_k      = (ρ_k, ω_k) = Log(T_world_base[k]⁻¹ · T_world_base[k+1])   true body-frame twist
    ξ̃_k      = (s ⊙ ρ_k + n_ρ,  ω_k + b·Δt_k·e_z + n_ω)                  measured twist
    T_odom_base[0] = I,  T_odom_base[k+1] = T_odom_base[k] · Exp(ξ̃_k)

with ``s`` the per-axis scale (``OdometryConfig.scale``), ``b`` the yaw-rate
bias in rad/s (about the base z axis), and n_ρ, n_ω white Gaussian noise per
step on every axis. An online calibration learns the inverse: divide ρ̃ by
``s`` and subtract ``b·Δt`` from ω̃_z (``OdometryCalibration.correct``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsg_ros import se3


@dataclass(frozen=True)
class OdometryCalibration:
    """The parameters that produced the odometry: what a perfect calibration recovers.

    ``scale`` (3,) multiplies the true translation increments (body x, y, z);
    ``yaw_rate_bias`` (rad/s) is added to the true yaw rate.
    """

    scale: tuple[float, float, float]
    yaw_rate_bias: float

    def correct(self, xi_odom: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """Measured twists (K, 6) over steps ``dt`` (K,) back to true ones, noise aside."""
        xi = np.array(xi_odom, dtype=float)
        xi[:, :3] /= np.asarray(self.scale)
        xi[:, 5] -= self.yaw_rate_bias * np.asarray(dt)
        return xi


@dataclass(frozen=True)
class OdometryConfig:
    scale: tuple[float, float, float] = (1.03, 1.0, 1.0)  # odometry over-reads forward motion by 3 %
    yaw_rate_bias_deg_s: float = 1.0
    translation_noise_std_m: float = 0.002  # per step and axis
    rotation_noise_std_rad: float = 0.0005  # per step and axis

    def true_calibration(self) -> OdometryCalibration:
        sx, sy, sz = self.scale
        return OdometryCalibration((float(sx), float(sy), float(sz)), float(np.deg2rad(self.yaw_rate_bias_deg_s)))


def increments(T_world_base: np.ndarray) -> np.ndarray:
    """Body-frame twists between consecutive poses (K, 7) -> (K - 1, 6)."""
    return se3.log(se3.between(T_world_base[:-1], T_world_base[1:]))


def integrate_odometry(
    stamps: np.ndarray, T_world_base: np.ndarray, config: OdometryConfig, rng: np.random.Generator
) -> np.ndarray:
    """Odometry poses ``T_odom_base`` (K, 7) for ground truth at ``stamps`` (K,); see the module docstring."""
    calib = config.true_calibration()
    xi = increments(T_world_base)
    xi[:, :3] *= calib.scale
    xi[:, 5] += calib.yaw_rate_bias * np.diff(stamps)
    xi[:, :3] += rng.normal(0.0, config.translation_noise_std_m, (len(xi), 3))
    xi[:, 3:] += rng.normal(0.0, config.rotation_noise_std_rad, (len(xi), 3))
    T = np.vstack([se3.IDENTITY, se3.exp(xi)])
    # Inclusive prefix product (Hillis–Steele): log2(K) batched composes instead of K small ones.
    d = 1
    while d < len(T):
        T[d:] = se3.compose(T[:-d], T[d:])
        d *= 2
    T[:, :4] /= np.linalg.norm(T[:, :4], axis=1, keepdims=True)
    return T
