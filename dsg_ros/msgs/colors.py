"""Colouring values for RViz markers: piecewise-linear colormaps, ROS-free.

Shared by the node's markers (``dsg_ros.ros.messages``) and the replay's
recorded ones (``dsg_ros.bag.build``).
"""

from __future__ import annotations

import numpy as np

# Piecewise-linear colormaps, (stop, r, g, b): hand-picked stops, interpolated
# with np.interp. "height" is a blue→red rainbow (the usual elevation look);
# "viridis" approximates the perceptually uniform map at five stops.
COLORMAPS: dict[str, np.ndarray] = {
    "height": np.array(
        [
            [0.0, 0.19, 0.07, 0.55],
            [0.2, 0.10, 0.40, 1.00],
            [0.4, 0.05, 0.85, 0.85],
            [0.6, 0.40, 0.92, 0.25],
            [0.8, 1.00, 0.75, 0.05],
            [1.0, 0.85, 0.10, 0.05],
        ]
    ),
    "viridis": np.array(
        [
            [0.0, 0.267, 0.005, 0.329],
            [0.25, 0.229, 0.322, 0.546],
            [0.5, 0.128, 0.567, 0.551],
            [0.75, 0.369, 0.789, 0.383],
            [1.0, 0.993, 0.906, 0.144],
        ]
    ),
}


def colorize(values: np.ndarray, colormap: str = "height") -> np.ndarray:
    """RGB (N, 3) in [0, 1] of ``values`` (N,), scaled by their 2nd–98th
    percentiles so a few outliers do not wash out the map. Non-finite values
    get the low end; constant values the middle."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; known: {sorted(COLORMAPS)}")
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    t = np.full(values.shape, 0.5)
    if finite.size:
        lo, hi = np.percentile(finite, [2.0, 98.0])
        if hi > lo:
            t = np.nan_to_num(np.clip((values - lo) / (hi - lo), 0.0, 1.0), nan=0.0)
    table = COLORMAPS[colormap]
    return np.stack([np.interp(t, table[:, 0], table[:, c]) for c in (1, 2, 3)], axis=-1)
