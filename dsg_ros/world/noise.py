"""Noise models (sqrt-information matrices) and robust losses.

A factor's residual ``r`` (d,) is whitened as ``e = L @ r`` with ``L`` the
square-root information (``Lᵀ L = Σ⁻¹``), so ``½‖e‖²`` is the usual Gaussian
negative log-likelihood up to a constant. A robust loss then replaces
``s = ‖e‖²`` by ``ρ(s)``; every factor's cost is ``½ ρ(s)`` (GTSAM's
``error()`` convention, with ``ρ(s) = s`` for no robust loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax.numpy as jnp
import numpy as np

RobustKind = Literal["none", "huber", "cauchy"]
ROBUST_CODES: dict[str, int] = {"none": 0, "huber": 1, "cauchy": 2}


@dataclass(frozen=True, eq=False)
class Noise:
    """A Gaussian noise model held as its sqrt-information matrix ``L`` (d, d)."""

    sqrt_info: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.sqrt_info.shape[0])

    @staticmethod
    def isotropic(sigma: float, dim: int) -> Noise:
        """Same standard deviation ``sigma`` on every residual component."""
        sigma = float(sigma)
        if not np.isfinite(sigma) or sigma <= 0.0:
            raise ValueError(f"isotropic noise needs a finite sigma > 0, got {sigma}")
        return Noise(np.eye(dim) / sigma)

    @staticmethod
    def diagonal(sigmas: np.ndarray | list[float]) -> Noise:
        """Independent components with standard deviations ``sigmas`` (d,)."""
        s = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0.0):
            raise ValueError(f"diagonal noise needs finite sigmas > 0, got {s.tolist()}")
        return Noise(np.diag(1.0 / s))

    @staticmethod
    def from_information(information: np.ndarray) -> Noise:
        """Full information matrix ``Σ⁻¹`` (d, d), symmetric positive definite."""
        info = np.asarray(information, dtype=np.float64)
        _check_square(info, "information")
        if not np.allclose(info, info.T, rtol=1e-9, atol=1e-12 * max(1.0, np.abs(info).max())):
            raise ValueError("information matrix is not symmetric")
        try:
            lower = np.linalg.cholesky(info)
        except np.linalg.LinAlgError:
            raise ValueError("information matrix is not positive definite") from None
        return Noise(lower.T.copy())

    @staticmethod
    def from_covariance(covariance: np.ndarray) -> Noise:
        """Full covariance ``Σ`` (d, d), symmetric positive definite."""
        cov = np.asarray(covariance, dtype=np.float64)
        _check_square(cov, "covariance")
        try:
            np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:
            raise ValueError("covariance matrix is not positive definite") from None
        return Noise.from_information(np.linalg.inv(cov))

    @staticmethod
    def from_sqrt_information(sqrt_info: np.ndarray) -> Noise:
        """A given sqrt-information ``L`` (d, d); must be finite and non-singular."""
        mat = np.asarray(sqrt_info, dtype=np.float64)
        _check_square(mat, "sqrt-information")
        if abs(np.linalg.det(mat)) < 1e-300:
            raise ValueError("sqrt-information matrix is singular")
        return Noise(mat.copy())


@dataclass(frozen=True)
class Robust:
    """A robust loss on the whitened residual norm; ``scale`` in sigma units."""

    kind: RobustKind = "none"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ROBUST_CODES:
            raise ValueError(f"unknown robust loss {self.kind!r}; expected one of {sorted(ROBUST_CODES)}")
        if not np.isfinite(self.scale) or self.scale <= 0.0:
            raise ValueError(f"robust loss scale must be finite and > 0, got {self.scale}")

    @property
    def code(self) -> int:
        return ROBUST_CODES[self.kind]


def huber(scale: float) -> Robust:
    """Quadratic within ``scale`` sigmas, linear beyond."""
    return Robust("huber", scale)


def cauchy(scale: float) -> Robust:
    """Logarithmic growth: strongly down-weights gross outliers."""
    return Robust("cauchy", scale)


def robust_rho(s: jnp.ndarray, code: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """ρ(s) for squared whitened norms ``s`` (F,), elementwise per factor."""
    k2 = scale * scale
    root = jnp.sqrt(jnp.maximum(s, k2))  # only used where s > k², keeps grads finite
    huber_rho = jnp.where(s <= k2, s, 2.0 * scale * root - k2)
    cauchy_rho = k2 * jnp.log1p(s / k2)
    return jnp.where(code == 1, huber_rho, jnp.where(code == 2, cauchy_rho, s))


def robust_weight(s: jnp.ndarray, code: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """ρ'(s): the IRLS weight applied to a factor's whitened residual and Jacobian."""
    k2 = scale * scale
    root = jnp.sqrt(jnp.maximum(s, k2))
    huber_w = jnp.where(s <= k2, 1.0, scale / root)
    cauchy_w = 1.0 / (1.0 + s / k2)
    return jnp.where(code == 1, huber_w, jnp.where(code == 2, cauchy_w, jnp.ones_like(s)))


def _check_square(mat: np.ndarray, what: str) -> None:
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] == 0:
        raise ValueError(f"{what} matrix must be square (d, d), got shape {mat.shape}")
    if not np.all(np.isfinite(mat)):
        raise ValueError(f"{what} matrix has non-finite entries")
