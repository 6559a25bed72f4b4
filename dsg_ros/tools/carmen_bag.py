"""CARMEN log → rosbag2: ``/scan``, ``/odom``, ``/ground_truth``, ``/tf_static``.

The bag is what a ROS 2 driver stack would have recorded:

* ``/scan`` sensor_msgs/LaserScan in ``laser``: 180° from −90°, the log's
  max-range readings written as +inf (REP 117 "no return"), ``range_max`` =
  the sensor's maximum;
* ``/odom`` nav_msgs/Odometry ``odom → base_link``: the ODOM records with
  their velocities (``odom``), or one per scan from the FLASER record's own
  odometry pose (``scan``: exact pairing with the scan, whatever the ODOM
  stamps do, but that pose is the last ODOM before the scan, stale by up to
  a record: seconds where the log stalled). ``auto`` (the default) takes the
  ODOM records when their stamps are sound
  (:attr:`carmen.CarmenLog.odometry_stamps_sound`), else the scans' field;
* ``/ground_truth`` nav_msgs/Odometry ``map → base_link`` at the matched scans
  of a corrected log (the reference laser pose moved back to the base);
* ``/tf_static`` ``base_link → laser``, the laser ``robot_frontlaser_offset``
  ahead of the base.

Stamps are the log's ipc stamps after :func:`carmen.repair_stamps` (so they
increase strictly per stream), and every message's bag time is its header
stamp.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsg_ros import se3
from dsg_ros.bag import BagWriter, build
from dsg_ros.msgs import LASER_SCAN, ODOMETRY, TF, sec_to_ns
from dsg_ros.tools import carmen

ODOMETRY_SOURCES = ("auto", "scan", "odom")


@dataclass(frozen=True)
class CarmenBagConfig:
    storage: str = "sqlite3"  # or "mcap"
    odometry: str = "auto"  # "scan": FLASER odometry poses; "odom": ODOM records; "auto": see the module docstring
    overwrite: bool = False
    scan_topic: str = "/scan"
    odom_topic: str = "/odom"
    ground_truth_topic: str = "/ground_truth"
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    laser_frame: str = "laser"

    def __post_init__(self) -> None:
        if self.odometry not in ODOMETRY_SOURCES:
            raise ValueError(f"odometry must be one of {ODOMETRY_SOURCES}, got {self.odometry!r}")


def _T_base_laser(log: carmen.CarmenLog) -> np.ndarray:
    return np.array([1.0, 0.0, 0.0, 0.0, log.laser_offset_m, 0.0, 0.0])


def scan_ranges(log: carmen.CarmenLog) -> np.ndarray:
    """Ranges (N, B) float32 with every reading at or beyond the sensor's
    maximum replaced by +inf."""
    return np.where(log.scans.ranges >= log.max_range_m, np.float32(np.inf), log.scans.ranges)


def ground_truth(log: carmen.CarmenLog, reference: carmen.CarmenLog) -> tuple[np.ndarray, np.ndarray]:
    """Raw scan indices (K,) matched in ``reference`` and ``T_map_base`` (K, 7)
    there: T_map_base = T_map_laser · T_base_laser⁻¹."""
    index, laser_pose = carmen.match_reference(log, reference)
    T_map_laser = carmen.se2_to_se3(laser_pose)
    return index, se3.compose(T_map_laser, se3.inverse(_T_base_laser(log)))


Event = tuple[int, str, str, Any]  # (bag time ns, topic, msgtype, rosbags message)


def _scan_events(log: carmen.CarmenLog, scan_ns: list[int], c: CarmenBagConfig) -> Iterator[Event]:
    bearings = carmen.beam_angles(log.beams)
    step = float(bearings[1] - bearings[0])
    range_max = log.max_range_m  # a property that may scan every range: once
    for ns, r in zip(scan_ns, scan_ranges(log)):
        yield ns, c.scan_topic, LASER_SCAN, build.laser_scan(ns, c.laser_frame, r, float(bearings[0]), step, 0.0, range_max)


def odometry_source(log: carmen.CarmenLog, requested: str) -> str:
    """"scan" or "odom": what ``requested`` ("auto", "scan" or "odom") means for this log."""
    if requested == "auto":
        return "odom" if log.odometry_stamps_sound else "scan"
    return requested


def _odometry_events(log: carmen.CarmenLog, odom_ns: list[int], source: str, c: CarmenBagConfig) -> Iterator[Event]:
    """``odom_ns``: the scans' stamps for ``source == "scan"``, else the ODOM records'."""
    if source == "scan":
        for ns, T in zip(odom_ns, carmen.se2_to_se3(log.scans.odom_pose)):
            yield ns, c.odom_topic, ODOMETRY, build.odometry(ns, c.odom_frame, c.base_frame, T)
        return
    odo = log.odometry
    for ns, T, tv, rv in zip(odom_ns, carmen.se2_to_se3(odo.poses), odo.tv, odo.rv):
        twist = np.array([tv, 0.0, 0.0, 0.0, 0.0, rv])  # CARMEN's tv, rv: the base's forward and yaw rates
        yield ns, c.odom_topic, ODOMETRY, build.odometry(ns, c.odom_frame, c.base_frame, T, twist)


def _ground_truth_events(index: np.ndarray, T_map_base: np.ndarray, scan_ns: list[int], c: CarmenBagConfig) -> Iterator[Event]:
    for i, T in zip(index, T_map_base):
        yield scan_ns[i], c.ground_truth_topic, ODOMETRY, build.odometry(scan_ns[i], c.map_frame, c.base_frame, T)


def convert(
    log_path: str | Path,
    out: str | Path,
    reference_path: str | Path | None = None,
    config: CarmenBagConfig = CarmenBagConfig(),
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Write the bag ``out`` from the CARMEN log at ``log_path`` (and its
    corrected log, if given); returns a JSON-able summary. CarmenError for an
    unreadable log, BagError for an unwritable bag."""
    started = time.perf_counter()
    c = config
    # Opened first: an existing destination fails before minutes of reading.
    with BagWriter(out, c.storage, c.overwrite) as writer:
        log = carmen.read_log(log_path)
        say(f"read {log_path}: {len(log.scans)} scans of {log.beams} beams, {len(log.odometry.stamps)} ODOM records, "
            f"{log.repaired_stamps} stamps repaired")
        index, T_map_base = np.zeros(0, int), np.zeros((0, 7))
        if reference_path is not None:
            index, T_map_base = ground_truth(log, carmen.read_log(reference_path))
            say(f"reference {reference_path}: {len(index)} of its scans matched")

        source = odometry_source(log, c.odometry)
        scan_ns = [sec_to_ns(t) for t in log.scans.stamps]
        odom_ns = scan_ns if source == "scan" else [sec_to_ns(t) for t in log.odometry.stamps]
        start_ns = min(scan_ns[0], *odom_ns[:1])
        static = build.tf_message([(c.base_frame, c.laser_frame, start_ns, _T_base_laser(log))])
        streams = [
            iter([(start_ns, "/tf_static", TF, static)]),
            _scan_events(log, scan_ns, c),
            _odometry_events(log, odom_ns, source, c),
            _ground_truth_events(index, T_map_base, scan_ns, c),
        ]
        # Each stream's stamps increase (repaired); merging keeps the bag in
        # time order, and at equal stamps the order of the streams above.
        for ns, topic, msgtype, msg in heapq.merge(*streams, key=lambda e: e[0]):
            writer.write(topic, msgtype, msg, ns)
            end_ns = ns
    seconds = time.perf_counter() - started
    say(f"wrote {out} ({c.storage}) in {seconds:.1f} s")
    return {
        "output": str(out),
        "storage": c.storage,
        "odometry": source,
        "counts": dict(writer.counts),
        "scans": len(log.scans),
        "beams": log.beams,
        "reference_matched": len(index),
        "stamps_repaired": log.repaired_stamps,
        "max_range_m": log.max_range_m,
        "laser_offset_m": log.laser_offset_m,
        "start_s": start_ns / 1e9,
        "duration_s": (end_ns - start_ns) / 1e9,
        "seconds": seconds,
    }
