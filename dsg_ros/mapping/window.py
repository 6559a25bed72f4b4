"""The fixed-capacity sliding window of keyframes and voxels, with marginalization.

The window is a WorldModel whose capacities never change: W keyframe poses,
V voxel slots, W odometry rows, W·M observation rows of free voxels, W·M
anchor rows (observations of frozen voxels, whose position rides in the
measurement) and one dense linear prior over all pose slots. Keyframes enter and leave by writing slots and
flipping masks, so the solver compiles once.

When the oldest keyframe leaves, it is marginalized together with every free
voxel it observed, by the Schur complement at the current estimate: all
factors touching them (its odometry and observations, the previous prior,
and *every* observation of those voxels) fold into one dense Gaussian prior
on the window poses they connected. Those voxels are frozen in the persistent
map at their estimate; later keyframes that see them again observe them as
constants (``voxel_anchor_obs``), which anchors new poses to the old map. Keeping the prior on poses
only (at most 6W dimensions) is what keeps marginalization exact and cheap:
folding a keyframe onto its thousands of voxels would give a dense prior of
thousands of dimensions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

import jax
import jax_dataclasses as jdc
import numpy as np
from jax.typing import DTypeLike

from dsg_ros import se3
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping.voxel_map import VoxelMap, lookup
from dsg_ros.mapping.voxels import CellObservations
from dsg_ros.solve import schur
from dsg_ros.solve.normal import linearize
from dsg_ros.world import Capacity, FactorRegistry, Graph, Noise, Robust, State, WorldModel
from dsg_ros.world.factors import VarKind, linear_prior_type
from dsg_ros.world.layout import (
    ANCHOR_VOXEL,
    ODOM_SE3,
    PRIOR_SE3,
    VOXEL_ANCHOR_OBS,
    VOXEL_POINT_OBS,
    anchor_measurement,
    linear_prior_measurement,
)

ANCHOR_SIGMA = 1e-3  # the first keyframe fixes the map frame


@dataclass(frozen=True)
class WindowConfig:
    """Capacities of the window (fixed for the life of the mapper)."""

    keyframes: int = 10
    # Solve cost scales with these capacities, not with what is in use: 4096
    # voxels and 1500 observations per keyframe (the best-supported cells at
    # 0.2 m) keep a keyframe tick near 0.1 s on a 2-core CPU.
    max_voxels: int = 4096
    max_observations_per_keyframe: int = 1500
    # Observations of frozen (out-of-window) voxels per keyframe, best-supported
    # first: a few hundred pin a pose to the old map as well as a thousand, and
    # every anchor row is linearized at every LM iteration.
    max_anchors_per_keyframe: int = 750

    def __post_init__(self) -> None:
        if self.keyframes < 2:
            raise ValueError("the window needs at least 2 keyframes")
        if self.max_voxels < 1 or self.max_observations_per_keyframe < 1 or self.max_anchors_per_keyframe < 1:
            raise ValueError("voxel, observation and anchor capacities must be positive")


@dataclass(eq=False)  # identity: two keyframes are never the same one
class Keyframe:
    """One keyframe: its pose variable and what it was built from."""

    sequence: int
    var: int
    stamp: float
    T_odom_base: np.ndarray  # (7,) raw odometry at the keyframe
    odom_velocity: np.ndarray  # (6,) raw odometry body twist rate there (for the time offset)
    observations: int  # voxel observations added


class OdometryRow(NamedTuple):
    """An odometry factor's inputs: the raw increment (7,) from the previous
    keyframe, its duration (s), the raw body velocity at both ends (2, 6)
    (a row of ``cal.MeasurementInputs``), and the calibrated measurement (7,)
    built from them."""

    raw: np.ndarray
    dt: float
    velocity: np.ndarray
    measurement: np.ndarray


class KeyframeInputs(NamedTuple):
    """What a keyframe was built from, as ``Window.on_keyframe`` hands it out
    (the learning cache, ``dsg-ros learn``, records it): its stamp, the
    odometry row (None for the first keyframe) and its sqrt-information
    (6, 6), every cell observation (before the window's capacity limits)
    and their sqrt-information (M, 3, 3) in the base frame."""

    stamp: float
    odom: OdometryRow | None
    odom_sqrt_info: np.ndarray
    cells: CellObservations
    obs_sqrt_info: np.ndarray


@dataclass(frozen=True)
class MarginalizationReport:
    keyframe_stamp: float
    folded_factors: int
    frozen_voxels: int
    prior_dim: int


def _packed(graph: Graph, state: State, rows: dict[str, np.ndarray], points: np.ndarray, caps: dict[str, int]) -> tuple[Graph, State]:
    """Host graph of just ``rows`` per slab and the ``points`` voxel slots
    (renumbered 0…), padded with inactive rows and voxels to ``caps``
    (host arrays in the device pytree until ``device_put``)."""
    renumber = np.zeros(graph.point_active.shape[0], np.int32)
    renumber[points] = np.arange(points.size, dtype=np.int32)
    slabs = []
    for sl in graph.slabs:
        take = rows[sl.ftype.name]
        n, cap = take.size, caps[sl.ftype.name]
        pick = np.concatenate([take, np.zeros(cap - n, np.int64)])
        slots = sl.slots[pick].copy()
        for k, kind in enumerate(sl.ftype.var_kinds):
            if kind == "point":
                slots[:, k] = renumber[slots[:, k]]
        active = np.zeros(cap, bool)
        active[:n] = True
        slabs.append(jdc.replace(
            sl, slots=slots, measurement=sl.measurement[pick], sqrt_info=sl.sqrt_info[pick],
            robust_code=sl.robust_code[pick], robust_scale=sl.robust_scale[pick], active=cast(jax.Array, active),
        ))
    point_active = np.zeros(caps["points"], bool)
    point_active[: points.size] = True
    pick = np.concatenate([points, np.zeros(caps["points"] - points.size, np.int64)])
    packed = jdc.replace(graph, slabs=tuple(slabs), point_active=cast(jax.Array, point_active))
    return packed, jdc.replace(state, points=state.points[pick])


@jax.jit
def _reduced_system(graph: Graph, state: State) -> tuple[jax.Array, jax.Array, jax.Array]:
    system, _ = linearize(graph, state, True)
    S, b = schur.reduced_pose_system(system)
    return S, b, system.free.poses[:, 0]


class Window:
    """Keyframes, voxels and factors of the sliding window, plus the persistent map."""

    def __init__(self, config: WindowConfig = WindowConfig(), dtype: DTypeLike | None = None) -> None:
        self.config = config
        W = config.keyframes
        registry = FactorRegistry()
        pose: VarKind = "pose"
        self.prior_type = registry.ensure(linear_prior_type((pose,) * W))
        self.model = WorldModel(
            Capacity(
                poses=W,
                points=config.max_voxels,
                factors={
                    PRIOR_SE3: 1,
                    ODOM_SE3: W,
                    VOXEL_POINT_OBS: W * config.max_observations_per_keyframe,
                    VOXEL_ANCHOR_OBS: W * config.max_anchors_per_keyframe,
                    self.prior_type.name: 1,
                },
            ),
            registry=registry,
            dtype=dtype,
        )
        self.keyframes: deque[Keyframe] = deque()
        self.voxel_map = VoxelMap()
        self._voxel_of_key: dict[int, int] = {}
        self._key_of_voxel: dict[int, int] = {}
        self._sequence = 0
        self.dropped_observations = 0  # new cells refused because every voxel slot was taken
        # What each slab row was measured from, so that ``remeasure`` can
        # rebuild the measurements when the calibration changes.
        self.inputs = cal.MeasurementInputs.empty(W, W * config.max_observations_per_keyframe, W * config.max_anchors_per_keyframe)
        # Called with each added keyframe's inputs; None: nobody listens.
        self.on_keyframe: Callable[[KeyframeInputs], None] | None = None

    # ------------------------------------------------------------------ queries

    @property
    def full(self) -> bool:
        return len(self.keyframes) == self.config.keyframes

    def pose(self, keyframe: Keyframe) -> np.ndarray:
        """The keyframe's current ``T_map_base`` (7,)."""
        return self.model.values("pose")[self.model.slot(keyframe.var)].copy()

    def poses(self) -> np.ndarray:
        """Every window keyframe's ``T_map_base`` (K, 7), oldest first."""
        slots = [self.model.slot(kf.var) for kf in self.keyframes]
        return self.model.values("pose")[slots].reshape(-1, 7)

    def window_voxels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, var ids, free mask) of voxels holding a window slot."""
        vars_ = np.fromiter(self._key_of_voxel.keys(), np.int64, len(self._key_of_voxel))
        keys = np.fromiter(self._key_of_voxel.values(), np.int64, len(self._key_of_voxel))
        return keys, vars_, self.model.active_mask(vars_)

    # --------------------------------------------------------------- keyframes

    def add_keyframe(
        self,
        *,
        stamp: float,
        T_odom_base: np.ndarray,
        odom_velocity: np.ndarray,
        T_map_base: np.ndarray,
        odom: OdometryRow | None,
        odom_noise: Noise,
        cells: CellObservations,
        p_base: np.ndarray,
        obs_noise: Noise | np.ndarray,
        robust: Robust | None = None,
    ) -> tuple[Keyframe, MarginalizationReport | None]:
        """Add a keyframe at ``T_map_base`` (its initial estimate).

        ``T_odom_base`` (7,) and ``odom_velocity`` (6,): the raw odometry
        at ``stamp``. ``odom``: the factor from the previous keyframe; None
        for the first keyframe, which gets the anchor prior instead. ``cells`` are its voxel
        observations, ``p_base`` (M, 3) their centroids in the base frame
        (the measurements) and ``obs_noise`` their noise: one model for all
        or a sqrt-information per observation (M, 3, 3). The oldest keyframe
        is marginalized first when the window is full.

        If adding fails (bad measurements or noise: the model raises), the
        keyframe's pose, voxels and factors are taken out again before the
        error propagates, so the next keyframe finds a consistent window.
        """
        report = self.marginalize_oldest() if self.full else None
        wm = self.model
        var = wm.add_pose(T_map_base)
        known_voxels = set(self._key_of_voxel)
        try:
            if not self.keyframes:
                wm.add_factor(PRIOR_SE3, [var], T_map_base, Noise.isotropic(ANCHOR_SIGMA, 6))
            elif odom is not None:
                fid = wm.add_factor(ODOM_SE3, [self.keyframes[-1].var, var], odom.measurement, odom_noise)
                row = wm.factor_row(fid)[1]
                inputs = self.inputs
                inputs.odom_raw[row], inputs.odom_dt[row], inputs.odom_velocity[row] = odom.raw, odom.dt, odom.velocity
            L = np.broadcast_to(obs_noise.sqrt_info, (p_base.shape[0], 3, 3)) if isinstance(obs_noise, Noise) else obs_noise
            n_obs = self._add_observations(var, T_map_base, cells, p_base, L, robust)
        except Exception:
            added = [v for v in self._key_of_voxel if v not in known_voxels]
            for v in added:
                del self._voxel_of_key[self._key_of_voxel.pop(v)]
            wm.remove_variables([var, *added], cascade=True)
            raise
        keyframe = Keyframe(self._sequence, var, float(stamp), np.asarray(T_odom_base, np.float64), np.asarray(odom_velocity, np.float64), n_obs)
        self._sequence += 1
        self.keyframes.append(keyframe)
        if self.on_keyframe is not None:
            self.on_keyframe(KeyframeInputs(keyframe.stamp, odom, odom_noise.sqrt_info, cells, L))
        return keyframe, report

    def _add_observations(
        self, pose_var: int, T_map_base: np.ndarray, cells: CellObservations, p_base: np.ndarray, L: np.ndarray, robust: Robust | None
    ) -> int:
        cfg = self.config
        keys, p_sensor, counts = cells.keys, cells.p_sensor, cells.counts
        if keys.shape[0] > cfg.max_observations_per_keyframe:
            keep = np.argsort(-counts, kind="stable")[: cfg.max_observations_per_keyframe]
            keys, p_sensor, p_base, counts, L = keys[keep], p_sensor[keep], p_base[keep], counts[keep], L[keep]
        wm = self.model
        voxel_vars = lookup(self._voxel_of_key, keys)
        map_rows = self.voxel_map.rows(keys)
        anchored = (voxel_vars < 0) & (map_rows >= 0) & self.voxel_map.frozen(np.maximum(map_rows, 0))
        new = np.flatnonzero((voxel_vars < 0) & ~anchored)
        free_slots = wm.capacity.points - wm.counts()["points"]
        if new.shape[0] > free_slots:  # out of voxel slots: observe what fits
            dropped = new[free_slots:]
            self.dropped_observations += int(dropped.shape[0])
            keep = np.setdiff1d(np.arange(keys.shape[0]), dropped)
            keys, p_sensor, p_base, counts, L, voxel_vars, map_rows, anchored = (
                a[keep] for a in (keys, p_sensor, p_base, counts, L, voxel_vars, map_rows, anchored)
            )
            new = np.flatnonzero((voxel_vars < 0) & ~anchored)
        if new.shape[0]:
            new_vars = wm.add_points(se3.apply(T_map_base, p_base[new]))
            voxel_vars[new] = new_vars
            self._voxel_of_key.update(zip(keys[new].tolist(), new_vars.tolist()))
            self._key_of_voxel.update(zip(new_vars.tolist(), keys[new].tolist()))
        observed = ~anchored
        if anchored.sum() > cfg.max_anchors_per_keyframe:  # thin to the best-supported
            candidates = np.flatnonzero(anchored)
            anchored = np.zeros_like(anchored)
            anchored[candidates[np.argsort(-counts[candidates], kind="stable")[: cfg.max_anchors_per_keyframe]]] = True
        if np.any(observed):
            pairs = np.stack([np.full(int(observed.sum()), pose_var), voxel_vars[observed]], axis=1)
            ids = wm.add_factors(VOXEL_POINT_OBS, pairs, p_base[observed], L[observed], robust)
            self.inputs.obs_p_sensor[wm.factor_rows(VOXEL_POINT_OBS, ids)] = p_sensor[observed]
        if np.any(anchored):
            meas = anchor_measurement(self.voxel_map.positions(map_rows[anchored]), p_base[anchored])
            ids = wm.add_factors(VOXEL_ANCHOR_OBS, np.full((int(anchored.sum()), 1), pose_var), meas, L[anchored], robust)
            self.inputs.anchor_p_sensor[wm.factor_rows(VOXEL_ANCHOR_OBS, ids)] = p_sensor[anchored]
        # Last: a failure above leaves the persistent map untouched. Anchors
        # read only known (frozen) voxels, which observing does not move.
        self.voxel_map.observe(keys, se3.apply(T_map_base, p_base))
        return int(keys.shape[0])

    def remeasure(self, theta: cal.HostTheta, T_base_sensor_nominal: np.ndarray) -> None:
        """Rebuild every calibrated measurement of the window from ``theta`` (host arrays)."""
        wm = self.model
        rows = {name: np.flatnonzero(wm.slab_rows(name).active) for name in (ODOM_SE3, VOXEL_POINT_OBS, VOXEL_ANCHOR_OBS)}
        inputs = self.inputs.rows(rows[ODOM_SE3], rows[VOXEL_POINT_OBS], rows[VOXEL_ANCHOR_OBS])
        anchor_voxels = wm.measurements(VOXEL_ANCHOR_OBS)[rows[VOXEL_ANCHOR_OBS], ANCHOR_VOXEL]
        for name, measurements in cal.remeasure(theta, T_base_sensor_nominal, inputs, anchor_voxels).items():
            if rows[name].size:
                wm.set_measurements(name, rows[name], measurements)

    # ---------------------------------------------------------- marginalization

    def marginalize_oldest(self) -> MarginalizationReport:
        """Fold the oldest keyframe and the free voxels it saw into the pose prior."""
        wm = self.model
        oldest = self.keyframes[0]
        obs = wm.slab_rows(VOXEL_POINT_OBS)
        mine = obs.active & (obs.var_ids[:, 0] == oldest.var)
        seen = np.unique(obs.var_ids[mine, 1])
        marg_voxels = seen[wm.active_mask(seen)] if seen.size else seen
        fold_obs = obs.active & (mine | np.isin(obs.var_ids[:, 1], marg_voxels))
        fold = {VOXEL_POINT_OBS: fold_obs}
        for name in (ODOM_SE3, PRIOR_SE3, VOXEL_ANCHOR_OBS, self.prior_type.name):
            rows = wm.slab_rows(name)
            fold[name] = rows.active & np.any(rows.var_ids == oldest.var, axis=1)
        prior_rows = wm.slab_rows(self.prior_type.name)
        fold[self.prior_type.name] |= prior_rows.active  # the old prior always folds into the new one

        point_active = np.zeros(wm.capacity.points, bool)
        point_active[[wm.slot(int(v)) for v in marg_voxels]] = True
        S, b, involved = self.reduced_system(fold, point_active)

        # Eliminate the oldest pose from the reduced pose system.
        slot0 = wm.slot(oldest.var)
        others = [s for s in np.flatnonzero(involved > 0.5) if s != slot0]
        m = np.arange(6 * slot0, 6 * slot0 + 6)
        r = np.concatenate([np.arange(6 * s, 6 * s + 6) for s in others]) if others else np.zeros(0, np.int64)
        S_mm_inv = np.linalg.inv(S[np.ix_(m, m)])
        K = S[np.ix_(r, m)] @ S_mm_inv
        info = S[np.ix_(r, r)] - K @ S[np.ix_(m, r)]
        grad = b[r] - K @ b[m]

        # Remove what was folded; freeze the marginalized voxels in the map.
        folded = sum(int(mask.sum()) for mask in fold.values())
        for name, mask in fold.items():
            wm.remove_factors(wm.slab_rows(name).factor_ids[mask].tolist())
        if marg_voxels.size:
            keys = np.array([self._key_of_voxel[int(v)] for v in marg_voxels])
            positions = wm.values("point")[[wm.slot(int(v)) for v in marg_voxels]]
            self.voxel_map.update(keys, positions, frozen=True)
        self._release_unreferenced_voxels()
        wm.remove_variable(oldest.var)
        self.keyframes.popleft()
        if others:
            self._add_prior([int(s) for s in others], info, grad)
        return MarginalizationReport(oldest.stamp, folded, int(marg_voxels.size), int(r.shape[0]))

    def _add_prior(self, slots: list[int], info: np.ndarray, grad: np.ndarray) -> None:
        """A linear prior over pose ``slots`` with information ``info`` and gradient ``grad``."""
        W = self.config.keyframes
        info = 0.5 * (info + info.T)
        evals, evecs = np.linalg.eigh(info)
        # Round-off can leave tiny negative eigenvalues; clamp relative to the largest.
        floor = max(evals[-1], 1e-12) * 1e-12
        evals = np.maximum(evals, floor)
        info = (evecs * evals) @ evecs.T
        offset = np.linalg.solve(info, grad)  # c = Λ⁻¹ g
        upper = np.linalg.cholesky(info).T  # Lᵀ L = Λ
        n = 6 * len(slots)
        sqrt_info = np.zeros((6 * W, 6 * W))
        sqrt_info[:n, :n] = upper
        c = np.zeros(6 * W)
        c[:n] = offset
        poses = self.model.values("pose")
        owner = {self.model.slot(kf.var): kf.var for kf in self.keyframes}
        filler = slots[0]
        positions = slots + [filler] * (W - len(slots))  # unused positions have zero columns in L
        var_ids = [owner[s] for s in positions]
        measurement = linear_prior_measurement([poses[s] for s in positions], c)
        # Built directly, not through a validating constructor: the rows and
        # columns of unused positions must be exactly zero.
        self.model.add_factor(self.prior_type.name, var_ids, measurement, Noise(sqrt_info))

    def reduced_system(self, fold: dict[str, np.ndarray], point_active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pose system (6P, 6P), gradient (6P,) and involved-pose mask (P,) of the
        factors in ``fold`` (row masks per slab), with the ``point_active``
        voxels eliminated.

        The folded rows and voxels are packed into a small graph of fixed
        capacities, the smallest of :meth:`_fold_capacities` that holds it:
        linearizing the whole window with masks cost ~30 ms per
        marginalization, five times the folded part. A fold larger than
        every capacity (rare) uses the whole window."""
        rows = {name: np.flatnonzero(self.model.slab_rows(name).active & fold.get(name, False)) for name in self.model.capacity.factors}
        points = np.flatnonzero(point_active)
        for caps in self._fold_capacities():
            if points.size <= caps["points"] and all(rows[name].size <= caps[name] for name in rows):
                return self._reduce(rows, points, caps)
        return self._reduce(rows, points, None)

    def _reduce(self, rows: dict[str, np.ndarray], points: np.ndarray, caps: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reduced system of ``rows`` and ``points``: packed into ``caps``, or masked in the whole window if None."""
        graph, state = self.model.graph(on_device=False), self.model.pack_state(on_device=False)
        if caps is not None:
            graph, state = _packed(graph, state, rows, points, caps)
        else:
            slabs = []
            for sl in graph.slabs:
                active = np.zeros_like(sl.active)
                active[rows[sl.ftype.name]] = True
                slabs.append(jdc.replace(sl, active=cast(jax.Array, active)))  # host arrays until device_put
            point_active = np.zeros_like(graph.point_active)
            point_active[points] = True
            graph = jdc.replace(graph, slabs=tuple(slabs), point_active=cast(jax.Array, point_active))
        S, b, free = _reduced_system(*jax.device_put((graph, state)))
        return np.asarray(S, np.float64), np.asarray(b, np.float64), np.asarray(free, np.float64)

    def _fold_capacities(self) -> list[dict[str, int]]:
        """Rows per slab and voxels of the packed marginalization graphs, smallest first.

        The voxels are the oldest keyframe's (at most M per keyframe). On the
        60 s sim a fold's observations of them were 608 at the median and
        ~2.8 M at most (the first keyframes', whose voxels everyone sees),
        its voxels 216 and M: the small graph holds ~87 % of folds at a
        quarter of the large one's cost.
        """
        c = self.config
        M = c.max_observations_per_keyframe
        large = dict(self.model.capacity.factors)
        large[VOXEL_POINT_OBS] = min(large[VOXEL_POINT_OBS], 4 * M)
        large[VOXEL_ANCHOR_OBS] = min(large[VOXEL_ANCHOR_OBS], c.max_anchors_per_keyframe)
        large["points"] = min(c.max_voxels, M)
        small = {**large, VOXEL_POINT_OBS: min(large[VOXEL_POINT_OBS], M), "points": min(large["points"], max(1, M // 3))}
        return [small, large]

    def warm_up(self) -> None:
        """Compile every marginalization kernel (packed ones and whole-window)."""
        nothing = {name: np.zeros(0, np.int64) for name in self.model.capacity.factors}
        for caps in [*self._fold_capacities(), None]:
            self._reduce(nothing, np.zeros(0, np.int64), caps)

    def _release_unreferenced_voxels(self) -> None:
        """Give back the slots of voxels no window observation uses any more."""
        obs = self.model.slab_rows(VOXEL_POINT_OBS)
        referenced = set(np.unique(obs.var_ids[obs.active, 1]).tolist())
        unused = np.array([v for v in self._key_of_voxel if v not in referenced], np.int64)
        if not unused.size:
            return
        keys = np.array([self._key_of_voxel.pop(int(v)) for v in unused], np.int64)
        for key in keys.tolist():
            del self._voxel_of_key[key]
        free = self.model.active_mask(unused)
        if np.any(free):  # free but unobserved: keep the last estimate
            slots = [self.model.slot(int(v)) for v in unused[free]]
            self.voxel_map.update(keys[free], self.model.values("point")[slots], frozen=True)
        self.model.remove_variables(unused.tolist())

    # ------------------------------------------------------------------ updates

    def sync_map(self) -> None:
        """Copy the free window voxels' estimates into the persistent map."""
        if not self._key_of_voxel:
            return
        keys, vars_, free = self.window_voxels()
        if np.any(free):
            slots = np.array([self.model.slot(int(v)) for v in vars_[free]])
            self.voxel_map.update(keys[free], self.model.values("point")[slots], frozen=False)

    def clear(self) -> None:
        """Drop everything (keyframes, voxels, map); capacities are kept."""
        wm = self.model
        for name in wm.counts():
            if name not in ("poses", "points"):
                wm.remove_factors(wm.factor_ids(name))
        for var in wm.pose_ids() + wm.point_ids():
            wm.remove_variable(var)
        self.keyframes.clear()
        self.voxel_map.clear()
        self._voxel_of_key.clear()
        self._key_of_voxel.clear()

