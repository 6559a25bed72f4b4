"""``dsg-ros bench node``: the node over real DDS with a 10 Hz simulated LiDAR stream.

Latency is measured inside the node, from a cloud's arrival in its
callback to the end of publishing the tick that used it (p50/p99 over the
run, from /diagnostics). "Dropped ticks" are clouds the node received but
never turned into a tick (dropped for lack of odometry or skipped while busy).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsg_ros.ros.node import LATENCY_WINDOW
from dsg_ros.ros.params import default_params_file
from dsg_ros.tools.bench import report
from dsg_ros.tools.live import run_live


def run(duration_s: float = 60.0, output_dir: str | Path = "bench", say: Callable[[str], None] = print) -> dict[str, Any]:
    info = report.machine()
    say(report.machine_line(info))
    live = run_live(default_params_file(), Path(output_dir) / "results" / report.section("node"), duration_s=duration_s, say=say)
    results = {"machine": info, "duration_s": duration_s, "live": live}
    results["goals"] = _verdicts(live, info["backend"])
    return report.finish(output_dir, "node", results, _markdown(results), say)


# On an accelerator the mapper's tick must be at most this share of the latency (issue 4).
ACCELERATOR_TICK_MS = 5.0
# Shortest RSS sampling span (after the first minute) that gets a verdict.
MIN_RSS_SPAN_S = 60.0


def _verdicts(live: dict[str, Any], backend: str = "cpu") -> list[tuple[str, str]]:
    p50, p99 = live.get("latency_ms_p50"), live.get("latency_ms_p99")
    received = live["received"].get("points", 0)
    dropped = int(live.get("dropped_clouds") or 0)
    out = [
        (f"latency p50 ≤ 40 ms: {p50} ms", report.verdict(p50 is not None and p50 <= 40)),
        (f"latency p99 ≤ 100 ms: {p99} ms", report.verdict(p99 is not None and p99 <= 100)),
        (f"no dropped ticks at 10 Hz: {dropped} of {received} clouds dropped", report.verdict(dropped == 0)),
    ]
    if backend != "cpu":
        tick = live.get("tick_ms_p50")
        out.append((f"{backend.upper()}: the tick's share of the latency ≤ {ACCELERATOR_TICK_MS:.0f} ms: tick p50 {tick} ms (p99 {live.get('tick_ms_p99')} ms)",
                    report.verdict(tick is not None and tick <= ACCELERATOR_TICK_MS)))
    if "node_rss_mb_start" in live:
        growth = 100.0 * (live["node_rss_mb_end"] - live["node_rss_mb_start"]) / live["node_rss_mb_start"]
        span = live.get("node_rss_span_s", 0.0)
        # RSS is sampled after the first minute of data; a shorter span says nothing.
        out.append((f"node RSS flat (< 5 %): {live['node_rss_mb_start']:.0f} → {live['node_rss_mb_end']:.0f} MB ({growth:+.1f} %) "
                    f"over {span:.0f} s after the first minute of data (the goal asks for a 10-minute run)",
                    report.verdict(growth < 5) if span >= MIN_RSS_SPAN_S else "not measured: run --duration 600"))
    return out


def _markdown(r: dict[str, Any]) -> str:
    live = r["live"]
    lines = [
        *report.heading("node", r["machine"]),
        f"Node and sim publisher as separate processes over Fast DDS on localhost, {r['duration_s']:.0f} s at real rate "
        "(10 Hz clouds of ~30k points, 50 Hz odometry). Reproduce: `dsg-ros bench node`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| cloud arrival → publication, p50 / p99 (the node's last {min(LATENCY_WINDOW, live['received'].get('points', 0))} clouds) "
        f"| {live.get('latency_ms_p50')} / {live.get('latency_ms_p99')} ms |",
        f"| tick p50 / p99 | {live.get('tick_ms_p50')} / {live.get('tick_ms_p99')} ms |",
        f"| received | {live['received']} |",
        f"| published | {live['published']} |",
        f"| ATE odometry / estimate | {live.get('ate_odom', float('nan')):.3f} / {live.get('ate_estimate', float('nan')):.3f} m |",
        "",
        *report.goal_table(r["goals"]),
    ]
    return "\n".join(lines)
