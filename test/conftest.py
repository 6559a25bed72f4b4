"""Shared fixtures: small graphs that compile fast, and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import jaxlie
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from dsg_ros.world import Capacity, Noise, WorldModel

DATA = Path(__file__).parent / "data"

# Property-based tests (test_fuzz_*.py). "fast", the default, is what `make
# test` runs: fixed examples (derandomized), so a failure reproduces. "long"
# (HYPOTHESIS_PROFILE=long) draws ten times as many, at random, for the bench.
# No deadline: a tick's time depends on the machine's load, not on the input.
settings.register_profile("fast", max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def se3(x: float = 0.0, y: float = 0.0, z: float = 0.0, roll: float = 0.0, pitch: float = 0.0, yaw: float = 0.0) -> jaxlie.SE3:
    return jaxlie.SE3.from_rotation_and_translation(jaxlie.SO3.from_rpy_radians(roll, pitch, yaw), np.array([x, y, z]))


def small_hybrid(seed: int = 0, poses: int = 4, points: int = 6, noisy: bool = True) -> tuple[WorldModel, list[int], list[int], list[jaxlie.SE3], np.ndarray]:
    """A few poses along x observing a few points; measurements from the truth
    plus (optionally) noise, so residuals do not vanish at the optimum."""
    rng = np.random.default_rng(seed)
    wm = WorldModel(
        Capacity(
            poses=poses + 1,
            points=points + 1,
            factors={"prior_se3": 1, "odom_se3": poses, "voxel_point_obs": poses * points, "prior_point": 1},
        )
    )
    truth = [se3(1.0 * i, 0.2 * np.sin(i), 0.0, yaw=0.3 * i) for i in range(poses)]
    p_world = rng.uniform([-1, 2, -1], [poses, 4, 1], size=(points, 3))
    jitter = 0.05 if noisy else 0.0
    pose_ids = [wm.add_pose(T @ jaxlie.SE3.exp(rng.normal(0, 0.05, 6))) for T in truth]
    point_ids = [wm.add_point(p + rng.normal(0, 0.1, 3)) for p in p_world]
    wm.add_factor("prior_se3", [pose_ids[0]], truth[0], Noise.isotropic(0.01, 6))
    for i in range(poses - 1):
        z = (truth[i].inverse() @ truth[i + 1]) @ jaxlie.SE3.exp(rng.normal(0, jitter, 6))
        wm.add_factor("odom_se3", [pose_ids[i], pose_ids[i + 1]], z, Noise.diagonal([0.1, 0.1, 0.1, 0.05, 0.05, 0.05]))
    for i, T in enumerate(truth):
        for j, p in enumerate(p_world):
            p_body = np.asarray(T.inverse() @ p) + rng.normal(0, jitter, 3)
            wm.add_factor("voxel_point_obs", [pose_ids[i], point_ids[j]], p_body, Noise.isotropic(0.1, 3))
    return wm, pose_ids, point_ids, truth, p_world


@pytest.fixture
def hybrid():
    return small_hybrid()
