"""Inner solvers (LM / Gauss–Newton with Schur elimination, gradient descent) and their derivatives."""

from dsg_ros.solve.config import SolverConfig
from dsg_ros.solve.diff import solve
from dsg_ros.solve.report import STATUS_NAMES, SolveReport, SolveSummary

__all__ = ["STATUS_NAMES", "SolveReport", "SolveSummary", "SolverConfig", "solve"]
