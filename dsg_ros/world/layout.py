"""The built-in factor types' names and how their measurements are laid out.

Every module that builds, edits or reads a built-in factor names it and
slices its measurement through this one: the residuals (``factors``), the
window that fills the slabs, the mapper and the calibration that rebuild
them. Names are plain strings, not an enum: slabs are looked up by name and
user-registered types bring names of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from dsg_ros import se3

PRIOR_SE3: Final = "prior_se3"  # pose T; measurement Z (7,) wxyz_xyz; residual Log(Z⁻¹·T)
ODOM_SE3: Final = "odom_se3"  # poses Tᵢ, Tⱼ; measurement Z (7,) wxyz_xyz; residual Log(Z⁻¹·Tᵢ⁻¹·Tⱼ)
PRIOR_POINT: Final = "prior_point"  # point v; measurement z (3,); residual v − z
VOXEL_POINT_OBS: Final = "voxel_point_obs"  # pose T, voxel v; measurement p (3,) in T's frame; residual T⁻¹·v − p
# A voxel_point_obs of a voxel frozen in the map: the voxel is a constant
# that travels in the measurement, laid out as ANCHOR_VOXEL then ANCHOR_POINT.
VOXEL_ANCHOR_OBS: Final = "voxel_anchor_obs"  # pose T; measurement (v, p) (6,); residual T⁻¹·v − p
LINEAR_PRIOR_PREFIX: Final = "linear_prior_"  # + one letter per variable: p (pose), v (point)

ANCHOR_VOXEL: Final = slice(0, 3)  # the frozen voxel v (3,) in the map frame
ANCHOR_POINT: Final = slice(3, 6)  # the observed point p (3,) in the pose's frame


def anchor_measurement(v_map: se3.Array, p_base: se3.Array) -> se3.Array:
    """Anchor measurements (n, 6) of frozen voxels ``v_map`` (n, 3) seen at ``p_base`` (n, 3) (NumPy or JAX)."""
    return se3.namespace(v_map, p_base).concatenate([v_map, p_base], axis=1)


def linear_prior_name(var_kinds: Sequence[str]) -> str:
    """``linear_prior_pppp`` for a prior over four poses; ``v`` stands for a point."""
    return LINEAR_PRIOR_PREFIX + "".join("p" if kind == "pose" else "v" for kind in var_kinds)


def linear_prior_measurement(linearization_points: Sequence[np.ndarray], offset: np.ndarray) -> np.ndarray:
    """A linear prior's measurement: each variable's linearization point
    (``wxyz_xyz`` (7,) or xyz (3,)) in variable order, then the offset ``c``
    in their stacked tangents."""
    return np.concatenate([*linearization_points, offset])
