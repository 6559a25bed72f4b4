"""Run the simulator through the mapper and score it (``dsg-ros run-sim``, the demo, benches).

Kept out of ``dsg_ros.tools.sim``'s imports: the simulator itself stays numpy-only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dsg_ros.learn import calibration as cal
from dsg_ros.mapping import Mapper, MapperConfig
from dsg_ros.mapping.replay import RunRecord, drive
from dsg_ros.tools.evaluate import summarize
from dsg_ros.tools.sim.scenario import SimConfig, SimData, simulate
from dsg_ros.tools.sim.trajectory import interpolate


def run(
    sim_config: SimConfig,
    mapper_config: MapperConfig,
    output: Path | None = None,
    supervised: bool = True,
    calibrate: bool = True,
    say: Callable[[str], None] = lambda _: None,
    data: SimData | None = None,
) -> tuple[dict[str, Any], Mapper, RunRecord, SimData]:
    """Simulate, warm the mapper up, replay, score. The sim's extrinsic is the
    mapper's nominal one (calibration then only has the odometry to learn).
    ``data``: an earlier simulation of ``sim_config`` to replay instead of
    simulating again (a bench mapping the same run with two configs)."""
    if data is None:
        started = time.perf_counter()
        data = simulate(sim_config)
        say(f"simulated {sim_config.duration_s:.0f} s: {len(data.clouds)} clouds in {time.perf_counter() - started:.1f} s")
    elif data.config != sim_config:
        raise ValueError("data was simulated from another SimConfig than sim_config")
    mapper = Mapper(replace(mapper_config, T_base_sensor=tuple(float(v) for v in data.T_base_sensor)))
    say(f"warm-up (compiling the tick, marginalization and calibration kernels) took {mapper.warm_up():.1f} s")
    record = drive(mapper, data.events(), use_reference=supervised, calibrate=calibrate)
    say(f"mapped in {record.wall_s:.1f} s")
    summary = summarize(
        mapper,
        record,
        sim_config.duration_s,
        ground_truth=lambda t: interpolate(data.gt_stamps, data.T_world_base, t),
        odometry=lambda t: interpolate(data.odom_stamps, data.T_odom_base, t),
        output=output,
    )
    truth = data.config.odometry.true_calibration()
    summary["true_calibration"] = {"odom_scale": list(truth.scale), "yaw_rate_bias_deg_s": float(truth.yaw_rate_bias) * 57.29577951308232}
    if output is not None:
        summary["calibration_file"] = str(cal.save(output / "calibration.yaml", mapper.theta, {"source": "run-sim", "seed": sim_config.seed}))
    return summary, mapper, record, data
