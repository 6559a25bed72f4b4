"""Drive a Mapper from time-ordered events (simulation or a bag) and record what it did."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from dsg_ros.learn.calibration import CalibrationSummary
from dsg_ros.mapping.mapper import Mapper, TickResult
from dsg_ros.mapping.session import MappingSession, SessionConfig

Event = tuple[str, float, Any]  # ("odom" | "cloud" | "ground_truth", stamp, payload)


class Cloud(NamedTuple):
    """A "cloud" event's payload when more than the points is known (a bare
    (N, 3) array is taken as ``Cloud(p_sensor)``): the caller's count of
    points already dropped, and whether a planar scanner (LaserScan) took it."""

    p_sensor: np.ndarray
    dropped: int = 0
    planar: bool = False


@dataclass
class RunRecord:
    """Per-keyframe final estimates and per-tick timings of one run."""

    keyframe_poses: dict[float, np.ndarray] = field(default_factory=dict)  # stamp → T_map_base
    tick_ms: list[float] = field(default_factory=list)
    keyframe_tick_ms: list[float] = field(default_factory=list)  # ticks that added a keyframe
    calibration_ms: list[float] = field(default_factory=list)
    marginalization_ms: list[float] = field(default_factory=list)  # after the tick, off the latency path
    refine_ms: list[float] = field(default_factory=list)  # after the tick, off the latency path (when it ran)
    calibration: list[tuple[float, CalibrationSummary]] = field(default_factory=list)
    warnings: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # event kind → inputs the mapper refused (it warns why)
    wall_s: float = 0.0
    last: TickResult | None = None

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """Keyframe stamps (K,) and their last estimates (K, 7), in time order."""
        stamps = np.array(sorted(self.keyframe_poses))
        return stamps, np.array([self.keyframe_poses[s] for s in stamps]).reshape(-1, 7)


def drive(
    mapper: Mapper,
    events: Iterable[Event],
    use_reference: bool = True,
    calibrate: bool = True,
    on_tick: Callable[[TickResult], None] | None = None,
) -> RunRecord:
    """Feed events in order, one ``MappingSession.step`` after every cloud
    (the node ticks at the cloud rate too), calibrating inline when a tick
    says it is due. ``on_tick`` sees each tick's result once its step is
    done. A keyframe's estimate is the last one it had before leaving the
    window."""
    session = MappingSession(mapper, SessionConfig(calibrate=calibrate))
    record = RunRecord()
    started = time.perf_counter()
    for kind, stamp, payload in events:
        if kind == "odom":
            if not mapper.add_odometry(stamp, payload):
                record.rejected[kind] += 1
        elif kind == "ground_truth":
            if use_reference and not mapper.add_reference(stamp, payload):
                record.rejected[kind] += 1
        elif kind == "cloud":
            cloud = payload if isinstance(payload, Cloud) else Cloud(payload)
            if not mapper.add_cloud(stamp, cloud.p_sensor, cloud.dropped, cloud.planar):
                record.rejected[kind] += 1
            step = session.step()
            result = step.result
            record.tick_ms.append(result.diagnostics.tick_ms)
            if result.keyframes_added:
                record.keyframe_tick_ms.append(result.diagnostics.tick_ms)
            record.warnings += len(result.warnings)
            record.keyframe_poses.update(zip(result.window_stamps.tolist(), result.window_poses))
            if step.calibration_ms is not None:
                record.calibration_ms.append(step.calibration_ms)
                if mapper.calibrator.steps:
                    record.calibration.append((stamp, CalibrationSummary.of(mapper.theta)))
            if step.marginalization_ms is not None:
                record.marginalization_ms.append(step.marginalization_ms)
            if step.refine_ms is not None:
                record.refine_ms.append(step.refine_ms)
            record.last = result
            if on_tick is not None:
                on_tick(result)
        else:
            raise ValueError(f"unknown event kind {kind!r}")
    record.wall_s = time.perf_counter() - started
    return record
