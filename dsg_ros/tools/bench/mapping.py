"""``dsg-ros bench mapping``: the online mapper on the default simulated run, and memory over a long one.

Accuracy and speed come from the 60 s default run (3 % forward scale bias,
1 deg/s yaw-rate bias, supervised calibration); memory from a longer run
(10 simulated minutes by default) sampled tick by tick. Every figure is
checked against the issue's goals and the verdicts are printed.

The speed goals depend on the backend: on the CPU, tick p50/p99, the
calibration step against a tick, and the realtime factor; on a GPU, tick p50
at the default window and at a large (40-keyframe) window, which is run as
well there (``--large-window``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dsg_ros import runtime
from dsg_ros.mapping import Mapper, MapperConfig, TickResult, WindowConfig
from dsg_ros.mapping.replay import drive
from dsg_ros.tools.bench import report
from dsg_ros.tools.sim.run import run as run_sim
from dsg_ros.tools.sim.scenario import SimConfig, simulate

# The GPU goals (issue 3): tick p50 at the default window and at a large one.
GPU_GOALS_MS = {"default": 3.0, "large": 10.0}
LARGE_WINDOW_KEYFRAMES = 40


def large_window(keyframes: int) -> WindowConfig:
    """A window of ``keyframes`` keyframes, voxel slots scaled with it from the
    default's (the observation capacities are per keyframe already)."""
    default = WindowConfig()
    return replace(default, keyframes=keyframes, max_voxels=default.max_voxels * keyframes // default.keyframes)


def run(
    duration_s: float = 60.0,
    memory_duration_s: float = 600.0,
    output_dir: str | Path = "bench",
    say: Callable[[str], None] = print,
    large_window_keyframes: int | None = None,
) -> dict[str, Any]:
    """``large_window_keyframes``: also run the default scenario with a window
    this large; ``None`` means 40 on an accelerator and none on the CPU."""
    info = report.machine()
    say(report.machine_line(info))
    if large_window_keyframes is None:
        large_window_keyframes = 0 if info["backend"] == "cpu" else LARGE_WINDOW_KEYFRAMES
    say(f"default run: {duration_s:.0f} s simulated, supervised calibration")
    output = Path(output_dir) / "results" / report.section("mapping")
    sim = SimConfig(duration_s=duration_s)
    summary, mapper, _, data = run_sim(sim, MapperConfig(), output=output, say=say)
    results: dict[str, Any] = {"machine": info, "window": vars(mapper.config.window), "default_run": summary}
    if large_window_keyframes:
        window = large_window(large_window_keyframes)
        say(f"large-window run: {window.keyframes} keyframes, {window.max_voxels} voxel slots, the same simulated data")
        large, _, _, _ = run_sim(sim, MapperConfig(window=window), say=say, data=data)
        results["large_window"] = {"window": vars(window), "run": large}
    if memory_duration_s > 0:
        results["memory"] = _memory(memory_duration_s, say)
    results["goals"] = _verdicts(results)
    return report.finish(output_dir, "mapping", results, _markdown(results), say)


def _memory(duration_s: float, say: Callable[[str], None]) -> dict[str, Any]:
    """RSS over a long run: after the first simulated minute (caches and the
    map's first growth settled) versus the end."""
    say(f"memory run: simulating {duration_s:.0f} s")
    data = simulate(SimConfig(duration_s=duration_s, seed=1))
    config = MapperConfig()
    mapper = Mapper(replace(config, T_base_sensor=tuple(float(v) for v in data.T_base_sensor)))
    mapper.warm_up()
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()

    def sample(result: TickResult) -> None:
        if result.stamp is not None and (not samples or result.stamp - samples[-1][0] >= 10.0):
            samples.append((result.stamp, runtime.rss_mb()))
            if len(samples) % 6 == 0:
                say(f"  t={result.stamp:.0f} s  RSS {samples[-1][1]:.0f} MB  map voxels {len(mapper.window.voxel_map)}")

    drive(mapper, data.events(), use_reference=True, calibrate=True, on_tick=sample)
    stamps, rss = np.array(samples).T
    settled = rss[np.searchsorted(stamps, 60.0)] if stamps[-1] > 60.0 else rss[0]
    return {
        "duration_s": duration_s,
        "wall_s": time.perf_counter() - started,
        "rss_mb_after_60s": float(settled),
        "rss_mb_end": float(rss[-1]),
        "rss_growth_pct": float(100.0 * (rss[-1] - settled) / settled),
        "map_voxels": len(mapper.window.voxel_map),
        "samples": [[float(t), float(m)] for t, m in samples],
    }


def _verdicts(r: dict[str, Any]) -> list[tuple[str, str]]:
    d = r["default_run"]
    c = d.get("calibration") or {}
    truth = d["true_calibration"]
    out = [
        (f"ATE estimate ≤ 1/5 of odometry's: {d['ate_estimate']:.3f} m vs {d['ate_odom']:.3f} m ({d['ate_odom'] / d['ate_estimate']:.1f}x)",
         report.verdict(d["ate_estimate"] <= d["ate_odom"] / 5)),
    ]
    if c:
        scale_err = abs(c["odom_scale"][0] - truth["odom_scale"][0]) / truth["odom_scale"][0]
        bias_err = abs(c["odom_bias_angular_deg_s"][2] - truth["yaw_rate_bias_deg_s"])
        out += [
            (f"learned forward scale within 0.5 %: {c['odom_scale'][0]:.4f} vs {truth['odom_scale'][0]:.4f} ({100 * scale_err:.2f} %)",
             report.verdict(scale_err <= 0.005)),
            (f"learned yaw-rate bias within 0.1 deg/s: {c['odom_bias_angular_deg_s'][2]:.3f} vs {truth['yaw_rate_bias_deg_s']:.3f}",
             report.verdict(bias_err <= 0.1)),
        ]
    if r["machine"]["backend"] == "cpu":
        out += _cpu_speed_verdicts(d)
    else:
        out += _accelerator_speed_verdicts(r)
    out.append((f"zero compilations after warm-up: {d['compilations_after_warmup']}", report.verdict(d["compilations_after_warmup"] == 0)))
    if "memory" in r:
        m = r["memory"]
        out.append((f"RSS growth < 5 % over {m['duration_s']:.0f} s: {m['rss_mb_after_60s']:.0f} → {m['rss_mb_end']:.0f} MB ({m['rss_growth_pct']:+.1f} %)",
                    report.verdict(m["rss_growth_pct"] < 5)))
    return out


def _cpu_speed_verdicts(d: dict[str, Any]) -> list[tuple[str, str]]:
    out = [
        (f"tick p50 ≤ 25 ms: {d['tick_ms_p50']:.1f} ms", report.verdict(d["tick_ms_p50"] <= 25)),
        (f"tick p99 ≤ 60 ms: {d['tick_ms_p99']:.1f} ms", report.verdict(d["tick_ms_p99"] <= 60)),
    ]
    if d.get("calibration_ms_p50") and d.get("keyframe_tick_ms_p50"):
        ratio = d["calibration_ms_p50"] / d["keyframe_tick_ms_p50"]
        out.append((f"calibration step ≤ 3x a (keyframe) tick: {d['calibration_ms_p50']:.0f} ms vs {d['keyframe_tick_ms_p50']:.0f} ms ({ratio:.1f}x)",
                    report.verdict(ratio <= 3)))
    out.append((f"realtime factor ≥ 5x: {d['realtime_factor']:.2f}x", report.verdict(d["realtime_factor"] >= 5)))
    return out


def _accelerator_speed_verdicts(r: dict[str, Any]) -> list[tuple[str, str]]:
    """Tick p50 at both windows; the keyframe-tick p50 (the ticks that solve)
    is named beside it, since most ticks carry no keyframe."""
    backend = r["machine"]["backend"].upper()
    d = r["default_run"]
    out = [(f"{backend}: tick p50 ≤ {GPU_GOALS_MS['default']:.0f} ms at the default window ({r['window']['keyframes']} keyframes): "
            f"{d['tick_ms_p50']:.2f} ms{_keyframe_ticks(d)}", report.verdict(d["tick_ms_p50"] <= GPU_GOALS_MS["default"]))]
    if "large_window" in r:
        big, keyframes = r["large_window"]["run"], r["large_window"]["window"]["keyframes"]
        out.append((f"{backend}: tick p50 ≤ {GPU_GOALS_MS['large']:.0f} ms at a {keyframes}-keyframe window: {big['tick_ms_p50']:.2f} ms{_keyframe_ticks(big)}",
                    report.verdict(big["tick_ms_p50"] <= GPU_GOALS_MS["large"])))
    return out


def _keyframe_ticks(run: dict[str, Any]) -> str:
    return f" (keyframe ticks {run['keyframe_tick_ms_p50']:.1f} ms)" if run.get("keyframe_tick_ms_p50") else ""


def _markdown(r: dict[str, Any]) -> str:
    d = r["default_run"]
    w = r["window"]
    lines = [
        *report.heading("mapping", r["machine"]),
        f"Default sim run ({d['ticks']} ticks, {d['keyframes']} keyframes, {d['voxels']} voxels); window {w['keyframes']} keyframes, "
        f"{w['max_voxels']} voxel slots, {w['max_observations_per_keyframe']} observations ({w['max_anchors_per_keyframe']} of frozen voxels) per keyframe. "
        "Reproduce: `dsg-ros bench mapping`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| ATE odometry / estimate / estimate over the final third | {d['ate_odom']:.3f} / {d['ate_estimate']:.3f} / {d['ate_calibrated']:.3f} m |",
        f"| RPE odometry / estimate (per keyframe) | {d['rpe_odom']:.4f} / {d['rpe_estimate']:.4f} m |",
        f"| tick p50 / p99 / keyframe-tick p50 | {d['tick_ms_p50']:.1f} / {d['tick_ms_p99']:.1f} / {d['keyframe_tick_ms_p50']:.1f} ms |",
        (f"| calibration step p50 ({d['calibration_steps']} steps) | {d['calibration_ms_p50']:.0f} ms |"
         if d.get("calibration_ms_p50") else "| calibration | off |"),
        (f"| marginalization after each full-window tick, p50 (not in the tick) | {d['marginalization_ms_p50']:.1f} ms |"
         if d.get("marginalization_ms_p50") else "| marginalization | none |"),
        (f"| refining after a tick (`Mapper.refine`, not in the tick), p50 / p99 | {d['refine_ms_p50']:.1f} / {d['refine_ms_p99']:.1f} ms |"
         if d.get("refine_ms_p50") else "| refining after a tick (`Mapper.refine`) | none (`refine_iterations: 0`, the default) |"),
        f"| realtime factor | {d['realtime_factor']:.2f}x |",
        f"| compilations after warm-up | {d['compilations_after_warmup']} |",
    ]
    if "large_window" in r:
        big, bw = r["large_window"]["run"], r["large_window"]["window"]
        lines.append(
            f"| {bw['keyframes']}-keyframe window ({bw['max_voxels']} voxel slots): tick p50 / p99 / keyframe-tick p50, ATE estimate, realtime "
            f"| {big['tick_ms_p50']:.1f} / {big['tick_ms_p99']:.1f} / {big['keyframe_tick_ms_p50']:.1f} ms, "
            f"{big['ate_estimate']:.3f} m, {big['realtime_factor']:.2f}x |"
        )
    if "memory" in r:
        m = r["memory"]
        lines.append(
            f"| RSS over {m['duration_s']:.0f} s simulated | {m['rss_mb_after_60s']:.0f} MB at 60 s → {m['rss_mb_end']:.0f} MB "
            f"({m['rss_growth_pct']:+.1f} %), {m['map_voxels']} map voxels |"
        )
    lines += ["", *report.goal_table(r["goals"])]
    return "\n".join(lines)
