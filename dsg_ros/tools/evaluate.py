"""Score a mapper run against ground truth; write trajectories (TUM) and top-view PNGs.

matplotlib is imported only when a PNG is drawn: it is the ``plots`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dsg_ros import se3
from dsg_ros.bag.replay import MATCH_TOLERANCE_S, ReplayResult
from dsg_ros.bag.tf import Trajectory
from dsg_ros.files import atomic_path
from dsg_ros.mapping import metrics
from dsg_ros.mapping.mapper import Mapper
from dsg_ros.mapping.replay import RunRecord

Interpolator = Callable[[np.ndarray], np.ndarray]  # stamps (K,) → poses (K, 7)


def summarize(
    mapper: Mapper,
    record: RunRecord,
    duration_s: float,
    ground_truth: Interpolator,
    odometry: Interpolator,
    output: Path | None = None,
) -> dict[str, Any]:
    """The run-sim summary: counts, ATE/RPE of odometry and estimate, timings, calibration."""
    stamps, estimate = record.trajectory()
    if stamps.size < 3:
        raise ValueError(f"only {stamps.size} keyframes: too short a run to score")
    truth, odom = ground_truth(stamps), odometry(stamps)
    final_third = stamps >= stamps[0] + 2.0 * (stamps[-1] - stamps[0]) / 3.0
    ticks = np.asarray(record.tick_ms)
    diag = record.last.diagnostics if record.last else None
    summary: dict[str, Any] = {
        "ticks": len(record.tick_ms),
        "keyframes": int(stamps.size),
        "voxels": len(mapper.window.voxel_map),
        "ate_odom": metrics.ate(odom, truth),
        "ate_estimate": metrics.ate(estimate, truth),
        "ate_calibrated": metrics.ate(estimate[final_third], truth[final_third]),
        "ate_odom_final_third": metrics.ate(odom[final_third], truth[final_third]),
        "rpe_odom": metrics.rpe(odom, truth)[0],
        "rpe_estimate": metrics.rpe(estimate, truth)[0],
        "tick_ms_p50": float(np.percentile(ticks, 50)),
        "tick_ms_p99": float(np.percentile(ticks, 99)),
        "keyframe_tick_ms_p50": float(np.median(record.keyframe_tick_ms)) if record.keyframe_tick_ms else None,
        "calibration_ms_p50": float(np.median(record.calibration_ms)) if record.calibration_ms else None,
        "marginalization_ms_p50": float(np.median(record.marginalization_ms)) if record.marginalization_ms else None,
        "refine_ms_p50": float(np.median(record.refine_ms)) if record.refine_ms else None,
        "refine_ms_p99": float(np.percentile(record.refine_ms, 99)) if record.refine_ms else None,
        "calibration_steps": mapper.calibrator.steps,
        "compilations_after_warmup": diag.compilations_after_warmup if diag else None,
        "rollbacks": diag.stats["rollbacks"] if diag else None,
        "warnings": record.warnings,
        "realtime_factor": duration_s / record.wall_s if record.wall_s > 0 else None,
    }
    summary["calibration"] = record.calibration[-1][1].__dict__ if record.calibration else None
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        metrics.write_tum(output / "estimate.tum", stamps, estimate)
        metrics.write_tum(output / "ground_truth.tum", stamps, truth)
        metrics.write_tum(output / "odometry.tum", stamps, odom)
        summary["png"] = str(plot_top_view(output / "map.png", mapper.voxels()[1], estimate, truth, odom))
        summary["tum"] = str(output)
    return summary


def plot_top_view(
    path: Path, voxels: np.ndarray, estimate: np.ndarray, truth: np.ndarray | None = None, odom: np.ndarray | None = None, align: bool = True
) -> Path:
    """Top view: voxel map (N, 3) coloured by height, ground truth, odometry and the estimate (K, 7).

    The estimate lives in the map frame (= the odometry frame at start). With
    ``truth`` (K, 7) matched pose by pose and ``align``, the estimate (with
    the map) and the odometry are aligned to it like the ATE, for display;
    otherwise everything is drawn as given, in any lengths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def aligned(poses: np.ndarray) -> np.ndarray:
        return metrics.umeyama(poses[:, 4:], truth[:, 4:]) if align and truth is not None else se3.IDENTITY

    align_est = aligned(estimate)
    voxels = se3.apply(align_est, voxels)
    fig, ax = plt.subplots(figsize=(9, 8), dpi=110)
    order = np.argsort(voxels[:, 2])
    scatter = ax.scatter(voxels[order, 0], voxels[order, 1], c=voxels[order, 2], s=0.4, cmap="viridis", linewidths=0)
    fig.colorbar(scatter, ax=ax, label="voxel height (m)")
    lines: list[tuple[np.ndarray, str, dict[str, Any]]] = [(se3.apply(align_est, estimate[:, 4:]), "estimate", dict(color="tab:orange", lw=1.2))]
    if odom is not None:
        lines.insert(0, (se3.apply(aligned(odom), odom[:, 4:]), "odometry", dict(color="tab:red", lw=1.2, ls="--")))
    if truth is not None:
        lines.insert(0, (truth[:, 4:], "ground truth", dict(color="black", lw=1.6)))
    for points, label, style in lines:
        ax.plot(points[:, 0], points[:, 1], label=label, **style)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="upper right")
    ax.set_title("dsg_ros: voxel map and trajectories (top view)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_replay(path: Path, result: ReplayResult) -> Path:
    """The top view of a bag replay (``map.png`` of ``dsg-ros replay --output``), written atomically."""
    _, voxels, _ = result.mapper.voxels()
    with atomic_path(path) as tmp:
        plot_top_view(tmp, *_aligned_for_plot(voxels, result.estimate, result.odometry, result.reference), align=False)
    return path


def _aligned_for_plot(
    voxels: np.ndarray, estimate: Trajectory, odometry: Trajectory, reference: Trajectory | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """(voxels, estimate, reference, odometry) for :func:`plot_top_view`, whole:
    the map with the estimate and the odometry aligned to the reference as the
    ATE aligns them (on the poses at its stamps) when there are enough to align
    on, else as they are."""
    T_ref_map = T_ref_odom = se3.IDENTITY
    if reference is not None:
        at = metrics.poses_at(estimate.stamps, estimate.T, reference.stamps, MATCH_TOLERANCE_S)
        odom = metrics.poses_at(odometry.stamps, odometry.T, reference.stamps, MATCH_TOLERANCE_S)
        ok = np.isfinite(at).all(axis=1) & np.isfinite(odom).all(axis=1)
        if ok.sum() >= 3:
            T_ref_map = metrics.umeyama(at[ok, 4:], reference.T[ok, 4:])
            T_ref_odom = metrics.umeyama(odom[ok, 4:], reference.T[ok, 4:])
    truth = reference.T if reference is not None else None
    return se3.apply(T_ref_map, voxels), se3.compose(T_ref_map, estimate.T), truth, se3.compose(T_ref_odom, odometry.T)
