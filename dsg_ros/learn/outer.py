"""The outer learning loop: optax steps on a parameter pytree through a loss.

The loss usually contains an inner solve; its gradient comes from the
solver's differentiation mode. A step is two programs, each compiled once:
the forward pass (loss, aux and the pullback's residuals, ``jax.vjp``) and
the update (the pullback, then the optimizer).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any


def fit(
    loss_fn: Callable[[Params], tuple[jax.Array, Any]],
    theta0: Params,
    optimizer: optax.GradientTransformation,
    steps: int,
    progress: Callable[[int, float], None] | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> tuple[Params, list[float], Any]:
    """Run ``steps`` optimizer updates of ``loss_fn(theta) -> (loss, aux)``.

    Returns the final parameters, the loss before each step plus the loss at
    the final parameters (``steps + 1`` values), and the final ``aux``.
    ``compiler_options`` go to XLA (see ``runtime.fast_compile_options``).

    The forward program compiles in a background thread while the update
    program is traced and compiled: XLA releases the GIL, so on a multi-core
    CPU the update's share of the start-up hides behind the forward's
    compilation (HERO: ~0.5 s of ~2.5 s). Same arithmetic as one jitted step.
    """
    opt_state = optimizer.init(theta0)
    forward = jax.jit(lambda theta: jax.vjp(loss_fn, theta, has_aux=True), compiler_options=compiler_options)

    def update(pullback: Callable, loss: jax.Array, theta: Params, state: Any) -> tuple[Params, Any]:
        (grads,) = pullback(jnp.ones_like(loss))
        updates, state = optimizer.update(grads, state, theta)
        return optax.apply_updates(theta, updates), state

    traced = forward.trace(theta0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        forward_compiled = pool.submit(traced.lower().compile)
        loss_shape, pullback_shape, _ = traced.out_info
        update_compiled = jax.jit(update, compiler_options=compiler_options).trace(pullback_shape, loss_shape, theta0, opt_state).lower().compile()
        step_forward = forward_compiled.result()

    theta, losses, aux = theta0, [], None
    for k in range(steps + 1):
        loss, pullback, aux = step_forward(theta)
        losses.append(float(loss))
        if k == steps:
            break
        theta, opt_state = update_compiled(pullback, loss, theta, opt_state)
        if progress is not None:
            progress(k, losses[-1])
    return theta, losses, aux
