"""The learning cache from bags: each bag replayed once through the front-end,
every keyframe's inputs recorded (``Window.on_keyframe``), the reference
looked up at the keyframe stamps.

The replay runs with the calibration off and theta at zero, so the recorded
measurements and sigmas are the raw ones that a learned theta corrects.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from dsg_ros import se3
from dsg_ros.bag.errors import BagError
from dsg_ros.bag.reader import Bag
from dsg_ros.bag.replay import ReplayConfig, replay
from dsg_ros.learn.dataset import KeyframeLog
from dsg_ros.mapping import Mapper, MapperConfig, metrics
from dsg_ros.mapping.window import KeyframeInputs
from dsg_ros.msgs import ODOMETRY, POSE_STAMPED


class _Recorder:
    """Keyframe inputs of one replay, each keyframe's best-supported ``cells`` observations."""

    def __init__(self, cells: int) -> None:
        self.cells = cells
        self.rows: list[KeyframeInputs] = []

    def attach(self, mapper: Mapper) -> None:
        mapper.window.on_keyframe = self.rows.append

    def arrays(self) -> dict[str, np.ndarray]:
        K, M = len(self.rows), self.cells
        out = {
            "stamp": np.array([r.stamp for r in self.rows], np.float64),
            "odom_raw": np.tile(se3.IDENTITY, (K, 1)),
            "odom_dt": np.zeros(K),
            "odom_velocity": np.zeros((K, 2, 6)),
            "odom_sigma": np.ones((K, 6)),
            "odom_valid": np.zeros(K, bool),
            "p_sensor": np.zeros((K, M, 3)),
            "obs_sqrt_info": np.broadcast_to(np.eye(3), (K, M, 3, 3)).copy(),
            "obs_key": np.zeros((K, M), np.int64),
            "obs_valid": np.zeros((K, M), bool),
        }
        for k, row in enumerate(self.rows):
            if row.odom is not None:
                out["odom_raw"][k], out["odom_dt"][k], out["odom_velocity"][k] = row.odom.raw, row.odom.dt, row.odom.velocity
                out["odom_sigma"][k] = 1.0 / np.diag(row.odom_sqrt_info)
                out["odom_valid"][k] = True
            # The best-supported cells first, as the window keeps them.
            keep = np.argsort(-row.cells.counts, kind="stable")[:M]
            n = keep.size
            out["p_sensor"][k, :n] = row.cells.p_sensor[keep]
            out["obs_sqrt_info"][k, :n] = row.obs_sqrt_info[keep]
            out["obs_key"][k, :n] = row.cells.keys[keep]
            out["obs_valid"][k, :n] = True
        return out


def fingerprint(bags: Sequence[str | Path], config: ReplayConfig, mapper_config: MapperConfig, cells: int) -> str:
    """What a cache was built from, as JSON: a cache is reused only when this matches."""
    replay_fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("record", "rate", "calibrate", "supervise")}
    document = {
        "bags": [str(Path(b).resolve()) for b in bags],
        "replay": replay_fields,
        "mapper": dataclasses.asdict(mapper_config),
        "cells_per_keyframe": cells,
    }
    return json.dumps(document, sort_keys=True, default=str)


def extract(
    bags: Sequence[str | Path],
    config: ReplayConfig,
    mapper_config: MapperConfig = MapperConfig(),
    cells: int = 128,
    say: Callable[[str], None] = lambda _: None,
    progress: bool = False,
) -> KeyframeLog:
    """Replay every bag once and record its keyframes (``cells`` observations each at most).

    BagError naming the bag when it cannot be read as asked, including a
    missing ``config.reference_topic`` (learning needs a reference).
    """
    if config.reference_topic is None:
        raise ValueError("learning needs a reference: name it with --reference-topic")
    for bag in bags:  # every bag's reference, before the first replay
        with Bag(bag) as reader:
            reader.require([config.reference_topic], {ODOMETRY, POSE_STAMPED})
    config = replace(config, calibrate=False, supervise=False, rate=None)
    parts: list[dict[str, np.ndarray]] = []
    extrinsics = []
    for index, bag in enumerate(bags):
        recorder = _Recorder(cells)
        result = replay(bag, config, mapper_config, None, progress=progress, say=say, on_mapper=recorder.attach)
        arrays = recorder.arrays()
        if not arrays["stamp"].size:
            raise BagError(f"{bag}: the front-end made no keyframe (no odometry and sensor data in the replayed part?)")
        assert result.reference is not None  # the reference topic was required
        arrays["reference"] = metrics.poses_at(result.reference.stamps, result.reference.T, arrays["stamp"])
        arrays["estimate"] = metrics.poses_at(result.smoothed.stamps, result.smoothed.T, arrays["stamp"])
        arrays["bag"] = np.full(arrays["stamp"].size, index, np.int32)
        extrinsics.append(np.asarray(result.summary["T_base_sensor"], np.float64))
        with_reference = int(np.isfinite(arrays["reference"]).all(axis=1).sum())
        say(f"{bag}: {arrays['stamp'].size} keyframes, {with_reference} with a reference pose")
        parts.append(arrays)
    merged = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return KeyframeLog(
        **merged,
        T_base_sensor=np.stack(extrinsics),
        obs_sigma=np.array([mapper_config.obs_sigma_m, mapper_config.obs_plane_sigma_m]),
        sources=tuple(str(b) for b in bags),
        fingerprint=fingerprint(bags, config, mapper_config, cells),
    )
