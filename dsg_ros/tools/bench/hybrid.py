"""A synthetic hybrid window: keyframe poses observing many voxels, for timing the solver."""

from __future__ import annotations

import jaxlie
import numpy as np
from jax.typing import DTypeLike

from dsg_ros.world import Capacity, Noise, WorldModel


def hybrid_window(poses: int = 10, voxels: int = 2000, observations: int = 20000, seed: int = 0, dtype: DTypeLike | None = None) -> WorldModel:
    """Poses along a gently curving path, voxels on surrounding walls, each
    observation a noisy body-frame point. Initial values are perturbed so the
    solve has work to do."""
    rng = np.random.default_rng(seed)
    per_voxel = max(1, observations // voxels)
    wm = WorldModel(
        Capacity(
            poses=poses,
            points=voxels,
            factors={"prior_se3": 1, "odom_se3": poses - 1, "voxel_point_obs": voxels * per_voxel},
        ),
        dtype=dtype,
    )
    yaw = np.linspace(0.0, 0.6, poses)
    truth = [
        jaxlie.SE3.from_rotation_and_translation(jaxlie.SO3.from_rpy_radians(0.0, 0.0, y), np.array([0.5 * i, 0.1 * np.sin(i), 0.0]))
        for i, y in enumerate(yaw)
    ]
    angles = rng.uniform(0.0, 2 * np.pi, voxels)
    radius = rng.uniform(4.0, 12.0, voxels)
    p_world = np.stack([radius * np.cos(angles) + 2.0, radius * np.sin(angles), rng.uniform(-1.0, 2.5, voxels)], axis=1)
    pose_ids = []
    for T in truth:
        noise = np.concatenate([rng.normal(0, 0.05, 3), rng.normal(0, 0.01, 3)])
        pose_ids.append(wm.add_pose(T @ jaxlie.SE3.exp(noise)))
    voxel_ids = [wm.add_point(p + rng.normal(0, 0.05, 3)) for p in p_world]
    wm.add_factor("prior_se3", [pose_ids[0]], truth[0], Noise.isotropic(1e-3, 6))
    odom_noise = Noise.diagonal([0.02, 0.02, 0.02, 0.005, 0.005, 0.005])
    for i in range(poses - 1):
        wm.add_factor("odom_se3", [pose_ids[i], pose_ids[i + 1]], truth[i].inverse() @ truth[i + 1], odom_noise)
    obs_noise = Noise.isotropic(0.03, 3)
    for v, p in zip(voxel_ids, p_world):
        for k in rng.choice(poses, size=min(per_voxel, poses), replace=False):
            p_body = np.asarray(truth[k].inverse() @ p) + rng.normal(0, 0.01, 3)
            wm.add_factor("voxel_point_obs", [pose_ids[k], v], p_body, obs_noise)
    return wm
