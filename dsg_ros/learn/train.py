"""Learning a calibration from cached bags: epochs of optax steps on
subsequence batches, validation per epoch, checkpoints, and resume.

Every epoch draws its batch order from one NumPy generator whose state is
checkpointed with theta and the optimizer state after each epoch, so a run
stopped anywhere (Ctrl-C, a kill) and resumed from its last checkpoint
repeats the interrupted epoch exactly and ends where an uninterrupted run
with the same seed ends.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsg_ros.learn import calibration as cal, experiment as ex
from dsg_ros.learn.config import LearnConfig, LossConfig
from dsg_ros.learn.dataset import KeyframeLog, Subsequence, split, stack, subsequence
from dsg_ros.learn.losses import batch_loss, loss, solve_subsequence
from dsg_ros.progress import ProgressBar

# Validated on pose pairs this far apart (the real-data benchmark's ~1 s relations).
RELATION_GAP_S = 1.0
# Scores a trajectory against a reference: (stamps, poses, reference stamps,
# reference poses, relation gaps) → ate_m, rel_<gap>s_m, rel_<gap>s_deg.
# ``mapping.metrics.score``, passed in by the caller: learn/ sits below mapping/.
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]], dict[str, Any]]


def optimizer(config: LearnConfig) -> optax.GradientTransformation:
    """Adam after a linear warm-up, on gradients clipped to ``max_gradient_norm``."""
    schedule = optax.warmup_constant_schedule(0.0, config.learning_rate, config.warmup_steps) if config.warmup_steps else config.learning_rate
    return optax.chain(optax.clip_by_global_norm(config.max_gradient_norm), optax.adam(schedule))


def learned(config: LearnConfig) -> dict[str, np.ndarray]:
    """1 where theta is learned, 0 where it stays. ``log_sigma_odom`` always
    stays: the per-axis scales ``log_sigma_odom_axes`` say all it could."""
    mask: dict[str, np.ndarray] = {k: np.ones(np.shape(v)) for k, v in cal.zero_theta().items()}
    mask["log_sigma_odom"] = np.zeros(())
    if not config.learn_all_axes:
        mask["odom_log_scale"] = np.array([1.0, 0.0, 0.0])
        mask["odom_bias"] = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    if not config.learn_extrinsic:
        mask["extrinsic"] = np.zeros(6)
    return mask


@dataclass(frozen=True)
class TrainResult:
    folder: Path
    metrics: list[dict[str, Any]]
    best_epoch: int
    theta: cal.HostTheta  # the last epoch's
    resumed_from: int | None  # the checkpoint's epoch, when resumed


def _batches(items: list[Subsequence[np.ndarray]], size: int) -> list[Subsequence[np.ndarray]]:
    """Fixed-size stacked batches covering ``items``; the last is padded with the
    first item (one compiled shape), the caller drops the padding's results."""
    out = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        out.append(stack(chunk + [items[0]] * (size - len(chunk))))
    return out


class _Evaluator:
    """Validation: the loss and the solved poses' ATE and ~1 s relation error, averaged over subsequences."""

    def __init__(self, items: list[Subsequence[np.ndarray]], config: LearnConfig, score: Scorer) -> None:
        self.items, self.score = items, score
        self.size = min(config.batch_size, len(items))
        self.batches = [jax.device_put(b) for b in _batches(items, self.size)]
        self.loss_config = config.loss_config()

    def __call__(self, theta: cal.Theta) -> dict[str, float | None]:
        losses, scores = [], []
        for b, batch in enumerate(self.batches):
            n = min(self.size, len(self.items) - b * self.size)
            losses += np.asarray(_validation_losses(theta, batch, self.loss_config))[:n].tolist()
            poses = np.asarray(_validation_poses(theta, batch, self.loss_config))[:n]
            for seq, T in zip(self.items[b * self.size : b * self.size + n], poses):
                scores.append(self.score(seq.stamp, T, seq.stamp, seq.reference, (RELATION_GAP_S,)))

        def mean(key: str) -> float | None:
            values = [s[key] for s in scores if s.get(key) is not None]
            return float(np.mean(values)) if values else None

        name = f"rel_{RELATION_GAP_S:g}s"
        return {
            "validation_loss": float(np.mean(losses)),
            "validation_ate_m": mean("ate_m"),
            f"validation_{name}_m": mean(f"{name}_m"),
            f"validation_{name}_deg": mean(f"{name}_deg"),
        }


# Module-level programs with hashable static configs: every run in a process
# (folds, a resume) reuses one compilation per batch shape.


@partial(jax.jit, static_argnames="config")
def _validation_losses(theta: cal.Theta, batch: Subsequence[jax.Array], config: LossConfig) -> jax.Array:
    return jax.vmap(lambda s: loss(theta, s, config))(batch)


@partial(jax.jit, static_argnames="config")
def _validation_poses(theta: cal.Theta, batch: Subsequence[jax.Array], config: LossConfig) -> jax.Array:
    solver = config.solver()
    return jax.vmap(lambda s: solve_subsequence(theta, s, solver))(batch)


def _step_key(config: LearnConfig) -> LearnConfig:
    """``config`` with the fields an optimizer step does not read reset: the
    step's static key, so that runs differing only in those share its compilation."""
    return dataclasses.replace(config, dataset_fold=0, num_folds=1, num_epochs=0, random_seed=0, batch_size=1, cells_per_keyframe=1)


@partial(jax.jit, static_argnames=("config", "bounds"))
def _update(
    theta: cal.Theta, opt_state: Any, batch: Subsequence[jax.Array], config: LearnConfig, bounds: cal.CalibrationBounds
) -> tuple[cal.Theta, Any, jax.Array]:
    """One optimizer step on a batch: masked gradients, Adam, then theta clipped into ``bounds``."""
    mask = learned(config)
    limits = bounds.limits()
    value, grads = jax.value_and_grad(batch_loss)(theta, batch, config.loss_config())
    grads = {k: g * mask[k] for k, g in grads.items()}
    updates, new_state = optimizer(config).update(grads, opt_state, theta)
    stepped = optax.apply_updates(theta, updates)
    stepped = {k: jnp.clip(v, limits[k][0], limits[k][1]) for k, v in stepped.items()}
    # A non-finite loss or gradient (a degenerate batch) skips the step instead of poisoning theta.
    ok = jnp.isfinite(value) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa: E731
    return keep(stepped, theta), keep(new_state, opt_state), value


def _document(config: LearnConfig, data: dict[str, Any]) -> dict[str, Any]:
    return {"learn": _plain(dataclasses.asdict(config)), **data}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def train(
    log: KeyframeLog,
    config: LearnConfig,
    folder: str | Path,
    score: Scorer,
    bounds: cal.CalibrationBounds | None = None,
    resume: bool = False,
    data: dict[str, Any] | None = None,
    progress: bool = False,
    on_step: Callable[[int], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> TrainResult:
    """Learn theta on ``log``'s training fold, validating on its validation fold
    every epoch; everything goes into the experiment ``folder``. ``score``:
    how a validation trajectory is scored (``mapping.metrics.score``);
    ``bounds``: theta is clipped into them after every step (the mapper's,
    ``MapperConfig.calibration.bounds``: it clips a loaded calibration into them;
    None: the defaults).

    ``data``: what ``experiment_config.yaml`` records about the data (bags,
    topics, the cache). ``on_step(step)`` runs after every optimizer step.
    DatasetError when the fold cannot be made; ExperimentError naming the
    file when the folder is from another version, was made with another
    config, or its checkpoint is corrupt.
    """
    folder = Path(folder)
    parts = split(log, config.train_sequence_length, config.dataset_fold, config.num_folds, what=", ".join(log.sources))
    train_items = [subsequence(log, w) for w in parts.train]
    validation = _Evaluator([subsequence(log, w) for w in parts.validation], config, score)
    batch_size = min(config.batch_size, len(train_items))
    per_epoch = len(train_items) // batch_size
    say(f"fold {config.dataset_fold} of {config.num_folds} (split by {parts.by}): {len(train_items)} training and "
        f"{len(validation.items)} validation subsequences of {config.train_sequence_length} keyframes; {per_epoch} steps per epoch")
    theta: cal.Theta = {k: jnp.asarray(v, jnp.float64) for k, v in cal.zero_theta().items()}
    opt_state = optimizer(config).init(theta)
    document = _document(config, {"split": {"by": parts.by, "train": len(train_items), "validation": len(validation.items)}, **(data or {})})

    has_checkpoint = (folder / ex.CHECKPOINT_FILE).exists()
    if has_checkpoint and not resume:
        raise ex.ExperimentError(f"{folder / ex.CHECKPOINT_FILE}: the experiment exists; pass --resume to continue it, or another --experiment-identifier")
    resumed_from: int | None = None
    if resume and has_checkpoint:
        saved = ex.read_config(folder)
        mine = {k: v for k, v in document["learn"].items() if k != "num_epochs"}
        theirs = {k: v for k, v in (saved.get("learn") or {}).items() if k != "num_epochs"}
        if mine != theirs:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ex.ExperimentError(f"{folder / ex.CONFIG_FILE}: made with other settings ({', '.join(changed)}); resume with the same flags")
        checkpoint = ex.load_checkpoint(folder, theta, opt_state)
        theta = {k: jnp.asarray(v) for k, v in checkpoint.theta.items()}
        opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), [jnp.asarray(v) for v in checkpoint.opt_state])
        rng = np.random.default_rng()
        rng.bit_generator.state = checkpoint.rng_state
        lines = [line for line in ex.read_metrics(folder) if line.get("epoch", 0) <= checkpoint.epoch]
        step, start, best_value, best_epoch = checkpoint.step, checkpoint.epoch, checkpoint.best_value, checkpoint.best_epoch
        resumed_from = checkpoint.epoch
        say(f"resuming {folder} after epoch {start} (step {step})")
    else:
        ex.write_config(folder, document)
        rng = np.random.default_rng(config.random_seed)
        step, start, best_value, best_epoch = 0, 0, math.inf, 0
        line: dict[str, Any] = {"epoch": 0, "step": 0, "train_loss": None, **validation(theta)}
        lines = [line]
        best_value = _selection(line)
        cal.save(folder / ex.CALIBRATION_FILE, theta, {"source": "dsg-ros learn", "epoch": 0})
        ex.write_metrics(folder, lines)
        ex.save_checkpoint(folder, ex.Checkpoint(cal.as_host(theta), [np.asarray(x) for x in jax.tree.leaves(opt_state)], 0, 0,
                                                 dict(rng.bit_generator.state), best_value, 0))
    ex.write_metrics(folder, lines)

    step_key, bounds = _step_key(config), bounds or cal.CalibrationBounds()
    total = per_epoch * config.num_epochs
    bar = ProgressBar("learn", unit="step") if progress else None
    for epoch in range(start + 1, config.num_epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(len(train_items))
        losses = []
        for b in range(per_epoch):
            batch = stack([train_items[i] for i in order[b * batch_size : (b + 1) * batch_size]])
            theta, opt_state, value = _update(theta, opt_state, jax.device_put(batch), step_key, bounds)
            step += 1
            losses.append(float(value))
            if bar is not None:
                done = step - start * per_epoch  # this run's steps: the rate and ETA leave a resumed run's past out
                bar.update(done / max(total - start * per_epoch, 1), done, f"epoch {epoch} loss {losses[-1]:.4g}")
            if on_step is not None:
                on_step(step)
        line = {"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)), **validation(theta),
                "epoch_s": time.perf_counter() - started}
        lines.append(line)
        value_now = _selection(line)
        if value_now < best_value:
            best_value, best_epoch = value_now, epoch
            cal.save(folder / ex.CALIBRATION_FILE, theta, {"source": "dsg-ros learn", "epoch": epoch})
        ex.write_metrics(folder, lines)
        ex.save_checkpoint(folder, ex.Checkpoint(cal.as_host(theta), [np.asarray(x) for x in jax.tree.leaves(opt_state)], step, epoch,
                                                 dict(rng.bit_generator.state), best_value, best_epoch))
    if bar is not None:
        bar.close()
    return TrainResult(folder, lines, best_epoch, cal.as_host(theta), resumed_from)


def _selection(line: dict[str, Any]) -> float:
    value = line.get(ex.SELECTION_METRIC)
    return float(value) if value is not None else math.inf
