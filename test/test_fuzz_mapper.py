"""Generated hostile input streams through the Mapper (property-based, ``hypothesis``).

A robot drives 3 m through a walled room; each example corrupts any of its
odometry samples and clouds in the ways a driver, a bag or a clock does
(NaN, zero, non-unit and overflowing quaternions, jumps, stamps backwards,
duplicated, a nanosecond apart or far ahead, a bag looping back; NaN, ±inf
and 1e30 points, empty clouds, degenerate geometry). Each goes out as a
message (rosbags' classes, as a bag holds them), through the conversion,
into the mapper, as the node and the replay feed it. Every input must be
taken, refused by the conversion (ConversionError: the drivers count a
skip) or refused by the mapper with a counted reason; afterwards every pose
the mapper returns is finite with a unit quaternion, and every voxel finite.

One small mapper for the module (JAX compiles once per capacity
configuration): each example starts from ``reset()``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from dsg_ros import msgs, runtime, se3
from dsg_ros.bag import build
from dsg_ros.mapping import Mapper, MapperConfig, TickResult, WindowConfig
from dsg_ros.mapping.calibrator import CalibrationConfig

STEPS = 30  # 3 s at 10 Hz, 1 m/s: several keyframes, and a full window marginalizes
DT = 0.1
T0 = 100.0

ODOMETRY_FAULTS = ["nan_pose", "zero_quaternion", "scaled_quaternion", "huge_quaternion", "jump", "teleport", "backwards",
                   "duplicate", "nanosecond", "future", "nan_stamp", "loop", "missing"]
CLOUD_FAULTS = ["nan_points", "inf_points", "huge_points", "empty", "all_nan", "backwards", "duplicate", "wrong_shape",
                "nan_stamp", "missing", "one_wall", "one_voxel", "unrelated"]


def _room() -> np.ndarray:
    """Points (N, 3) on the four walls of a 12 m square room, at four heights."""
    s = np.arange(-6.0, 6.0, 0.15)
    walls = [np.stack([s, np.full_like(s, c)], 1) for c in (-6.0, 6.0)] + [np.stack([np.full_like(s, c), s], 1) for c in (-6.0, 6.0)]
    xy = np.concatenate(walls)
    return np.concatenate([np.column_stack([xy, np.full(len(xy), z)]) for z in (-0.5, 0.0, 0.5, 1.0)])


ROOM = _room()


def _T_world_base(t: float) -> np.ndarray:
    u = t - T0
    return se3.exp(np.array([-2.0 + u, 0.3 * np.sin(u), 0.0, 0.0, 0.0, 0.2 * np.sin(0.7 * u)]))


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    window = WindowConfig(keyframes=3, max_voxels=256, max_observations_per_keyframe=120, max_anchors_per_keyframe=60)
    m = Mapper(MapperConfig(window=window, voxel_size=0.5, calibration=CalibrationConfig(every_keyframes=0), max_range_m=10.0))
    m.warm_up()
    return m


def _unit_poses(poses: np.ndarray, what: str) -> None:
    poses = np.asarray(poses).reshape(-1, 7)
    assert np.isfinite(poses).all(), f"{what}: non-finite pose"
    assert poses.size == 0 or np.abs(np.linalg.norm(poses[:, :4], axis=1) - 1.0).max() < 1e-6, f"{what}: non-unit quaternion"


def _check(result: TickResult) -> int:
    """The tick's outputs are valid; returns how many of its clouds were placed."""
    _unit_poses(result.window_poses, "window")
    for name in ("T_map_base", "T_map_odom"):
        value = getattr(result, name)
        if value is not None:
            _unit_poses(value, name)
    placed = ~np.isnan(result.cloud_poses).all(axis=1)  # a dropped cloud's row is all NaN (and counted)
    _unit_poses(result.cloud_poses[placed], "cloud_poses")
    assert np.all(np.diff(result.window_stamps) > 0)
    return int(placed.sum())


def _cloud(T_world_base: np.ndarray, fault: str, rng: np.random.Generator) -> np.ndarray:
    p = se3.apply(se3.inverse(T_world_base), ROOM)
    p = p[np.linalg.norm(p, axis=1) < 9.0]
    if fault == "nan_points":
        p[rng.integers(0, len(p), 20), rng.integers(0, 3)] = np.nan
    elif fault == "inf_points":
        p[rng.integers(0, len(p), 20)] = [np.inf, -np.inf, 1.0]
    elif fault == "huge_points":
        p[rng.integers(0, len(p), 20)] = 1e30
    elif fault == "empty":
        p = p[:0]
    elif fault == "all_nan":
        p[:] = np.nan
    elif fault == "wrong_shape":
        p = p[:, :2]
    elif fault == "one_wall":  # a single plane: registration is degenerate along it
        p = p[np.abs(p[:, 1] - p[:, 1].max()) < 0.3]
    elif fault == "one_voxel":
        p = np.full((50, 3), 2.0) + rng.normal(0.0, 0.01, (50, 3))
    elif fault == "unrelated":  # no overlap with the map
        p = rng.uniform(-8.0, 8.0, (500, 3))
    return p


def _odometry(t: float, T: np.ndarray, previous: tuple[float, np.ndarray] | None, fault: str) -> tuple[float, np.ndarray]:
    T = T.copy()
    if fault == "nan_pose":
        T[5] = np.nan
    elif fault == "zero_quaternion":
        T[:4] = 0.0
    elif fault == "scaled_quaternion":
        T[:4] *= 2.0
    elif fault == "huge_quaternion":
        T[:4] *= 1e155
    elif fault == "jump":
        T[4] += 50.0
    elif fault == "backwards":
        t -= 0.35
    elif fault == "future":
        t += 1e6
    elif fault == "nan_stamp":
        t = float("nan")
    elif previous is not None and fault == "duplicate":
        t = previous[0]
    elif previous is not None and fault == "nanosecond":
        t, T = previous[0] + 1e-9, previous[1].copy()
        T[4] += 0.05
    return t, T


def _feed_odometry(mapper: Mapper, stamp: float, T: np.ndarray) -> tuple[str, float]:
    """Odometry as a message, converted, to the mapper: what became of it, and its stamp as converted."""
    try:
        stamp, T, _ = msgs.odometry_from_msg(build.odometry(msgs.sec_to_ns(stamp), "odom", "base_link", T))
    except msgs.ConversionError:
        return "unconverted", stamp
    before = mapper.stats["rejected_odometry"]
    if mapper.add_odometry(stamp, T):
        return "taken", stamp
    assert mapper.stats["rejected_odometry"] == before + 1
    return "refused", stamp


def _feed_cloud(mapper: Mapper, stamp: float, p: np.ndarray) -> str:
    """A cloud as a PointCloud2, converted, to the mapper (a wrong shape, which no PointCloud2 has, goes straight in)."""
    dropped = 0
    if p.ndim == 2 and p.shape[1] == 3:
        try:
            msg = build.point_cloud(msgs.sec_to_ns(stamp), "base_link", p)
            stamp = msgs.stamp_to_sec(msg.header.stamp)
            p, dropped = msgs.points_from_cloud(msg)
        except msgs.ConversionError:
            return "unconverted"
    before = mapper.stats["rejected_clouds"]
    if mapper.add_cloud(stamp, p, dropped):
        return "taken"
    assert mapper.stats["rejected_clouds"] == before + 1
    return "refused"


streams = st.lists(
    st.tuples(st.sampled_from(["good"] * 25 + ODOMETRY_FAULTS), st.sampled_from(["good"] * 25 + CLOUD_FAULTS)), min_size=STEPS, max_size=STEPS
)


@settings(max_examples=max(10, settings().max_examples // 3))
@given(streams, st.integers(0, 2**32 - 1))
@example([("good", "good")] * STEPS, 0)
@example([(ODOMETRY_FAULTS[i % len(ODOMETRY_FAULTS)] if i % 2 else "good", CLOUD_FAULTS[i % len(CLOUD_FAULTS)]) for i in range(STEPS)], 6)
@example([("good", "good")] * 12 + [("teleport", "good")] + [("good", "good")] * 17, 1)
@example([("good", "good")] * 12 + [("loop", "good")] + [("good", "good")] * 17, 2)
@example([("good", "one_wall")] * STEPS, 3)
@example([("good", "unrelated")] * STEPS, 4)
@example([("missing", "good")] * STEPS, 5)
def test_every_input_is_taken_or_refused_with_a_counted_reason_and_the_outputs_stay_valid(mapper: Mapper, stream, seed: int):
    mapper.reset()
    rng = np.random.default_rng(seed)
    compilations = runtime.compilation_count()
    stats = dict(mapper.stats)
    taken = 0  # clouds the mapper queued
    placed = 0
    shift, offset = 0.0, np.zeros(7)  # a looped clock, a teleported odometry frame
    last_odometry: tuple[float, np.ndarray] | None = None
    for i, (odometry_fault, cloud_fault) in enumerate(stream):
        t = T0 + i * DT - shift
        if odometry_fault == "loop":
            shift += 2.0  # a bag starting over: every stamp from here on is 2 s earlier
            t -= 2.0
        if odometry_fault == "teleport":
            offset[4] += 1000.0
        if odometry_fault != "missing":
            stamp, T = _odometry(t, _T_world_base(t + shift) + offset, last_odometry, odometry_fault)
            fate, stamp = _feed_odometry(mapper, stamp, T)
            if fate == "taken":
                last_odometry = (stamp, T)
        if cloud_fault != "missing":
            stamp = t - 0.05
            if cloud_fault == "backwards":
                stamp -= 0.35
            elif cloud_fault == "nan_stamp":
                stamp = float("nan")
            elif cloud_fault == "duplicate":
                stamp = t - DT - 0.05
            points = _cloud(_T_world_base(stamp + shift) if np.isfinite(stamp) else se3.IDENTITY, cloud_fault, rng)
            taken += _feed_cloud(mapper, stamp, points) == "taken"
        placed += _check(mapper.tick())
    _, positions, counts = mapper.voxels()
    assert np.isfinite(positions).all() and np.all(counts > 0)
    delta = {k: mapper.stats[k] - stats[k] for k in stats}
    assert delta["clouds"] == taken
    # Every cloud taken was placed, dropped with a count, or still waits for odometry.
    assert taken == placed + delta["dropped_clouds"] + len(mapper._clouds)
    assert runtime.compilation_count() == compilations, "hostile input made the mapper compile"
    if all(f == ("good", "good") for f in stream):
        # All placed but the first, which predates the first odometry sample.
        assert delta["keyframes"] >= 4 and placed == taken - 1 == STEPS - 1 and delta["rollbacks"] == 0
