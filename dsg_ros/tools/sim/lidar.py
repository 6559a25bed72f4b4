"""A spinning multi-beam lidar, cast into the world's boxes.

Beams fan out over the vertical field of view (row 0 lowest); azimuths go
counter-clockwise from the sensor's +x. A scan is taken at one instant (no
motion distortion). Each return gets Gaussian range noise; returns are lost
to random dropout, to nothing within range, or to being closer than the
minimum range. Points are float32 in the sensor frame, as in a PointCloud2.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dsg_ros import se3
from dsg_ros.tools.sim.world import World


@dataclass(frozen=True)
class LidarConfig:
    beams: int = 16
    azimuths: int = 1024
    fov_deg: tuple[float, float] = (-15.0, 15.0)  # lowest and highest beam elevation
    min_range_m: float = 0.3
    max_range_m: float = 30.0
    range_noise_std_m: float = 0.02
    dropout_prob: float = 0.02


def scan_organized(world: World, T_world_sensor: np.ndarray, config: LidarConfig, rng: np.random.Generator) -> np.ndarray:
    """One scan as a (beams, azimuths, 3) float32 grid of points in the sensor frame, NaN where no return."""
    d_sensor = _directions(config)
    d_world = d_sensor @ se3.rotation_matrix(T_world_sensor).T
    origins = np.broadcast_to(T_world_sensor[4:], d_world.shape)
    ranges = world.raycast(origins.reshape(-1, 3), d_world.reshape(-1, 3), config.max_range_m).reshape(d_world.shape[:2])
    ranges = ranges + rng.normal(0.0, config.range_noise_std_m, ranges.shape)
    kept = (rng.random(ranges.shape) >= config.dropout_prob) & (ranges >= config.min_range_m) & (ranges <= config.max_range_m)
    return (np.where(kept, ranges, np.nan)[..., None] * d_sensor).astype(np.float32)


def scan(world: World, T_world_sensor: np.ndarray, config: LidarConfig, rng: np.random.Generator) -> np.ndarray:
    """One scan as the (N, 3) float32 points in the sensor frame that returned."""
    grid = scan_organized(world, T_world_sensor, config, rng).reshape(-1, 3)
    return grid[~np.isnan(grid[:, 0])]


@lru_cache(maxsize=8)
def _directions(config: LidarConfig) -> np.ndarray:
    """Unit beam directions (beams, azimuths, 3) in the sensor frame; read-only, shared between scans."""
    elevation = np.deg2rad(np.linspace(*config.fov_deg, config.beams))[:, None]
    azimuth = np.linspace(0.0, 2.0 * np.pi, config.azimuths, endpoint=False)[None, :]
    xyz = np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)
    d = np.stack(np.broadcast_arrays(*xyz), axis=-1)
    d.flags.writeable = False
    return d
