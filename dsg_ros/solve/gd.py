"""Riemannian gradient descent: the seed tutorial's inner solver, kept for parity.

``x ← x ⊕ (−lr · ∇_δ f(x ⊕ δ)|₀)`` for a fixed number of iterations (seed:
lr 0.05, 80 iterations). A ``lax.scan``, so reverse-mode differentiable; the
gradient is ``normal.gradient`` (``Σ Jᵀ e`` from the factors' Jacobians).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsg_ros.solve import report as rp
from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.normal import gradient
from dsg_ros.world.graph import Graph, State, cost


def run(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, rp.SolveReport]:
    lr = config.gd_learning_rate

    def body(x: State, _: None) -> tuple[State, None]:
        return x.retract(gradient(graph, x).scale(-lr)), None

    x, _ = jax.lax.scan(body, x0, None, length=config.gd_iterations)
    # The report is not differentiated: without this, reverse mode would
    # trace (and compile) a second-order pass through its gradient.
    graph, x0, x_report = jax.lax.stop_gradient((graph, x0, x))
    g = gradient(graph, x_report)
    final = cost(graph, x_report)
    grad_max = g.max_abs()
    status = jnp.where(
        ~jnp.isfinite(final),
        rp.NON_FINITE,
        jnp.where(grad_max <= config.gradient_tolerance, rp.CONVERGED_GRADIENT, rp.MAX_ITERATIONS),
    ).astype(jnp.int32)
    report = rp.SolveReport(
        iterations=jnp.asarray(config.gd_iterations, jnp.int32),
        initial_cost=cost(graph, x0),
        final_cost=final,
        rejected_steps=jnp.zeros((), jnp.int32),
        status=status,
        gradient_max=grad_max,
    )
    return x, report
