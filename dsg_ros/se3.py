"""SE(3) on jaxlie's ``wxyz_xyz`` storage (…, 7), for NumPy and JAX arrays alike.

Given NumPy arrays these run in NumPy: host code (message conversion,
odometry buffering and correction, keyframe selection, simulation) pays no
dispatch or compilation cost. Given JAX arrays (or inside ``jit``) they run
in ``jax.numpy`` and are differentiable: the series near θ = 0 use the
safe-``where`` pattern, so derivatives stay finite there. Tangents are
``(ρ, ω)``, translation first, as in jaxlie; everything broadcasts over
leading axes.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # only for annotations: the simulator imports this module without JAX
    import jax

# NumPy in, NumPy out; JAX in, JAX out.
Array = TypeVar("Array", np.ndarray, "jax.Array")

IDENTITY = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
_SMALL = 1e-6  # θ² below which series (to θ⁴, error < 1e-18) replace the closed forms
# In float32 (the GPU default) 1 − cos θ has no correct digits left well
# before θ² = 1e-6; the series stay exact to float32 up to here.
_SMALL_F32 = 1e-3
_LOG_SMALL = 1e-2  # log's V⁻¹ coefficient cancels badly well above _SMALL


def namespace(*arrays: object) -> ModuleType:
    """``jax.numpy`` if any argument is a JAX array (or tracer), else NumPy.

    JAX is not imported here: the simulator uses this module and must stay
    NumPy-only, and without JAX loaded no argument can be a JAX array.
    """
    jax = sys.modules.get("jax")
    if jax is not None and any(isinstance(a, jax.Array) for a in arrays):
        import jax.numpy as jnp

        return jnp
    return np


# The math runs on tuples of components (each (…,)): one slice per input
# and one stack per output. Inside jit, XLA then fuses a whole chain of
# these into a few loops; stacked (…, 3) intermediates that were sliced
# again made twice as many kernels to compile (and to differentiate). The
# ``*_parts`` functions are that layer; the array functions wrap them.
Parts = tuple  # components, each (…,); a 3×3 matrix is a tuple of 3 rows


def split_parts(a: np.ndarray | jax.Array) -> Parts:
    return tuple(a[..., i] for i in range(a.shape[-1]))


def join_parts(*parts: Parts) -> Any:  # an array of the components' namespace
    flat = [c for part in parts for c in part]
    return namespace(*flat).stack(flat, axis=-1)


def quat_mul_parts(p: Parts, q: Parts) -> Parts:
    pw, px, py, pz = p
    qw, qx, qy, qz = q
    return (
        pw * qw - px * qx - py * qy - pz * qz,
        pw * qx + px * qw + py * qz - pz * qy,
        pw * qy - px * qz + py * qw + pz * qx,
        pw * qz + px * qy - py * qx + pz * qw,
    )


def quat_conj_parts(q: Parts) -> Parts:
    return (q[0], -q[1], -q[2], -q[3])


def cross_parts(a: Parts, b: Parts) -> Parts:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def dot_parts(a: Parts, b: Parts) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def quat_rotate_parts(q: Parts, v: Parts) -> Parts:
    t = tuple(2.0 * c for c in cross_parts(q[1:], v))
    u_t = cross_parts(q[1:], t)
    return tuple(v[i] + q[0] * t[i] + u_t[i] for i in range(3))


def compose_parts(A: Parts, B: Parts) -> Parts:
    rotated = quat_rotate_parts(A[:4], B[4:])
    return quat_mul_parts(A[:4], B[:4]) + tuple(A[4 + i] + rotated[i] for i in range(3))


def inverse_parts(A: Parts) -> Parts:
    q = quat_conj_parts(A[:4])
    return q + tuple(-c for c in quat_rotate_parts(q, A[4:]))


def quat_mul(p: Array, q: Array) -> Array:
    return join_parts(quat_mul_parts(split_parts(p), split_parts(q)))


def quat_conj(q: Array) -> Array:
    return join_parts(quat_conj_parts(split_parts(q)))


def quat_rotate(q: Array, v: Array) -> Array:
    """Rotate vectors (…, 3) by unit quaternions (…, 4)."""
    return join_parts(quat_rotate_parts(split_parts(q), split_parts(v)))


def rotation_matrix_parts(q: Parts) -> Parts:
    """The rotation matrix of a unit quaternion, as 3 rows of 3 components."""
    w, x, y, z = q
    return (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )


def rotation_matrix(T: Array) -> Array:
    """R (…, 3, 3) of poses (…, 7)."""
    rows = rotation_matrix_parts(split_parts(T[..., :4]))
    return namespace(T).stack([join_parts(row) for row in rows], axis=-2)


def compose(A: Array, B: Array) -> Array:
    """A·B."""
    return join_parts(compose_parts(split_parts(A), split_parts(B)))


def inverse(A: Array) -> Array:
    return join_parts(inverse_parts(split_parts(A)))


def between(A: Array, B: Array) -> Array:
    """A⁻¹·B."""
    return join_parts(compose_parts(inverse_parts(split_parts(A)), split_parts(B)))


def apply(T: Array, p: Array) -> Array:
    """T·p for points (…, 3)."""
    T_parts = split_parts(T)
    rotated = quat_rotate_parts(T_parts[:4], split_parts(p))
    return join_parts(tuple(rotated[i] + T_parts[4 + i] for i in range(3)))


def _small(x: np.ndarray) -> float:
    """θ² below which the series replace the closed forms, for ``x``'s precision."""
    return _SMALL_F32 if x.dtype.itemsize < 8 else _SMALL


def exp_parts(xi: Parts) -> Parts:
    xp = namespace(*xi)
    rho, omega = xi[:3], xi[3:]
    th2 = dot_parts(omega, omega)
    small = th2 < _small(th2)
    th2s = xp.where(small, 1.0, th2)
    th = xp.sqrt(th2s)
    half = 0.5 * th
    real = xp.where(small, 1.0 - th2 / 8.0 + th2 * th2 / 384.0, xp.cos(half))
    imag = xp.where(small, 0.5 - th2 / 48.0 + th2 * th2 / 3840.0, xp.sin(half) / th)
    b = xp.where(small, 0.5 - th2 / 24.0 + th2 * th2 / 720.0, (1.0 - xp.cos(th)) / th2s)
    c = xp.where(small, 1.0 / 6.0 - th2 / 120.0 + th2 * th2 / 5040.0, (th - xp.sin(th)) / (th2s * th))
    w_rho = cross_parts(omega, rho)
    w_w_rho = cross_parts(omega, w_rho)
    t = tuple(rho[i] + b * w_rho[i] + c * w_w_rho[i] for i in range(3))
    return (real, imag * omega[0], imag * omega[1], imag * omega[2]) + t


def log_parts(T: Parts) -> Parts:
    xp = namespace(*T)
    # Shortest rotation: angle in [0, π].
    flip = T[0] < 0.0
    w, v = xp.where(flip, -T[0], T[0]), tuple(xp.where(flip, -c, c) for c in T[1:4])
    n2 = dot_parts(v, v)
    small = n2 < _small(n2)
    n = xp.sqrt(xp.where(small, 1.0, n2))
    ws = xp.where(small, w, 1.0)
    series = 2.0 / ws - (2.0 / 3.0) * n2 / ws**3 + 0.4 * n2 * n2 / ws**5
    factor = xp.where(small, series, 2.0 * xp.arctan2(n, w) / n)
    omega = tuple(factor * c for c in v)
    t = T[4:]
    th2 = dot_parts(omega, omega)
    small = th2 < _LOG_SMALL
    th2s = xp.where(small, 1.0, th2)
    th = xp.sqrt(th2s)
    half_cot = th * xp.sin(th) / (2.0 * (1.0 - xp.cos(th)))
    d = xp.where(small, 1.0 / 12.0 + th2 / 720.0 + th2 * th2 / 30240.0, (1.0 - half_cot) / th2s)
    w_t = cross_parts(omega, t)
    w_w_t = cross_parts(omega, w_t)
    return tuple(t[i] - 0.5 * w_t[i] + d * w_w_t[i] for i in range(3)) + omega


def exp(xi: Array) -> Array:
    """Twist (…, 6) = (ρ, ω) → pose (…, 7)."""
    parts = split_parts(np.asarray(xi, np.float64) if namespace(xi) is np else xi)
    return join_parts(exp_parts(parts))


def log(T: Array) -> Array:
    """Pose (…, 7) → twist (…, 6) = (ρ, ω)."""
    return join_parts(log_parts(split_parts(T)))


def interpolate(A: np.ndarray, B: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Geodesic A·Exp(α·Log(A⁻¹B)); α = 0 gives A, α = 1 gives B."""
    alpha = np.asarray(alpha, np.float64)
    return compose(A, exp(alpha[..., None] * log(between(A, B))))


def normalized(T: np.ndarray, tolerance: float = 1e-3) -> np.ndarray | None:
    """``T`` with its quaternion renormalized, or None if it is not finite or
    its norm is further than ``tolerance`` from 1 (a corrupt pose, not round-off)."""
    T = np.asarray(T, np.float64)
    if T.shape[-1] != 7 or not np.all(np.isfinite(T)):
        return None
    with np.errstate(over="ignore"):  # components beyond ~1e154: the norm is inf, refused below
        n = np.linalg.norm(T[..., :4], axis=-1, keepdims=True)
    if np.any(np.abs(n - 1.0) > tolerance):
        return None
    return np.concatenate([T[..., :4] / n, T[..., 4:]], axis=-1)


def yaw(T: np.ndarray) -> np.ndarray:
    """Heading angle (rad) of poses (…, 7) about the z axis."""
    w, x, y, z = np.moveaxis(T[..., :4], -1, 0)
    return np.arctan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def from_matrix(T: np.ndarray) -> np.ndarray:
    """A homogeneous (4, 4) rigid transform → pose (7,)."""
    R = T[:3, :3]
    w = np.sqrt(max(0.0, 1.0 + R[0, 0] + R[1, 1] + R[2, 2])) / 2.0
    x = np.copysign(np.sqrt(max(0.0, 1.0 + R[0, 0] - R[1, 1] - R[2, 2])) / 2.0, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] + R[1, 1] - R[2, 2])) / 2.0, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] - R[1, 1] + R[2, 2])) / 2.0, R[1, 0] - R[0, 1])
    q = np.array([w, x, y, z])
    return np.concatenate([q / np.linalg.norm(q), T[:3, 3]])
