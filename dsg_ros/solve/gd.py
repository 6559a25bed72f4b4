"""Riemannian gradient descent: the seed tutorial's inner solver, kept for parity.

``x ← x ⊕ (−lr · ∇_δ f(x ⊕ δ)|₀)`` for a fixed number of iterations (seed:
lr 0.05, 80 iterations); the gradient is ``normal.gradient`` (``Σ Jᵀ e``
from the factors' Jacobians). Reverse-mode differentiable: through the
iterations (``diff="unroll"``, the seed's way) by a hand-written adjoint,
the same numbers as autodiff through a ``lax.scan`` with a fraction of the
program to trace and compile.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from dsg_ros.solve import report as rp
from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.normal import gradient
from dsg_ros.solve.perturbed import Perturbed, any_perturbed, materialize, values
from dsg_ros.world.graph import Graph, State, cost


def run(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, rp.SolveReport]:
    x = _descend(config, graph, x0)
    # The report is not differentiated.
    graph, x0, x_report = jax.lax.stop_gradient((graph, x0, x))
    final = cost(graph, x_report)
    grad_max = gradient(graph, x_report).max_abs()
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


def _step(graph: Graph, x: State, lr: float) -> State:
    return x.retract(gradient(graph, x).scale(-lr))


def _iterate(config: SolverConfig, graph: Graph, x0: State, keep: bool) -> tuple[State, State | None]:
    """The final iterate and, if ``keep``, every iterate before it (stacked)."""

    def body(x: State, _: None) -> tuple[State, State | None]:
        return _step(graph, x, config.gd_learning_rate), (x if keep else None)

    return jax.lax.scan(body, x0, None, length=config.gd_iterations)


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _descend(config: SolverConfig, graph: Graph, x0: State) -> State:
    return _iterate(config, graph, x0, keep=False)[0]


def _descend_fwd(config: SolverConfig, graph: Graph, x0: State):
    perturbed, x0_perturbed = Perturbed.of(graph), any_perturbed(x0)
    graph, x0 = values((graph, x0))
    x, iterates = _iterate(config, graph, x0, keep=True)
    return x, (graph, iterates, perturbed, x0_perturbed)


def _descend_bwd(config: SolverConfig, residuals, x_bar: State):
    """Backpropagate through the iterations in reverse: at each stored iterate
    ``x_k``, the VJP of one step w.r.t. ``x_k`` and the perturbed graph leaves
    (a first-order pass through the factors' Jacobians); the leaves'
    cotangents add up over the steps."""
    graph, iterates, perturbed, x0_perturbed = residuals
    varying, rebuild = perturbed.split(graph)

    def back(carry: tuple[State, list[jax.Array]], x_k: State) -> tuple[tuple[State, list[jax.Array]], None]:
        x_bar_next, acc = carry
        _, pull = jax.vjp(lambda x, v: _step(rebuild(v), x, config.gd_learning_rate), x_k, varying)
        x_bar_k, v_bar = pull(x_bar_next)
        return (x_bar_k, [a + b for a, b in zip(acc, v_bar)]), None

    start = (materialize(x_bar), [jnp.zeros_like(v) for v in varying])
    (x0_bar, v_bar), _ = jax.lax.scan(back, start, iterates, reverse=True)
    return perturbed.cotangent(graph, v_bar), (x0_bar if x0_perturbed else None)


_descend.defvjp(_descend_fwd, _descend_bwd, symbolic_zeros=True)
