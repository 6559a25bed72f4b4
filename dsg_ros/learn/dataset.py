"""What learning from bags trains on: every keyframe the front-end built, cached,
cut into fixed-length subsequences, split into folds.

The cache (``KeyframeLog``, a compressed .npz without pickled objects) holds,
per keyframe, what its factors are built from: the raw odometry increment
from the previous keyframe with its duration and end velocities, the
configured odometry sigmas of that increment, its best-supported cell
observations in the sensor frame with their sqrt-information and map-cell
keys (the association), the front-end's estimate and the reference pose at
its stamp. Epochs then read only this file: no bag, no ROS, no registration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic

import jax_dataclasses as jdc
import numpy as np

from dsg_ros import se3
from dsg_ros.files import atomic_path

DATASET_VERSION = 1


class DatasetError(ValueError):
    """A cache or split that cannot be used; the message names the file or the data."""


@dataclass(frozen=True, eq=False)
class KeyframeLog:
    """K keyframes of B bags, M cell observations each (padded).

    bag (K,) int: index into ``sources``; stamp (K,) s.
    odom_raw (K, 7), odom_dt (K,), odom_velocity (K, 2, 6): the raw odometry
    increment from the previous keyframe of the same bag (``odom_valid``
    (K,) False for a bag's first keyframe). odom_sigma (K, 6): its configured
    sigmas (ρ, ω) before any learned scale.
    p_sensor (K, M, 3), obs_sqrt_info (K, M, 3, 3) (base frame, before any
    learned scale), obs_key (K, M) int64 map-cell keys, obs_valid (K, M).
    estimate (K, 7) ``T_map_base`` from the front-end; reference (K, 7)
    ``T_world_base`` at the keyframe stamps (NaN where the reference has none).
    T_base_sensor (B, 7): each bag's nominal extrinsic.
    obs_sigma (2,): the configured observation sigmas (along the normal, in
    the plane) the sqrt-information was built with.
    sources: the bags; fingerprint: JSON of what built the cache (bags,
    topics, mapper settings), compared before a cache is reused.
    """

    bag: np.ndarray
    stamp: np.ndarray
    odom_raw: np.ndarray
    odom_dt: np.ndarray
    odom_velocity: np.ndarray
    odom_sigma: np.ndarray
    odom_valid: np.ndarray
    p_sensor: np.ndarray
    obs_sqrt_info: np.ndarray
    obs_key: np.ndarray
    obs_valid: np.ndarray
    estimate: np.ndarray
    reference: np.ndarray
    T_base_sensor: np.ndarray
    obs_sigma: np.ndarray
    sources: tuple[str, ...]
    fingerprint: str

    @property
    def keyframes(self) -> int:
        return int(self.stamp.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write the cache atomically (compressed .npz, no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("sources", "fingerprint")}
        meta = json.dumps({"version": DATASET_VERSION, "sources": list(self.sources), "fingerprint": self.fingerprint})
        with atomic_path(path) as tmp:
            with tmp.open("wb") as handle:
                np.savez_compressed(handle, meta=np.asarray(meta), **arrays)
        return path

    @staticmethod
    def load(path: str | Path) -> KeyframeLog:
        """Read a cache; DatasetError naming the file for anything unusable."""
        path = Path(path)
        names = [f.name for f in fields(KeyframeLog) if f.name not in ("sources", "fingerprint")]
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: np.asarray(data[name]) for name in names}
        except (OSError, ValueError, KeyError, EOFError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: cannot read the learning cache: {type(exc).__name__}: {exc}") from None
        if not isinstance(meta, dict) or meta.get("version") != DATASET_VERSION:
            version = meta.get("version") if isinstance(meta, dict) else None
            raise DatasetError(f"{path}: learning cache version {version!r} is not supported (expected {DATASET_VERSION}); delete it to rebuild")
        return KeyframeLog(**arrays, sources=tuple(meta["sources"]), fingerprint=str(meta["fingerprint"]))


@jdc.pytree_dataclass
class Subsequence(Generic[se3.Array]):
    """L consecutive keyframes of one bag with V voxel slots (V = L·M), the
    unit a loss sees; batches stack a leading axis (vmap over it). Host
    arrays as cut from the cache, JAX arrays inside a loss.

    odom_raw (L, 7), odom_dt (L,), odom_velocity (L, 2, 6), odom_sigma (L, 6),
    odom_valid (L,): row k is the increment k−1 → k (row 0 unused).
    p_sensor (L, M, 3), obs_sqrt_info (L, M, 3, 3), voxel (L, M) int32 slot,
    obs_valid (L, M): observations whose voxel some other keyframe of the
    subsequence also sees (a voxel seen once says nothing about the poses).
    reference (L, 7) ``T_world_base``; init (L, 7) the front-end's estimate
    moved so that its first pose is the reference's; stamp (L,) s;
    T_base_sensor (7,) nominal; obs_sigma (2,) as ``KeyframeLog``.
    """

    odom_raw: se3.Array
    odom_dt: se3.Array
    odom_velocity: se3.Array
    odom_sigma: se3.Array
    odom_valid: se3.Array
    p_sensor: se3.Array
    obs_sqrt_info: se3.Array
    voxel: se3.Array
    obs_valid: se3.Array
    reference: se3.Array
    init: se3.Array
    stamp: se3.Array
    T_base_sensor: se3.Array
    obs_sigma: se3.Array


def windows(log: KeyframeLog, length: int) -> list[np.ndarray]:
    """Keyframe indices (length,) of every usable subsequence, in time order per
    bag, not overlapping: consecutive keyframes of one bag, each with a
    reference pose and (after the first) an odometry increment."""
    can_start = np.isfinite(log.reference).all(axis=1)
    can_follow = can_start & log.odom_valid
    out: list[np.ndarray] = []
    for b in np.unique(log.bag):
        rows = np.flatnonzero(log.bag == b)
        start = 0
        while start + length <= rows.size:
            take = rows[start : start + length]
            broken = np.flatnonzero(~can_follow[take[1:]])
            if not can_start[take[0]]:
                start += 1
            elif broken.size:  # the keyframe after the break may start the next window
                start += int(broken[0]) + 1
            else:
                out.append(take)
                start += length
    return out


def subsequence(log: KeyframeLog, take: np.ndarray) -> Subsequence[np.ndarray]:
    """The subsequence of keyframes ``take`` (L,) with its voxel association."""
    keys = log.obs_key[take]
    valid = log.obs_valid[take]
    L, M = keys.shape
    flat_keys = np.where(valid, keys, np.iinfo(np.int64).min).reshape(-1)
    uniq, inverse = np.unique(flat_keys, return_inverse=True)
    voxel = inverse.reshape(L, M).astype(np.int32)
    # Keyframes seeing each voxel: only voxels seen from two or more constrain the poses.
    seen_by = np.zeros((uniq.size, L), bool)
    seen_by[voxel[valid], np.nonzero(valid)[0]] = True
    shared = seen_by.sum(axis=1) >= 2
    obs_valid = valid & shared[voxel]
    reference = log.reference[take]
    estimate = log.estimate[take]
    init = se3.compose(se3.compose(reference[0], se3.inverse(estimate[0]))[None], estimate)
    return Subsequence(
        odom_raw=log.odom_raw[take],
        odom_dt=log.odom_dt[take],
        odom_velocity=log.odom_velocity[take],
        odom_sigma=log.odom_sigma[take],
        odom_valid=log.odom_valid[take] & (np.arange(L) > 0),
        p_sensor=log.p_sensor[take],
        obs_sqrt_info=log.obs_sqrt_info[take],
        voxel=voxel,
        obs_valid=obs_valid,
        reference=reference,
        init=init,
        stamp=log.stamp[take],
        T_base_sensor=log.T_base_sensor[log.bag[take[0]]],
        obs_sigma=log.obs_sigma,
    )


def stack(items: list[Subsequence[np.ndarray]]) -> Subsequence[np.ndarray]:
    """Subsequences stacked on a new leading axis (a batch)."""
    return Subsequence(**{f.name: np.stack([getattr(s, f.name) for s in items]) for f in fields(Subsequence)})


@dataclass(frozen=True)
class Split:
    """Keyframe-index windows (each (L,)) for training and validation, and how they were split."""

    train: list[np.ndarray]
    validation: list[np.ndarray]
    by: str  # "bags" or "time"


def split(log: KeyframeLog, length: int, fold: int, folds: int, what: str = "the data") -> Split:
    """Fold ``fold`` of ``folds``: by whole bags when there are at least
    ``folds`` bags (bag b validates in fold b mod folds), else by contiguous
    time segments of every bag, where the training windows next to the
    validation segment are left out (a gap: no keyframe, voxel or reference
    is shared across it). DatasetError when the data cannot give every fold
    a training and a validation window; ``what`` names the data in it.
    """
    if folds < 1 or not 0 <= fold < folds:
        raise DatasetError(f"--dataset-fold {fold} is not one of 0..{folds - 1} (--num-folds {folds})")
    all_windows = windows(log, length)
    bags = len(log.sources)
    if folds == 1:  # no held-out data: validation is the training data
        result = Split(all_windows, all_windows, "none")
    elif bags >= folds:
        of_bag = [int(log.bag[w[0]]) for w in all_windows]
        train = [w for w, b in zip(all_windows, of_bag) if b % folds != fold]
        validation = [w for w, b in zip(all_windows, of_bag) if b % folds == fold]
        result = Split(train, validation, "bags")
    else:
        train, validation = [], []
        for b in range(bags):
            mine = [w for w in all_windows if log.bag[w[0]] == b]
            if len(mine) < folds + 2:
                continue  # too short to split with a gap
            edges = np.linspace(0, len(mine), folds + 1).round().astype(int)
            lo, hi = edges[fold], edges[fold + 1]
            validation += mine[lo:hi]
            # One window of gap on each side of the validation segment.
            train += [w for i, w in enumerate(mine) if i < lo - 1 or i > hi]
        result = Split(train, validation, "time")
    if not result.train or not result.validation:
        raise DatasetError(
            f"{what}: {len(all_windows)} subsequences of {length} keyframes in {bags} bag(s) cannot make {folds} folds "
            f"(fold {fold} would have {len(result.train)} for training and {len(result.validation)} for validation); "
            "use fewer folds, a shorter --train-sequence-length or more data"
        )
    return result


def describe(log: KeyframeLog) -> dict[str, Any]:
    """A JSON-able count of what the cache holds."""
    return {"bags": len(log.sources), "keyframes": log.keyframes, "observations": int(log.obs_valid.sum())}
