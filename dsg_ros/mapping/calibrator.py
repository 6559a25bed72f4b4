"""Online calibration: the outer loop the mapper runs every few keyframes.

Each snapshot is the window graph with the **newest keyframe's observations
held out**, so the only thing placing that keyframe relative to the previous
one is the (calibrated) odometry factor. Solving the snapshot and scoring the
newest keyframe then tests the calibration through the inner solve:

* supervised (a reference pose stream is given: sim ground truth or a bag's
  ground-truth topic): the solved relative pose previous→newest against the
  reference one;
* self-supervised: the held-out observations against the map (voxels other
  keyframes observed, or frozen anchors), i.e. does the scan land where the
  map says it should.

Derivatives are Gauss–Newton implicit ones. When theta enters only the
odometry (the default), they come from the window's pose system with the
observations frozen at the snapshot (``solve.reduced``); otherwise from the
whole window's solve, reusing its factorization. Groups that the motion
cannot identify are masked out.

The default update is recursive least squares: each step is a Gauss–Newton
step on the newest snapshot's residuals with the information ``JᵀJ`` of all
earlier snapshots (discounted by ``forgetting`` per step), so theta tracks
the least-squares fit of the recent snapshots. The snapshots' residuals are
noisy (one keyframe interval of odometry noise each) and the learned
quantities differ in scale by orders of magnitude; Adam moved every
coordinate at about its learning rate, overshot the yaw-rate bias while the
scale was still converging and settled on the last few snapshots. optax's
Adam remains for the extrinsic and the noise scales, whose whole-window
solve has reverse-mode derivatives only (``J`` needs forward mode).

A step is never applied blindly (``OnlineCalibrator.learn``). Learning runs
on a *candidate* calibration, clipped into ``CalibrationConfig.bounds``
after every step, beside the one in use. Each new snapshot first scores
both (neither was fitted to it), then takes the candidate's next step
(prequential validation: every snapshot tests, then trains). The candidate
is applied once it scored lower over ``validation_snapshots`` snapshots;
otherwise it is rolled back to the calibration in use, optimizer state
included. On a real robot the self-supervised loss, unchecked, shrank the
odometry until every scan agreed with every other.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Generic, Literal, TypeVar

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc
import jaxlie
import numpy as np
import optax

from dsg_ros import se3
from dsg_ros.learn.calibration import AnyTheta, CalibrationBounds, HostTheta, MeasurementInputs, Theta, observations_in_base, remeasure
from dsg_ros.solve import SolverConfig, solve
from dsg_ros.solve.reduced import solve_poses
from dsg_ros.world import Graph, State
from dsg_ros.world.graph import batched_matmul
from dsg_ros.world.layout import ANCHOR_VOXEL, ODOM_SE3, VOXEL_ANCHOR_OBS, VOXEL_POINT_OBS

log = logging.getLogger("dsg_ros.calibration")


@dataclass(frozen=True)
class CalibrationConfig:
    """When and what the mapper learns online."""

    # One snapshot every other keyframe: the same learning per second as two
    # every fourth, in steps half as long (a step is one solve of the
    # window's pose system and its gradient, ~20 ms on a 2-core CPU), so a
    # step never holds the cores for long.
    every_keyframes: int = 2  # 0 disables online calibration
    buffer: int = 8  # recent snapshots kept
    batch: int = 1  # snapshots per optimizer step
    # "gauss_newton": recursive least squares (see the module docstring);
    # "adam": optax Adam with the learning-rate schedule below, required to
    # learn the extrinsic or the noise scales.
    optimizer: Literal["gauss_newton", "adam"] = "gauss_newton"
    # Weight of the accumulated information kept per step: the fit looks
    # back ~1/(1 − forgetting) steps (100 snapshots, ~90 s of driving at the
    # defaults), so a calibration that changes slowly is followed. On the
    # 60 s sim a memory of 50 steps already cost accuracy.
    forgetting: float = 0.99
    # Adam only: halve the step every ``decay_steps`` updates down to
    # ``min_learning_rate``: fast early, then settle instead of circling the optimum.
    learning_rate: float = 3e-3
    decay_steps: int = 30
    min_learning_rate: float = 2e-4
    # Planar motion at near-constant speed cannot tell a forward scale from a
    # forward velocity bias, nor identify most of the extrinsic: by default
    # learn the odometry scale, angular-rate bias and time offset only.
    # Per axis (x, y, z of the base): a ground robot only moves forward and
    # turns about z; learning the others lets them drift with the noise.
    learn_odom_scale: tuple[bool, bool, bool] = (True, False, False)
    learn_odom_angular_bias: tuple[bool, bool, bool] = (False, False, True)
    learn_odom_linear_bias: bool = False
    # The odometry–cloud time offset: seen where the motion changes between
    # two keyframes (a turn starting or ending), which a bias or scale cannot
    # mimic.
    learn_time_offset: bool = True
    learn_extrinsic: bool = False
    learn_noise: bool = False
    rotation_weight_m: float = 1.0  # metres of loss per radian in the supervised loss
    # One Gauss–Newton-like step from the window's estimate: holding out the
    # newest scan moves only the newest keyframe, nearly linearly. (Up to 4
    # iterations learned the same calibration to 5 digits, 15 ms per step
    # slower: the second iteration only confirmed convergence.)
    solver: SolverConfig = field(
        default_factory=lambda: SolverConfig(max_iterations=1, linear_solver="dense", implicit_hessian="gauss_newton")
    )
    bounds: CalibrationBounds = field(default_factory=CalibrationBounds)
    # The candidate calibration is applied only when, over this many
    # snapshots it had not been fitted to, it scored a lower loss than the
    # calibration in use; otherwise it is rolled back (optimizer state too).
    validation_snapshots: int = 3

    def __post_init__(self) -> None:
        if self.validation_snapshots < 1:
            raise ValueError(f"calibration.validation_snapshots must be >= 1, got {self.validation_snapshots}")
        if self.optimizer not in ("gauss_newton", "adam"):
            raise ValueError(f"calibration.optimizer must be 'gauss_newton' or 'adam', got {self.optimizer!r}")
        if self.optimizer == "gauss_newton" and not odometry_only(self):
            raise ValueError(
                "calibration.optimizer 'gauss_newton' learns the odometry only; learning the extrinsic or the "
                "noise scales needs optimizer: adam (their solve has no forward-mode derivatives)"
            )
        if not 0.0 < self.forgetting <= 1.0:
            raise ValueError(f"calibration.forgetting must be in (0, 1], got {self.forgetting}")

    def mask(self) -> dict[str, np.ndarray]:
        """1 where theta is learned, 0 where it stays fixed (host arrays: usable while tracing)."""
        bias = np.concatenate([np.full(3, self.learn_odom_linear_bias), np.asarray(self.learn_odom_angular_bias)])
        return {
            "odom_log_scale": np.asarray(self.learn_odom_scale, np.float64),
            "odom_bias": bias.astype(np.float64),
            "extrinsic": np.full(6, float(self.learn_extrinsic)),
            "log_sigma_odom": np.asarray(float(self.learn_noise)),
            "log_sigma_obs": np.asarray(float(self.learn_noise)),
            "time_offset": np.asarray(float(self.learn_time_offset)),
            # The constant noise model learned from bags (dsg-ros learn): never online.
            "log_sigma_odom_axes": np.zeros(6),
            "log_sigma_obs_plane": np.asarray(0.0),
        }


@jdc.pytree_dataclass
class Snapshot(Generic[se3.Array]):
    """One window, frozen for learning (all arrays; stackable for vmap): host
    arrays as the mapper takes it, JAX arrays inside a calibration step.

    graph: the window graph with the newest keyframe's observation rows off.
    inputs: what the window's measurements were computed from (its rows).
    odom_L / obs_L / anchor_L: the rows' sqrt-information at theta = 0 scale.
    prev_slot, new_slot (): pose slots of the last two keyframes.
    held_obs_rows (K,) / held_anchor_rows (KA,): observation / anchor rows of
    the newest keyframe usable for the self-supervised score (K, KA: one
    keyframe's capacities), valid where ``held_obs`` / ``held_anchor``; their
    centroids are ``inputs.obs_p_sensor`` / ``inputs.anchor_p_sensor`` at
    those rows, the frozen voxels' positions in the anchor slab's measurements.
    held_obs_voxel (K,): voxel slot of each held-out observation row.
    reference (7,), has_reference (): reference T_prev_new, if any.
    """

    graph: Graph
    x0: State
    inputs: MeasurementInputs[se3.Array]
    odom_L: se3.Array
    obs_L: se3.Array
    anchor_L: se3.Array
    prev_slot: se3.Array
    new_slot: se3.Array
    held_obs_rows: se3.Array
    held_obs: se3.Array
    held_obs_voxel: se3.Array
    held_anchor_rows: se3.Array
    held_anchor: se3.Array
    reference: se3.Array
    has_reference: se3.Array


def inject(theta: Theta, snap: Snapshot[jax.Array], T_base_sensor: jax.Array, config: CalibrationConfig) -> Graph:
    """The snapshot's graph with measurements (``remeasure``, as the window
    builds them) and noise rebuilt from theta.

    Only what ``config`` learns is rebuilt: the window built every other
    row from the same theta, and rebuilding the ~20k observation rows (and
    differentiating through them) was a fifth of a calibration step.
    """
    g = snap.graph
    odom, anchor = g.slab(ODOM_SE3), g.slab(VOXEL_ANCHOR_OBS)
    measured = remeasure(theta, T_base_sensor, snap.inputs, anchor.measurement[:, ANCHOR_VOXEL], observations=config.learn_extrinsic)
    rows = {name: jnp.arange(g.slab(name).capacity) for name in (ODOM_SE3, VOXEL_POINT_OBS, VOXEL_ANCHOR_OBS)}
    g = g.with_measurements(ODOM_SE3, rows[ODOM_SE3], jnp.where(odom.active[:, None], measured[ODOM_SE3], odom.measurement))
    if config.learn_noise:
        g = g.with_sqrt_info(ODOM_SE3, rows[ODOM_SE3], snap.odom_L * jnp.exp(-theta["log_sigma_odom"]))
        g = g.with_sqrt_info(VOXEL_POINT_OBS, rows[VOXEL_POINT_OBS], snap.obs_L * jnp.exp(-theta["log_sigma_obs"]))
        g = g.with_sqrt_info(VOXEL_ANCHOR_OBS, rows[VOXEL_ANCHOR_OBS], snap.anchor_L * jnp.exp(-theta["log_sigma_obs"]))
    if config.learn_extrinsic:
        for name in (VOXEL_POINT_OBS, VOXEL_ANCHOR_OBS):
            g = g.with_measurements(name, rows[name], measured[name])
    return g


def _learned_only(theta: Theta, config: CalibrationConfig) -> Theta:
    """theta with the groups ``config`` does not learn held constant: their
    (masked, zero) gradients are then not computed at all."""
    fixed = {"log_sigma_odom_axes", "log_sigma_obs_plane"} | ({"extrinsic"} if not config.learn_extrinsic else set())
    if not config.learn_noise:
        fixed |= {"log_sigma_odom", "log_sigma_obs"}
    return {k: jax.lax.stop_gradient(v) if k in fixed else v for k, v in theta.items()}


def odometry_only(config: CalibrationConfig) -> bool:
    """Whether theta reaches the snapshot through its odometry factors alone.

    Then the inner solve runs on the window's pose system with the voxel
    observations frozen into a quadratic (``solve.reduced``): the same first
    Gauss–Newton step and gradient as solving the whole window, at a
    fraction of the cost. Learning the extrinsic or the noise scales changes
    the observations too, and solves the whole window.
    """
    return not (config.learn_extrinsic or config.learn_noise)


# Held-out rows further than this many sigmas from the map count as this
# far: cells can change between views (occlusion, new surfaces).
SELF_SUPERVISED_CAP_SIGMA = 5.0
# Information every learned coordinate starts with, so the normal equations
# stay solvable where no snapshot constrained it yet (standing still gives
# the scale none); one snapshot adds ~0.1-1.
PRIOR_INFORMATION = 1e-6


def snapshot_residuals(theta: Theta, snap: Snapshot[jax.Array], T_base_sensor: jax.Array, config: CalibrationConfig) -> tuple[jax.Array, jax.Array]:
    """The snapshot's residuals r (6 + 3·(K + KA),) and a constant c: its loss is ``|r|² + c``.

    With a reference, r's first 6 entries are the relative-pose error
    previous → newest keyframe (rotation weighted by ``rotation_weight_m``)
    and the rest are zero. Without, the first 6 are zero and the rest are
    the held-out observation and anchor rows against the map, whitened by
    the rows' sqrt-information at theta's zero noise scale (``obs_L``,
    ``anchor_L``) and divided by √count (a mean); rows beyond
    ``SELF_SUPERVISED_CAP_SIGMA`` are zero in r and counted at the cap in c.
    Whitening matters: a planar cell's in-plane centroid moves with the
    viewpoint, and unweighted it biased the learned forward scale by ~3 %.
    """
    theta = _learned_only(theta, config)
    graph = inject(theta, snap, T_base_sensor, config)
    if odometry_only(config):
        x = solve_poses(graph, snap.x0, (ODOM_SE3,), config.solver.max_iterations)
    else:
        x, _ = solve(graph, snap.x0, config.solver)
    T_prev = jaxlie.SE3(x.poses[snap.prev_slot])
    T_new = jaxlie.SE3(x.poses[snap.new_slot])
    # Supervised: relative pose against the reference.
    err = (jaxlie.SE3(snap.reference).inverse() @ (T_prev.inverse() @ T_new)).log()
    supervised = jnp.concatenate([err[:3], config.rotation_weight_m * err[3:]])
    # Self-supervised: held-out observations of the newest scan against the map.
    T_new_inv = T_new.inverse()
    obs_rows, anchor_rows = snap.held_obs_rows, snap.held_anchor_rows
    p_obs = observations_in_base(theta, T_base_sensor, snap.inputs.obs_p_sensor[obs_rows])
    r_obs = (T_new_inv @ x.points[snap.held_obs_voxel]) - p_obs
    p_anchor = observations_in_base(theta, T_base_sensor, snap.inputs.anchor_p_sensor[anchor_rows])
    r_anchor = (T_new_inv @ snap.graph.slab(VOXEL_ANCHOR_OBS).measurement[anchor_rows, ANCHOR_VOXEL]) - p_anchor
    white_obs = batched_matmul(snap.obs_L[obs_rows], r_obs[:, :, None])[:, :, 0]
    white_anchor = batched_matmul(snap.anchor_L[anchor_rows], r_anchor[:, :, None])[:, :, 0]
    rows = jnp.concatenate([jnp.where(snap.held_obs[:, None], white_obs, 0.0), jnp.where(snap.held_anchor[:, None], white_anchor, 0.0)])
    count = jnp.maximum(jnp.sum(snap.held_obs) + jnp.sum(snap.held_anchor), 1)
    inside = jnp.sum(rows**2, axis=1) < SELF_SUPERVISED_CAP_SIGMA**2  # rows not held out are zero, so inside
    self_supervised = jnp.where(inside[:, None], rows, 0.0) / jnp.sqrt(count)
    capped = jnp.sum(~inside) * SELF_SUPERVISED_CAP_SIGMA**2 / count
    r = jnp.concatenate([jnp.where(snap.has_reference, supervised, 0.0), jnp.where(snap.has_reference, 0.0, self_supervised).reshape(-1)])
    return r, jnp.where(snap.has_reference, 0.0, capped)


def snapshot_loss(theta: Theta, snap: Snapshot[jax.Array], T_base_sensor: jax.Array, config: CalibrationConfig) -> jax.Array:
    r, c = snapshot_residuals(theta, snap, T_base_sensor, config)
    return jnp.sum(r * r) + c


class OnlineCalibrator:
    """Buffer of snapshots plus the optimizer state; one compiled step."""

    def __init__(self, config: CalibrationConfig, theta: AnyTheta, T_base_sensor: np.ndarray, resumed: bool = False) -> None:
        """``resumed``: theta is a calibration learned before (a loaded file).
        Gauss–Newton then weighs it as the fit of a full memory of snapshots
        (1/(1 − forgetting)) like the first one it sees, instead of replacing
        it by that one snapshot's fit."""
        self.config = config
        self.snapshots: deque[Snapshot[np.ndarray]] = deque(maxlen=config.buffer)
        self._mask = config.mask()
        self._T_base_sensor = T_base_sensor
        self._state = self._initial_state(theta)
        self._prior_steps = 1.0 / max(1.0 - config.forgetting, 1e-3) if resumed else 0.0
        self.steps = 0
        self.accepted = 0
        self.rejected = 0
        self.clipped = 0  # steps that left the bounds and were clipped back
        self.last_loss: float | None = None
        # The candidate calibration learning moves (None: the one in use),
        # the optimizer state that goes with the one in use (restored on a
        # rollback), and (loss in use, loss of the candidate) per snapshot
        # scored since the last decision.
        self._candidate: HostTheta | None = None
        self._in_use_state = (self._state, self._prior_steps)
        self._tally: list[tuple[float, float]] = []

    def _initial_state(self, theta: AnyTheta) -> np.ndarray | optax.OptState:
        """Gauss–Newton: the accumulated information (n, n) over the n learned
        coordinates. Adam: optax's state (masked gradients are exactly zero,
        and Adam then leaves those coordinates be)."""
        if self.config.optimizer == "gauss_newton":
            return np.zeros((len(learned_coordinates(self.config)),) * 2)
        return _adam(self.config).init(theta)

    @property
    def information(self) -> np.ndarray | None:
        """Gauss–Newton: the accumulated information (n, n) over ``learned_coordinates``; None with Adam."""
        return np.array(self._state) if self.config.optimizer == "gauss_newton" else None

    def add(self, snapshot: Snapshot[np.ndarray]) -> None:
        self.snapshots.append(snapshot)

    def clear(self) -> None:
        """Forget buffered snapshots and the candidate (after a map reset); the optimizer state of the calibration in use stays."""
        self.snapshots.clear()
        self._roll_back()

    def _roll_back(self) -> None:
        self._candidate, self._tally = None, []
        self._state, self._prior_steps = self._in_use_state

    def learn(self, snapshot: Snapshot[np.ndarray], theta: AnyTheta) -> tuple[HostTheta | None, str | None]:
        """Feed one snapshot; returns (a validated theta to apply or None, a warning or None).

        ``theta`` is the calibration in use. The snapshot first scores it and
        the candidate (when learning has moved one away from it); after
        ``validation_snapshots`` such scores the candidate that was scored is
        returned if its total is lower, else learning rolls back to
        ``theta``. Then, once the buffer is ready, the candidate takes one
        step on the snapshot.
        """
        applied: HostTheta | None = None
        if self._candidate is not None:
            scored = self._candidate
            self._tally.append((float(self._loss(theta, snapshot)), float(self._loss(scored, snapshot))))
            if len(self._tally) >= self.config.validation_snapshots:
                in_use, candidate = (sum(column) for column in zip(*self._tally))
                n = len(self._tally)
                self._tally = []
                if np.isfinite(candidate) and candidate < in_use:
                    self.accepted += 1
                    applied = scored
                    self._in_use_state = (self._state, self._prior_steps)
                else:
                    self.rejected += 1
                    self._roll_back()
                    # Expected now and then (noisy steps), so counted and logged, not warned.
                    log.info("calibration rolled back: held-out loss %.4g is not below %.4g (in use)", candidate / n, in_use / n)
        self.snapshots.append(snapshot)
        if not self.ready():
            return applied, None
        stepped = self.step(self._candidate if self._candidate is not None else theta)
        if not all(bool(np.all(np.isfinite(np.asarray(v)))) for v in stepped.values()):
            self.rejected += 1
            self._roll_back()
            return applied, "calibration step produced non-finite parameters; kept the previous calibration"
        self._candidate, outside = self.config.bounds.clip(stepped)
        self.clipped += bool(outside)
        return applied, None

    def _loss(self, theta: AnyTheta, snapshot: Snapshot[np.ndarray]) -> jax.Array:
        return _validation_loss(theta, snapshot, self._T_base_sensor, self.config)

    def ready(self) -> bool:
        return len(self.snapshots) >= self.config.batch

    def step(self, theta: AnyTheta) -> Theta:
        """One optimizer step on the newest ``batch`` snapshots; returns the new theta."""
        batch = list(self.snapshots)[-self.config.batch :]
        theta, self._state, loss = self._run(theta, self._state, batch, self._prior_steps)
        self._prior_steps = 0.0
        self.steps += 1
        self.last_loss = float(loss)
        return theta

    def warm_up(self, theta: AnyTheta, snapshot: Snapshot[np.ndarray]) -> None:
        """Compile the step and the validation loss on a snapshot's shapes without touching the optimizer state."""
        self._run(theta, self._initial_state(theta), [snapshot] * self.config.batch, 0.0)[2].block_until_ready()
        self._loss(theta, snapshot).block_until_ready()

    def _run(
        self, theta: AnyTheta, state: np.ndarray | optax.OptState, batch: list[Snapshot[np.ndarray]], prior_steps: float
    ) -> tuple[Theta, np.ndarray | optax.OptState, jax.Array]:
        # Stacked on the host, then one transfer; a batch of one is a view (no copy of ~5 MB).
        stacked = jax.tree.map(lambda *a: np.stack(a) if len(a) > 1 else np.expand_dims(a[0], 0), *batch)
        if self.config.optimizer == "gauss_newton":
            return _gauss_newton_step(theta, state, np.float64(prior_steps), stacked, self._T_base_sensor, self.config)
        return _adam_step(theta, state, stacked, self._T_base_sensor, self._mask, self.config, _adam(self.config))


@partial(jax.jit, static_argnames=("config",))
def _validation_loss(theta: Theta, snapshot: Snapshot[jax.Array], T_base_sensor: jax.Array, config: CalibrationConfig) -> jax.Array:
    return snapshot_loss(theta, snapshot, T_base_sensor, config)


def learned_coordinates(config: CalibrationConfig) -> tuple[tuple[str, int], ...]:
    """(group, flat index) of every scalar of theta that ``config`` learns, in a fixed order."""
    return tuple((k, int(i)) for k, m in config.mask().items() for i in np.flatnonzero(np.asarray(m).reshape(-1)))


_Out = TypeVar("_Out")


def _per_snapshot(fn: Callable[[Snapshot[jax.Array]], _Out], stacked: Snapshot[jax.Array]) -> _Out:
    """``fn`` of each snapshot of a stacked batch, its outputs stacked."""
    if stacked.new_slot.shape[0] == 1:
        # vmap over a batch of one turns every gather and scatter of the
        # solve into a batched one: a step took 35 ms instead of 20 on CPU.
        return jax.tree.map(lambda a: a[None], fn(jax.tree.map(lambda a: a[0], stacked)))
    return jax.vmap(fn)(stacked)


@partial(jax.jit, static_argnames=("config",))
def _gauss_newton_step(
    theta: Theta, information: jax.Array, prior_steps: jax.Array, stacked: Snapshot[jax.Array], T_base_sensor: jax.Array, config: CalibrationConfig
) -> tuple[Theta, jax.Array, jax.Array]:
    """One recursive-least-squares step: A ← forgetting·A + (1 + prior_steps)·JᵀJ,
    δ = −A⁻¹Jᵀr over the learned coordinates, r the batch's residuals at theta
    (``prior_steps`` > 0 once, for a resumed calibration).

    J (m, n) is n forward-mode derivatives through the pose-system solve
    (n = 3 by default: scale, yaw-rate bias, time offset); returns (theta, A, mean loss of the batch)."""
    coords = learned_coordinates(config)
    v0 = jnp.stack([jnp.reshape(theta[k], -1)[i] for k, i in coords])

    def with_values(v: jax.Array) -> Theta:
        out = dict(theta)
        for j, (k, i) in enumerate(coords):
            out[k] = jnp.reshape(jnp.reshape(out[k], -1).at[i].set(v[j]), jnp.shape(theta[k]))
        return out

    def residuals(v: jax.Array) -> tuple[jax.Array, jax.Array]:
        r, c = _per_snapshot(lambda s: snapshot_residuals(with_values(v), s, T_base_sensor, config), stacked)
        return r.reshape(-1), c

    # One primal, then a column of J per coordinate (unbatched: vmapping the
    # tangents batches every gather and scatter of the solve).
    (r, c), tangent = jax.linearize(residuals, v0)
    J = jnp.stack([tangent(e)[0] for e in jnp.eye(len(coords), dtype=v0.dtype)], axis=1)
    information = config.forgetting * information + (1.0 + prior_steps) * (J.T @ J)
    delta = -jnp.linalg.solve(information + PRIOR_INFORMATION * jnp.eye(len(coords), dtype=v0.dtype), J.T @ r)
    loss = (jnp.sum(r * r) + jnp.sum(c)) / c.shape[0]
    return with_values(v0 + delta), information, loss


@cache
def _adam(config: CalibrationConfig) -> optax.GradientTransformation:
    """One optimizer object per config: it is a static argument of the jitted
    step, so a fresh object per calibrator would recompile for every Mapper."""
    schedule = optax.exponential_decay(config.learning_rate, config.decay_steps, 0.5, end_value=config.min_learning_rate)
    return optax.adam(schedule)


@partial(jax.jit, static_argnames=("config", "optimizer"))
def _adam_step(
    theta: Theta,
    opt_state: optax.OptState,
    stacked: Snapshot[jax.Array],
    T_base_sensor: jax.Array,
    mask: dict[str, np.ndarray],
    config: CalibrationConfig,
    optimizer: optax.GradientTransformation,
) -> tuple[Theta, optax.OptState, jax.Array]:
    def loss(t):
        return jnp.mean(_per_snapshot(lambda s: snapshot_loss(t, s, T_base_sensor, config), stacked))

    value, grads = jax.value_and_grad(loss)(theta)
    grads = jax.tree.map(lambda g, m: g * m, grads, mask)
    updates, opt_state = optimizer.update(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, value
