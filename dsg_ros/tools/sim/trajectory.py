"""Ground-truth motion of a ground robot along the world's route.

A unicycle (forward speed v, yaw rate ω; no sideslip, roll = pitch = 0,
base at z = 0) steered by pure pursuit round the closed route, so the run
loops and comes back through places seen before. Speed drops in tight turns
to honour the yaw-rate limit, and changes at bounded acceleration. Each step
holds the twist constant, which makes ``interpolate`` exact between stamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsg_ros import se3
from dsg_ros.tools.sim.world import World


@dataclass(frozen=True)
class TrajectoryConfig:
    rate_hz: float = 50.0  # pose stamps (odometry and ground truth)
    speed_m_s: float = 1.0
    max_yaw_rate_rad_s: float = 1.0
    max_accel_m_s2: float = 1.0
    lookahead_m: float = 1.5  # pure pursuit; longer is smoother but cuts corners more
    clearance_m: float = 0.5  # least distance from the base to any obstacle footprint; checked


def ground_truth(world: World, config: TrajectoryConfig, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Stamps (K,) from 0 s at ``rate_hz`` over ``duration_s``, and poses ``T_world_base`` (K, 7).

    Raises ``RuntimeError`` if the path comes closer than ``clearance_m`` to an obstacle.
    """
    K = int(round(duration_s * config.rate_hz)) + 1
    dt = 1.0 / config.rate_hz
    path = _Route(world.route)
    x, y = world.route[0]
    dx, dy = world.route[1] - world.route[0]
    heading = np.arctan2(dy, dx)
    v = s = 0.0
    xyyaw = np.empty((K, 3))
    for k in range(K):
        xyyaw[k] = x, y, heading
        s = path.progress(np.array([x, y]), s)
        dx, dy = path.point_at(s + config.lookahead_m) - (x, y)
        # Pure pursuit: the arc through the target point, curvature 2·lateral/distance².
        lateral = -np.sin(heading) * dx + np.cos(heading) * dy
        kappa = 2.0 * lateral / (dx * dx + dy * dy)
        v_want = min(config.speed_m_s, config.max_yaw_rate_rad_s / max(abs(kappa), 1e-9))
        v = float(np.clip(v_want, v - config.max_accel_m_s2 * dt, v + config.max_accel_m_s2 * dt))
        w = float(np.clip(v * kappa, -config.max_yaw_rate_rad_s, config.max_yaw_rate_rad_s))
        # Exact integration of a constant twist: an arc (a line when w == 0).
        if abs(w) > 1e-12:
            x += v / w * (np.sin(heading + w * dt) - np.sin(heading))
            y -= v / w * (np.cos(heading + w * dt) - np.cos(heading))
        else:
            x, y = x + v * dt * np.cos(heading), y + v * dt * np.sin(heading)
        heading += w * dt
    clearance = world.clearance(xyyaw[:, :2])
    if clearance.min() < config.clearance_m:
        k = int(np.argmin(clearance))
        raise RuntimeError(
            f"trajectory passes {clearance[k]:.2f} m from an obstacle at t = {k * dt:.2f} s (needs {config.clearance_m} m)"
        )
    return np.arange(K) * dt, planar_pose(xyyaw[:, 2], np.column_stack([xyyaw[:, :2], np.zeros(K)]))


def interpolate(stamps: np.ndarray, T_world_base: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Poses (T, 7) at times ``t`` (T,) inside ``[stamps[0], stamps[-1]]``, constant twist between stamps."""
    t = np.asarray(t, dtype=float)
    if t.size and (t.min() < stamps[0] or t.max() > stamps[-1]):
        raise ValueError(f"times must lie in [{stamps[0]}, {stamps[-1]}], got [{t.min()}, {t.max()}]")
    k = np.clip(np.searchsorted(stamps, t, side="right") - 1, 0, len(stamps) - 2)
    return se3.interpolate(T_world_base[k], T_world_base[k + 1], (t - stamps[k]) / (stamps[k + 1] - stamps[k]))


def planar_pose(yaw: np.ndarray | float, xyz: np.ndarray) -> np.ndarray:
    """Poses (..., 7) turned by ``yaw`` (rad) about z and placed at ``xyz`` (..., 3)."""
    half = 0.5 * np.asarray(yaw, dtype=float)
    xyz = np.asarray(xyz, dtype=float)
    T = np.zeros(np.broadcast_shapes(half.shape, xyz.shape[:-1]) + (7,))
    T[..., 0], T[..., 3], T[..., 4:] = np.cos(half), np.sin(half), xyz
    return T


class _Route:
    """Arc-length view of a closed polyline (W, 2); arc lengths grow without wrapping."""

    def __init__(self, polyline: np.ndarray) -> None:
        self.start = polyline
        self.delta = np.roll(polyline, -1, axis=0) - polyline
        self.length = np.linalg.norm(self.delta, axis=1)
        self.s0 = np.concatenate([[0.0], np.cumsum(self.length)[:-1]])
        self.total = float(self.length.sum())

    def point_at(self, s: float) -> np.ndarray:
        s = s % self.total
        j = int(np.searchsorted(self.s0, s, side="right")) - 1
        return self.start[j] + (s - self.s0[j]) / self.length[j] * self.delta[j]

    def progress(self, xy: np.ndarray, s: float, behind: float = 0.5, ahead: float = 2.0) -> float:
        """Arc length of the closest route point to ``xy`` within ``[s - behind, s + ahead]``.

        The window keeps progress local where the route passes a spot twice.
        """
        u = np.clip(np.einsum("wi,wi->w", xy - self.start, self.delta) / self.length**2, 0.0, 1.0)
        dist = np.linalg.norm(self.start + u[:, None] * self.delta - xy, axis=1)
        arc = self.s0 + u * self.length
        arc += self.total * np.round((s - arc) / self.total)  # the copy of each segment nearest s
        near = (arc >= s - behind) & (arc <= s + ahead)
        if not near.any():
            return s
        return float(max(s, arc[near][np.argmin(dist[near])]))
