"""Riemannian gradient descent: the seed tutorial's inner solver, kept for parity.

``x ← x ⊕ (−lr · ∇_δ f(x ⊕ δ)|₀)`` for a fixed number of iterations (seed:
lr 0.05, 80 iterations); the gradient is ``normal.gradient`` (``Σ Jᵀ e``
from the factors' Jacobians). Reverse-mode differentiable two ways:

* ``run`` through the iterations (``diff="unroll"``, the seed's way) by a
  hand-written adjoint: the same numbers as autodiff through a ``lax.scan``
  with a fraction of the program to trace and compile;
* ``run_keeping_system`` hands ``solve``'s implicit mode the normal
  equations at the final iterate: the derivative of the optimum the descent
  approaches, a first-order program (no pass through the iterations).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from dsg_ros.solve import report as rp
from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.lm import select, uses_dense
from dsg_ros.solve.normal import NormalSystem, assemble, attach_slabs, detach_slabs, gradient, linearize_slabs, slabs_gradient
from dsg_ros.solve.perturbed import Perturbed, any_perturbed, materialize, values
from dsg_ros.world.graph import Graph, SlabLinearization, State, cost


def run(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, rp.SolveReport]:
    x = _descend(config, graph, x0)
    # The report is not differentiated.
    graph, x0, x_report = jax.lax.stop_gradient((graph, x0, x))
    return x, _report(config, cost(graph, x0), cost(graph, x_report), gradient(graph, x_report).max_abs())


def run_keeping_system(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, rp.SolveReport, NormalSystem]:
    """``run`` without derivatives, also returning the normal equations at
    the final iterate (for implicit differentiation).

    The loop carries each iteration's slab linearizations and runs once more
    to linearize the final iterate without stepping, so the factor kernels
    are compiled once (in the loop body); the equations are assembled from
    the last of them. The same iterates as ``run``.
    """
    last = config.gd_iterations

    def body(carry: _Carry, k: jax.Array) -> tuple[_Carry, None]:
        x, _, initial, _ = carry
        lins, point_cost = linearize_slabs(graph, x)
        stepped = x.retract(slabs_gradient(graph, lins, x).scale(-config.gd_learning_rate))
        x = select(k < last, stepped, x)
        return (x, detach_slabs(lins), jnp.where(k == 0, point_cost, initial), point_cost), None

    lins0 = detach_slabs(tuple(SlabLinearization.zeros(slab) for slab in graph.slabs))
    nan = jnp.full((), jnp.nan, x0.points.dtype)
    (x, lins, initial, final), _ = jax.lax.scan(body, (x0, lins0, nan, nan), jnp.arange(last + 1))
    system = assemble(graph, attach_slabs(lins, graph), x, uses_dense(graph, config))
    return x, _report(config, initial, final, system.grad.max_abs()), system


# The iterate, its slab linearizations (without their slabs), the initial and the last cost.
_Carry = tuple[State, tuple[SlabLinearization, ...], jax.Array, jax.Array]


def _report(config: SolverConfig, initial: jax.Array, final: jax.Array, grad_max: jax.Array) -> rp.SolveReport:
    status = jnp.where(
        ~jnp.isfinite(final),
        rp.NON_FINITE,
        jnp.where(grad_max <= config.gradient_tolerance, rp.CONVERGED_GRADIENT, rp.MAX_ITERATIONS),
    ).astype(jnp.int32)
    return rp.SolveReport(
        iterations=jnp.asarray(config.gd_iterations, jnp.int32),
        initial_cost=initial,
        final_cost=final,
        rejected_steps=jnp.zeros((), jnp.int32),
        status=status,
        gradient_max=grad_max,
    )


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


# The graph, the iterates (stacked), which leaves are perturbed, whether x0 is.
_DescendResiduals = tuple[Graph, State | None, Perturbed, bool]


def _descend_fwd(config: SolverConfig, graph: Graph, x0: State) -> tuple[State, _DescendResiduals]:
    perturbed, x0_perturbed = Perturbed.of(graph), any_perturbed(x0)
    graph, x0 = values((graph, x0))
    x, iterates = _iterate(config, graph, x0, keep=True)
    return x, (graph, iterates, perturbed, x0_perturbed)


def _descend_bwd(config: SolverConfig, residuals: _DescendResiduals, x_bar: State) -> tuple[Graph, State | None]:
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
