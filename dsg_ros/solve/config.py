"""Solver configuration: one frozen dataclass, hashable so it can be static under jit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

Method = Literal["lm", "gn", "gd"]
LinearSolver = Literal["auto", "dense", "sparse"]
DiffMode = Literal["implicit", "unroll", "truncated"]
ImplicitHessian = Literal["gauss_newton", "exact"]


@dataclass(frozen=True)
class SolverConfig:
    """How the inner problem is solved and differentiated.

    One flat dataclass, its fields grouped by concern: their names are the
    ``solver`` parameters of the YAML and ROS configuration, and the whole
    config is the static key of a compiled solve. Tolerances follow GTSAM's
    meaning: a step whose relative cost decrease is below
    ``relative_tolerance`` (or absolute decrease below ``absolute_tolerance``)
    ends the solve as converged.
    """

    method: Method = "lm"  # lm (Levenberg-Marquardt), gn (Gauss-Newton) or gd (gradient descent)

    # When an LM or Gauss-Newton solve ends.
    max_iterations: int = 100  # iterations per solve at most
    relative_tolerance: float = 1e-5  # converged when the relative cost decrease is below this
    absolute_tolerance: float = 0.0  # converged when the cost decreases by less than this
    gradient_tolerance: float = 1e-10  # converged when the largest gradient entry is below this
    step_tolerance: float = 1e-10  # converged when the step's largest entry is below this

    # LM damping: Marquardt's λ·diag(H), updated by Nielsen's rule.
    lambda_initial: float = 1e-7  # LM: initial damping
    lambda_max: float = 1e12  # LM: the solve stops when the damping would exceed this

    # The linear solve: the dense reduced pose system after Schur-eliminating
    # points, or a host sparse factorization for large pose graphs.
    linear_solver: LinearSolver = "auto"  # dense (Schur complement, Cholesky), sparse (host supernodal Cholesky) or auto
    dense_max_poses: int = 400  # linear_solver auto: dense up to this many pose slots, sparse above

    # Gradient descent (seed parity): x ← x ⊕ (−lr ∇f), fixed iteration count.
    gd_learning_rate: float = 0.05
    gd_iterations: int = 80  # gradient descent: iterations

    # Differentiation of the solution w.r.t. the graph's float leaves.
    diff: DiffMode = "implicit"
    unroll_iterations: int = 10  # diff unroll: solver steps differentiated through
    truncated_iterations: int = 3  # diff truncated: Gauss-Newton steps differentiated through, from the solution
    # Implicit mode's Hessian: "exact" runs conjugate gradients on autodiff
    # Hessian-vector products, preconditioned by the solver's JᵀJ
    # factorization; "gauss_newton" uses that factorization alone and a
    # first-order ∂(gradient)/∂θ (one solve and one reverse pass through the
    # residuals: cheaper to compile and run; exact only when residuals vanish
    # at the optimum, a few percent off on noisy problems).
    implicit_hessian: ImplicitHessian = "exact"
    implicit_iterations: int = 20  # diff implicit, exact Hessian: conjugate-gradient iterations at most
    implicit_tolerance: float = 1e-12  # diff implicit, exact Hessian: conjugate-gradient tolerance

    def __post_init__(self) -> None:
        _choice("method", self.method, ("lm", "gn", "gd"))
        _choice("linear_solver", self.linear_solver, ("auto", "dense", "sparse"))
        _choice("diff", self.diff, ("implicit", "unroll", "truncated"))
        _choice("implicit_hessian", self.implicit_hessian, ("gauss_newton", "exact"))
        for name in ("max_iterations", "gd_iterations", "unroll_iterations", "truncated_iterations", "implicit_iterations"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SolverConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("relative_tolerance", "absolute_tolerance", "gradient_tolerance", "step_tolerance", "implicit_tolerance"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"SolverConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not (0.0 < self.lambda_initial < self.lambda_max):
            raise ValueError("SolverConfig needs 0 < lambda_initial < lambda_max")
        if self.gd_learning_rate <= 0.0:
            raise ValueError("SolverConfig.gd_learning_rate must be > 0")

    def updated(self, overrides: Mapping[str, Any]) -> SolverConfig:
        """A copy with ``overrides`` applied; unknown keys are an error."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown solver option(s) {unknown}; known: {sorted(known)}")
        return replace(self, **dict(overrides))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"SolverConfig.{name}={value!r}: expected one of {allowed}")
