"""``solve()``: the inner solve, differentiable w.r.t. the graph's float leaves.

Parameters enter through the graph (measurements, sqrt-information, robust
scales), so "differentiate w.r.t. any parameter pytree θ" is: build the graph
from θ (``Graph.with_measurements`` …), solve, and let JAX chain the rest.

Modes (``SolverConfig.diff``):

* ``implicit`` (default): implicit function theorem at the optimum x*. With
  g(δ, G) = ∇_δ f(x* ⊕ δ; G) = 0, the adjoint v solves H v = ∂L/∂δ and
  ∂L/∂G = −(∂g/∂G)ᵀ v. ``implicit_hessian="exact"``: H is the exact
  Hessian, solved by conjugate gradients on autodiff Hessian-vector products
  preconditioned by the solver's JᵀJ factorization, and ∂g/∂G is exact
  (autodiff). ``"gauss_newton"``: H = JᵀJ (one solve with that
  factorization) and ∂g/∂G = Jᵀ ∂e/∂G; both drop only terms proportional to
  the residuals, so they are exact when residuals vanish at x*, and cheaper
  to compile and run. Memory does not grow with iterations. H's
  factorization comes from the forward solve's final linearization, and
  only the graph leaves θ flows into are differentiated.
* ``unroll``: backpropagate through ``unroll_iterations`` solver steps
  (gradient descent: through all its ``gd_iterations``, by its own adjoint).
* ``truncated``: solve without gradients, then backpropagate through
  ``truncated_iterations`` Gauss–Newton steps from that solution.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc

from dsg_ros.solve import gd, lm
from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.normal import NormalSystem
from dsg_ros.solve.perturbed import Perturbed, materialize, values
from dsg_ros.solve.report import SolveReport
from dsg_ros.world.graph import Graph, SlabLinearization, State, Tangent, batched_matmul, cost, slab_tangent, slab_whitened


def solve(graph: Graph, x0: State, config: SolverConfig = SolverConfig()) -> tuple[State, SolveReport]:
    """Minimize ``cost(graph, x)`` from ``x0``; returns the solution and its report.

    Jit it with ``config`` static: ``jax.jit(solve, static_argnames="config")``.
    """
    if config.diff == "implicit":
        return _implicit_solve(config, graph, x0)
    if config.diff == "unroll":
        _require_dense(graph, config)
        if config.method == "gd":
            return gd.run(graph, x0, config)
        return lm.run_fixed(graph, x0, config, config.unroll_iterations, gauss_newton=False)
    _require_dense(graph, config)
    x_pre, report = _forward(jax.lax.stop_gradient(graph), x0, config)
    x_pre = jax.lax.stop_gradient(x_pre)
    if config.method == "gd":
        tail = SolverConfig(gd_learning_rate=config.gd_learning_rate, gd_iterations=config.truncated_iterations)
        x, tail_report = gd.run(graph, x_pre, tail)
    else:
        # Every tail step must run (each one refines the derivative), so the
        # convergence tests are switched off for them.
        tail = config.updated(
            {"relative_tolerance": 0.0, "absolute_tolerance": 0.0, "gradient_tolerance": 0.0, "step_tolerance": 0.0}
        )
        x, tail_report = lm.run_fixed(graph, x_pre, tail, config.truncated_iterations, gauss_newton=True)
    merged = SolveReport(
        iterations=report.iterations + tail_report.iterations,
        initial_cost=report.initial_cost,
        final_cost=tail_report.final_cost,
        rejected_steps=report.rejected_steps,
        status=report.status,
        gradient_max=tail_report.gradient_max,
    )
    return x, merged


def _forward(graph: Graph, x0: State, config: SolverConfig) -> tuple[State, SolveReport]:
    if config.method == "gd":
        return gd.run(graph, x0, config)
    return lm.run(graph, x0, config)


def _require_dense(graph: Graph, config: SolverConfig) -> None:
    if config.method != "gd" and not lm.uses_dense(graph, config):
        raise ValueError(
            f"diff={config.diff!r} backpropagates through linear solves, which the host sparse solver "
            "cannot do; use diff='implicit' or linear_solver='dense'"
        )


@partial(jax.custom_vjp, nondiff_argnums=(0,))
def _implicit_solve(config: SolverConfig, graph: Graph, x0: State) -> tuple[State, SolveReport]:
    return _forward(graph, x0, config)


def _implicit_fwd(
    config: SolverConfig, graph: Graph, x0: State
) -> tuple[tuple[State, SolveReport], tuple[Graph, State, NormalSystem, Perturbed]]:
    perturbed = Perturbed.of(graph)  # symbolic zeros: leaves come as (value, perturbed)
    graph, x0 = values((graph, x0))
    keeping_system = gd.run_keeping_system if config.method == "gd" else lm.run_keeping_system
    x_star, report, system = keeping_system(graph, x0, config)
    return (x_star, report), (graph, x_star, system, perturbed)


def _implicit_bwd(
    config: SolverConfig, residuals: tuple[Graph, State, NormalSystem, Perturbed], cotangents: tuple[Any, Any]
) -> tuple[Graph, None]:
    """``cotangents``: of the solution and the report (symbolic zeros where none)."""
    graph, x_star, system, perturbed = residuals
    x_bar = materialize(cotangents[0])
    dense = lm.uses_dense(graph, config)
    zero = Tangent.zeros_like(x_star)
    free = system.free
    rhs = x_star.pullback(x_bar) * free

    def grad_at(g: Graph, d: Tangent) -> Tangent:
        return jax.grad(lambda dd: cost(g, x_star.retract(dd)))(d)

    def hessian_vp(v: Tangent) -> Tangent:
        hv = jax.jvp(lambda d: grad_at(graph, d), (zero,), (v * free,))[1]
        return hv * free + v - v * free

    gn_solve = lm.linear_solver(graph, system, jnp.zeros((), rhs.points.dtype), dense)
    # Only slabs holding a perturbed leaf contribute to the parameters' gradient.
    slab_varies = perturbed.slabs
    directional: Callable[[Graph], jax.Array]
    if config.implicit_hessian == "exact":
        adjoint = pcg(hessian_vp, rhs, gn_solve, config.implicit_iterations, config.implicit_tolerance)

        # (∂g/∂G)ᵀ v = ∇_G ⟨g(G), v⟩ = ∇_G of f's directional derivative along
        # v: reverse-over-forward, lighter than differentiating the gradient again.
        def exact_directional(g: Graph) -> jax.Array:
            slabs = tuple(s for s, varies in zip(g.slabs, slab_varies) if varies)
            return jax.jvp(lambda d: cost(jdc.replace(g, slabs=slabs), x_star.retract(d)), (zero,), (adjoint,))[1]

        directional = exact_directional

    else:
        adjoint = gn_solve(rhs) * free
        directional = _gauss_newton_directional(system.slabs, x_star, adjoint, slab_varies)

    varying, rebuild = perturbed.split(graph)
    grads = jax.grad(lambda v: directional(rebuild(v)))(varying)
    # x0 gets no cotangent: the solution does not depend on where it started.
    return perturbed.cotangent(graph, [-g for g in grads]), None


_implicit_solve.defvjp(_implicit_fwd, _implicit_bwd, symbolic_zeros=True)


def _gauss_newton_directional(
    lins: tuple[SlabLinearization, ...], x_star: State, v: Tangent, slab_varies: tuple[bool, ...]
) -> Callable[[Graph], jax.Array]:
    """``G ↦ Σ w eᵀ(G) (J v)`` with the IRLS weights w and ``J v`` held at the
    linearization ``lins`` of the graph at ``x_star``.

    Its gradient is the Gauss–Newton ``(∂g/∂G)ᵀ v`` for g = Jᵀ w e: the terms
    it drops (∂J/∂G and ∂w/∂G, each multiplied by e) vanish with the
    residuals, the same assumption as the Gauss–Newton Hessian. It costs one
    reverse pass through the residuals instead of reverse-over-forward
    through the cost: less to compile and to run (in a profile, the online
    calibration step went from 113 to 104 ms, HERO's compile from 12.4 to 11.1 s).
    """
    # lin.jacobian carries one √w; the other goes on e (below).
    weighted_jv = [
        jax.lax.stop_gradient(lin.root_weight[:, None] * batched_matmul(lin.jacobian, slab_tangent(lin.factors, v)[:, :, None])[:, :, 0])
        if varies
        else None
        for lin, varies in zip(lins, slab_varies)
    ]

    def directional(g: Graph) -> jax.Array:
        terms = [jnp.vdot(slab_whitened(slab, x_star), wjv) for slab, wjv in zip(g.slabs, weighted_jv) if wjv is not None]
        return sum(terms, jnp.zeros((), x_star.points.dtype))

    return directional


def pcg(
    matvec: Callable[[Tangent], Tangent],
    b: Tangent,
    precond: Callable[[Tangent], Tangent],
    max_iterations: int,
    tolerance: float,
) -> Tangent:
    """Preconditioned conjugate gradients for an SPD operator on tangents."""
    x = jax.tree.map(jnp.zeros_like, b)
    z = precond(b)
    bb = b.dot(b)
    threshold = (tolerance * tolerance) * bb

    def cond(carry):
        k, _, r, _, _ = carry
        return (k < max_iterations) & (r.dot(r) > threshold)

    def body(carry):
        k, x, r, p, rz = carry
        Ap = matvec(p)
        pAp = p.dot(Ap)
        alpha = rz / jnp.where(pAp != 0.0, pAp, 1.0)
        x = x + p.scale(alpha)
        r = r - Ap.scale(alpha)
        z = precond(r)
        rz_new = r.dot(z)
        beta = rz_new / jnp.where(rz != 0.0, rz, 1.0)
        return k + 1, x, r, z + p.scale(beta), rz_new

    _, x, _, _, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), x, b, z, b.dot(z)))
    return x
