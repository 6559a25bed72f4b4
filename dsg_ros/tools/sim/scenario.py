"""A whole simulated run: world, ground truth, drifting odometry and lidar clouds.

``simulate`` is deterministic in ``SimConfig.seed``: world, odometry noise
and lidar noise draw from independent streams spawned from it, so changing
one sensor's settings leaves the others' noise as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from dsg_ros import se3
from dsg_ros.tools.sim.lidar import LidarConfig, scan
from dsg_ros.tools.sim.odometry import OdometryConfig, integrate_odometry
from dsg_ros.tools.sim.trajectory import TrajectoryConfig, ground_truth, interpolate, planar_pose
from dsg_ros.tools.sim.world import World, WorldConfig, build_world

# Stamps of a run published or written to a bag start here (sim stamps start
# at 0, which ROS treats as "unset").
SIM_EPOCH_S = 1000.0

# Lidar 0.2 m ahead of and 0.5 m above the base, yawed 2°: an extrinsic worth calibrating.
_T_BASE_SENSOR = tuple(float(v) for v in planar_pose(np.deg2rad(2.0), np.array([0.2, 0.0, 0.5])))


@dataclass(frozen=True)
class SimConfig:
    world: WorldConfig = field(default_factory=WorldConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    odometry: OdometryConfig = field(default_factory=OdometryConfig)
    T_base_sensor: tuple[float, ...] = _T_BASE_SENSOR  # wxyz_xyz
    cloud_rate_hz: float = 10.0
    cloud_offset_s: float = 0.0037  # first cloud stamp: off the odometry grid, so consumers must interpolate
    duration_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.cloud_offset_s < 1.0 / self.cloud_rate_hz:
            raise ValueError(f"cloud_offset_s must lie in [0, {1.0 / self.cloud_rate_hz}), got {self.cloud_offset_s}")
        if self.duration_s * self.trajectory.rate_hz < 1.0:
            raise ValueError(f"duration_s must cover at least one odometry step, got {self.duration_s}")
        if len(self.T_base_sensor) != 7:
            raise ValueError(f"T_base_sensor is wxyz_xyz (7 numbers), got {len(self.T_base_sensor)}")


@dataclass(eq=False)
class SimData:
    """The streams of one run. Poses (..., 7) are wxyz_xyz; stamps in seconds from 0.

    ``T_odom_base`` (K, 7) at ``odom_stamps`` (K,) starts at identity;
    ``T_world_base`` (K, 7) is the ground truth at ``gt_stamps`` (the same
    stamps). ``clouds[i]`` (N_i, 3) float32 points in the sensor frame taken
    at ``cloud_stamps[i]``, when the base was at ``cloud_T_world_base[i]``.
    """

    config: SimConfig
    world: World
    odom_stamps: np.ndarray
    T_odom_base: np.ndarray
    gt_stamps: np.ndarray
    T_world_base: np.ndarray
    cloud_stamps: np.ndarray
    cloud_T_world_base: np.ndarray
    clouds: list[np.ndarray]
    T_base_sensor: np.ndarray

    def events(self) -> Iterator[tuple[str, float, np.ndarray]]:
        """``(kind, stamp, data)`` in time order: ``("odom", t, T_odom_base (7,))``,
        ``("ground_truth", t, T_world_base (7,))``, ``("cloud", t, p_sensor (N, 3))``.

        At equal stamps the order is odom, ground truth, cloud.
        """
        streams = [
            ("odom", self.odom_stamps, self.T_odom_base),
            ("ground_truth", self.gt_stamps, self.T_world_base),
            ("cloud", self.cloud_stamps, self.clouds),
        ]
        stamps = np.concatenate([s for _, s, _ in streams])
        which = np.concatenate([np.full(len(s), i) for i, (_, s, _) in enumerate(streams)])
        index = np.concatenate([np.arange(len(s)) for _, s, _ in streams])
        for j in np.lexsort((which, stamps)):
            name, stamp_list, data = streams[which[j]]
            yield name, float(stamp_list[index[j]]), data[index[j]]


def simulate(config: SimConfig = SimConfig(), progress: Callable[[float], None] | None = None) -> SimData:
    """Run the simulation; ``progress`` (optional) is called with the fraction done, ending at 1.0."""
    world_rng, odom_rng, lidar_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3))
    world = build_world(config.world, world_rng)
    stamps, T_world_base = ground_truth(world, config.trajectory, config.duration_s)
    T_odom_base = integrate_odometry(stamps, T_world_base, config.odometry, odom_rng)
    n_clouds = int(np.floor((stamps[-1] - config.cloud_offset_s) * config.cloud_rate_hz)) + 1
    cloud_stamps = config.cloud_offset_s + np.arange(max(n_clouds, 0)) / config.cloud_rate_hz
    cloud_T_world_base = interpolate(stamps, T_world_base, cloud_stamps)
    T_base_sensor = np.array(config.T_base_sensor)
    T_world_sensor = se3.compose(cloud_T_world_base, T_base_sensor)
    clouds = []
    for i, T in enumerate(T_world_sensor):
        if progress is not None:
            progress(i / len(T_world_sensor))
        clouds.append(scan(world, T, config.lidar, lidar_rng))
    if progress is not None:
        progress(1.0)
    return SimData(
        config, world, stamps, T_odom_base, stamps.copy(), T_world_base, cloud_stamps, cloud_T_world_base, clouds, T_base_sensor
    )
