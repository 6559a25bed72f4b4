"""``dsg-ros replay``: a bag through the mapper offline, with the node's tick protocol.

Odometry (a nav_msgs/Odometry topic, else ``odom → base`` on /tf), clouds
(PointCloud2) and/or scans (LaserScan), and optionally a reference
(Odometry or PoseStamped) are read in bag time order, converted by
:mod:`dsg_ros.msgs` as the node converts them, and fed to one
:class:`~dsg_ros.mapping.Mapper` through :func:`dsg_ros.mapping.replay.drive`
(tick → calibrate when due → marginalize → refine). What came out is scored
against the reference and written as TUM trajectories, a PLY map and a
summary (``dsg-ros replay`` adds a top-view PNG with :mod:`dsg_ros.tools.evaluate`,
keeping matplotlib out of the core); ``--record`` writes what the node would
have published. No rclpy.

Bad input never stops a replay: a message that does not convert is skipped
and counted by reason; what the mapper refuses (stamps going backwards,
implausible odometry jumps) is counted from its answers and warnings.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dsg_ros import runtime, se3
from dsg_ros.bag.errors import BagError
from dsg_ros.bag.reader import Bag, BagMessage
from dsg_ros.bag.record import RecordConfig, Recorder
from dsg_ros.bag.tf import Trajectory, odometry as tf_odometry, relative_transform, static_transforms
from dsg_ros.bag.writer import BagWriter
from dsg_ros.files import atomic_path
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping import Mapper, MapperConfig, TickResult, metrics
from dsg_ros.mapping.ply import write_ply
from dsg_ros.mapping.replay import Cloud, Event, RunRecord, drive
from dsg_ros.msgs import (
    LASER_SCAN,
    ODOMETRY,
    POINT_CLOUD,
    POSE_STAMPED,
    ConversionError,
    frame_name,
    odometry_from_msg,
    points_from_cloud,
    points_from_scan,
    pose_stamped_from_msg,
    reason,
    sec_to_ns,
    stamp_to_sec,
)
from dsg_ros.progress import ProgressBar

DEFAULT_POINTS_TOPIC = "/points"
DEFAULT_SCAN_TOPIC = "/scan"
# A reference or estimate pose matches a stamp within this; else it is interpolated.
MATCH_TOLERANCE_S = 1e-3


@dataclass(frozen=True)
class ReplayConfig:
    """What to read from the bag and how fast.

    ``points_topic``/``scan_topic``: the sensor topics; when neither is set,
    ``/points`` and ``/scan``, whichever the bag has. ``start_s``/``duration_s``:
    the part of the bag replayed, in seconds from its first message.
    ``rate``: bag seconds per wall second (1 = real time); None: as fast as
    possible. ``supervise``: give the reference to the mapper, whose
    calibration then learns from it; without, the reference only scores
    and calibration is self-supervised. ``sensor_stamps_topic``: feed only the clouds/scans stamped
    (within 1 ms) like a message of that topic (the realdata bench's
    "reference poses as odometry" row uses the reference's stamps).
    """

    odom_topic: str = "/odom"
    points_topic: str | None = None
    scan_topic: str | None = None
    reference_topic: str | None = None
    base_frame: str = "base_link"
    odom_frame: str = "odom"
    start_s: float = 0.0
    duration_s: float | None = None
    rate: float | None = None
    calibrate: bool = True
    supervise: bool = True  # give the reference to the mapper (supervised calibration); False: score only
    sensor_stamps_topic: str | None = None
    gaps_s: tuple[float, ...] = (1.0, 10.0)  # relation errors of pose pairs this far apart
    record: RecordConfig = field(default_factory=RecordConfig)  # for --record; its odom and base frames are taken from here

    def __post_init__(self) -> None:
        if not (np.isfinite(self.start_s) and self.start_s >= 0.0):
            raise ValueError(f"start must be a finite number of seconds >= 0, got {self.start_s}")
        if self.duration_s is not None and not self.duration_s > 0.0:
            raise ValueError(f"duration must be positive, got {self.duration_s}")
        if self.rate is not None and not (np.isfinite(self.rate) and self.rate > 0.0):
            raise ValueError(f"rate must be positive, got {self.rate}")


@dataclass(frozen=True)
class ReplayResult:
    """A finished replay: its summary (JSON-able, also ``summary.json``) and
    the trajectories it scored. ``estimate``: ``T_map_base`` of every consumed
    cloud as published by its tick (causal); ``smoothed``: every keyframe's
    last estimate; ``odometry``: ``T_odom_base`` as fed; ``reference``: the
    reference topic's poses (None without one)."""

    summary: dict[str, Any]
    estimate: Trajectory
    smoothed: Trajectory
    odometry: Trajectory
    reference: Trajectory | None
    mapper: Mapper
    run: RunRecord


@dataclass(frozen=True)
class _Plan:
    """Topics, sources and the time window, resolved against the bag."""

    sensors: dict[str, bool]  # topic → planar (LaserScan)
    odom_topic: str | None  # None: odometry from /tf, preloaded
    reference_topic: str | None
    start_ns: int
    end_ns: int
    sensor_frame: str
    T_base_sensor: np.ndarray
    extrinsic_source: str


def _pose(m: BagMessage) -> tuple[float, np.ndarray, str | None]:
    """(stamp, T (7,), warning) of an Odometry or PoseStamped message."""
    return odometry_from_msg(m.msg) if m.msgtype == ODOMETRY else pose_stamped_from_msg(m.msg)


def _trajectory(stamps: list[float], poses: list[np.ndarray], source: str) -> Trajectory:
    """Samples in arrival order, keeping only those whose stamp increases
    (as the mapper does), so that the result can be looked up by stamp."""
    t = np.asarray(stamps, np.float64)
    T = np.asarray(poses, np.float64).reshape(-1, 7)
    keep = t > np.concatenate([[-np.inf], np.maximum.accumulate(t)[:-1]]) if t.size else np.zeros(0, bool)
    return Trajectory(t[keep], T[keep], source)


def _plan(bag: Bag, config: ReplayConfig, mapper_config: MapperConfig) -> _Plan:
    """Check every topic named (or defaulted) against the bag, fix the time
    window and find the sensor's frame and extrinsic; BagError naming what
    is missing, before anything is compiled or written."""
    info = bag.info
    if config.points_topic is None and config.scan_topic is None:
        sensors = {t: t == DEFAULT_SCAN_TOPIC for t in (DEFAULT_POINTS_TOPIC, DEFAULT_SCAN_TOPIC) if t in info.topics}
        if not sensors:
            raise BagError(
                f"{bag.path}: no {DEFAULT_POINTS_TOPIC} or {DEFAULT_SCAN_TOPIC} (name the sensor with --points-topic or --scan-topic); "
                f"the bag has:\n{info.describe()}"
            )
    else:
        sensors = {t: planar for t, planar in ((config.points_topic, False), (config.scan_topic, True)) if t is not None}
    for topic, planar in sensors.items():
        bag.require([topic], {LASER_SCAN} if planar else {POINT_CLOUD})
    reference = config.reference_topic
    if reference is not None:
        bag.require([reference], {ODOMETRY, POSE_STAMPED})
    if config.sensor_stamps_topic is not None:
        bag.require([config.sensor_stamps_topic], {ODOMETRY, POSE_STAMPED})
    odom_topic = config.odom_topic if config.odom_topic in info.topics else None
    if odom_topic is not None:
        bag.require([odom_topic], {ODOMETRY})

    start_ns = info.start_ns + sec_to_ns(config.start_s)
    if start_ns > info.end_ns:
        raise BagError(f"{bag.path}: --start {config.start_s:g} s is past the bag's end ({info.duration_s:.1f} s)")
    end_ns = info.end_ns if config.duration_s is None else min(info.end_ns, start_ns + sec_to_ns(config.duration_s))

    # The mapper's sensor frame is the first sensor message's; its extrinsic
    # comes from /tf_static when that joins it to the base, else the config.
    messages = bag.messages(list(sensors))
    first = next(messages, None)
    messages.close()
    if first is None:
        raise BagError(f"{bag.path}: no messages on {', '.join(sensors)}")
    sensor_frame = frame_name(first.msg.header.frame_id)
    T_base_sensor = relative_transform(static_transforms(bag), frame_name(config.base_frame), sensor_frame)
    if sensor_frame == frame_name(config.base_frame) or T_base_sensor is None:
        T_base_sensor, source = np.asarray(mapper_config.T_base_sensor, np.float64), "config (mapper.T_base_sensor)"
    else:
        source = f"/tf_static {frame_name(config.base_frame)} → {sensor_frame}"
    return _Plan(sensors, odom_topic, reference, start_ns, end_ns, sensor_frame, T_base_sensor, source)


class _SensorFrames:
    """Moves points from a message's frame into the mapper's sensor frame
    (through the base, by /tf_static): a robot with a scan in ``laser`` and
    clouds in ``base_link`` still feeds one sensor frame."""

    def __init__(self, bag: Bag, base_frame: str, sensor_frame: str, T_base_sensor: np.ndarray) -> None:
        self._static = static_transforms(bag)
        self._base, self._sensor = frame_name(base_frame), sensor_frame
        # The extrinsic the mapper applies, read per message: points in the
        # base frame move by its inverse, as the node moves them, so a
        # calibrated (or learned) extrinsic is the one used both ways.
        self.T_base_sensor: Callable[[], np.ndarray] = lambda: T_base_sensor
        self._T_base: dict[str, np.ndarray] = {}  # frame → T_base_frame

    def to_sensor(self, frame: str, p: np.ndarray) -> tuple[np.ndarray, bool]:
        """Points ``p`` (N, 3) in ``frame`` → (points in the sensor frame, whether they moved)."""
        if frame == self._sensor and self._sensor != self._base:
            return p, False
        if frame not in self._T_base:
            T_base_frame = se3.IDENTITY if frame == self._base else relative_transform(self._static, self._base, frame)
            if T_base_frame is None:
                raise ConversionError(f"frame {frame} is neither {self._sensor} nor joined to {self._base} by /tf_static")
            self._T_base[frame] = T_base_frame
        return se3.apply(se3.between(self.T_base_sensor(), self._T_base[frame]), p), True


def _near(stamps: np.ndarray, stamp: float) -> bool:
    """Whether sorted ``stamps`` hold one within MATCH_TOLERANCE_S of ``stamp``."""
    k = np.searchsorted(stamps, stamp)
    near = [stamps[i] for i in (k - 1, k) if 0 <= i < stamps.size]
    return any(abs(t - stamp) <= MATCH_TOLERANCE_S for t in near)


class _Stream:
    """The bag as mapper events, in bag time order, with what was fed kept for scoring."""

    def __init__(self, bag: Bag, plan: _Plan, config: ReplayConfig) -> None:
        self.bag, self.plan, self.config = bag, plan, config
        self.bar: ProgressBar | None = None  # set once the mapper is ready, so its rate and ETA leave the warm-up out
        self.frames = _SensorFrames(bag, config.base_frame, plan.sensor_frame, plan.T_base_sensor)
        self.skipped: Counter[str] = Counter()  # reason → messages not fed
        self.warnings: Counter[str] = Counter()  # reason → conversion warnings (the message was fed)
        self.fed: Counter[str] = Counter()  # topic → messages fed
        self.filtered = 0  # sensor messages left out by sensor_stamps_topic
        self.odometry: tuple[list[float], list[np.ndarray]] = ([], [])
        self.reference: tuple[list[float], list[np.ndarray]] = ([], [])
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self._tf_odometry = None if plan.odom_topic is not None else self._odometry_from_tf()
        self._sensor_stamps = None if config.sensor_stamps_topic is None else self._stamps_of(config.sensor_stamps_topic)

    def _odometry_from_tf(self) -> Trajectory:
        c = self.config
        return tf_odometry(self.bag, c.odom_topic, c.odom_frame, c.base_frame)

    def _stamps_of(self, topic: str) -> np.ndarray:
        stamps = []
        for m in self.bag.messages([topic]):
            try:
                stamps.append(_pose(m)[0])
            except ConversionError:
                continue  # the stream counts it when it is fed
        return np.sort(np.asarray(stamps, np.float64))

    def _skip(self, topic: str, exc: Exception) -> None:
        self.skipped[f"{topic}: {reason(str(exc))}"] += 1

    def _timed(self) -> Iterator[tuple[int, BagMessage | tuple[float, np.ndarray]]]:
        """(bag time ns, message) from the topics read, merged with the
        preloaded /tf odometry (at its stamps) when there is no odometry topic."""
        p = self.plan
        topics = list(dict.fromkeys([t for t in (p.odom_topic, p.reference_topic, *p.sensors) if t is not None]))
        messages = ((m.log_time_ns, m) for m in self.bag.messages(topics))
        if self._tf_odometry is None:
            return messages
        track = self._tf_odometry
        odometry = ((sec_to_ns(t), (float(t), T)) for t, T in zip(track.stamps, track.T))
        return heapq.merge(messages, odometry, key=lambda item: item[0])

    def events(self) -> Iterator[Event]:
        p, c = self.plan, self.config
        span = max(p.end_ns - p.start_ns, 1)
        wall_start, handled = time.perf_counter(), 0
        for ns, item in self._timed():
            if ns < p.start_ns:
                continue
            if ns > p.end_ns:
                break
            if self.first_ns is None:
                self.first_ns = ns
            self.last_ns = ns
            handled += 1
            if c.rate is not None:  # pace bag time at `rate` times the wall clock
                ahead = (ns - self.first_ns) / 1e9 / c.rate - (time.perf_counter() - wall_start)
                if ahead > 0.0:
                    time.sleep(ahead)
            if self.bar is not None:
                self.bar.update((ns - p.start_ns) / span, handled)
            if isinstance(item, BagMessage):
                yield from self._message_events(item)
            else:  # (stamp, T_odom_base) from /tf
                stamp, T_odom_base = item
                self.fed["/tf"] += 1
                self.odometry[0].append(stamp)
                self.odometry[1].append(T_odom_base)
                yield "odom", stamp, T_odom_base

    def _message_events(self, m: BagMessage) -> Iterator[Event]:
        p = self.plan
        if m.topic in (p.odom_topic, p.reference_topic):
            try:
                stamp, T, warning = _pose(m)
            except ConversionError as exc:
                self._skip(m.topic, exc)
                return
            if warning:
                self.warnings[f"{m.topic}: {reason(warning)}"] += 1
            self.fed[m.topic] += 1
            if m.topic == p.odom_topic:  # and also the reference, in the bench's reference-as-odometry run
                self.odometry[0].append(stamp)
                self.odometry[1].append(T)
                yield "odom", stamp, T
            if m.topic == p.reference_topic:
                self.reference[0].append(stamp)
                self.reference[1].append(T)
                yield "ground_truth", stamp, T
            return
        planar = p.sensors[m.topic]
        try:
            stamp = stamp_to_sec(m.msg.header.stamp)
            if self._sensor_stamps is not None and not _near(self._sensor_stamps, stamp):
                self.filtered += 1
                return
            points, dropped = points_from_scan(m.msg) if planar else points_from_cloud(m.msg)
            p_sensor, moved = self.frames.to_sensor(frame_name(m.msg.header.frame_id), points)
        except ConversionError as exc:
            self._skip(m.topic, exc)
            return
        self.fed[m.topic] += 1
        # Planar only as taken: moved into another frame, the scan plane is
        # no longer the sensor frame's z = 0.
        yield "cloud", stamp, Cloud(p_sensor, dropped, planar and not moved)


def replay(
    bag_path: str | Path,
    config: ReplayConfig = ReplayConfig(),
    mapper_config: MapperConfig = MapperConfig(),
    theta: cal.Theta | None = None,
    output: str | Path | None = None,
    record: str | Path | None = None,
    relations: np.ndarray | None = None,
    progress: bool = False,
    say: Callable[[str], None] = lambda _: None,
    on_mapper: Callable[[Mapper], None] | None = None,
) -> ReplayResult:
    """Replay the bag at ``bag_path`` through a new Mapper (``mapper_config``,
    starting from calibration ``theta``) and score it.

    ``output``: a folder for the result files (each written atomically, and
    only once the replay succeeded; the PNG is drawn apart, by
    :func:`dsg_ros.tools.evaluate.plot_replay`); ``record``: an mcap bag of
    what the node would publish; ``relations``: Kuemmerle relations (R, 8)
    to score the estimate and the odometry on; ``progress``: a progress bar on stderr;
    ``on_mapper``: sees the new Mapper before it maps (the learning cache hooks its window).
    BagError for a bag that cannot be read as asked (the text names it).
    """
    # The mapper's warnings are counted by reason in the summary; a line each
    # on stderr would bury everything else (a long log has thousands).
    mapper_log = logging.getLogger("dsg_ros.mapping")
    level = mapper_log.level
    mapper_log.setLevel(logging.ERROR)
    try:
        return _replay(bag_path, config, mapper_config, theta, output, record, relations, progress, say, on_mapper)
    finally:
        mapper_log.setLevel(level)


def _replay(
    bag_path: str | Path,
    config: ReplayConfig,
    mapper_config: MapperConfig,
    theta: cal.Theta | None,
    output: str | Path | None,
    record: str | Path | None,
    relations: np.ndarray | None,
    progress: bool,
    say: Callable[[str], None],
    on_mapper: Callable[[Mapper], None] | None,
) -> ReplayResult:
    with Bag(bag_path) as bag:
        plan = _plan(bag, config, mapper_config)
        mapper_config = replace(mapper_config, T_base_sensor=tuple(float(v) for v in plan.T_base_sensor))
        say(f"{bag.path}: {', '.join(plan.sensors)} in frame {plan.sensor_frame} (extrinsic from {plan.extrinsic_source}); "
            f"odometry from {plan.odom_topic or '/tf'}" + (f"; reference {plan.reference_topic}" if plan.reference_topic else ""))
        # Preloads /tf odometry when there is no odometry topic: a bag without
        # any fails here, before the mapper compiles.
        stream = _Stream(bag, plan, config)
        writer = BagWriter(record, "mcap") if record is not None else nullcontext()
        with writer as bag_out:
            mapper = Mapper(mapper_config, theta)
            if on_mapper is not None:
                on_mapper(mapper)
            nominal = np.asarray(mapper_config.T_base_sensor, np.float64)
            stream.frames.T_base_sensor = lambda: cal.base_sensor(mapper.theta, nominal)
            warm_up_s = mapper.warm_up()
            say(f"warm-up (compiling the mapper) took {warm_up_s:.1f} s")
            bar = stream.bar = ProgressBar("replay") if progress else None
            record_config = replace(config.record, odom_frame=config.odom_frame, base_frame=config.base_frame)
            recorder = Recorder(bag_out, mapper, record_config) if bag_out is not None else None
            ticks = _Ticks(recorder)
            run = drive(mapper, stream.events(), use_reference=config.supervise, calibrate=config.calibrate, on_tick=ticks.on_tick)
            if bar is not None:
                bar.close()
            if recorder is not None:
                recorder.finish()
    estimate = ticks.trajectory()
    smoothed = Trajectory(*run.trajectory(), "keyframes")
    odometry = _trajectory(*stream.odometry, plan.odom_topic or "/tf")
    reference = _trajectory(*stream.reference, plan.reference_topic) if plan.reference_topic else None
    summary = _summary(
        bag_path=bag_path,
        config=config,
        plan=plan,
        mapper=mapper,
        run=run,
        stream=stream,
        ticks=ticks,
        estimate=estimate,
        smoothed=smoothed,
        odometry=odometry,
        reference=reference,
        relations=relations,
        warm_up_s=warm_up_s,
    )
    if bag_out is not None:
        summary["record"] = {"path": str(record), "counts": dict(bag_out.counts)}
    result = ReplayResult(summary, estimate, smoothed, odometry, reference, mapper, run)
    if output is not None:
        _write_outputs(Path(output), result, bag_path)
    return result


class _Ticks:
    """What the ticks published for each consumed cloud, and their warnings by reason."""

    def __init__(self, recorder: Recorder | None) -> None:
        self.recorder = recorder
        self.stamps: list[float] = []
        self.poses: list[np.ndarray] = []
        self.warnings: Counter[str] = Counter()

    def on_tick(self, result: TickResult) -> None:
        self.stamps += result.cloud_stamps
        self.poses += list(result.cloud_poses)
        for warning in result.warnings:
            self.warnings[reason(warning)] += 1
        if self.recorder is not None:
            self.recorder.on_tick(result)

    def trajectory(self) -> Trajectory:
        """Consumed clouds with a pose (a cloud before every keyframe has none)."""
        T = np.asarray(self.poses, np.float64).reshape(-1, 7)
        keep = np.isfinite(T).all(axis=1)
        return Trajectory(np.asarray(self.stamps, np.float64)[keep], T[keep], "clouds")


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _summary(
    *,
    bag_path: str | Path,
    config: ReplayConfig,
    plan: _Plan,
    mapper: Mapper,
    run: RunRecord,
    stream: _Stream,
    ticks: _Ticks,
    estimate: Trajectory,
    smoothed: Trajectory,
    odometry: Trajectory,
    reference: Trajectory | None,
    relations: np.ndarray | None,
    warm_up_s: float,
) -> dict[str, Any]:
    duration_s = (stream.last_ns - stream.first_ns) / 1e9 if stream.first_ns is not None and stream.last_ns is not None else 0.0
    skipped = dict(stream.skipped)
    skipped.update({f"{kind} refused by the mapper": n for kind, n in run.rejected.items()})
    summary: dict[str, Any] = {
        "bag": str(bag_path),
        "sensors": list(plan.sensors),
        "sensor_frame": plan.sensor_frame,
        "T_base_sensor": [float(v) for v in plan.T_base_sensor],
        "extrinsic_source": plan.extrinsic_source,
        "odometry_source": odometry.source,
        "reference_topic": plan.reference_topic,
        "start_s": config.start_s,
        "duration_s": duration_s,
        "wall_s": run.wall_s,
        "realtime_factor": duration_s / run.wall_s if run.wall_s > 0 else None,
        "warm_up_s": warm_up_s,
        "messages": dict(stream.fed),
        "filtered_sensor_messages": stream.filtered,
        "ticks": len(run.tick_ms),
        "clouds_consumed": len(ticks.stamps),
        "keyframes": mapper.stats["keyframes"],
        "map_voxels": len(mapper.window.voxel_map),
        "tick_ms_p50": _percentile(run.tick_ms, 50),
        "tick_ms_p99": _percentile(run.tick_ms, 99),
        "keyframe_tick_ms_p50": _percentile(run.keyframe_tick_ms, 50),
        "keyframe_tick_ms_p99": _percentile(run.keyframe_tick_ms, 99),
        "calibration_ms_p50": _percentile(run.calibration_ms, 50),
        "calibration_steps": mapper.calibrator.steps,
        "calibration_accepted": mapper.calibrator.accepted,
        "calibration_rejected": mapper.calibrator.rejected,
        "calibration": cal.CalibrationSummary.of(mapper.theta).__dict__,
        "compilations_after_warmup": run.last.diagnostics.compilations_after_warmup if run.last is not None else None,
        "rss_mb": runtime.peak_rss_mb(),
        "skipped": skipped,
        "warnings": dict(stream.warnings + ticks.warnings),
        "mapper_stats": dict(mapper.stats),
    }
    if reference is not None:
        scores = {"estimate": estimate, "smoothed": smoothed, "odometry": odometry}
        summary["scores"] = {name: metrics.score(t.stamps, t.T, reference.stamps, reference.T, config.gaps_s) for name, t in scores.items()}
        if relations is not None:
            for name, t in scores.items():
                summary["scores"][name].update(metrics.score_relations(t.stamps, t.T, relations))
    elif relations is not None:
        tracks = (("estimate", estimate), ("smoothed", smoothed), ("odometry", odometry))
        summary["scores"] = {name: metrics.score_relations(t.stamps, t.T, relations) for name, t in tracks}
    return summary


def _write_outputs(output: Path, result: ReplayResult, bag_path: str | Path) -> None:
    """Every result file into ``output``, each atomically."""
    output.mkdir(parents=True, exist_ok=True)
    estimate, odometry, reference = result.estimate, result.odometry, result.reference
    odometry_at_clouds = metrics.poses_at(odometry.stamps, odometry.T, estimate.stamps, MATCH_TOLERANCE_S)
    has_odometry = np.isfinite(odometry_at_clouds).all(axis=1)
    tracks = {
        "estimate.tum": (estimate.stamps, estimate.T),
        "smoothed.tum": (result.smoothed.stamps, result.smoothed.T),
        "odometry.tum": (estimate.stamps[has_odometry], odometry_at_clouds[has_odometry]),
    }
    if reference is not None:
        tracks["reference.tum"] = (reference.stamps, reference.T)
    for name, (stamps, poses) in tracks.items():
        metrics.write_tum(output / name, stamps, poses)
    source = {"source": "dsg-ros replay", "bag": str(bag_path), "calibration_steps": result.mapper.calibrator.steps}
    cal.save(output / "calibration.yaml", result.mapper.theta, source)
    _, positions, counts = result.mapper.voxels()
    write_ply(output / "map.ply", positions, counts)
    with atomic_path(output / "summary.json") as tmp:
        tmp.write_text(json.dumps(result.summary, indent=2) + "\n")

