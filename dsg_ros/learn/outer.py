"""The outer learning loop: optax steps on a parameter pytree through a loss.

The loss usually contains an inner solve; its gradient comes from the
solver's differentiation mode. One jitted step function, compiled once.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
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
    the final parameters (``steps + 1`` values), and the final ``aux``. The
    final evaluation reuses the compiled step (its update is discarded), so
    reporting costs no second compilation. ``compiler_options`` go to XLA
    (see ``runtime.fast_compile_options``).
    """

    @partial(jax.jit, compiler_options=compiler_options)
    def step(theta: Params, opt_state: Any) -> tuple[Params, Any, jax.Array, Any]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(theta)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss, aux

    theta, opt_state = theta0, optimizer.init(theta0)
    losses: list[float] = []
    aux = None
    for k in range(steps + 1):
        new_theta, new_state, loss, aux = step(theta, opt_state)
        losses.append(float(loss))
        if k == steps:
            break
        theta, opt_state = new_theta, new_state
        if progress is not None:
            progress(k, losses[-1])
    return theta, losses, aux
