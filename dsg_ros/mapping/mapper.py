"""The online mapper: odometry and clouds in, a solved sliding window out, every tick.

The ROS node and the bag replay both drive this object with plain numpy:
``add_odometry(stamp, T_odom_base)``, ``add_cloud(stamp, p_sensor)``,
optionally ``add_reference(stamp, T_world_base)`` (ground truth, for
supervised calibration), then ``tick()``. Callbacks may enqueue from other
threads; ``tick`` does the work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax_dataclasses as jdc
import numpy as np
from scipy.spatial import cKDTree

from dsg_ros import runtime, se3
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping.calibrator import CalibrationConfig, OnlineCalibrator, Snapshot
from dsg_ros.mapping.odometry import OdometryBuffer, OdometryLimits
from dsg_ros.mapping.registration import RegistrationConfig, map_tree, register, thin
from dsg_ros.mapping.voxels import CellObservations, scan_normals, voxelize
from dsg_ros.mapping.window import Keyframe, MarginalizationReport, OdometryRow, Window, WindowConfig
from dsg_ros.solve import SolverConfig, SolveSummary, solve
from dsg_ros.world import Noise, huber
from dsg_ros.world.layout import ANCHOR_VOXEL, ODOM_SE3, VOXEL_ANCHOR_OBS, VOXEL_POINT_OBS

log = logging.getLogger("dsg_ros.mapping")


@dataclass(frozen=True)
class KeyframePolicy:
    """A cloud becomes a keyframe when the robot moved or turned enough, or time passed."""

    distance_m: float = 0.5
    angle_deg: float = 10.0
    interval_s: float = 2.0


@dataclass(frozen=True)
class MapperConfig:
    window: WindowConfig = field(default_factory=WindowConfig)
    keyframes: KeyframePolicy = field(default_factory=KeyframePolicy)
    voxel_size: float = 0.2
    min_points_per_voxel: int = 2
    # A planar scan's beams are too sparse for two returns per cell beyond a
    # few metres (1° at 10 m is 17 cm): every return counts.
    scan_min_points_per_voxel: int = 1
    min_range_m: float = 0.3
    max_range_m: float = 40.0
    # Nominal base→sensor extrinsic, wxyz_xyz.
    T_base_sensor: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    # Noise per keyframe-to-keyframe odometry factor and per voxel observation
    # (before the learned scales); observations use a Huber loss.
    odom_sigma_m: float = 0.03
    odom_sigma_rad: float = 0.01
    # Odometry errors grow with the motion (wheels slip most in turns): each
    # increment's sigma adds these fractions of its distance and rotation.
    odom_sigma_per_m: float = 0.05
    odom_sigma_rad_per_rad: float = 0.1
    obs_sigma_m: float = 0.05
    # Where a cell's points lie on a plane, ``obs_sigma_m`` weighs only the
    # observation's component along the normal and this the in-plane ones:
    # which part of a surface falls in a cell changes with the viewpoint, so
    # an in-plane centroid moves between views (with one isotropic sigma it
    # let the heading drift), while the normal component does not.
    obs_plane_sigma_m: float = 0.25
    obs_huber: float = 3.0
    solver: SolverConfig = field(
        # One LM iteration per solve: a keyframe's tick solves once and
        # publishes; ``Mapper.refine()`` (drivers call it after publishing)
        # continues off the latency path. A relative decrease of 1e-4 is
        # converged for a map: the next keyframe re-solves the window anyway
        # (1e-6 kept windows refining with the same ATE).
        default_factory=lambda: SolverConfig(max_iterations=1, linear_solver="dense", relative_tolerance=1e-4)
    )
    # LM iterations one ``refine()`` call runs at most (while the window
    # still improves). Off by default: every keyframe's tick relinearizes
    # the whole window, so a pose is re-solved at each of the ~10 keyframes
    # it spends there. On the 60 s sim (seeds 0-2), refining up to 4
    # iterations left the ATE at 0.165 / 0.300 / 0.200 m against 0.160 /
    # 0.289 / 0.155 m without, and the estimate published at each keyframe's
    # own tick equally accurate (0.166 against 0.161 m), for ~3.5 s of
    # computation per simulated minute (600 s: 0.210 m with, 0.226 m
    # without). The node's parameter file turns it on: there refining uses
    # idle time only, and a 10-minute node run without it mapped worse (ATE
    # 3.1 m against 1.7 m with it; why the node needs it is open).
    refine_iterations: int = 0
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    cloud_hold_s: float = 0.5
    odometry: OdometryLimits = field(default_factory=OdometryLimits)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if self.voxel_size <= 0:
            raise ValueError("voxel_size must be positive")
        if self.refine_iterations < 0:
            raise ValueError("refine_iterations must be >= 0")
        if se3.normalized(np.asarray(self.T_base_sensor)) is None:
            raise ValueError(f"T_base_sensor {self.T_base_sensor} is not a valid wxyz_xyz pose")


@dataclass(frozen=True)
class TickDiagnostics:
    """The mapper's state after a tick, for ``/diagnostics`` and run summaries."""

    tick_ms: float
    window_keyframes: int
    window_capacity: int
    window_voxels: int
    window_observations: int
    map_voxels: int
    dropped_observations: int  # no free voxel slot: raise window.max_voxels if this grows
    compilations: int
    compilations_after_warmup: int
    last_solve: SolveSummary | None  # the last solve that was kept (not rolled back)
    calibration_steps: int
    calibration_accepted: int
    calibration_rejected: int
    calibration_clipped: int
    calibration_loss: float | None
    stats: dict[str, int]  # a copy of ``Mapper.stats``: inputs and outcomes counted since the start


@dataclass(frozen=True)
class TickResult:
    """What one tick produced. Poses are ``T_map_base`` (k, 7) ``wxyz_xyz``."""

    stamp: float | None
    keyframes_added: int
    cloud_stamps: list[float]  # clouds this tick consumed (keyframes or not)
    # ``T_map_base`` (len(cloud_stamps), 7) at each consumed cloud's stamp after
    # this tick's solve: what a driver publishes for that cloud (causal).
    cloud_poses: np.ndarray
    window_stamps: np.ndarray
    window_poses: np.ndarray
    odometry_stamp: float | None
    T_map_base: np.ndarray | None  # corrected odometry at ``odometry_stamp``
    T_map_odom: np.ndarray | None  # map → odom correction, for tf
    solve: SolveSummary | None  # this tick's solve, if a keyframe was added
    rolled_back: bool
    marginalized: list[MarginalizationReport]
    warnings: list[str]
    # A calibration step is due after this tick (the driver decides whether
    # and where it runs: ``Mapper.calibrate`` or its three parts).
    calibration_due: bool
    diagnostics: TickDiagnostics


# Odometry motion below which a cloud is placed where the last one was.
_STILL_M = 0.01
_STILL_RAD = np.radians(0.2)


class _Track(NamedTuple):
    """The last localized cloud: its stamp, ``T_map_base`` (7,), the raw
    odometry ``T_odom_base`` (7,) and body velocity (6,) there, and its
    keyframe (None if it did not become one)."""

    stamp: float
    T_map_base: np.ndarray
    T_odom_base: np.ndarray
    odom_velocity: np.ndarray
    keyframe: Keyframe | None


@dataclass(frozen=True)
class _Localized:
    """One consumed cloud: where it was placed (None: dropped) and the keyframe it became."""

    stamp: float
    T_map_base: np.ndarray | None
    keyframe: Keyframe | None = None
    marginalized: MarginalizationReport | None = None


class Mapper:
    """Keyframes, voxel map and calibration, updated by ``tick()``."""

    def __init__(self, config: MapperConfig = MapperConfig(), theta: cal.AnyTheta | None = None) -> None:
        self.config = config
        self.window = Window(config.window)
        # Host (NumPy) copies: correcting odometry per tick then costs no dispatch.
        self.theta, outside = config.calibration.bounds.clip(theta if theta is not None else cal.zero_theta())
        self.odometry = OdometryBuffer(config.odometry)
        # The reference (ground-truth) stream, if any: only interpolated.
        self.reference = OdometryBuffer(OdometryLimits(max_speed_m_s=1e9, max_rate_rad_s=1e9, history_s=config.odometry.history_s))
        T_base_sensor_nominal = se3.normalized(np.asarray(config.T_base_sensor, np.float64))
        assert T_base_sensor_nominal is not None  # MapperConfig rejects an invalid extrinsic
        self._T_base_sensor_nominal = T_base_sensor_nominal
        # Callbacks enqueue from other threads under ``_inputs`` (held only
        # for a queue append); the window changes under ``_state``, so a long
        # solve never blocks a callback.
        self._inputs = threading.RLock()
        self._state = threading.RLock()
        # The calibrator's buffers and optimizer state change under this one:
        # a worker thread learns while the ticking thread may reset.
        self._learning = threading.Lock()
        self._clouds: deque[tuple[float, np.ndarray, bool]] = deque()
        self._last_cloud_stamp: float | None = None  # newest accepted, queued or not
        self._warnings: list[str] = []
        self._dirty = False
        self._last_report: SolveSummary | None = None
        self._solver = jax.jit(solve, static_argnames="config")
        self.calibrator = OnlineCalibrator(config.calibration, self.theta, self._T_base_sensor_nominal, resumed=theta is not None)
        self._compilations_at_warmup: int | None = None
        # The last localized cloud: the next cloud is predicted from it.
        self._track: _Track | None = None
        # Registration target: (centre, map voxels (M, 3), their KD-tree).
        self._map_tree: tuple[np.ndarray, np.ndarray, cKDTree | None] | None = None
        self.stats = {"clouds": 0, "keyframes": 0, "dropped_clouds": 0, "dropped_points": 0, "rejected_odometry": 0, "rejected_clouds": 0,
                      "rollbacks": 0, "ticks": 0, "registrations": 0, "registration_failures": 0, "registration_screened": 0}
        if outside:
            self._warn(f"calibration {outside} outside the configured bounds; clipped into them")

    def warm_up(self) -> float:
        """Compile every kernel a tick can use, on the empty window's shapes.

        Returns the seconds it took. Afterwards ticks never compile (the
        diagnostics count ``compilations_after_warmup``). Called by the first
        ``tick`` if not before; the persistent XLA cache makes later starts quick.
        Ends with ``runtime.settle_heap()``: what compiling left behind is then
        never walked by the garbage collector in the middle of a tick.
        """
        started = time.perf_counter()
        wm = self.window.model
        self._solver(wm.graph(), wm.pack_state(), config=self.config.solver)[1].summary()
        self.window.warm_up()
        if self.config.calibration.every_keyframes:
            self.calibrator.warm_up(self.theta, self._snapshot())
        self._compilations_at_warmup = runtime.compilation_count()
        runtime.settle_heap()
        return time.perf_counter() - started

    # ------------------------------------------------------------------ inputs

    def add_odometry(self, stamp: float, T_odom_base: np.ndarray) -> bool:
        """Queue an odometry sample; False (and a warning) if it was rejected."""
        with self._inputs:
            reason = self.odometry.add(float(stamp), np.asarray(T_odom_base, np.float64))
            if reason:
                self.stats["rejected_odometry"] += 1
                self._warn(reason)
            return reason is None

    def add_reference(self, stamp: float, T_world_base: np.ndarray) -> bool:
        """Queue a reference pose (ground truth); enables supervised calibration."""
        with self._inputs:
            reason = self.reference.add(float(stamp), np.asarray(T_world_base, np.float64))
            if reason:
                self._warn("reference " + reason)
            return reason is None

    def add_cloud(self, stamp: float, p_sensor: np.ndarray, dropped: int = 0, planar: bool = False) -> bool:
        """Queue a cloud (N, 3) in the sensor frame. Non-finite points are dropped
        and counted (with ``dropped`` more the caller already removed); an empty,
        malformed or out-of-order cloud is skipped with a warning and counted
        in ``stats["rejected_clouds"]``. ``planar``: the points come from a
        planar scanner (a LaserScan, in the sensor's z = 0 plane)."""
        points = np.asarray(p_sensor)
        if not np.isfinite(stamp):
            return self._refuse_cloud(f"cloud stamp {stamp} is not finite")
        if points.ndim != 2 or points.shape[1] != 3:
            return self._refuse_cloud(f"cloud at {stamp:.3f} has shape {points.shape}, expected (N, 3)")
        points = points.astype(np.float64, copy=False)
        # A squared range is non-finite exactly when a coordinate is (or is
        # beyond 1e154 m), and then fails both range tests.
        with np.errstate(over="ignore", invalid="ignore"):
            sq_range = np.einsum("ij,ij->i", points, points)
        keep = (sq_range >= self.config.min_range_m**2) & (sq_range <= self.config.max_range_m**2)
        with self._inputs:
            non_finite = int(np.count_nonzero(~np.isfinite(sq_range))) + dropped
            self.stats["dropped_points"] += non_finite
            if not np.any(keep):
                return self._refuse_cloud(f"cloud at {stamp:.3f} has no valid points ({non_finite} non-finite, the rest out of range)")
            if self._last_cloud_stamp is not None and stamp <= self._last_cloud_stamp:
                return self._refuse_cloud(f"cloud stamp {stamp:.6f} is not after the previous cloud ({self._last_cloud_stamp:.6f})")
            self._last_cloud_stamp = float(stamp)
            self._clouds.append((float(stamp), points[keep], bool(planar)))
            self.stats["clouds"] += 1
        return True

    def _refuse_cloud(self, why: str) -> bool:
        """Count and report a cloud ``add_cloud`` does not queue; returns False."""
        with self._inputs:
            self.stats["rejected_clouds"] += 1
        self._warn(why + "; skipped")
        return False

    def cloud_ready(self) -> bool:
        """Whether the oldest queued cloud is covered by odometry, i.e. the next
        tick would use it. A driver that ticks on arrival asks this after each
        odometry sample: a cloud that came before its odometry is then mapped
        as soon as that odometry lands, not a tick period later."""
        with self._inputs:
            return bool(self._clouds) and self.odometry.covers(self._clouds[0][0])

    # -------------------------------------------------------------------- tick

    def tick(self) -> TickResult:
        """Turn pending clouds into keyframes, solve the window if one was added, report.

        The solve runs ``solver.max_iterations`` (one by default): enough to
        place the new keyframe; ``refine()`` carries on after publishing.
        """
        if self._compilations_at_warmup is None:
            self.warm_up()
        started = time.perf_counter()
        added, marginalized = 0, []
        with self._inputs:
            ready = [
                (stamp, points, planar, self.odometry.interpolate(stamp), self.odometry.velocity(stamp))
                for stamp, points, planar in self._ready_clouds()
            ]
        with self._state:
            localized = [self._localize(*cloud) for cloud in ready]
            for cloud in localized:
                if cloud.keyframe is not None:
                    added += 1
                    if cloud.marginalized is not None:
                        marginalized.append(cloud.marginalized)
            solve_report, rolled_back = None, False
            if added:  # a new keyframe always leaves the window dirty
                solve_report, rolled_back = self._solve()
        with self._inputs:
            warnings, self._warnings = self._warnings, []
        every = self.config.calibration.every_keyframes
        due = bool(added and not rolled_back and every and self.stats["keyframes"] % every == 0 and len(self.window.keyframes) >= 2)
        self.stats["ticks"] += 1
        tick_ms = 1000.0 * (time.perf_counter() - started)
        with self._state:
            return self._result(
                added=added,
                cloud_stamps=[c.stamp for c in localized],
                cloud_poses=self._published_poses(localized),
                marginalized=marginalized,
                warnings=warnings,
                solve_report=solve_report,
                rolled_back=rolled_back,
                calibration_due=due,
                tick_ms=tick_ms,
            )

    def marginalize(self) -> MarginalizationReport | None:
        """Make room for the next keyframe now: marginalize the oldest one if the window is full.

        Optional: a keyframe arriving at a full window triggers the same
        marginalization inside ``tick``. Drivers call this right after
        publishing a tick's result, so the ~30 ms Schur complement lands
        between clouds instead of between a cloud and its published estimate.
        The window then holds ``keyframes - 1`` until the next keyframe.
        """
        with self._state:
            if not self.window.full:
                return None
            return self.window.marginalize_oldest()

    def refine(self, interrupt: Callable[[], bool] | None = None) -> int:
        """Continue solving the window off the latency path; returns the LM iterations run.

        A keyframe's tick solves just enough to publish; drivers call this
        after publishing (and after ``marginalize()``) to run up to
        ``refine_iterations`` more while the window still improves (also
        after ``set_theta`` changed its measurements). The next tick
        publishes the refined window. ``interrupt`` is asked before each
        solve: the node passes "a cloud is waiting", so refining delays a
        cloud by one LM iteration at most.
        """
        iterations = 0
        per_solve = self.config.solver.max_iterations
        while iterations < self.config.refine_iterations and not (interrupt is not None and interrupt()):
            with self._state:
                if not (self._dirty and self.window.keyframes):
                    break
                _, rolled_back = self._solve()
            iterations += per_solve
            if rolled_back:
                break
        return iterations

    # ------------------------------------------------------------- calibration

    def calibrate(self) -> float:
        """Snapshot the window, take one outer step, apply the new theta; returns milliseconds.

        ``tick()`` says when this is due (``TickResult.calibration_due``)
        but never runs it, so a driver can keep ticks short: ``run-sim``
        calls this right after the tick; the node splits it in three
        (``calibration_snapshot`` in the ticking thread, ``learn`` in a
        worker, ``set_theta`` back in the ticking thread).
        """
        started = time.perf_counter()
        theta = self.learn(self.calibration_snapshot())
        if theta is not None:
            self.set_theta(theta)
        return 1000.0 * (time.perf_counter() - started)

    def calibration_snapshot(self) -> Snapshot:
        """The window as a learning example (from the thread that ticks)."""
        with self._state:
            return self._snapshot()

    def learn(self, snapshot: Snapshot) -> cal.HostTheta | None:
        """Feed ``snapshot`` to the calibrator; returns a new theta to apply, or None.

        A step is proposed from the buffered snapshots, clipped into the
        configured bounds, and returned only after it lowered the loss on the
        snapshots that came after it (see ``OnlineCalibrator.learn``); a
        rolled-back step is counted in ``calibration_rejected`` (and logged).
        Touches only the calibrator, so one worker thread may run it while
        another ticks.
        """
        with self._learning:
            theta, note = self.calibrator.learn(snapshot, self.theta)
        if note is not None:
            self._warn(note)
        return theta

    def set_theta(self, theta: cal.AnyTheta) -> None:
        """Use a new calibration: rebuild the window's measurements from it."""
        with self._state:
            self.theta = cal.as_host(theta)
            self.window.remeasure(self.theta, self._T_base_sensor_nominal)
            self._dirty = True

    def _snapshot(self) -> Snapshot:
        """The window as a learning example, the newest keyframe's observations held out."""
        wm, window = self.window.model, self.window
        graph = wm.graph(on_device=False)
        W = self.config.window.keyframes
        newest = window.keyframes[-1] if window.keyframes else None
        prev = window.keyframes[-2] if len(window.keyframes) >= 2 else newest
        new_var = newest.var if newest else -2
        obs, anchor = wm.slab_rows(VOXEL_POINT_OBS), wm.slab_rows(VOXEL_ANCHOR_OBS)
        held_obs = obs.active & (obs.var_ids[:, 0] == new_var)
        held_anchor = anchor.active & (anchor.var_ids[:, 0] == new_var)
        # Only voxels some other keyframe observes say anything about the newest pose.
        others = obs.active & ~held_obs
        supported = np.isin(obs.var_ids[:, 1], obs.var_ids[others, 1])
        # The held-out rows as compact index lists (one keyframe's capacity):
        # scoring all R + A window rows cost a third of a calibration step.
        K, KA = self.config.window.max_observations_per_keyframe, self.config.window.max_anchors_per_keyframe
        obs_rows, anchor_rows = np.flatnonzero(held_obs & supported)[:K], np.flatnonzero(held_anchor)[:KA]
        held_obs_rows, held_anchor_rows = np.zeros(K, np.int32), np.zeros(KA, np.int32)
        held_obs_rows[: len(obs_rows)], held_anchor_rows[: len(anchor_rows)] = obs_rows, anchor_rows
        voxel_slots = np.zeros(K, np.int32)
        voxel_slots[: len(obs_rows)] = [wm.slot(int(v)) for v in obs.var_ids[obs_rows, 1]]
        slabs = tuple(
            jdc.replace(sl, active=sl.active & ~{VOXEL_POINT_OBS: held_obs, VOXEL_ANCHOR_OBS: held_anchor}.get(sl.ftype.name, False))
            for sl in graph.slabs
        )
        c = self.config
        reference, has_reference = se3.IDENTITY, False
        if newest is not None and prev is not None and prev is not newest:
            with self._inputs:
                ref_prev, ref_new = self.reference.interpolate(prev.stamp), self.reference.interpolate(newest.stamp)
            if ref_prev is not None and ref_new is not None:
                reference, has_reference = se3.between(ref_prev, ref_new), True
        # Host arrays: the calibrator stacks a batch with numpy and sends it
        # to the device once (stacking ~50 device leaves eagerly took ~25 ms).
        # Window buffers are copied: the tick thread keeps editing them (the
        # next marginalization, new keyframes) while a worker learns from this.
        # The per-observation sqrt-information without the learned scale.
        obs_scale = float(np.exp(self.theta["log_sigma_obs"]))
        odom_axes = np.exp(self.theta["log_sigma_odom_axes"])  # learned offline, never online: part of the fixed sqrt-information
        return Snapshot(
            graph=jdc.replace(graph, slabs=slabs),
            x0=wm.pack_state(on_device=False),
            inputs=jax.tree.map(np.array, window.inputs),
            odom_L=np.broadcast_to(np.diag(1.0 / (np.array([c.odom_sigma_m] * 3 + [c.odom_sigma_rad] * 3) * odom_axes)), (W, 6, 6)),
            obs_L=graph.slab(VOXEL_POINT_OBS).sqrt_info * obs_scale,
            anchor_L=graph.slab(VOXEL_ANCHOR_OBS).sqrt_info * obs_scale,
            prev_slot=np.asarray(wm.slot(prev.var) if prev else 0, np.int32),
            new_slot=np.asarray(wm.slot(newest.var) if newest else 0, np.int32),
            held_obs_rows=held_obs_rows,
            held_obs=np.arange(K) < len(obs_rows),
            held_obs_voxel=voxel_slots,
            held_anchor_rows=held_anchor_rows,
            held_anchor=np.arange(KA) < len(anchor_rows),
            reference=np.asarray(reference, np.float64),
            has_reference=np.asarray(has_reference),
        )

    def _ready_clouds(self):
        """Pop clouds covered by odometry; drop those that waited too long."""
        latest = self.odometry.latest_stamp
        while self._clouds:
            stamp, points, planar = self._clouds[0]
            if self.odometry.covers(stamp):
                self._clouds.popleft()
                yield stamp, points, planar
                continue
            newest = max(self._clouds[-1][0], latest or -np.inf)
            if newest - stamp > self.config.cloud_hold_s:
                self._clouds.popleft()
                self.stats["dropped_clouds"] += 1
                self._warn(f"cloud at {stamp:.3f} has no odometry within {self.config.cloud_hold_s} s; dropped")
                continue
            break

    def _localize(self, stamp: float, p_sensor: np.ndarray, planar: bool, T_odom_base: np.ndarray | None, odom_velocity: np.ndarray) -> _Localized:
        """Place a cloud in the map and make it a keyframe if the policy says so.

        Every cloud is predicted from the last localized one by the corrected
        odometry, then registered to the map around it: what is published for
        it is scan-matched, not odometry carried from the last keyframe.
        """
        if T_odom_base is None:
            self.stats["dropped_clouds"] += 1
            self._warn(f"cloud at {stamp:.3f} is older than the odometry history; dropped")
            return _Localized(stamp, None)
        window = self.window
        T_base_sensor = cal.base_sensor(self.theta, self._T_base_sensor_nominal)
        axis_base = se3.rotation_matrix(T_base_sensor)[:, 2] if planar else None
        last = window.keyframes[-1] if window.keyframes else None
        if last is None:
            T_map_base = T_odom_base
            self._track = _Track(stamp, T_map_base, T_odom_base, odom_velocity, None)
        else:
            T_map_base, raw = self._predict(stamp, T_odom_base, odom_velocity)
            xi = se3.log(raw)
            motion = (float(np.linalg.norm(xi[:3])), float(np.linalg.norm(xi[3:])))
            # Standing still, the last alignment holds: registering again would
            # only cost time (and the motion keeps adding up from that alignment).
            if motion[0] > _STILL_M or motion[1] > _STILL_RAD:
                if self.config.registration.enabled:
                    c = self.config.registration
                    p_base = se3.apply(T_base_sensor, thin(p_sensor, c.source_cell_m, c.max_points))
                    T_map_base = self._register(p_base, T_map_base, axis_base, motion)
                self._track = _Track(stamp, T_map_base, T_odom_base, odom_velocity, None)
        odom = None
        if last is not None:
            raw = se3.between(last.T_odom_base, T_odom_base)
            dt = stamp - last.stamp
            xi = se3.log(raw)
            policy = self.config.keyframes
            if (
                np.linalg.norm(xi[:3]) < policy.distance_m
                and np.degrees(np.linalg.norm(xi[3:])) < policy.angle_deg
                and dt < policy.interval_s
            ):
                return _Localized(stamp, T_map_base)
            velocity = np.stack([last.odom_velocity, odom_velocity])
            odom = OdometryRow(raw, dt, velocity, self._correct(raw[None], np.array([dt]), velocity[None])[0])
        T_map_sensor = se3.compose(T_map_base, T_base_sensor)
        n_sensor = scan_normals(p_sensor, 2.0 * self.config.voxel_size) if planar else None
        cells = voxelize(
            p_sensor,
            se3.rotation_matrix(T_map_sensor),
            T_map_sensor[4:],
            self.config.voxel_size,
            self.config.scan_min_points_per_voxel if planar else self.config.min_points_per_voxel,
            n_sensor,
        )
        if cells.outside_key_range:
            self.stats["dropped_points"] += cells.outside_key_range
            self._warn(f"cloud at {stamp:.3f}: {cells.outside_key_range} points lie beyond the voxel keys' range from the map origin; left out")
        p_base = se3.apply(T_base_sensor, cells.p_sensor)
        noise = self._odom_noise(None if odom is None else odom.measurement)
        keyframe, report = window.add_keyframe(
            stamp=stamp,
            T_odom_base=T_odom_base,
            odom_velocity=odom_velocity,
            T_map_base=T_map_base,
            odom=odom,
            odom_noise=noise,
            cells=cells,
            p_base=p_base,
            obs_noise=self._obs_sqrt_info(cells, T_base_sensor, axis_base),
            robust=huber(self.config.obs_huber),
        )
        self._track = _Track(stamp, T_map_base, T_odom_base, odom_velocity, keyframe)
        self._map_tree = None  # the map changed: the next registration rebuilds its target
        self.stats["keyframes"] += 1
        self._dirty = True
        return _Localized(stamp, T_map_base, keyframe, report)

    def _predict(self, stamp: float, T_odom_base: np.ndarray, odom_velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``T_map_base`` (7,) at ``stamp`` from the last localized cloud moved by the
        corrected odometry since (a keyframe's pose as the window now has it),
        and that raw odometry increment (7,). ``odom_velocity`` (6,): the raw
        odometry's body velocity at ``stamp`` (zero places the reading
        ``T_odom_base`` itself, not a cloud the time offset shifts)."""
        track = self._track
        assert track is not None  # callers localize from a previous cloud
        track_pose = track.T_map_base
        if track.keyframe is not None and track.keyframe in self.window.keyframes:
            track_pose = self.window.pose(track.keyframe)
        raw = se3.between(track.T_odom_base, T_odom_base)
        velocity = np.stack([track.odom_velocity, odom_velocity])[None]
        return se3.compose(track_pose, self._correct(raw[None], np.array([stamp - track.stamp]), velocity)[0]), raw

    def _published_poses(self, localized: list[_Localized]) -> np.ndarray:
        """``T_map_base`` (n, 7) of this tick's clouds: keyframes as solved, NaN where a cloud was dropped."""
        out = np.full((len(localized), 7), np.nan)
        for row, cloud in enumerate(localized):
            if cloud.keyframe is not None and cloud.keyframe in self.window.keyframes:
                out[row] = self.window.pose(cloud.keyframe)
            elif cloud.T_map_base is not None:
                out[row] = cloud.T_map_base
        return out

    def _correct(self, raw: np.ndarray, dt: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """Calibrated odometry increments (n, 7), in NumPy on the host (see ``cal.correct_odometry``)."""
        return cal.correct_odometry(self.theta, raw, dt, velocity)

    def _register(self, p_base: np.ndarray, T_predicted: np.ndarray, axis_base: np.ndarray | None, motion: tuple[float, float]) -> np.ndarray:
        """The cloud's pose aligned to the map around it (the prediction when that fails).

        The target (map voxels within ``map_radius_m`` and their KD-tree) is
        rebuilt only when a keyframe changed the map or the robot moved a
        quarter of the radius away from where it was built.
        """
        config = self.config.registration
        center = T_predicted[4:]
        if self._map_tree is None or np.linalg.norm(center - self._map_tree[0]) > 0.25 * config.map_radius_m:
            self.window.sync_map()
            target = self.window.voxel_map.near(center, config.map_radius_m)
            self._map_tree = (center.copy(), target, map_tree(target) if target.shape[0] else None)
        _, target, tree = self._map_tree
        self.stats["registrations"] += 1
        if tree is None:
            self.stats["registration_failures"] += 1
            return T_predicted
        result = register(p_base, target, T_predicted, config, axis_base, tree, motion)
        if not result.accepted:
            self.stats["registration_failures"] += 1
        self.stats["registration_screened"] += result.screened
        return result.T_map_base

    def _odom_noise(self, increment: np.ndarray | None) -> Noise:
        """Noise of an odometry increment (7,): the configured floor plus fractions of its motion."""
        scale = cal.noise_scales(self.theta)[0]
        c = self.config
        distance, angle = (0.0, 0.0) if increment is None else (float(np.linalg.norm(increment[4:])), float(np.linalg.norm(se3.log(increment)[3:])))
        sigma_m = np.hypot(c.odom_sigma_m, c.odom_sigma_per_m * distance)
        sigma_rad = np.hypot(c.odom_sigma_rad, c.odom_sigma_rad_per_rad * angle)
        return Noise.diagonal(scale * np.array([sigma_m] * 3 + [sigma_rad] * 3))

    def _obs_sqrt_info(self, cells: CellObservations, T_base_sensor: np.ndarray, axis_base: np.ndarray | None) -> np.ndarray:
        """Sqrt-information (M, 3, 3) of a keyframe's observations (base frame).

        ``a I + (b − a) n nᵀ`` with b = 1/σ along a planar cell's normal n and
        a = 1/σ_plane in its plane; ``b I`` for cells that are not planar.
        A planar scanner's cells are lines in the scan plane: b also along the
        plane's normal ``axis_base`` (every return lies in that plane), a only
        along the line.
        """
        _, normal, plane = cal.noise_scales(self.theta)
        a, b = 1.0 / (float(plane) * self.config.obs_plane_sigma_m), 1.0 / (float(normal) * self.config.obs_sigma_m)
        n = cells.n_sensor @ se3.rotation_matrix(T_base_sensor).T
        has_normal = np.any(n != 0.0, axis=1)
        iso = np.where(has_normal, a, b)[:, None, None] * np.eye(3)
        L = iso + (b - a) * n[:, :, None] * n[:, None, :]
        if axis_base is not None:
            L[has_normal] += (b - a) * np.outer(axis_base, axis_base)
        return L

    def _solve(self) -> tuple[SolveSummary, bool]:
        """Solve the window; (its report, whether it was rolled back)."""
        wm = self.window.model
        x, report = self._solver(wm.graph(), wm.pack_state(), config=self.config.solver)
        rep = report.summary()
        finite = bool(np.all(np.isfinite(np.asarray(x.poses)))) and bool(np.all(np.isfinite(np.asarray(x.points))))
        diverged = rep.status == "non_finite" or not finite or not np.isfinite(rep.final_cost) or rep.final_cost > rep.initial_cost * (1 + 1e-9) + 1e-12
        if diverged:
            # Not retried: the same solve would diverge again. The next
            # keyframe or calibration update solves the window afresh.
            self._dirty = False
            self.stats["rollbacks"] += 1
            self._warn(f"solve {rep.status} (cost {rep.initial_cost:.4g} -> {rep.final_cost:.4g}); rolled back to the last good state")
            return rep, True
        wm.set_state(x)  # free voxels reach the persistent map on export (voxels()), not every solve
        # Continue next tick only while the solve still makes progress: at its
        # floating-point floor (float32 above all) the relative test may never
        # pass, and re-solving every tick would buy nothing.
        progress = rep.initial_cost - rep.final_cost
        self._dirty = not rep.converged and progress > 1e-4 * max(rep.initial_cost, 1e-12)
        self._last_report = rep
        return rep, False

    # ----------------------------------------------------------------- outputs

    def _result(
        self,
        *,
        added: int,
        cloud_stamps: list[float],
        cloud_poses: np.ndarray,
        marginalized: list[MarginalizationReport],
        warnings: list[str],
        solve_report: SolveSummary | None,
        rolled_back: bool,
        calibration_due: bool,
        tick_ms: float,
    ) -> TickResult:
        window = self.window
        stamps = np.array([kf.stamp for kf in window.keyframes])
        poses = window.poses()
        with self._inputs:
            odom_stamp = self.odometry.latest_stamp
            T_odom_base = self.odometry.interpolate(odom_stamp) if odom_stamp is not None else None
        T_map_base = T_map_odom = None
        if window.keyframes and self._track is not None and odom_stamp is not None and T_odom_base is not None:
            # From the last registered cloud, not the last keyframe: between
            # keyframes that is the better anchor for the corrected odometry.
            T_map_base = self._predict(odom_stamp, T_odom_base, np.zeros(6))[0]
            T_map_odom = se3.compose(T_map_base, se3.inverse(T_odom_base))
        counts = window.model.counts()
        compilations = runtime.compilation_count()
        assert self._compilations_at_warmup is not None  # tick() warmed up first
        diagnostics = TickDiagnostics(
            tick_ms=tick_ms,
            window_keyframes=len(window.keyframes),
            window_capacity=self.config.window.keyframes,
            window_voxels=counts["points"],
            window_observations=counts[VOXEL_POINT_OBS],
            map_voxels=len(window.voxel_map),
            dropped_observations=window.dropped_observations,
            compilations=compilations,
            compilations_after_warmup=compilations - self._compilations_at_warmup,
            last_solve=self._last_report,
            calibration_steps=self.calibrator.steps,
            calibration_accepted=self.calibrator.accepted,
            calibration_rejected=self.calibrator.rejected,
            calibration_clipped=self.calibrator.clipped,
            calibration_loss=self.calibrator.last_loss,
            stats=dict(self.stats),
        )
        return TickResult(
            stamp=float(stamps[-1]) if stamps.size else None,
            keyframes_added=added,
            cloud_stamps=cloud_stamps,
            cloud_poses=cloud_poses,
            window_stamps=stamps,
            window_poses=poses,
            odometry_stamp=odom_stamp,
            T_map_base=T_map_base,
            T_map_odom=T_map_odom,
            solve=solve_report,
            rolled_back=rolled_back,
            marginalized=marginalized,
            warnings=warnings,
            calibration_due=calibration_due,
            diagnostics=diagnostics,
        )

    def edges(self, max_observations: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Window factor edges as segment end points in the map frame:
        odometry (E, 2, 3) keyframe to keyframe, and observations (F, 2, 3)
        keyframe to voxel (free and anchored), evenly thinned to at most
        ``max_observations``."""
        with self._state:
            wm = self.window.model
            poses, points = wm.values("pose"), wm.values("point")
            odom, obs, anchor = (wm.slab_rows(n) for n in (ODOM_SE3, VOXEL_POINT_OBS, VOXEL_ANCHOR_OBS))
            odom_edges = poses[odom.slots[odom.active]][:, :, 4:]
            ends = [
                np.stack([poses[obs.slots[obs.active, 0], 4:], points[obs.slots[obs.active, 1]]], axis=1),
                np.stack([poses[anchor.slots[anchor.active, 0], 4:], wm.measurements(VOXEL_ANCHOR_OBS)[anchor.active, ANCHOR_VOXEL]], axis=1),
            ]
            obs_edges = np.concatenate(ends)
            if max_observations is not None and obs_edges.shape[0] > max_observations:
                obs_edges = obs_edges[np.linspace(0, obs_edges.shape[0] - 1, max_observations).astype(np.int64)]
            return odom_edges, obs_edges

    def voxels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every voxel estimate, in and out of the window: (keys, positions (N, 3), observation counts)."""
        with self._state:
            self.window.sync_map()
            return self.window.voxel_map.export()

    def reset(self) -> None:
        """Forget everything but the configuration and calibration (waits for
        a calibration step in flight: its snapshot predates the reset)."""
        with self._learning, self._state, self._inputs:
            self.window.clear()
            self.odometry.clear()
            self.reference.clear()
            self._clouds.clear()
            self._last_cloud_stamp = None
            self.calibrator.clear()
            self._dirty = False
            self._track = None
            self._map_tree = None

    def _warn(self, message: str) -> None:
        log.warning(message)
        with self._inputs:
            self._warnings.append(message)
