"""Bench verdicts and RESULTS.md sections: the goals checked depend on the backend."""

from __future__ import annotations

from typing import Any

import pytest

from dsg_ros.tools.bench import mapping, node, report


def _mapping_results(backend: str, tick_p50: float, large_p50: float | None = None) -> dict:
    run = {
        "ate_odom": 2.0, "ate_estimate": 0.15, "tick_ms_p50": tick_p50, "tick_ms_p99": 40.0, "keyframe_tick_ms_p50": 23.0,
        "calibration_ms_p50": 16.0, "realtime_factor": 3.0, "compilations_after_warmup": 0,
        "calibration": {"odom_scale": [1.027, 1.0, 1.0], "odom_bias_angular_deg_s": [0.0, 0.0, 1.04]},
        "true_calibration": {"odom_scale": [1.03, 1.0, 1.0], "yaw_rate_bias_deg_s": 1.0},
    }
    r = {"machine": {"backend": backend}, "window": {"keyframes": 10}, "default_run": run}
    if large_p50 is not None:
        r["large_window"] = {"window": {"keyframes": 40}, "run": {**run, "tick_ms_p50": large_p50}}
    return r


def _verdict(goals: list[tuple[str, str]], starts: str) -> str:
    found = [v for g, v in goals if g.startswith(starts)]
    assert len(found) == 1, (starts, goals)
    return found[0]


def test_mapping_goals_follow_the_backend():
    cpu = mapping._verdicts(_mapping_results("cpu", 0.8))
    assert _verdict(cpu, "realtime factor") == "MISSED" and _verdict(cpu, "tick p50 ≤ 25 ms") == "met"
    assert not any(g.startswith("GPU") for g, _ in cpu)

    gpu = mapping._verdicts(_mapping_results("gpu", 0.66, large_p50=12.0))
    assert _verdict(gpu, "GPU: tick p50 ≤ 3 ms at the default window") == "met"
    assert _verdict(gpu, "GPU: tick p50 ≤ 10 ms at a 40-keyframe window") == "MISSED"
    assert not any(g.startswith(("realtime", "tick p50 ≤ 25")) for g, _ in gpu), "CPU speed goals are not judged on a GPU"
    assert _verdict(gpu, "learned forward scale") == "met" and _verdict(gpu, "ATE estimate") == "met"


def test_large_window_scales_voxel_slots_with_keyframes():
    w = mapping.large_window(40)
    assert w.keyframes == 40 and w.max_voxels == 4 * mapping.WindowConfig().max_voxels


def test_node_goals_need_a_long_enough_rss_span_and_judge_the_tick_on_a_gpu():
    live = {"latency_ms_p50": 5.0, "latency_ms_p99": 80.0, "received": {"points": 600}, "dropped_clouds": 0,
            "tick_ms_p50": 0.8, "tick_ms_p99": 40.0, "node_rss_mb_start": 1000.0, "node_rss_mb_end": 1001.0, "node_rss_span_s": 0.0}
    short = node._verdicts(live, "gpu")
    assert _verdict(short, "node RSS flat").startswith("not measured")
    assert _verdict(short, "GPU: the tick's share of the latency") == "met"
    long = node._verdicts({**live, "node_rss_span_s": 540.0, "node_rss_mb_end": 1100.0}, "cpu")
    assert _verdict(long, "node RSS flat") == "MISSED"
    assert not any(g.startswith("GPU") for g, _ in long)


def test_a_suite_rewrites_only_its_own_section(tmp_path):
    assert report.section("mapping") == "mapping", "these tests run on the CPU backend"
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n<!-- mapping-gpu:start -->\nGPU figures\n<!-- mapping-gpu:end -->\n")
    report.write(tmp_path, "mapping", {"x": 1}, "## mapping\nfirst")
    report.write(tmp_path, "mapping", {"x": 2}, "## mapping\nsecond")
    text = (tmp_path / "RESULTS.md").read_text()
    assert "GPU figures" in text and "second" in text and "first" not in text
    assert text.count("<!-- mapping:start -->") == 1
    assert (tmp_path / "results" / "mapping.json").read_text().strip().endswith("}")


def test_a_replayed_simulation_must_match_its_config():
    """The large-window run replays the default run's data; data simulated from
    another config is refused rather than scored against the wrong truth."""
    from dsg_ros.mapping import MapperConfig
    from dsg_ros.tools.sim.run import run as run_sim
    from dsg_ros.tools.sim.scenario import SimConfig, simulate

    data = simulate(SimConfig(duration_s=0.5))
    with pytest.raises(ValueError, match="another SimConfig"):
        run_sim(SimConfig(duration_s=1.0), MapperConfig(), data=data)


def test_realdata_table_and_verdicts_from_synthetic_runs():
    from dsg_ros.tools.bench import realdata

    score = {"ate_m": 0.5, "rel_1s_m": 0.04, "rel_1s_deg": 1.0, "rel_10s_m": 0.2, "rel_10s_deg": 2.0}
    mapper = {**score, "realtime_factor": 8.0, "keyframe_tick_ms_p50": 30.0, "keyframe_tick_ms_p99": 90.0, "rss_mb": 800.0}
    runs = {
        "dsg_ros, calibration off": mapper,
        "dsg_ros, calibration on (self-supervised)": mapper,
        "dsg_ros, reference poses as odometry": {**mapper, "ate_m": 0.01},
        "raw odometry": {**score, "ate_m": 1.0, "relations_m": 0.05, "relations_deg": 1.2},
        "KISS-ICP (odometry as initial guess)": {**score, "realtime_factor": 200.0, "register_ms_p50": 0.2, "register_ms_p99": 4.0, "rss_mb": 810.0},
    }
    machine = {"cpu": "x", "cores": 2, "jax": "0", "backend": "cpu", "device": "cpu", "dtype": "float64", "python": "3", "date": "d"}
    r: dict[str, Any] = {"machine": machine, "quick": True,
                         "logs": {"aces": {"scans": 10, "reference_poses": 4, "log_duration_s": 100.0, "replayed_s": 50.0, "runs": runs}}}
    r["goals"] = realdata._verdicts(r)
    verdicts = {goal.split(":")[1].split("(")[0].strip(): v for goal, v in r["goals"]}
    # Kept perfect odometry; ATE 0.5 > 1.0 / 5; the ~1 s errors equal odometry's and KISS-ICP's; 8x < 10x; calibration equal.
    assert verdicts == {
        "reference poses as odometry kept": "met",
        "ATE ≤ 1/5 of raw odometry's": "MISSED",
        "~1 s relation error ≤ ½ of odometry's and below KISS-ICP's": "MISSED",
        "replay ≥ 10x real time": "MISSED",
        "calibration on no worse than off": "met",
    }
    assert len(r["goals"]) == 6
    text = realdata._markdown(r)
    assert "| dsg_ros, calibration off | 0.500 | 0.040 / 1.00 | 0.200 / 2.00 |  | 8.0x | 30 / 90 (keyframe) | 800 |" in text
    assert "| raw odometry | 1.000 | 0.040 / 1.00 | 0.200 / 2.00 | 0.050 / 1.20 |  |  |  |" in text
    assert "0.2 / 4.0 (per scan)" in text and "`dsg-ros bench realdata --quick`" in text
