"""What every solve reports, as a pytree (it comes out of jit) plus host helpers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax_dataclasses as jdc
import numpy as np

RUNNING = 0
CONVERGED_COST = 1  # relative or absolute cost decrease below tolerance
CONVERGED_GRADIENT = 2
CONVERGED_STEP = 3
MAX_ITERATIONS = 4
DAMPING_LIMIT = 5  # LM could not find a decreasing step
NON_FINITE = 6  # the solve produced NaN/inf; the last finite state is returned

STATUS_NAMES = {
    RUNNING: "running",
    CONVERGED_COST: "converged_cost",
    CONVERGED_GRADIENT: "converged_gradient",
    CONVERGED_STEP: "converged_step",
    MAX_ITERATIONS: "max_iterations",
    DAMPING_LIMIT: "damping_limit",
    NON_FINITE: "non_finite",
}


@dataclass(frozen=True)
class SolveSummary:
    """A finished solve's report as plain Python values (on the host)."""

    iterations: int
    initial_cost: float
    final_cost: float
    converged: bool
    rejected_steps: int
    status: str  # a value of STATUS_NAMES
    gradient_max: float


@jdc.pytree_dataclass
class SolveReport:
    """Per-solve summary. ``iterations`` counts every linear solve tried,
    ``rejected_steps`` those LM threw away. Costs are ``½ Σ ρ(‖e‖²)``."""

    iterations: jax.Array
    initial_cost: jax.Array
    final_cost: jax.Array
    rejected_steps: jax.Array
    status: jax.Array
    gradient_max: jax.Array

    @property
    def converged(self) -> jax.Array:
        return (self.status >= CONVERGED_COST) & (self.status <= CONVERGED_STEP)

    def summary(self) -> SolveSummary:
        """Plain Python values (blocks until the solve has finished)."""
        status = int(np.asarray(self.status))
        return SolveSummary(
            iterations=int(np.asarray(self.iterations)),
            initial_cost=float(np.asarray(self.initial_cost)),
            final_cost=float(np.asarray(self.final_cost)),
            converged=bool(np.asarray(self.converged)),
            rejected_steps=int(np.asarray(self.rejected_steps)),
            status=STATUS_NAMES.get(status, str(status)),
            gradient_max=float(np.asarray(self.gradient_max)),
        )

    def as_dict(self) -> dict[str, Any]:
        """``summary()`` as a dict, for JSON."""
        return dataclasses.asdict(self.summary())
