"""WorldModel: SE(3) poses and voxels, factor slabs, the residual registry."""

from dsg_ros import runtime as _runtime  # noqa: F401  (enables float64 before any array exists)
from dsg_ros.world.factors import (
    DEFAULT_REGISTRY,
    FactorRegistry,
    FactorType,
    register_factor_type,
)
from dsg_ros.world.graph import FactorSlab, Graph, State, Tangent, cost, free_mask
from dsg_ros.world.model import Capacity, WorldModel
from dsg_ros.world.noise import Noise, Robust, cauchy, huber

__all__ = [
    "DEFAULT_REGISTRY",
    "Capacity",
    "FactorRegistry",
    "FactorSlab",
    "FactorType",
    "Graph",
    "Noise",
    "Robust",
    "State",
    "Tangent",
    "WorldModel",
    "cauchy",
    "cost",
    "free_mask",
    "huber",
    "register_factor_type",
]
