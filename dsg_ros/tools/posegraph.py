"""Solve a g2o pose graph end to end and time compile and solve separately."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jaxlie
import numpy as np

from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.diff import solve
from dsg_ros.solve.lm import uses_dense
from dsg_ros.solve.report import SolveSummary
from dsg_ros.tools.g2o import G2OGraph, read_g2o, to_world_model
from dsg_ros.world.layout import ODOM_SE3
from dsg_ros.world.model import WorldModel


@dataclass(frozen=True)
class PoseGraphResult:
    g2o: G2OGraph
    model: WorldModel
    var_of: dict[int, int]  # g2o vertex id → WorldModel variable id
    report: SolveSummary
    seconds_load: float
    seconds_compile: float
    seconds_solve: float
    linear_solver: str

    def poses(self) -> np.ndarray:
        """Solved poses (N, 7) ``wxyz_xyz`` in the file's vertex order."""
        poses = []
        for v in self.g2o.vertex_ids:
            T = self.model.value(self.var_of[int(v)])
            assert isinstance(T, jaxlie.SE3)  # a g2o file's vertices are poses
            poses.append(np.asarray(T.wxyz_xyz))
        return np.stack(poses)

    def summary(self) -> dict[str, Any]:
        counts = self.model.counts()
        return {
            "poses": counts["poses"],
            "edges": counts.get(ODOM_SE3, 0),
            "linear_solver": self.linear_solver,
            **dataclasses.asdict(self.report),
            "seconds_load": self.seconds_load,
            "seconds_compile": self.seconds_compile,
            "seconds_solve": self.seconds_solve,
        }


def solve_file(path: str | Path, config: SolverConfig = SolverConfig(), write_back: bool = True) -> PoseGraphResult:
    """Load ``path``, compile the solver for its shapes, solve once.

    Compilation is timed apart (ahead-of-time ``lower().compile()``) so
    ``seconds_solve`` is what a warm process pays per solve.
    """
    start = time.perf_counter()
    g2o = read_g2o(path)
    model, var_of = to_world_model(g2o)
    graph, x0 = model.graph(), model.pack_state()
    loaded = time.perf_counter()
    compiled = jax.jit(solve, static_argnames="config").lower(graph, x0, config=config).compile()
    compiled_at = time.perf_counter()
    x, report = compiled(graph, x0)
    jax.block_until_ready(x)
    solved = time.perf_counter()
    if write_back:
        model.unpack_state(x)
    return PoseGraphResult(
        g2o=g2o,
        model=model,
        var_of=var_of,
        report=report.summary(),
        seconds_load=loaded - start,
        seconds_compile=compiled_at - loaded,
        seconds_solve=solved - compiled_at,
        linear_solver="dense" if uses_dense(graph, config) else "sparse",
    )
