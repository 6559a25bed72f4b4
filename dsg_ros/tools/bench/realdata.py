"""``dsg-ros bench realdata``: the mapper on real robot logs, beside raw odometry and KISS-ICP.

For each CARMEN log of Kuemmerle et al. 2009 (ACES, FR079, Intel; see the
data folder's README): convert it to a bag in a temporary folder
(:func:`dsg_ros.tools.carmen_bag.convert`), replay the bag in process exactly
as ``dsg-ros replay`` does, with online calibration off and on, and once
with the reference poses as the odometry (at the reference scans only,
calibration off: a mapper given perfect odometry must keep it). KISS-ICP
(pip ``kiss-icp``) registers the same scans, in the base frame, with the
wheel-odometry increment as each scan's initial guess.

Everything is scored at the reference scans with the same metrics
(:mod:`dsg_ros.mapping.metrics`): ATE after rigid alignment, relation errors
of pose pairs ~1 s and ~10 s apart, and on ACES the hand-made relations.
The reference is never given to the mappers being scored: calibration is
self-supervised here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dsg_ros import runtime, se3
from dsg_ros.bag import Bag
from dsg_ros.bag.replay import ReplayConfig, ReplayResult, replay
from dsg_ros.bag.tf import extrinsic, odometry as bag_odometry
from dsg_ros.mapping import MapperConfig, metrics
from dsg_ros.msgs import points_from_scan, stamp_to_sec
from dsg_ros.tools.bench import report
from dsg_ros.tools.carmen import read_relations
from dsg_ros.tools.carmen_bag import CarmenBagConfig, convert

QUICK_S = 300.0  # --quick: the first five minutes of each log
GAPS_S = (1.0, 10.0)
KEPT_ATE_M = 0.2  # reference poses as odometry: what "kept" means
CALIBRATION_SLACK = 0.05  # "no worse": within 5 % of the run without calibration


@dataclass(frozen=True)
class Log:
    raw: str
    corrected: str
    relations: str | None = None


LOGS = {
    "aces": Log("aces.clf.bz2", "aces-corrected.log.gz", "aces.relations"),
    "fr079": Log("fr079.clf.bz2", "freiburg-079-corrected.log.gz"),
    "intel": Log("intel.clf.bz2", "intel-corrected.log.gz"),
}


def default_data_dir() -> Path:
    """``../shared/data/realdata`` from the repository root."""
    return Path(__file__).resolve().parents[4] / "shared" / "data" / "realdata"


def run(
    logs: list[str] | None = None,
    data_dir: str | Path | None = None,
    quick: bool = False,
    output_dir: str | Path = "bench",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    data = Path(data_dir) if data_dir is not None else default_data_dir()
    logs = list(LOGS) if logs is None else logs
    unknown = sorted(set(logs) - set(LOGS))
    if unknown:
        raise ValueError(f"unknown log(s) {unknown}; known: {sorted(LOGS)}")
    missing = [str(data / f) for name in logs for f in (LOGS[name].raw, LOGS[name].corrected, LOGS[name].relations) if f and not (data / f).is_file()]
    if missing:
        raise ValueError(f"missing log files (pass --data DIR): {', '.join(missing)}")
    info = report.machine()
    say(report.machine_line(info))
    results: dict[str, Any] = {"machine": info, "quick": quick, "duration_limit_s": QUICK_S if quick else None, "logs": {}}
    for name in logs:
        results["logs"][name] = _bench_log(name, data, QUICK_S if quick else None, say)
    results["goals"] = _verdicts(results)
    return report.finish(output_dir, "realdata", results, _markdown(results), say)


def _bench_log(name: str, data: Path, duration_s: float | None, say: Callable[[str], None]) -> dict[str, Any]:
    log = LOGS[name]
    relations = read_relations(data / log.relations) if log.relations else None
    with tempfile.TemporaryDirectory(prefix=f"dsg-realdata-{name}-") as tmp:
        bag = Path(tmp) / name
        converted = convert(data / log.raw, bag, data / log.corrected, CarmenBagConfig(storage="mcap"))
        say(f"{name}: {converted['scans']} scans, {converted['reference_matched']} reference poses, {converted['duration_s']:.0f} s"
            + (f" (replaying the first {duration_s:.0f} s)" if duration_s else ""))
        base = ReplayConfig(scan_topic="/scan", reference_topic="/ground_truth", duration_s=duration_s, supervise=False, gaps_s=GAPS_S)
        runs: dict[str, dict[str, Any]] = {}
        results: list[ReplayResult] = []
        for label, config in (
            ("dsg_ros, calibration off", replace(base, calibrate=False)),
            ("dsg_ros, calibration on (self-supervised)", base),
            ("dsg_ros, reference poses as odometry", replace(base, odom_topic="/ground_truth", sensor_stamps_topic="/ground_truth", calibrate=False)),
        ):
            result = replay(bag, config, MapperConfig(), relations=relations)
            results.append(result)
            runs[label] = _row(result.summary, "estimate", result)
            say(f"  {label}: {_brief(runs[label])}")
        first = results[0]
        runs["raw odometry"] = _row(first.summary, "odometry", first)
        reference = first.reference
        assert reference is not None  # the converted bag has /ground_truth
        kiss = _kiss_icp(bag, duration_s)
        runs["KISS-ICP (odometry as initial guess)"] = {
            **metrics.score(kiss.stamps, kiss.T, reference.stamps, reference.T, GAPS_S),
            **(metrics.score_relations(kiss.stamps, kiss.T, relations) if relations is not None else {}),
            **kiss.timing,
        }
        say(f"  KISS-ICP: {_brief(runs['KISS-ICP (odometry as initial guess)'])}")
    return {"scans": converted["scans"], "reference_poses": converted["reference_matched"], "log_duration_s": converted["duration_s"],
            "replayed_s": first.summary["duration_s"], "runs": runs}


def _row(summary: dict[str, Any], track: str, result: ReplayResult) -> dict[str, Any]:
    """One table row from a replay: the scores of ``track`` and, for the
    mapper's own estimate, its speed and memory."""
    row = dict(summary["scores"][track])
    if track == "estimate":
        speed = ("realtime_factor", "keyframe_tick_ms_p50", "keyframe_tick_ms_p99", "tick_ms_p50", "tick_ms_p99", "keyframes", "clouds_consumed")
        row.update({key: summary[key] for key in (*speed, "calibration_steps", "calibration_accepted", "calibration_rejected")})
        row["rss_mb"] = runtime.rss_mb()
        row["peak_rss_mb"] = summary["rss_mb"]
        row["calibration"] = summary["calibration"] if summary["calibration_steps"] else None
        row["skipped"] = summary["skipped"]
        row["registration"] = {k: summary["mapper_stats"][k] for k in ("registrations", "registration_failures", "registration_screened")}
    return row


@dataclass(frozen=True)
class _Kiss:
    stamps: np.ndarray
    T: np.ndarray
    timing: dict[str, Any]


def _kiss_icp(bag_path: Path, duration_s: float | None) -> _Kiss:
    """KISS-ICP over the bag's /scan, points in the base frame (z = 0), the
    wheel odometry's increment since the previous scan as each initial guess.

    ``KissICP.register_frame`` predicts ``last_pose @ last_delta`` (its
    constant-velocity model); setting ``last_delta`` to the odometry increment
    before each call makes that prediction the odometry's. Deskewing is off
    (a 2D scan here has no per-point times); the voxel size is KISS-ICP's own
    default rule, max range / 100, with the mapper's range limits.
    """
    from kiss_icp.config import KISSConfig
    from kiss_icp.config.config import DataConfig, MappingConfig
    from kiss_icp.kiss_icp import KissICP

    limits = MapperConfig()
    config = KISSConfig(
        data=DataConfig(max_range=limits.max_range_m, min_range=limits.min_range_m, deskew=False),
        mapping=MappingConfig(voxel_size=limits.max_range_m / 100.0),
    )
    kiss = KissICP(config)
    stamps, poses, register_ms = [], [], []
    with Bag(bag_path) as bag:
        T_base_laser = extrinsic(bag, "base_link", "laser")
        assert T_base_laser is not None  # the converted bag's /tf_static has it
        odometry = bag_odometry(bag)
        end_ns = bag.info.end_ns if duration_s is None else bag.info.start_ns + int(duration_s * 1e9)
        previous = None
        started = time.perf_counter()
        first_ns = last_ns = None
        for m in bag.messages(["/scan"]):
            if m.log_time_ns > end_ns:
                break
            first_ns, last_ns = first_ns or m.log_time_ns, m.log_time_ns
            stamp = stamp_to_sec(m.msg.header.stamp)
            T_odom_base = metrics.poses_at(odometry.stamps, odometry.T, np.array([stamp]))[0]
            if not np.isfinite(T_odom_base).all():
                continue
            p_base = se3.apply(T_base_laser, points_from_scan(m.msg)[0])
            p_base[:, 2] = 0.0
            if previous is not None:
                kiss.last_delta = _matrix(se3.between(previous, T_odom_base))
            previous = T_odom_base
            tick = time.perf_counter()
            kiss.register_frame(p_base, np.zeros(len(p_base)))
            register_ms.append(1000.0 * (time.perf_counter() - tick))
            stamps.append(stamp)
            poses.append(se3.from_matrix(kiss.last_pose))
        wall_s = time.perf_counter() - started
    timing = {
        "realtime_factor": (last_ns - first_ns) / 1e9 / wall_s if wall_s > 0 and first_ns is not None and last_ns is not None else None,
        "register_ms_p50": float(np.percentile(register_ms, 50)),
        "register_ms_p99": float(np.percentile(register_ms, 99)),
        "rss_mb": runtime.rss_mb(),
        "voxel_size_m": config.mapping.voxel_size,
    }
    return _Kiss(np.array(stamps), np.array(poses), timing)


def _matrix(T: np.ndarray) -> np.ndarray:
    """A pose (7,) as a homogeneous (4, 4) matrix."""
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = se3.rotation_matrix(T), T[4:]
    return M


def _brief(row: dict[str, Any]) -> str:
    parts = [f"ATE {_num(row.get('ate_m'), 3)} m", f"1 s {_num(row.get('rel_1s_m'), 3)} m", f"10 s {_num(row.get('rel_10s_m'), 3)} m"]
    if row.get("relations_m") is not None:
        parts.append(f"relations {row['relations_m']:.3f} m / {row['relations_deg']:.2f} deg")
    if row.get("realtime_factor") is not None:
        parts.append(f"realtime {row['realtime_factor']:.1f}x")
    return ", ".join(parts)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdicts(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The issue's goals, per log: perfect odometry kept; ATE a fifth of raw
    odometry's; ~1 s relation error half of odometry's (translation and
    rotation) and below KISS-ICP's; ≥ 10x real time; calibration on no worse
    than off (within ``CALIBRATION_SLACK``)."""
    out = []
    for name, log in r["logs"].items():
        runs = log["runs"]
        off, on = runs["dsg_ros, calibration off"], runs["dsg_ros, calibration on (self-supervised)"]
        odom, kiss = runs["raw odometry"], runs["KISS-ICP (odometry as initial guess)"]
        kept = runs["dsg_ros, reference poses as odometry"]["ate_m"]
        out.append((f"{name}: reference poses as odometry kept (ATE ≤ {KEPT_ATE_M} m): {_num(kept, 3)} m",
                    report.verdict(kept is not None and kept <= KEPT_ATE_M)))
        out.append((f"{name}: ATE ≤ 1/5 of raw odometry's: {_num(off['ate_m'], 3)} vs {_num(odom['ate_m'], 3)} m",
                    report.verdict(off["ate_m"] <= odom["ate_m"] / 5.0)))
        for unit, digits in (("m", 3), ("deg", 2)):
            key = f"rel_1s_{unit}"
            out.append((f"{name}: ~1 s relation error ≤ ½ of odometry's and below KISS-ICP's ({unit}): {_num(off[key], digits)} vs "
                        f"{_num(odom[key], digits)} / {_num(kiss[key], digits)}", report.verdict(off[key] <= 0.5 * odom[key] and off[key] < kiss[key])))
        out.append((f"{name}: replay ≥ 10x real time: {_num(off['realtime_factor'], 1)}x", report.verdict(off["realtime_factor"] >= 10.0)))
        worse = [k for k in ("ate_m", "rel_1s_m", "rel_1s_deg") if on[k] > off[k] * (1.0 + CALIBRATION_SLACK)]
        compared = "; ".join(f"{k} {_num(on[k], 3)} vs {_num(off[k], 3)}" + (" worse" if k in worse else "") for k in ("ate_m", "rel_1s_m", "rel_1s_deg"))
        out.append((f"{name}: calibration on no worse than off (within {CALIBRATION_SLACK:.0%}; on vs off): {compared}", report.verdict(not worse)))
    return out


def _markdown(r: dict[str, Any]) -> str:
    lines = [*report.heading("realdata", r["machine"])]
    lines += [
        "Real 2D-laser logs of Kuemmerle et al. 2009 (`../shared/data/realdata`), converted to bags and replayed in process as "
        "`dsg-ros replay` does; everything scored at the reference scans: ATE after rigid alignment, RMSE of the relation errors of "
        "pose pairs ~1 s and ~10 s apart (m / deg), on ACES also over its 1,279 hand-made relations. Calibration, when on, is "
        "self-supervised (the reference is never given to a scored run). KISS-ICP gets each scan in the base frame with the "
        "odometry increment as its initial guess (`last_delta` set before `register_frame`). Mapper speed: realtime factor and "
        "keyframe-tick p50 / p99; KISS-ICP: per-scan registration p50 / p99. RSS: the bench process after the run. "
        + ("**Quick run: the first 300 s of each log.** " if r["quick"] else "")
        + "Reproduce: `dsg-ros bench realdata" + (" --quick" if r["quick"] else "") + "`.",
        "",
    ]
    for name, log in r["logs"].items():
        lines += [
            f"### {name} ({log['scans']} scans, {log['reference_poses']} reference poses, {log['replayed_s']:.0f} of {log['log_duration_s']:.0f} s replayed)",
            "",
            "| run | ATE (m) | ~1 s relations | ~10 s relations | ACES relations | realtime | tick p50 / p99 (ms) | RSS (MB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, row in log["runs"].items():
            rel = {gap: f"{_num(row.get(f'rel_{gap}s_m'), 3)} / {_num(row.get(f'rel_{gap}s_deg'), 2)}" for gap in ("1", "10")}
            relations = f"{row['relations_m']:.3f} / {row['relations_deg']:.2f}" if row.get("relations_m") is not None else ""
            speed = f"{row['realtime_factor']:.1f}x" if row.get("realtime_factor") else ""
            if row.get("keyframe_tick_ms_p50") is not None:
                ticks = f"{row['keyframe_tick_ms_p50']:.0f} / {row['keyframe_tick_ms_p99']:.0f} (keyframe)"
            elif row.get("register_ms_p50") is not None:
                ticks = f"{row['register_ms_p50']:.1f} / {row['register_ms_p99']:.1f} (per scan)"
            else:
                ticks = ""
            rss = f"{row['rss_mb']:.0f}" if row.get("rss_mb") else ""
            lines.append(f"| {label} | {_num(row.get('ate_m'), 3)} | {rel['1']} | {rel['10']} | {relations} | {speed} | {ticks} | {rss} |")
        off = log["runs"]["dsg_ros, calibration off"].get("registration")
        if off:
            lines += ["", f"Registration (calibration off): {off['registrations']} scans aligned, {off['registration_screened']} of them "
                          f"from the heading screen's pick, {off['registration_failures']} failed (prediction kept)."]
        learned = log["runs"]["dsg_ros, calibration on (self-supervised)"]
        if learned.get("calibration"):
            c = learned["calibration"]
            lines += ["", f"Learned online: forward scale {c['odom_scale'][0]:.4f}, yaw-rate bias {c['odom_bias_angular_deg_s'][2]:.3f} deg/s, "
                          f"time offset {c['time_offset_s']:.3f} s ({learned['calibration_steps']} steps; candidate applied "
                          f"{learned['calibration_accepted']} times, rolled back {learned['calibration_rejected']})."]
        lines.append("")
    lines += report.goal_table(r["goals"])
    return "\n".join(lines)
