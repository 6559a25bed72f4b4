"""Process-wide JAX settings: precision, device choice, compilation counting.

float64 is enabled at import so CPU solves can run in double precision (the
default on CPU, where it costs little and matches GTSAM's numbers); on a GPU
the default dtype is float32. Set ``DSG_ROS_DTYPE=float32|float64`` to force
one. The compilation counter lets the mapper prove it never recompiles.
"""

from __future__ import annotations

import os
import threading

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

_lock = threading.Lock()
_compilations = 0


def _on_event_duration(event: str, duration_secs: float, **_: object) -> None:
    global _compilations
    if event == "/jax/core/compile/backend_compile_duration":
        with _lock:
            _compilations += 1


jax.monitoring.register_event_duration_secs_listener(_on_event_duration)


def compilation_count() -> int:
    """Number of XLA backend compilations in this process so far."""
    return _compilations


def backend() -> str:
    """JAX's default backend name: ``cpu``, ``gpu`` or ``tpu``."""
    return jax.default_backend()


def default_dtype() -> jnp.dtype:
    """float64 on CPU, float32 on accelerators, unless DSG_ROS_DTYPE says otherwise."""
    forced = os.environ.get("DSG_ROS_DTYPE", "").strip().lower()
    if forced in ("float32", "f32"):
        return jnp.dtype(jnp.float32)
    if forced in ("float64", "f64"):
        return jnp.dtype(jnp.float64)
    if forced:
        raise ValueError(f"DSG_ROS_DTYPE={forced!r}: expected 'float32' or 'float64'")
    return jnp.dtype(jnp.float64 if backend() == "cpu" else jnp.float32)
