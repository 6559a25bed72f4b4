"""CARMEN laser logs (``.clf``/``.log``, plain, gzip or bzip2): scans, odometry, references.

The classic 2D-laser benchmark logs (Intel Research Lab, Freiburg 079, ACES,
…) are CARMEN text files, one record per line:

* ``FLASER n r_1 … r_n x y θ odom_x odom_y odom_θ ipc_stamp host logger_stamp``:
  a front laser scan over 180° starting at −90°, its laser pose and the
  robot's odometry pose when it was taken;
* ``ODOM x y θ tv rv accel ipc_stamp host logger_stamp``: wheel odometry;
* ``PARAM name value …``; ``#`` comments; other records are ignored.

A *corrected* log (a SLAM result) has the same FLASER records with the
corrected pose in both pose fields; its scans are matched to the raw log's
by their ranges (:func:`match_reference`).
"""

from __future__ import annotations

import bz2
import functools
import gzip
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

# Laser geometry: every log of this family scans 180° starting at −90°.
FIELD_OF_VIEW_RAD = math.pi
ANGLE_MIN_RAD = -math.pi / 2.0


class CarmenError(ValueError):
    """A log line that does not parse; the message names the file and line."""


@dataclass(frozen=True)
class Scans:
    """FLASER records in file order.

    stamps:      (N,) seconds (ipc stamps, repaired to increase strictly).
    ranges:      (N, B) metres, as logged (max range = no return).
    laser_pose:  (N, 3) ``x y θ`` of the laser, in the log's world frame.
    odom_pose:   (N, 3) ``x y θ`` of the robot's odometry at the scan.
    raw_stamps:  (N,) ipc stamps as logged.
    """

    stamps: np.ndarray
    ranges: np.ndarray
    laser_pose: np.ndarray
    odom_pose: np.ndarray
    raw_stamps: np.ndarray

    def __len__(self) -> int:
        return int(self.stamps.shape[0])


@dataclass(frozen=True)
class OdometryRecords:
    """ODOM records in file order: stamps (M,) (repaired), poses (M, 3) ``x y θ``,
    translational and rotational velocities (M,)."""

    stamps: np.ndarray
    poses: np.ndarray
    tv: np.ndarray
    rv: np.ndarray


@dataclass(frozen=True)
class CarmenLog:
    path: Path
    scans: Scans
    odometry: OdometryRecords
    params: dict[str, str]
    repaired_scan_stamps: int  # FLASER records whose stamp the repair changed
    repaired_odometry_stamps: int  # ODOM records whose stamp the repair changed

    @property
    def repaired_stamps(self) -> int:
        return self.repaired_scan_stamps + self.repaired_odometry_stamps

    @property
    def odometry_stamps_sound(self) -> bool:
        """Whether the ODOM records' stamps are usable: the repair changed at most
        10 % of them. Where it changed more (Intel: bursts throughout), the
        scans' own odometry field, paired with each scan exactly, is the
        better odometry."""
        n = self.odometry.stamps.size
        return n > 0 and self.repaired_odometry_stamps <= 0.1 * n

    @property
    def beams(self) -> int:
        return int(self.scans.ranges.shape[1])

    @functools.cached_property
    def max_range_m(self) -> float:
        """The sensor's no-return reading: the ``*laser_max`` parameter, else the
        largest range logged if it is a saturation value (at least 0.1 % of the
        readings equal it), else infinity (no reading means no return)."""
        for name in ("robot_front_laser_max", "robot_frontlaser_max", "laser_front_laser_max"):
            if name in self.params:
                try:
                    return float(self.params[name])
                except ValueError:
                    pass
        ranges = self.scans.ranges
        if ranges.size:
            top = float(ranges.max())
            if np.count_nonzero(ranges == top) >= 1e-3 * ranges.size:
                return top
        return float("inf")

    @property
    def laser_offset_m(self) -> float:
        """Forward offset of the laser from the base (``robot_frontlaser_offset``; 0 if absent)."""
        try:
            return float(self.params.get("robot_frontlaser_offset", 0.0))
        except ValueError:
            return 0.0


def _open(path: Path) -> IO[str]:
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="ascii", errors="replace")


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        with _open(path) as handle:
            for number, line in enumerate(handle, 1):
                fields = line.split()
                if fields and not fields[0].startswith("#"):
                    yield number, fields
    except (OSError, EOFError, ValueError) as exc:  # a truncated or corrupt archive
        raise CarmenError(f"{path}: cannot read: {exc}") from None


def read_log(path: str | Path, repair: bool = True) -> CarmenLog:
    """Parse a CARMEN log. ``repair``: make stamps strictly increasing in file
    order (:func:`repair_stamps`); the raw ones stay in ``Scans.raw_stamps``."""
    path = Path(path)
    if not path.is_file():
        raise CarmenError(f"{path}: no such file")
    scan_rows: list[tuple[list[float], list[float], float]] = []
    odom_rows: list[tuple[list[float], float]] = []
    params: dict[str, str] = {}
    for number, fields in _lines(path):
        kind = fields[0]
        try:
            if kind == "FLASER":
                n = int(fields[1])
                if n <= 0 or len(fields) < n + 11:
                    raise ValueError(f"FLASER with {n} beams needs {n + 11} fields, has {len(fields)}")
                ranges = [float(v) for v in fields[2 : 2 + n]]
                poses = [float(v) for v in fields[2 + n : 8 + n]]
                scan_rows.append((ranges, poses, float(fields[8 + n])))
            elif kind == "ODOM":
                if len(fields) < 10:
                    raise ValueError(f"ODOM needs 10 fields, has {len(fields)}")
                odom_rows.append(([float(v) for v in fields[1:6]], float(fields[7])))
            else:
                if kind == "PARAM" and len(fields) >= 3:
                    params[fields[1]] = fields[2]
                continue
        except ValueError as exc:
            raise CarmenError(f"{path}:{number}: cannot parse {kind} record: {exc}") from None
    if not scan_rows:
        raise CarmenError(f"{path}: no FLASER records")
    beams = {len(r[0]) for r in scan_rows}
    if len(beams) != 1:
        raise CarmenError(f"{path}: scans have different beam counts {sorted(beams)}")
    # Each stream is repaired on its own (ODOM and FLASER come from different
    # processes, so their stamps interleave out of file order even in good logs).
    stamps = {"scan": np.array([r[-1] for r in scan_rows]), "odom": np.array([r[-1] for r in odom_rows])}
    for name, t in stamps.items():
        if not np.all(np.isfinite(t)):
            raise CarmenError(f"{path}: non-finite {name} stamps")
    fixed = {name: repair_stamps(t) if repair else (t, 0) for name, t in stamps.items()}
    scan_poses = np.array([r[1] for r in scan_rows])
    scans = Scans(
        stamps=fixed["scan"][0],
        ranges=np.array([r[0] for r in scan_rows], np.float32),
        laser_pose=scan_poses[:, :3],
        odom_pose=scan_poses[:, 3:],
        raw_stamps=stamps["scan"],
    )
    odom = np.array([r[0] for r in odom_rows]).reshape(-1, 5)
    odometry = OdometryRecords(stamps=fixed["odom"][0], poses=odom[:, :3], tv=odom[:, 3], rv=odom[:, 4])
    return CarmenLog(path, scans, odometry, params, fixed["scan"][1], fixed["odom"][1])


def repair_stamps(stamps: np.ndarray, burst_s: float = 0.02, window: int = 10) -> tuple[np.ndarray, int]:
    """Strictly increasing stamps (n,) for records whose file order is the true order.

    Where a logger stalled, records arrive late and in bursts, stamped on
    arrival: a stamp later than a following one, or many records less than
    ``burst_s`` apart. Around such records (``window`` records either side)
    the stamps are replaced by their moving average over file order, which
    spreads a burst over the stall before it and leaves a steady rate as it
    was; elsewhere stamps are kept. Returns the stamps and how many changed
    by more than 1 ms.
    """
    t = np.asarray(stamps, np.float64)
    n = t.size
    if n < 2:
        return t.copy(), 0
    fixed = np.minimum.accumulate(t[::-1])[::-1]
    bad = fixed != t
    bad[1:] |= np.diff(fixed) < burst_s
    if np.any(bad):
        # Records within ``window`` of a bad one (a running count of bad records).
        count = np.concatenate([[0], np.cumsum(bad)])
        i = np.arange(n)
        near = count[np.minimum(i + window + 1, n)] > count[np.maximum(i - window, 0)]
        # Moving average with the window shrunk symmetrically at the ends.
        cumsum = np.concatenate([[0.0], np.cumsum(fixed - fixed[0])])
        half = np.minimum(np.minimum(i, n - 1 - i), window)
        smooth = fixed[0] + (cumsum[i + half + 1] - cumsum[i - half]) / (2 * half + 1)
        fixed = np.where(near, smooth, fixed)
    # Equal neighbours (a burst at the very start or end) get nudged apart.
    step = 1e-6
    fixed = np.maximum.accumulate(fixed - step * np.arange(n)) + step * np.arange(n)
    return fixed, int(np.count_nonzero(np.abs(fixed - t) > 1e-3))


def match_reference(raw: CarmenLog, corrected: CarmenLog) -> tuple[np.ndarray, np.ndarray]:
    """Pair each corrected scan with the raw scan of identical ranges (to 2 decimals).

    Returns raw scan indices (K,) and the reference laser poses ``x y θ`` (K, 3),
    in raw-scan order. Corrected scans with no match or several are
    left out (none in the benchmark logs).
    """

    def key(ranges: np.ndarray) -> bytes:
        return np.round(ranges.astype(np.float64) * 100.0).astype(np.int64).tobytes()

    index: dict[bytes, int] = {}
    ambiguous: set[bytes] = set()
    for i, r in enumerate(raw.scans.ranges):
        k = key(r)
        if k in index:
            ambiguous.add(k)
        index[k] = i
    pairs = []
    for j, r in enumerate(corrected.scans.ranges):
        k = key(r)
        if k in index and k not in ambiguous:
            pairs.append((index[k], j))
    if not pairs:
        raise CarmenError(f"{corrected.path}: no scan matches a scan of {raw.path} (is it the corrected version of that log?)")
    pairs.sort()
    rows = np.array(pairs)
    return rows[:, 0], corrected.scans.laser_pose[rows[:, 1]]


def read_relations(path: str | Path) -> np.ndarray:
    """Kuemmerle relations ``t1 t2 x y z roll pitch yaw`` (R, 8); errors name the line."""
    path = Path(path)
    rows = []
    for number, fields in _lines(path):
        try:
            if len(fields) != 8:
                raise ValueError(f"expected 8 fields, got {len(fields)}")
            rows.append([float(v) for v in fields])
        except ValueError as exc:
            raise CarmenError(f"{path}:{number}: cannot parse relation: {exc}") from None
    return np.array(rows).reshape(-1, 8)


def beam_angles(beams: int) -> np.ndarray:
    """Bearing (B,) of each beam, radians: 180° spread over the beams, the first at −90°.

    ``beams`` even (180, 360): the step is 180°/beams (1° or 0.5°); odd (181,
    361): 180°/(beams − 1), both ends included.
    """
    if beams < 2:
        raise CarmenError(f"a scan needs at least 2 beams, got {beams}")
    step = FIELD_OF_VIEW_RAD / (beams if beams % 2 == 0 else beams - 1)
    return ANGLE_MIN_RAD + step * np.arange(beams)


def se2_to_se3(pose: np.ndarray) -> np.ndarray:
    """``x y θ`` (..., 3) → ``wxyz_xyz`` (..., 7) in the plane z = 0."""
    pose = np.asarray(pose, np.float64)
    half = 0.5 * pose[..., 2]
    zeros = np.zeros_like(half)
    return np.stack([np.cos(half), zeros, zeros, np.sin(half), pose[..., 0], pose[..., 1], zeros], axis=-1)
