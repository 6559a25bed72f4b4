"""``dsg-ros bench node``: the node over real DDS with a 10 Hz simulated LiDAR stream.

Latency is measured inside the node, from a cloud's arrival in its
callback to the end of publishing the tick that used it (p50/p99 over the
run, from /diagnostics). "Dropped ticks" are clouds the node received but
never turned into a tick (dropped for lack of odometry or skipped while busy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from dsg_ros.bench import report
from dsg_ros.ros.live import run_live
from dsg_ros.ros.node import LATENCY_WINDOW
from dsg_ros.ros.params import default_params_file


def run(duration_s: float = 60.0, output_dir: str | Path = "bench", say: Callable[[str], None] = print) -> dict[str, Any]:
    info = report.machine()
    say(report.machine_line(info))
    live = run_live(default_params_file(), Path(output_dir) / "results" / "node", duration_s=duration_s, say=say)
    results = {"machine": info, "duration_s": duration_s, "live": live}
    results["goals"] = _verdicts(live)
    return report.finish(output_dir, "node", results, _markdown(results), say)


def _verdicts(live: dict[str, Any]) -> list[tuple[str, str]]:
    p50, p99 = live.get("latency_ms_p50"), live.get("latency_ms_p99")
    received = live["received"].get("points", 0)
    dropped = int(live.get("dropped_clouds") or 0)
    out = [
        (f"latency p50 ≤ 40 ms: {p50} ms", report.verdict(p50 is not None and p50 <= 40)),
        (f"latency p99 ≤ 100 ms: {p99} ms", report.verdict(p99 is not None and p99 <= 100)),
        (f"no dropped ticks at 10 Hz: {dropped} of {received} clouds dropped", report.verdict(dropped == 0)),
    ]
    if "node_rss_mb_start" in live:
        growth = 100.0 * (live["node_rss_mb_end"] - live["node_rss_mb_start"]) / live["node_rss_mb_start"]
        out.append((f"node RSS flat (< 5 %): {live['node_rss_mb_start']:.0f} → {live['node_rss_mb_end']:.0f} MB ({growth:+.1f} %) "
                    f"over {live.get('node_rss_span_s', 0):.0f} s after the first minute of data (the goal asks for a 10-minute run)",
                    report.verdict(growth < 5)))
    return out


def _markdown(r: dict[str, Any]) -> str:
    live = r["live"]
    lines = [
        "## node",
        "",
        report.machine_line(r["machine"]),
        "",
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
