"""A simulated run → rosbag2: ``/odom``, ``/points``, ``/ground_truth``, ``/tf_static``.

The same topics and frames as ``dsg-ros sim-publisher`` (odom → base_link,
world → base_link, clouds in ``lidar``), plus the extrinsic base_link →
lidar on ``/tf_static``, with stamps from :data:`SIM_EPOCH_S`. Bag time =
header stamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsg_ros.bag import BagWriter, build
from dsg_ros.msgs import NS_PER_S, ODOMETRY, POINT_CLOUD, TF, sec_to_ns
from dsg_ros.tools.sim.scenario import SIM_EPOCH_S, SimData


@dataclass(frozen=True)
class SimBagConfig:
    storage: str = "sqlite3"  # or "mcap"
    overwrite: bool = False
    epoch_s: float = SIM_EPOCH_S
    world_frame: str = "world"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    sensor_frame: str = "lidar"


def write_sim_bag(data: SimData, out: str | Path, config: SimBagConfig = SimBagConfig()) -> dict[str, Any]:
    """Write ``data`` as the bag ``out``; returns a JSON-able summary."""
    c = config
    start_ns = sec_to_ns(c.epoch_s)
    topics = {
        "odom": ("/odom", ODOMETRY, lambda ns, T: build.odometry(ns, c.odom_frame, c.base_frame, T)),
        "ground_truth": ("/ground_truth", ODOMETRY, lambda ns, T: build.odometry(ns, c.world_frame, c.base_frame, T)),
        "cloud": ("/points", POINT_CLOUD, lambda ns, p: build.point_cloud(ns, c.sensor_frame, p)),
    }
    end_ns = start_ns
    with BagWriter(out, c.storage, c.overwrite) as writer:
        writer.write("/tf_static", TF, build.tf_message([(c.base_frame, c.sensor_frame, start_ns, data.T_base_sensor)]), start_ns)
        for kind, t, payload in data.events():  # time order
            ns = start_ns + sec_to_ns(t)
            topic, msgtype, make = topics[kind]
            writer.write(topic, msgtype, make(ns, np.asarray(payload)), ns)
            end_ns = ns
    return {
        "output": str(out),
        "storage": c.storage,
        "counts": dict(writer.counts),
        "points": int(sum(len(p) for p in data.clouds)),
        "start_s": start_ns / NS_PER_S,
        "duration_s": (end_ns - start_ns) / NS_PER_S,
        "seed": data.config.seed,
    }
