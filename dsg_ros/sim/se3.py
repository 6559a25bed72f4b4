"""SE(3) in numpy, batched over leading axes, in jaxlie's conventions.

A pose is a ``wxyz_xyz`` float64 array (..., 7): unit quaternion (w, x, y, z)
then translation. Tangents are (..., 6) twists ``(ρ, ω)``, translation first,
with ``exp``/``log`` the group maps, so ``compose(T, exp(ξ))`` is the same
right perturbation the solver uses. The simulator stays numpy-only; these
match ``jaxlie.SE3`` to rounding (tested).
"""

from __future__ import annotations

import numpy as np

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])

# Below this angle the closed forms lose digits; their Taylor series take over.
_SMALL_ANGLE = 1e-2


def from_yaw(yaw: np.ndarray | float, xyz: np.ndarray) -> np.ndarray:
    """Poses (..., 7) rotated by ``yaw`` (rad) about z and translated by ``xyz`` (..., 3)."""
    half = 0.5 * np.asarray(yaw, dtype=float)
    xyz = np.asarray(xyz, dtype=float)
    T = np.zeros(np.broadcast_shapes(half.shape, xyz.shape[:-1]) + (7,))
    T[..., 0], T[..., 3], T[..., 4:] = np.cos(half), np.sin(half), xyz
    return T


def yaw(T: np.ndarray) -> np.ndarray:
    """Yaw (rad) of the rotation part, (...,); the z-y-x Euler angle about z."""
    w, x, y, z = np.moveaxis(T[..., :4], -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def rotation_matrix(T: np.ndarray) -> np.ndarray:
    """The (..., 3, 3) rotation matrix of poses (..., 7)."""
    w, x, y, z = np.moveaxis(T[..., :4], -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def apply(T_a_b: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """Points (..., 3) in frame b mapped to frame a; ``T_a_b`` broadcasts against them."""
    R = rotation_matrix(T_a_b)
    return (R @ np.asarray(p_b, dtype=float)[..., None])[..., 0] + T_a_b[..., 4:]


def compose(T_a_b: np.ndarray, T_b_c: np.ndarray) -> np.ndarray:
    """``T_a_c = T_a_b · T_b_c``, broadcasting over leading axes."""
    q = _quat_multiply(T_a_b[..., :4], T_b_c[..., :4])
    return np.concatenate([q, apply(T_a_b, T_b_c[..., 4:])], axis=-1)


def inverse(T_a_b: np.ndarray) -> np.ndarray:
    """``T_b_a``, (..., 7)."""
    R_b_a = np.swapaxes(rotation_matrix(T_a_b), -1, -2)
    q_b_a = T_a_b[..., :4] * np.array([1.0, -1.0, -1.0, -1.0])
    return np.concatenate([q_b_a, -(R_b_a @ T_a_b[..., 4:, None])[..., 0]], axis=-1)


def exp(xi: np.ndarray) -> np.ndarray:
    """Twists (..., 6) = (ρ, ω) to poses (..., 7)."""
    xi = np.asarray(xi, dtype=float)
    rho, omega = xi[..., :3], xi[..., 3:]
    theta2 = np.sum(omega * omega, axis=-1)
    theta = np.sqrt(theta2)
    small = theta < _SMALL_ANGLE
    safe = np.where(small, 1.0, theta)
    # sin(θ/2)/θ, (1 - cos θ)/θ², (θ - sin θ)/θ³ with their series near 0.
    half_sinc = np.where(small, 0.5 - theta2 / 48.0 + theta2**2 / 3840.0, np.sin(0.5 * safe) / safe)
    a = np.where(small, 0.5 - theta2 / 24.0 + theta2**2 / 720.0, (1.0 - np.cos(safe)) / safe**2)
    b = np.where(small, 1.0 / 6.0 - theta2 / 120.0 + theta2**2 / 5040.0, (safe - np.sin(safe)) / safe**3)
    q = np.concatenate([np.cos(0.5 * theta)[..., None], half_sinc[..., None] * omega], axis=-1)
    w_x_rho = np.cross(omega, rho)
    t = rho + a[..., None] * w_x_rho + b[..., None] * np.cross(omega, w_x_rho)
    return np.concatenate([q, t], axis=-1)


def log(T: np.ndarray) -> np.ndarray:
    """Poses (..., 7) to twists (..., 6) = (ρ, ω), with |ω| ≤ π."""
    q = np.where(T[..., :1] < 0.0, -T[..., :4], T[..., :4])  # q and -q are one rotation; w ≥ 0 gives θ ≤ π
    w, v = q[..., 0], q[..., 1:]
    v_norm = np.linalg.norm(v, axis=-1)
    theta = 2.0 * np.arctan2(v_norm, w)
    small = theta < _SMALL_ANGLE
    # ω = θ v/|v|; near 0, θ/|v| = 2 atan(x)/(w x) with x = |v|/w ≈ (2/w)(1 - x²/3 + x⁴/5).
    x2 = (v_norm / w) ** 2
    scale = np.where(small, 2.0 / w * (1.0 - x2 / 3.0 + x2**2 / 5.0), theta / np.where(small, 1.0, v_norm))
    omega = scale[..., None] * v
    theta2 = theta * theta
    safe = np.where(small, 1.0, theta)
    # V⁻¹ = I - ½[ω]× + c [ω]×², c = (1 - θ sin θ / (2(1 - cos θ))) / θ².
    c_closed = (1.0 - safe * np.sin(safe) / (2.0 * (1.0 - np.cos(safe)))) / safe**2
    c = np.where(small, 1.0 / 12.0 + theta2 / 720.0 + theta2**2 / 30240.0, c_closed)
    t = T[..., 4:]
    w_x_t = np.cross(omega, t)
    rho = t - 0.5 * w_x_t + c[..., None] * np.cross(omega, w_x_t)
    return np.concatenate([rho, omega], axis=-1)


def _quat_multiply(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    w1, x1, y1, z1 = np.moveaxis(q1, -1, 0)
    w2, x2, y2, z2 = np.moveaxis(q2, -1, 0)
    return np.stack(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ],
        axis=-1,
    )
