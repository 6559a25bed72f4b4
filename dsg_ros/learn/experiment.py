"""An experiment folder and what is in it, and the summary across folds.

``<experiments_dir>/<identifier>/``:

* ``experiment_config.yaml``: the version, the learning config, the bags and
  the cache they were read into;
* ``checkpoint.npz``: theta, the optimizer state, the step, the epoch, the
  RNG state and the best validation so far (no pickle; written atomically);
* ``metrics.jsonl``: one JSON line per epoch (epoch 0: before training);
* ``calibration.yaml``: theta of the best validation epoch (``calibration.save``);
* ``learning_curves.png`` (drawn by ``tools.learning_plots``).
"""

from __future__ import annotations

import glob
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml

from dsg_ros.config import load_versioned_yaml
from dsg_ros.files import atomic_path
from dsg_ros.learn import calibration as cal

EXPERIMENT_VERSION = 1
CONFIG_FILE = "experiment_config.yaml"
CHECKPOINT_FILE = "checkpoint.npz"
METRICS_FILE = "metrics.jsonl"
CALIBRATION_FILE = "calibration.yaml"
CURVES_FILE = "learning_curves.png"
# The metric that picks the best epoch (lower is better).
SELECTION_METRIC = "validation_ate_m"


class ExperimentError(ValueError):
    """An experiment folder that cannot be used; the message names the file."""


def read_config(folder: Path) -> dict[str, Any]:
    """The experiment's config document; ExperimentError naming the file if unusable."""
    return load_versioned_yaml(folder / CONFIG_FILE, "dsg_ros_experiment", EXPERIMENT_VERSION, "experiment", ExperimentError, "; start a new experiment")


def write_config(folder: Path, document: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(yaml.safe_dump({"dsg_ros_experiment": EXPERIMENT_VERSION, **document}, sort_keys=False))


@dataclass
class Checkpoint:
    """Where training stands after ``epoch`` completed epochs (``step`` optimizer updates)."""

    theta: cal.HostTheta
    opt_state: list[np.ndarray]  # the optimizer state's leaves, in jax.tree order
    step: int
    epoch: int
    rng_state: dict[str, Any]  # numpy Generator.bit_generator.state
    best_value: float  # SELECTION_METRIC of the best epoch so far (inf: none)
    best_epoch: int


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint atomically: a kill at any moment leaves the previous one whole."""
    arrays = {f"theta/{k}": np.asarray(v) for k, v in checkpoint.theta.items()}
    arrays.update({f"opt/{i:04d}": np.asarray(leaf) for i, leaf in enumerate(checkpoint.opt_state)})
    meta = {
        "version": EXPERIMENT_VERSION,
        "step": checkpoint.step,
        "epoch": checkpoint.epoch,
        "rng_state": checkpoint.rng_state,
        "best_value": checkpoint.best_value if math.isfinite(checkpoint.best_value) else None,
        "best_epoch": checkpoint.best_epoch,
    }
    path = folder / CHECKPOINT_FILE
    with atomic_path(path) as tmp:
        with tmp.open("wb") as handle:
            np.savez(handle, meta=np.asarray(json.dumps(meta)), **arrays)  # type: ignore[arg-type]
    return path


def load_checkpoint(folder: Path, theta_like: cal.AnyTheta, opt_state_like: Any) -> Checkpoint:
    """Read the checkpoint; ExperimentError naming the file when it is corrupt or does not fit."""
    path = folder / CHECKPOINT_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            theta = {k: np.array(data[f"theta/{k}"]) for k in theta_like}
            leaves_like = jax.tree.leaves(opt_state_like)
            opt_state = [np.array(data[f"opt/{i:04d}"]) for i in range(len(leaves_like))]
        if meta.get("version") != EXPERIMENT_VERSION:
            raise ExperimentError(f"{path}: checkpoint version {meta.get('version')!r} is not supported (expected {EXPERIMENT_VERSION})")
        for k, v in theta_like.items():
            if theta[k].shape != np.shape(v):
                raise ExperimentError(f"{path}: theta {k} has shape {theta[k].shape}, expected {np.shape(v)}")
        for got, like in zip(opt_state, leaves_like):
            if got.shape != np.shape(like):
                raise ExperimentError(f"{path}: the optimizer state does not fit this optimizer (shape {got.shape}, expected {np.shape(like)})")
        best = meta["best_value"]
        return Checkpoint(theta, opt_state, int(meta["step"]), int(meta["epoch"]), meta["rng_state"],
                          math.inf if best is None else float(best), int(meta["best_epoch"]))
    except ExperimentError:
        raise
    except Exception as exc:  # a truncated or foreign file: zipfile, numpy and json errors alike
        raise ExperimentError(f"{path}: corrupt checkpoint: {type(exc).__name__}: {exc}") from None


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The metrics lines (one per epoch); ExperimentError naming the file for a malformed line."""
    path = folder / METRICS_FILE
    if not path.exists():
        return []
    lines = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExperimentError(f"{path}:{number}: not a JSON line: {exc}") from None
        if not isinstance(line, dict):
            raise ExperimentError(f"{path}:{number}: not a JSON object")
        lines.append(line)
    return lines


def write_metrics(folder: Path, lines: Sequence[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl atomically (a resume drops lines after its checkpoint)."""
    with atomic_path(folder / METRICS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))


def best_line(lines: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The line of the best epoch: lowest SELECTION_METRIC, the earliest on ties."""
    scored = [line for line in lines if isinstance(line.get(SELECTION_METRIC), (int, float))]
    return min(scored, key=lambda line: line[SELECTION_METRIC]) if scored else None


# ------------------------------------------------------------ cross-validation


@dataclass(frozen=True)
class Statistic:
    """A metric over n folds: mean and standard error (sample std / √n; None for one fold)."""

    mean: float
    standard_error: float | None
    n: int


def mean_and_standard_error(values: Sequence[float]) -> Statistic:
    x = np.asarray(values, np.float64)
    se = float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size >= 2 else None
    return Statistic(float(np.mean(x)), se, int(x.size))


_FOLD = re.compile(r"fold_\d+$")


def experiment_folders(patterns: Sequence[str]) -> list[Path]:
    """Folders holding a metrics.jsonl under the glob ``patterns`` (recursive ``**``), sorted."""
    found: set[Path] = set()
    for pattern in patterns:
        for match in glob.glob(pattern, recursive=True):
            path = Path(match)
            if path.is_dir():
                found.update(p.parent for p in path.rglob(METRICS_FILE))
            elif path.name == METRICS_FILE:
                found.add(path.parent)
    return sorted(found)


def cross_validate(folders: Sequence[Path], disaggregate: bool = False) -> dict[str, Any]:
    """Every numeric metric of each fold's best epoch, across the folds of each experiment.

    An experiment is a folder's parent when the folder is named ``fold_K``,
    else the folder itself. Returns ``{experiment: {metric: {mean,
    standard_error, n}}}``; with ``disaggregate`` also ``folds: {fold:
    {metric: value}}`` per experiment.
    """
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for folder in folders:
        name = str(folder.parent) if _FOLD.match(folder.name) else str(folder)
        line = best_line(read_metrics(folder))
        if line is None:
            continue
        values = {k: float(v) for k, v in line.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        groups.setdefault(name, {})[folder.name] = values
    out: dict[str, Any] = {}
    for name, folds in sorted(groups.items()):
        metrics = sorted({k for values in folds.values() for k in values})
        summary: dict[str, Any] = {
            metric: mean_and_standard_error([values[metric] for values in folds.values() if metric in values]).__dict__ for metric in metrics
        }
        if disaggregate:
            summary["folds"] = folds
        out[name] = summary
    return out
