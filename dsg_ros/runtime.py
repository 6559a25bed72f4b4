"""Process-wide JAX settings: precision, device choice, compilation counting.

float64 is enabled at import so CPU solves can run in double precision (the
default on CPU, where it costs little and matches GTSAM's numbers); on a GPU
the default dtype is float32. Set ``DSG_ROS_DTYPE=float32|float64`` to force
one. The compilation counter lets the mapper prove it never recompiles.

On a GPU, JAX would take 75 % of the card's memory at start-up; a mapping node
shares the card with the robot's other nodes, so memory is allocated as
needed instead unless ``XLA_PYTHON_CLIENT_PREALLOCATE`` says otherwise.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import overload

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # read when the backend starts

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


def fast_compile_options() -> dict[str, object]:
    """XLA options for programs that compile for seconds and run for milliseconds.

    On CPU, XLA compiles every fusion as its own LLVM module; a small
    differentiated solve has ~400 of them. No LLVM optimization, the legacy
    loop emitters and a module split across cores cut HERO's compile from
    ~11 s to ~4.5 s while its 30 steps run 0.03 s slower. Empty elsewhere:
    accelerators compile differently and these programs are not slow there.
    """
    if backend() != "cpu":
        return {}
    return {
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False,
        "xla_cpu_parallel_codegen_split_count": 8,
    }


def enable_compile_cache(path: str | None = None) -> str | None:
    """Persist XLA executables across processes (a warm start skips compiling).

    ``path`` defaults to ``$DSG_ROS_COMPILE_CACHE`` or ``~/.cache/dsg_ros/xla``;
    ``DSG_ROS_COMPILE_CACHE=off`` disables it. Returns the directory used.
    """
    setting = path or os.environ.get("DSG_ROS_COMPILE_CACHE", "")
    if setting.strip().lower() in ("off", "0", "none", "false"):
        return None
    directory = os.path.expanduser(setting or os.path.join("~", ".cache", "dsg_ros", "xla"))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def settle_heap() -> None:
    """Collect once, then keep every surviving object out of later collections.

    ``Mapper.warm_up`` ends with it. Tracing and compiling leave millions of
    long-lived objects (JAX's caches); a full collection walks all of them
    and, holding the GIL, stalled every thread of the node for ~0.3 s. Frozen
    objects are still freed by reference counting when dropped.
    """
    gc.collect()
    gc.freeze()


@overload
def rss_mb() -> float: ...
@overload
def rss_mb(pid: int | str) -> float | None: ...
def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MiB (Linux /proc), or None if it cannot
    be read; for this process without /proc, the peak RSS instead."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb() if pid == "self" else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports
    ``ru_maxrss`` in KiB). A high-water mark: it never goes down, so within one
    process it covers everything run before too."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
