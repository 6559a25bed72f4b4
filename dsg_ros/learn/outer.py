"""The outer learning loop: optax steps on a parameter pytree through a loss.

The loss usually contains an inner solve; its gradient comes from the
solver's differentiation mode. One jitted step function, compiled once.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

Params = Any


def fit(
    loss_fn: Callable[[Params], jax.Array],
    theta0: Params,
    optimizer: optax.GradientTransformation,
    steps: int,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Params, list[float]]:
    """Run ``steps`` optimizer updates; returns final params and the loss before each step."""

    @jax.jit
    def step(theta: Params, opt_state: Any) -> tuple[Params, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(theta)
        updates, opt_state = optimizer.update(grads, opt_state, theta)
        return optax.apply_updates(theta, updates), opt_state, loss

    theta, opt_state = theta0, optimizer.init(theta0)
    losses: list[float] = []
    for k in range(steps):
        theta, opt_state, loss = step(theta, opt_state)
        losses.append(float(loss))
        if progress is not None:
            progress(k, losses[-1])
    return theta, losses
