"""Levenberg–Marquardt and Gauss–Newton on the manifold.

One step function serves three drivers: ``lax.while_loop`` with tolerances
(the forward solve), ``lax.scan`` over a fixed count (unrolled, reverse-mode
differentiable), and a few always-accepted Gauss–Newton steps from a solved
state (truncated differentiation). The forward solve of implicit
differentiation (``run_keeping_system``) evaluates a candidate by
linearizing it instead, so that it ends holding the linearization at its
solution; it judges the candidate with the same rule (``_judge``).

Damping is Marquardt's ``λ·diag(H)`` (clamped), updated by Nielsen's rule;
the predicted decrease has the closed form ``½(λ δᵀDδ − gᵀδ)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc

from dsg_ros.solve import report as rp, schur, sparse
from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.normal import NormalSystem, linearize, linearize_jit
from dsg_ros.world.graph import Graph, State, Tangent, cost, slab_dtype


def uses_dense(graph: Graph, config: SolverConfig) -> bool:
    """Whether the dense Schur path handles this graph (static: depends on shapes)."""
    if config.linear_solver == "dense":
        return True
    if config.linear_solver == "sparse":
        return False
    return graph.pose_active.shape[0] <= config.dense_max_poses


def linear_solver(graph: Graph, system: NormalSystem, lam: jax.Array, dense: bool) -> Callable[[Tangent], Tangent]:
    """``rhs ↦ (H + λD)⁻¹ rhs``; the dense path factorizes once for many rhs."""
    if dense:
        fac = schur.factor(system, lam)
        return lambda rhs: schur.apply(system, fac, rhs)
    return lambda rhs: sparse.solve(graph, system, lam, rhs)


@jdc.pytree_dataclass
class Carry:
    state: State
    cost: jax.Array
    initial_cost: jax.Array
    gradient_max: jax.Array
    lam: jax.Array
    nu: jax.Array
    iteration: jax.Array
    rejected: jax.Array
    status: jax.Array

    def report(self) -> rp.SolveReport:
        return rp.SolveReport(
            iterations=self.iteration,
            initial_cost=self.initial_cost,
            final_cost=self.cost,
            rejected_steps=self.rejected,
            status=self.status,
            gradient_max=self.gradient_max,
        )


def init(graph: Graph, x0: State, config: SolverConfig) -> Carry:
    """The loop's start. Costs are NaN until the first step: it linearizes at
    ``x0`` and the linearization yields the cost there (a separate cost
    evaluation cost ~2 ms per mapping solve)."""
    dtype = slab_dtype(graph)
    nan = jnp.asarray(jnp.nan, dtype)
    return Carry(
        state=x0,
        cost=nan,
        initial_cost=nan,
        gradient_max=jnp.asarray(jnp.inf, dtype),
        lam=jnp.asarray(0.0 if config.method == "gn" else config.lambda_initial, dtype),
        nu=jnp.asarray(2.0, dtype),
        iteration=jnp.zeros((), jnp.int32),
        rejected=jnp.zeros((), jnp.int32),
        status=jnp.asarray(rp.RUNNING, jnp.int32),
    )


@jdc.pytree_dataclass
class Proposal:
    """A step from the current state: δ, the candidate ``state ⊕ δ`` and the
    decrease the damped quadratic model predicts for it."""

    delta: Tangent
    candidate: State
    predicted: jax.Array

    @staticmethod
    def none(state: State) -> Proposal:
        return Proposal(Tangent.zeros_like(state), state, jnp.zeros((), state.points.dtype))


def propose(graph: Graph, dense: bool, state: State, system: NormalSystem, lam: jax.Array) -> Proposal:
    """Solve ``(H + λD) δ = −g`` at ``state``; the predicted decrease has the
    closed form ``½(λ δᵀDδ − gᵀδ)``."""
    grad = system.grad
    delta = linear_solver(graph, system, lam, dense)(grad.scale(-1.0)) * system.free
    predicted = 0.5 * (lam * (delta * delta).dot(system.diag) - grad.dot(delta))
    return Proposal(delta, state.retract(delta), predicted)


def _damping(c: Carry, accept: jax.Array, actual: jax.Array, predicted: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nielsen's update of (λ, ν) after a step was judged (a numerical device: never differentiated)."""
    rho = jax.lax.stop_gradient(actual / jnp.where(predicted > 0.0, predicted, 1.0))
    lam_accept = c.lam * jnp.maximum(0.1, 1.0 - (2.0 * rho - 1.0) ** 3)
    lam = jnp.where(accept, jnp.maximum(lam_accept, 1e-20), c.lam * c.nu)
    return lam, jnp.where(accept, 2.0, 2.0 * c.nu)


def _converged(config: SolverConfig, accept: jax.Array, actual: jax.Array, before: jax.Array, delta: Tangent) -> tuple[jax.Array, jax.Array]:
    """(cost test, step test) for an accepted step whose cost went from ``before`` down by ``actual``."""
    rel = actual / jnp.maximum(jnp.abs(before), jnp.finfo(before.dtype).tiny)
    conv_cost = accept & ((rel <= config.relative_tolerance) | (actual <= config.absolute_tolerance))
    return conv_cost, accept & (delta.max_abs() <= config.step_tolerance)


def _lam(c: Carry, gauss_newton: bool) -> jax.Array:
    return jnp.zeros_like(c.lam) if gauss_newton else jax.lax.stop_gradient(c.lam)


def _incumbent_status(config: SolverConfig, cost_now: jax.Array, grad_max: jax.Array) -> jax.Array:
    """Whether the solve ends at the incumbent, before any step from it: its
    cost is not finite, or its gradient is small enough."""
    return jnp.select(
        [~jnp.isfinite(cost_now), grad_max <= config.gradient_tolerance], [rp.NON_FINITE, rp.CONVERGED_GRADIENT], rp.RUNNING
    ).astype(jnp.int32)


def _judge(
    config: SolverConfig, gauss_newton: bool, c: Carry, current: jax.Array, grad_max: jax.Array, prop: Proposal, new_cost: jax.Array
) -> tuple[Carry, jax.Array]:
    """Accept or reject a step from the incumbent ``c.state``, whose cost is
    ``current`` and largest gradient entry ``grad_max``, to ``prop.candidate``
    with cost ``new_cost``: the next carry and whether the step was accepted.

    The one acceptance, damping and termination rule of every LM driver. No
    step is taken where the incumbent already ends the solve
    (``_incumbent_status``); otherwise the candidate is judged by its cost alone.
    """
    start = _incumbent_status(config, current, grad_max)
    grad_done = grad_max <= config.gradient_tolerance
    finite = jnp.isfinite(new_cost) & jnp.isfinite(prop.delta.max_abs())
    actual = current - new_cost
    accept = (start == rp.RUNNING) & (finite if gauss_newton else finite & (actual > 0.0))
    lam_next, nu_next = _damping(c, accept, actual, prop.predicted)
    conv_cost, conv_step = _converged(config, accept, actual, current, prop.delta)
    iteration = c.iteration + jnp.where(grad_done, 0, 1).astype(jnp.int32)
    judged = jnp.select(
        [
            conv_cost,
            conv_step,
            gauss_newton & ~finite,
            ~accept & (lam_next > config.lambda_max),
            iteration >= config.max_iterations,
        ],
        [rp.CONVERGED_COST, rp.CONVERGED_STEP, rp.NON_FINITE, rp.DAMPING_LIMIT, rp.MAX_ITERATIONS],
        rp.RUNNING,
    ).astype(jnp.int32)
    carry = Carry(
        state=select(accept, prop.candidate, c.state),
        cost=jnp.where(accept, new_cost, current),
        initial_cost=jnp.where(c.iteration == 0, current, c.initial_cost),
        gradient_max=grad_max,
        lam=lam_next,
        nu=nu_next,
        iteration=iteration,
        rejected=c.rejected + (jnp.isfinite(current) & ~accept & ~grad_done).astype(jnp.int32),
        status=jnp.where(start == rp.RUNNING, judged, start).astype(jnp.int32),
    )
    return carry, accept


def step(graph: Graph, config: SolverConfig, dense: bool, c: Carry, gauss_newton: bool) -> Carry:
    """Linearize at the current state, try one damped (or plain Gauss–Newton) step.

    The linearization is recomputed after a rejected step rather than
    carried: rejections are rare, and one linearization in the loop body
    halves what XLA has to compile.
    """
    system, current = linearize(graph, c.state, dense)  # the cost at c.state
    prop = propose(graph, dense, c.state, system, _lam(c, gauss_newton))
    return _judge(config, gauss_newton, c, current, system.grad.max_abs(), prop, cost(graph, prop.candidate))[0]


def _settle(config: SolverConfig, c: Carry, state: State, cost_now: jax.Array, grad_max: jax.Array) -> Carry:
    """``c`` with ``state`` (its cost and largest gradient entry) as the
    incumbent; a running solve ends there if ``_incumbent_status`` says so."""
    return jdc.replace(
        c,
        state=state,
        cost=cost_now,
        initial_cost=jnp.where(jnp.isnan(c.initial_cost), cost_now, c.initial_cost),
        gradient_max=grad_max,
        status=jnp.where(c.status == rp.RUNNING, _incumbent_status(config, cost_now, grad_max), c.status).astype(jnp.int32),
    )


_Tree = TypeVar("_Tree")


def select(pred: jax.Array, a: _Tree, b: _Tree) -> _Tree:
    """``a`` where ``pred`` holds, else ``b``, leaf by leaf (pytrees of one structure)."""
    return jax.tree.map(lambda u, v: jnp.where(pred, u, v), a, b)


def run(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, rp.SolveReport]:
    """Forward solve to convergence (not reverse-differentiable; see ``diff``)."""
    dense = uses_dense(graph, config)
    gn = config.method == "gn"
    carry = jax.lax.while_loop(
        lambda c: c.status == rp.RUNNING,
        lambda c: step(graph, config, dense, c, gn),
        init(graph, x0, config),
    )
    return carry.state, carry.report()


def run_keeping_system(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, rp.SolveReport, NormalSystem]:
    """``run``, also returning the linearization at the solution.

    Implicit differentiation needs that system. Here the loop linearizes each
    point it visits, which gives the point's cost too: a candidate is judged
    by that cost, and the loop always holds the linearization of the last
    point. After a rejected candidate (rare) the incumbent is linearized again
    before the next step, and once more at the end if the solve stopped on a
    rejection. So the program holds one linearization, no separate cost
    evaluation and no carried copy of the incumbent's system, where ``run``
    followed by a linearization at the end would compile both twice. The
    same steps and status as ``run``'s, judged by ``_judge``; the report's
    ``gradient_max`` is the gradient at the solution, ``run``'s the one
    before the last step. For a solve of one or two iterations (the
    mapper's) ``run`` is cheaper, since it only evaluates the cost of its
    candidate.
    """
    dense = uses_dense(graph, config)
    gn = config.method == "gn"
    # The loop starts from a system of zeros of the right shapes: the jitted
    # linearize is traced once here and reused by the body.
    system0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(linearize_jit, graph, x0, dense)[0].without_slabs())

    def body(loop: tuple[Carry, NormalSystem, Proposal, jax.Array]) -> tuple[Carry, NormalSystem, Proposal, jax.Array]:
        c, _, prop, judge = loop  # judge: False when prop.candidate is x0 or the incumbent again
        system, point_cost = linearize_jit(graph, prop.candidate, dense)
        # A judged step starts from the settled incumbent: its cost and gradient are in c.
        judged, accept = _judge(config, gn, c, c.cost, c.gradient_max, prop, point_cost)
        c = select(judge, judged, c)
        trusted = ~judge | accept  # the point is the incumbent now: system is its linearization
        c = select(trusted, _settle(config, c, prop.candidate, point_cost, system.grad.max_abs()), c)
        # Next: a step from the incumbent, or after a rejection the incumbent
        # itself (to linearize it again). Unused once the solve has ended.
        step_prop = propose(graph, dense, c.state, system, _lam(c, gn))
        return c, system.without_slabs(), select(trusted, step_prop, Proposal.none(c.state)), trusted

    def again(loop: tuple[Carry, NormalSystem, Proposal, jax.Array]) -> jax.Array:
        c, _, _, judge = loop
        # Running, or stopped on a rejected point: its system is not the incumbent's.
        return (c.status == rp.RUNNING) | ~judge

    start = (init(graph, x0, config), system0, Proposal.none(x0), jnp.asarray(False))
    carry, parts, _, _ = jax.lax.while_loop(again, body, start)
    return carry.state, carry.report(), parts.with_slabs(graph)


def run_fixed(graph: Graph, x0: State, config: SolverConfig, iterations: int, gauss_newton: bool) -> tuple[State, rp.SolveReport]:
    """Exactly ``iterations`` scan steps (no-ops once finished); differentiable."""
    dense = uses_dense(graph, config)
    gn = gauss_newton or config.method == "gn"

    def body(c: Carry, _: None) -> tuple[Carry, None]:
        return jax.lax.cond(c.status == rp.RUNNING, lambda: step(graph, config, dense, c, gn), lambda: c), None

    carry, _ = jax.lax.scan(body, init(graph, x0, config), None, length=iterations)
    status = jnp.where(carry.status == rp.RUNNING, rp.MAX_ITERATIONS, carry.status).astype(jnp.int32)
    carry = jdc.replace(carry, status=status)
    return carry.state, carry.report()
