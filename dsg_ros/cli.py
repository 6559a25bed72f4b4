"""The ``dsg-ros`` console script: one entry point, one subcommand per job.

Heavy imports (JAX, rclpy) happen inside each handler so that ``--help`` is
instant and a missing optional dependency only affects its own subcommand.
Human-readable progress goes to stderr; with ``--json`` the last line on
stdout is a JSON object for scripts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import their modules lazily, so that --help stays instant
    from dsg_ros.bag.replay import ReplayConfig
    from dsg_ros.mapping import MapperConfig

_EPILOG_CACHE = (
    "Compiled XLA programs are cached in ~/.cache/dsg_ros/xla (override with "
    "--compile-cache DIR or $DSG_ROS_COMPILE_CACHE; 'off' disables), so a second "
    "run starts without recompiling."
)


def _bag_input_flags(p: argparse.ArgumentParser) -> None:
    """The flags that say how to read a bag's odometry and sensors (``replay`` and ``learn``)."""
    p.add_argument("--odom-topic", default="/odom", metavar="TOPIC", help="nav_msgs/Odometry (default /odom; a bag without it: odom -> base on /tf)")
    p.add_argument("--points-topic", metavar="TOPIC", help="sensor_msgs/PointCloud2 to map (default: /points if the bag has it and no sensor topic is named)")
    p.add_argument("--scan-topic", metavar="TOPIC", help="sensor_msgs/LaserScan to map (default: /scan if the bag has it and no sensor topic is named)")
    p.add_argument("--base-frame", default="base_link", metavar="FRAME", help="robot base frame (default base_link)")
    p.add_argument("--odom-frame", default="odom", metavar="FRAME", help="odometry frame, for odometry from /tf (default odom)")
    p.add_argument("--params-file", metavar="YAML", help="mapper parameters: the node's file (/**: ros__parameters: mapper: ...) or a plain 'mapper:' section")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="persistent XLA compilation cache directory, or 'off' (default: ~/.cache/dsg_ros/xla)",
    )


def _writer_flags(parser: argparse.ArgumentParser, destination: str) -> None:
    """Flags of the subcommands that write a bag and compile nothing."""
    parser.add_argument("--overwrite", action="store_true", help=f"replace {destination} if it exists")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")


# Optional dependencies of the tools → the setup.py extra that installs each.
_EXTRAS = {"matplotlib": "plots", "gtsam": "bench", "kiss_icp": "bench", "rclpy": "ros"}


def _require(command: str, *modules: str) -> bool:
    """Whether ``modules`` are installed; else say, on stderr, which extra brings them."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    for m in missing:
        extra = _EXTRAS[m]
        distro = "source a ROS 2 distro, or " if extra == "ros" else ""
        print(
            f"dsg-ros {command}: needs {m}, which is not installed: {distro}install the '{extra}' extra "
            f"(pip install '.[{extra}]' in the dsg_ros source tree)",
            file=sys.stderr,
        )
    return not missing


def _setup_runtime(args: argparse.Namespace) -> None:
    from dsg_ros import runtime

    runtime.enable_compile_cache(args.compile_cache)


def _emit(args: argparse.Namespace, human: list[str], payload: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(payload))
    else:
        for line in human:
            print(line)


def _progress(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(message, file=sys.stderr, flush=True)

    return say


# --------------------------------------------------------------------- hero


def _cmd_hero(args: argparse.Namespace) -> int:
    _setup_runtime(args)
    from dsg_ros.tools import hero

    say = _progress(not args.quiet)
    defaults = hero.HeroConfig()
    config = hero.HeroConfig(
        inner=args.inner,
        diff=args.diff,
        outer_steps=args.steps,
        learning_rate=defaults.learning_rate if args.learning_rate is None else args.learning_rate,
        momentum=defaults.momentum if args.momentum is None else args.momentum,
    )
    say(f"HERO: 6 poses + 6 voxels, inner solver {args.inner} ({args.diff} gradients), {args.steps} outer steps (compiling the learning step first)")
    result = hero.run(config, progress=lambda k, loss: say(f"  step {k + 1:3d}/{args.steps}  loss {loss:.3e}"))
    summary = {"inner": args.inner, "diff": args.diff, **result.summary()}
    human = [
        f"final loss        {result.final_loss:.3e}   (initial {result.losses[0]:.3e})",
        f"max voxel error   {result.max_voxel_error * 100:.2f} cm",
        f"seconds total     {result.seconds_total:.2f} s (including compilation)",
        "learned odometry x increments: " + ", ".join(f"{v:.4f}" for v in result.theta["odom"][:, 0]),
    ]
    _emit(args, human, summary)
    return 0


# ---------------------------------------------------------------- solve-g2o


def _cmd_solve_g2o(args: argparse.Namespace) -> int:
    _setup_runtime(args)
    from dsg_ros.solve import SolverConfig
    from dsg_ros.tools.g2o import G2OError, write_g2o
    from dsg_ros.tools.posegraph import solve_file

    say = _progress(not args.json)
    config = SolverConfig(method=args.solver, linear_solver=args.linear_solver, max_iterations=args.max_iterations)
    say(f"solving {args.file} with {args.solver.upper()} (compiling first)")
    try:
        result = solve_file(args.file, config)
    except G2OError as exc:
        print(f"dsg-ros solve-g2o: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    if args.output:
        write_g2o(args.output, result.g2o, result.poses())
        summary["output"] = str(args.output)
    human = [
        f"{summary['poses']} poses, {summary['edges']} edges, linear solver {summary['linear_solver']}",
        f"cost {summary['initial_cost']:.6g} -> {summary['final_cost']:.6g} in {summary['iterations']} iterations "
        f"({summary['status']}, {summary['rejected_steps']} rejected)",
        f"compile {summary['seconds_compile']:.2f} s, solve {summary['seconds_solve']:.3f} s",
    ]
    if args.output:
        human.append(f"wrote {args.output}")
    _emit(args, human, summary)
    return 0 if summary["converged"] else 1


# ------------------------------------------------------------------ run-sim


def _cmd_run_sim(args: argparse.Namespace) -> int:
    if not _require("run-sim", "matplotlib"):
        return 2
    _setup_runtime(args)
    from pathlib import Path

    from dsg_ros.config import from_mapping, load_yaml
    from dsg_ros.mapping import MapperConfig
    from dsg_ros.tools.sim.run import run
    from dsg_ros.tools.sim.scenario import SimConfig

    say = _progress(not args.quiet)
    try:
        data = load_yaml(args.config) if args.config else {}
        unknown = sorted(set(data) - {"sim", "mapper"})
        if unknown:
            raise ValueError(f"{args.config}: unknown section(s) {unknown}; expected 'sim' and/or 'mapper'")
        sim_config = from_mapping(SimConfig, data.get("sim"), "sim")
        mapper_config = from_mapping(MapperConfig, data.get("mapper"), "mapper")
    except ValueError as exc:
        print(f"dsg-ros run-sim: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("seed", args.seed), ("duration_s", args.duration)) if v is not None}
    sim_config = replace(sim_config, **overrides)
    summary, _, _, _ = run(
        sim_config,
        mapper_config,
        output=Path(args.output),
        supervised=not args.self_supervised,
        calibrate=not args.no_calibration,
        say=say,
    )
    cal_info = summary["calibration"]
    human = [
        f"{summary['keyframes']} keyframes, {summary['voxels']} voxels, {summary['ticks']} ticks",
        f"ATE odometry {summary['ate_odom']:.3f} m, estimate {summary['ate_estimate']:.3f} m, "
        f"final third {summary['ate_calibrated']:.3f} m",
        f"tick p50 {summary['tick_ms_p50']:.1f} ms, p99 {summary['tick_ms_p99']:.1f} ms; realtime x{summary['realtime_factor']:.1f}; "
        f"compilations after warm-up {summary['compilations_after_warmup']}",
    ]
    if cal_info:
        human.append(
            f"learned odometry scale {cal_info['odom_scale'][0]:.4f}, yaw-rate bias {cal_info['odom_bias_angular_deg_s'][2]:.3f} deg/s "
            f"(true {summary['true_calibration']['odom_scale'][0]:.4f}, {summary['true_calibration']['yaw_rate_bias_deg_s']:.3f})"
        )
    human += [f"map PNG: {summary['png']}", f"TUM trajectories and calibration.yaml in {summary['tum']}"]
    _emit(args, human, summary)
    return 0


# ------------------------------------------------------------- bags: convert, sim


def _cmd_convert(args: argparse.Namespace) -> int:
    from dsg_ros.bag import BagError
    from dsg_ros.tools.carmen import CarmenError
    from dsg_ros.tools.carmen_bag import CarmenBagConfig, convert

    say = _progress(not args.quiet)
    config = CarmenBagConfig(storage=args.storage, odometry=args.odometry, overwrite=args.overwrite)
    try:
        summary = convert(args.log, args.out, args.reference, config, say=say)
    except (CarmenError, BagError) as exc:
        print(f"dsg-ros convert carmen: {exc}", file=sys.stderr)
        return 2
    human = [
        ", ".join(f"{n} {topic}" for topic, n in summary["counts"].items()),
        f"{summary['duration_s']:.1f} s of log, {summary['stamps_repaired']} stamps repaired; "
        f"max range {summary['max_range_m']:g} m written as +inf",
        f"wrote {summary['output']} ({summary['storage']}) in {summary['seconds']:.1f} s",
    ]
    _emit(args, human, summary)
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from dsg_ros.bag import BagError
    from dsg_ros.tools.sim.scenario import SimConfig, simulate
    from dsg_ros.tools.sim_bag import SimBagConfig, write_sim_bag

    say = _progress(not args.quiet)
    overrides = {k: v for k, v in (("seed", args.seed), ("duration_s", args.duration)) if v is not None}
    try:
        sim_config = replace(SimConfig(), **overrides)
    except ValueError as exc:
        print(f"dsg-ros sim: {exc}", file=sys.stderr)
        return 2
    say(f"simulating {sim_config.duration_s:g} s (seed {sim_config.seed})")
    data = simulate(sim_config)
    try:
        summary = write_sim_bag(data, args.bag, SimBagConfig(storage=args.storage, overwrite=args.overwrite))
    except BagError as exc:
        print(f"dsg-ros sim: {exc}", file=sys.stderr)
        return 2
    human = [", ".join(f"{n} {topic}" for topic, n in summary["counts"].items()), f"wrote {summary['output']} ({summary['storage']})"]
    _emit(args, human, summary)
    return 0


# ------------------------------------------------------------------- replay


def _replay_config(args: argparse.Namespace) -> ReplayConfig:
    """What ``replay`` and ``learn`` read from a bag (``_bag_input_flags``, the
    reference topic, ``--start``/``--duration``), with the other settings at
    their defaults."""
    from dsg_ros.bag.replay import ReplayConfig

    return ReplayConfig(
        odom_topic=args.odom_topic,
        points_topic=args.points_topic,
        scan_topic=args.scan_topic,
        reference_topic=args.reference_topic,
        base_frame=args.base_frame,
        odom_frame=args.odom_frame,
        start_s=args.start,
        duration_s=args.duration,
    )


def _params_file_mapper_config(path: str | None) -> MapperConfig:
    """The mapper settings of a parameters file (the node's, or a plain 'mapper:' section); defaults without one."""
    from dsg_ros.config import from_mapping, load_yaml, section
    from dsg_ros.mapping import MapperConfig

    return MapperConfig() if not path else from_mapping(MapperConfig, section(load_yaml(path), "mapper", path), "mapper")


def _cmd_replay(args: argparse.Namespace) -> int:
    if args.output and not _require("replay --output", "matplotlib"):  # for map.png
        return 2
    _setup_runtime(args)
    import os
    from pathlib import Path

    from dsg_ros.bag import BagError
    from dsg_ros.bag.replay import replay
    from dsg_ros.learn import calibration as cal
    from dsg_ros.tools.carmen import read_relations
    from dsg_ros.tools.evaluate import plot_replay

    say = _progress(not args.json)
    try:
        config = replace(_replay_config(args), rate=args.rate, calibrate=not args.no_calibration, supervise=not args.self_supervised)
        mapper_config = _params_file_mapper_config(args.params_file)
        theta = cal.load(args.calibration) if args.calibration else None
        relations = read_relations(args.relations) if args.relations else None
        if args.output and os.path.exists(args.output) and not os.path.isdir(args.output):
            raise ValueError(f"--output {args.output} exists and is not a directory")
    except ValueError as exc:  # a bad flag value, parameters file, calibration or relations file, output path
        print(f"dsg-ros replay: {exc}", file=sys.stderr)
        return 2
    try:
        result = replay(
            args.bag, config, mapper_config, theta, output=args.output, record=args.record, relations=relations, progress=not args.json, say=say
        )
        if args.output:
            plot_replay(Path(args.output) / "map.png", result)
    except BagError as exc:
        print(f"dsg-ros replay: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written
        print(f"dsg-ros replay: cannot write: {exc}", file=sys.stderr)
        return 2
    s = result.summary
    skipped = sum(s["skipped"].values())
    fed = sum(n for topic, n in s["messages"].items() if topic in s["sensors"])
    human = [
        f"{s['clouds_consumed']} of {fed} scans/clouds mapped, {s['keyframes']} keyframes, {s['map_voxels']} voxels; "
        f"{skipped} messages skipped" + (f" ({', '.join(f'{n} {r}' for r, n in s['skipped'].items())})" if skipped else ""),
        f"{s['duration_s']:.1f} s of bag in {s['wall_s']:.1f} s: realtime x{s['realtime_factor'] or 0:.1f}; tick p50 {s['tick_ms_p50'] or 0:.1f} ms, "
        f"p99 {s['tick_ms_p99'] or 0:.1f} ms; keyframe ticks p50 {s['keyframe_tick_ms_p50'] or 0:.1f} ms, p99 {s['keyframe_tick_ms_p99'] or 0:.1f} ms",
    ]
    for name, score in s.get("scores", {}).items():
        parts = []
        if score.get("ate_m") is not None:
            parts.append(f"ATE {score['ate_m']:.3f} m")
        for gap in config.gaps_s:
            key = f"rel_{gap:g}s"
            if score.get(f"{key}_m") is not None:
                parts.append(f"{gap:g} s relations {score[f'{key}_m']:.3f} m / {score[f'{key}_deg']:.2f} deg")
        if score.get("relations_m") is not None:
            parts.append(f"{args.relations}: {score['relations_m']:.3f} m / {score['relations_deg']:.2f} deg over {score['relations_used']}")
        human.append(f"{name:9s} " + "; ".join(parts))
    if args.output:
        human.append(f"wrote {args.output}/: estimate.tum, smoothed.tum, odometry.tum, map.ply, map.png, calibration.yaml, summary.json")
    if args.record:
        human.append(f"recorded {args.record}: " + ", ".join(f"{n} {topic}" for topic, n in s["record"]["counts"].items()))
    _emit(args, human, s)
    return 0


# -------------------------------------------------------------------- learn

# Help per LearnConfig field (the flags are the fields; defaults come from the dataclass).
_LEARN_HELP = {
    "noise_model": "noise model learned: constant (one sqrt-precision per odometry axis, observations along the normal and in-plane)",
    "loss": "joint_nll (likelihood of the reference, no solve) or surrogate (pose error after the inner solve)",
    "inner": "surrogate: how the inner solve is differentiated",
    "inner_steps": "LM iterations of the inner solve (unroll/truncated: differentiated through)",
    "rotation_weight_m": "surrogate: metres of error per radian of rotation error",
    "train_sequence_length": "keyframes per subsequence",
    "batch_size": "subsequences per optimizer step (vmapped)",
    "dataset_fold": "the validation fold",
    "num_folds": "folds: by whole bags when there are at least this many, else by time segments with a gap",
    "num_epochs": "passes over the training subsequences",
    "learning_rate": "Adam learning rate (after warm-up)",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "max_gradient_norm": "gradients are clipped to this global norm",
    "random_seed": "seed of the batch order",
    "cells_per_keyframe": "best-supported cell observations kept per keyframe",
    "learn_all_axes": "learn every odometry scale and bias axis (default: forward scale and yaw-rate bias, a ground robot's)",
    "learn_extrinsic": "learn the base -> sensor extrinsic too",
}
_DEFAULT_EXPERIMENT = "{noise_model}_{loss}/fold_{dataset_fold}"


def _learn_config(args: argparse.Namespace) -> Any:
    import dataclasses

    from dsg_ros.learn.config import LearnConfig

    return LearnConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LearnConfig)})


def _cmd_learn(args: argparse.Namespace) -> int:
    _setup_runtime(args)
    import hashlib
    from pathlib import Path

    from dsg_ros.bag import BagError
    from dsg_ros.bag.learning import extract, fingerprint
    from dsg_ros.learn import calibration as cal, experiment as ex
    from dsg_ros.learn.dataset import DatasetError, KeyframeLog, describe
    from dsg_ros.learn.train import train
    from dsg_ros.mapping import metrics

    say = _progress(not args.quiet)
    try:
        config = _learn_config(args)
        replay_config = _replay_config(args)
        mapper_config = _params_file_mapper_config(args.params_file)
        identifier = args.experiment_identifier.format(noise_model=config.noise_model, loss=config.loss, dataset_fold=config.dataset_fold)
    except (ValueError, KeyError) as exc:  # a bad flag value or parameters file; an unknown {field} in the identifier
        print(f"dsg-ros learn: {exc}", file=sys.stderr)
        return 2
    folder = Path(args.experiments_dir) / identifier
    # One cache per bags + topics + mapper settings, shared by every fold and experiment.
    key = fingerprint(args.bags, replay_config, mapper_config, config.cells_per_keyframe)
    cache = Path(args.experiments_dir) / "datasets" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz"
    try:
        log = KeyframeLog.load(cache) if cache.exists() else None
        if log is not None and log.fingerprint != key:
            log = None
        if log is None:
            log = extract(args.bags, replay_config, mapper_config, config.cells_per_keyframe, say=say, progress=not args.quiet)
            log.save(cache)
            say(f"cached {describe(log)} in {cache}")
        else:
            say(f"read {describe(log)} from {cache}")
        data = {"bags": [str(b) for b in args.bags], "reference_topic": args.reference_topic, "dataset": str(cache)}
        result = train(log, config, folder, metrics.score, mapper_config.calibration.bounds, resume=args.resume, data=data,
                       progress=not args.quiet, say=say)
    except (BagError, DatasetError, ex.ExperimentError, cal.CalibrationFileError) as exc:
        print(f"dsg-ros learn: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ndsg-ros learn: interrupted; continue with the same command and --resume ({folder})", file=sys.stderr)
        return 130
    if importlib.util.find_spec("matplotlib") is not None:
        from dsg_ros.tools.learning_plots import plot_learning_curves

        plot_learning_curves(folder)
    else:
        say(f"learning_curves.png not drawn: matplotlib is not installed (the 'plots' extra); the curves are in {folder / ex.METRICS_FILE}")
    best = next(line for line in result.metrics if line["epoch"] == result.best_epoch)
    first = result.metrics[0]

    def errors(line: dict[str, Any]) -> str:
        parts = [f"{name} {line[key]:.4f}" for name, key in (("ATE m", "validation_ate_m"), ("1 s relations m", "validation_rel_1s_m"))
                 if line.get(key) is not None]
        return ", ".join(parts) or "no scores"

    human = [
        f"validation before learning: {errors(first)}",
        f"best epoch {result.best_epoch}: {errors(best)}",
        f"wrote {folder}/: {ex.CALIBRATION_FILE} (epoch {result.best_epoch}), {ex.METRICS_FILE}, {ex.CHECKPOINT_FILE}, {ex.CONFIG_FILE}",
    ]
    _emit(args, human, {"experiment": str(folder), "best_epoch": result.best_epoch, "best": best, "before": first, "dataset": str(cache)})
    return 0


def _cmd_cross_validate(args: argparse.Namespace) -> int:
    from dsg_ros.learn import experiment as ex

    folders = ex.experiment_folders(args.experiment_paths)
    if not folders:
        print(f"dsg-ros cross-validate: no experiment (a folder with {ex.METRICS_FILE}) under {' '.join(args.experiment_paths)}", file=sys.stderr)
        return 2
    try:
        summary = ex.cross_validate(folders, args.disaggregate)
    except ex.ExperimentError as exc:
        print(f"dsg-ros cross-validate: {exc}", file=sys.stderr)
        return 2
    human = []
    for name, metrics in summary.items():
        human.append(f"{name}:")
        for metric, stat in metrics.items():
            if metric == "folds":
                continue
            se = f" ± {stat['standard_error']:.4g}" if stat["standard_error"] is not None else ""
            human.append(f"  {metric:28s} {stat['mean']:.4g}{se} (n={stat['n']})")
        for fold, values in metrics.get("folds", {}).items():
            human.append(f"  {fold}: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(values.items())))
    _emit(args, human, summary)
    return 0


# ---------------------------------------------------------------- ROS 2 side


def _node(argv: list[str]) -> int:
    """``dsg-ros node``: its own parser, because everything after the options goes to ROS."""
    parser = argparse.ArgumentParser(
        prog="dsg-ros node",
        description=(
            "Start the dsg_mapper node with a parameters file (default: the installed config/hybrid.yaml). "
            "Subscribes odom, points and/or scan (LaserScan), and ground_truth if published; publishes ~/poses, ~/path, ~/voxels, "
            "~/graph, ~/odometry and /diagnostics; services ~/save_calibration and ~/reset. "
            "ROS arguments follow --ros-args (remaps, -p name:=value, use_sim_time)."
        ),
        epilog="example: dsg-ros node --params-file config/hybrid.yaml --ros-args -p use_sim_time:=true -r odom:=/robot/odom",
    )
    parser.add_argument("--params-file", metavar="YAML", help="ROS parameters file (default: the installed config/hybrid.yaml)")
    split = argv.index("--ros-args") if "--ros-args" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # strict: a misspelt option is an error, not a silent ROS argument
    ros_args = argv[split:]
    if not _require("node", "rclpy"):
        return 2
    from dsg_ros.ros.node import main as node_main
    from dsg_ros.ros.params import default_params_file

    params = args.params_file or str(default_params_file())
    return node_main(["--ros-args", "--params-file", params, *ros_args])


def _sim_publisher(argv: list[str]) -> int:
    if not _require("sim-publisher", "rclpy"):
        return 2
    from dsg_ros.tools.sim_publisher import main as publisher_main

    return publisher_main(argv)


# Subcommands that parse their own arguments (ROS arguments pass through).
_PASSTHROUGH: dict[str, Callable[[list[str]], int]] = {"node": _node, "sim-publisher": _sim_publisher}


def _cmd_demo(args: argparse.Namespace) -> int:
    if not _require("demo", "rclpy", "matplotlib"):
        return 2
    _setup_runtime(args)
    from pathlib import Path

    from dsg_ros.ros.params import default_params_file
    from dsg_ros.tools.live import run_live

    say = _progress(True)
    output = Path(args.output)
    try:
        summary = run_live(Path(args.params_file) if args.params_file else default_params_file(), output, args.duration, args.seed, args.rate, say=say)
    except (RuntimeError, FileNotFoundError) as exc:  # the node or publisher failed: say where to look
        print(f"dsg-ros demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # run_live has already stopped the node
        return 130
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    received, published = summary["received"], summary["published"]
    human = [
        f"received {received.get('points', 0)} clouds, {received.get('odom', 0)} odometry, {received.get('ground_truth', 0)} ground truth; "
        f"skipped {received.get('skipped_messages', 0)}",
        "published " + ", ".join(f"{v} {k}" for k, v in published.items()),
        f"latency cloud→publication p50 {summary['latency_ms_p50']} ms, p99 {summary['latency_ms_p99']} ms; "
        f"tick p50 {summary['tick_ms_p50']} ms, p99 {summary['tick_ms_p99']} ms",
    ]
    if "ate_odom" in summary:
        human.append(f"ATE odometry {summary['ate_odom']:.3f} m, estimate {summary['ate_estimate']:.3f} m")
    if summary.get("calibration"):
        c = summary["calibration"]
        human.append(f"learned odometry scale {c['odom_scale'][0]:.4f}, yaw-rate bias {c['odom_bias_angular_deg_s'][2]:.3f} deg/s "
                     f"(sim truth 1.03, 1.0); {summary['save_calibration']}")
    human += [f"map PNG: {summary.get('png')}", f"summary: {output / 'summary.json'}"]
    _emit(args, human, summary)
    return 0 if "ate_estimate" in summary else 1


# -------------------------------------------------------------------- bench


# What each bench suite needs beyond the core: its references and its plots.
_BENCH_NEEDS = {"core": ("gtsam",), "mapping": ("matplotlib",), "realdata": ("kiss_icp",), "node": ("rclpy", "matplotlib")}


def _cmd_bench(args: argparse.Namespace) -> int:
    if not _require(f"bench {args.suite}", *_BENCH_NEEDS[args.suite]):
        return 2
    _setup_runtime(args)
    say = _progress(True)
    if args.suite == "core":
        from dsg_ros.tools.bench import core

        results = core.run(quick=args.quick, output_dir=args.output_dir, say=say)
    elif args.suite == "mapping":
        from dsg_ros.tools.bench import mapping

        results = mapping.run(args.duration, args.memory_duration, output_dir=args.output_dir, say=say, large_window_keyframes=args.large_window)
    elif args.suite == "realdata":
        from dsg_ros.tools.bench import realdata

        try:
            results = realdata.run(args.logs.split(","), args.data, args.quick, output_dir=args.output_dir, say=say)
        except ValueError as exc:  # unknown log names, missing data files
            print(f"dsg-ros bench realdata: {exc}", file=sys.stderr)
            return 2
    else:
        from dsg_ros.tools.bench import node

        results = node.run(args.duration, output_dir=args.output_dir, say=say)
    human = [f"wrote {results['json_path']} and {results['markdown_path']}"]
    _emit(args, human, results)
    return 0


# ------------------------------------------------------------------- parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsg-ros",
        description="Online differentiable mapping: solvers, experiments and benches.",
        epilog=_EPILOG_CACHE,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "hero",
        help="the seed tutorial's hybrid SE(3)+voxel learning experiment",
        description=(
            "Learn odometry increments and observation points through the inner solve "
            "(6 poses, 6 voxels, 30 outer steps). Prints the final loss, the largest voxel "
            "error and the total time including compilation."
        ),
        epilog=_EPILOG_CACHE,
    )
    p.add_argument(
        "--inner",
        choices=("lm", "gd"),
        default="lm",
        help="inner solver: Levenberg-Marquardt, or the seed's gradient descent (80 steps of lr 0.05); default lm",
    )
    p.add_argument(
        "--diff",
        choices=("implicit", "unroll"),
        default="implicit",
        help="gradient through the inner solve: implicit function theorem at its solution (default), "
        "or backward through its iterations (the seed's way; slower to compile)",
    )
    p.add_argument("--steps", type=int, default=30, help="outer learning steps (default 30)")
    p.add_argument("--learning-rate", type=float, default=None, help="outer learning rate (default 0.035)")
    p.add_argument("--momentum", type=float, default=None, help="outer Nesterov momentum (default 0.88)")
    p.add_argument("--quiet", action="store_true", help="no per-step progress on stderr")
    _common(p)
    p.set_defaults(handler=_cmd_hero)

    p = sub.add_parser(
        "solve-g2o",
        help="optimize a 3D g2o pose graph (VERTEX_SE3:QUAT / EDGE_SE3:QUAT)",
        description=(
            "Read a 3D g2o file, anchor its first vertex with a tight prior (sigma 1e-6; "
            "FIX lines anchor those vertices instead) and minimize the GTSAM-convention cost "
            "0.5*sum ||whitened residual||^2. Exit status 1 if the solver did not converge, "
            "2 if the file cannot be read."
        ),
        epilog="example: dsg-ros solve-g2o sphere2500.g2o --json",
    )
    p.add_argument("file", help="g2o file")
    p.add_argument("--solver", choices=("lm", "gn"), default="lm", help="Levenberg-Marquardt (default) or Gauss-Newton")
    p.add_argument(
        "--linear-solver",
        choices=("auto", "dense", "sparse"),
        default="auto",
        help="dense Schur/Cholesky or the host supernodal sparse Cholesky; auto picks by size (default)",
    )
    p.add_argument("--max-iterations", type=int, default=100, help="iteration limit (default 100)")
    p.add_argument("--output", metavar="FILE", help="write the optimized graph as g2o")
    _common(p)
    p.set_defaults(handler=_cmd_solve_g2o)

    p = sub.add_parser(
        "run-sim",
        help="run the simulator through the online mapper and score it against ground truth",
        description=(
            "Simulate a LiDAR robot in a seeded indoor world (odometry with a 3 % scale and 1 deg/s yaw-rate "
            "bias by default), run the online mapper with periodic calibration, and report ATE/RPE of "
            "odometry and estimate, tick latency, the learned calibration and recompilations. Writes a "
            "top-view PNG, TUM trajectories (for evo) and calibration.yaml to --output."
        ),
        epilog="example: dsg-ros run-sim --duration 60 --json",
    )
    p.add_argument("--seed", type=int, default=None, help="world, odometry and sensor noise seed (default 0)")
    p.add_argument("--duration", type=float, default=None, help="simulated seconds (default 60)")
    p.add_argument("--config", metavar="YAML", help="YAML with optional 'sim:' and 'mapper:' sections (dataclass fields)")
    p.add_argument("--output", default="out/run-sim", help="folder for map.png, *.tum and calibration.yaml (default out/run-sim)")
    p.add_argument("--self-supervised", action="store_true", help="do not give the mapper ground truth: calibrate from map consistency")
    p.add_argument("--no-calibration", action="store_true", help="never update the calibration")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _common(p)
    p.set_defaults(handler=_cmd_run_sim)

    p = sub.add_parser("convert", help="convert datasets to rosbag2")
    convert_sub = p.add_subparsers(dest="format", metavar="FORMAT")
    convert_sub.required = True
    c = convert_sub.add_parser(
        "carmen",
        help="a CARMEN laser log (.clf/.log, plain, .gz or .bz2) as a rosbag2",
        description=(
            "Write /scan (LaserScan in 'laser', max-range readings as +inf per REP 117), /odom (Odometry odom -> "
            "base_link), /ground_truth (Odometry map -> base_link at the scans matched in --reference) and "
            "/tf_static (base_link -> laser). Stamps are the log's, repaired to increase strictly; bag time = "
            "header stamp. The bag is written beside --out and renamed into place when complete. "
            "Exit status 2 if the log cannot be read or the bag cannot be written."
        ),
        epilog="example: dsg-ros convert carmen intel.clf.bz2 --reference intel-corrected.log.gz --out intel --storage mcap",
    )
    c.add_argument("log", help="CARMEN log")
    c.add_argument("--reference", metavar="CORRECTED_LOG", help="the corrected log of the same run, for /ground_truth")
    c.add_argument("--out", required=True, metavar="BAG", help="rosbag2 directory to create")
    c.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="rosbag2 storage (default sqlite3)")
    c.add_argument(
        "--odometry",
        choices=("auto", "scan", "odom"),
        default="auto",
        help="odom: the ODOM records at their own stamps, with their velocities; "
        "scan: one /odom per scan from the FLASER record's odometry pose at the scan's stamp (the last ODOM "
        "before the scan: exact pairing, but stale where the log stalled); "
        "auto (default): odom unless the ODOM stamps needed repair in more than 10%% of records (Intel), then scan",
    )
    _writer_flags(c, "--out")
    c.set_defaults(handler=_cmd_convert)

    p = sub.add_parser(
        "sim",
        help="write a simulated run as a rosbag2",
        description=(
            "Simulate a LiDAR robot (as run-sim and sim-publisher) and write /odom (odom -> base_link), /points "
            "(PointCloud2, float32 x y z in 'lidar'), /ground_truth (world -> base_link) and /tf_static "
            "(base_link -> lidar, the sim's extrinsic); stamps from 1000 s."
        ),
        epilog="example: dsg-ros sim --bag sim60 --storage mcap --duration 60",
    )
    p.add_argument("--bag", required=True, metavar="OUT", help="rosbag2 directory to create")
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="rosbag2 storage (default sqlite3)")
    p.add_argument("--seed", type=int, default=None, help="world, odometry and sensor noise seed (default 0)")
    p.add_argument("--duration", type=float, default=None, help="simulated seconds (default 60)")
    _writer_flags(p, "--bag")
    p.set_defaults(handler=_cmd_sim)

    p = sub.add_parser(
        "replay",
        help="replay a rosbag through the mapper offline (as the node would map it) and score it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Feed a bag's odometry, clouds and/or scans (and a reference, if named) to the mapper in bag time order, with the\n"
            "node's tick protocol (tick, calibrate when due, marginalize, refine), as fast as possible or at --rate. The\n"
            "extrinsic base -> sensor comes from /tf_static when it joins the base to the sensor's frame, else from the\n"
            "parameters (mapper.T_base_sensor). Messages that do not convert (a scan whose ranges disagree with its angles,\n"
            "a malformed cloud) are skipped and counted by reason, and so is what the mapper refuses (stamps going back).\n"
            "With a reference topic the estimate (each cloud's pose as its tick published it), the smoothed keyframes and the\n"
            "raw odometry are scored at the reference's stamps: ATE after rigid alignment, and the relation errors\n"
            "(Kuemmerle et al. 2009) of pose pairs ~1 s and ~10 s apart; --relations adds a relations file.\n"
            "Exit status 2 for a bag, topic or file that cannot be used (the message says which); then nothing is written."
        ),
        epilog=(
            "--output DIR holds estimate.tum (one line per mapped scan/cloud, its header stamp), smoothed.tum (keyframes),\n"
            "odometry.tum (raw, at the mapped stamps), reference.tum, calibration.yaml, map.ply (voxels with observation\n"
            "counts), map.png (top view) and summary.json (speed, memory, skips and warnings by reason, scores).\n"
            "--record BAG writes what the node publishes (/dsg_mapper/poses, path, odometry, voxels, /tf map -> odom) as mcap.\n\n"
            "examples:\n"
            "  dsg-ros convert carmen aces.clf.bz2 --reference aces-corrected.log.gz --out aces --storage mcap\n"
            "  dsg-ros replay aces --reference-topic /ground_truth --relations aces.relations --output out/aces\n"
            "  dsg-ros replay aces --start 300 --duration 60 --rate 1 --no-calibration --record out/aces-mapper\n"
            "  dsg-ros replay robot.mcap --points-topic /lidar/points --odom-topic /wheel/odom \\\n"
            "      --params-file config/hybrid.yaml --calibration out/calibration.yaml --output out/robot --json\n\n"
            + _EPILOG_CACHE
        ),
    )
    p.add_argument("bag", help="rosbag2 directory, .db3 or .mcap file, or ROS 1 .bag")
    _bag_input_flags(p)
    p.add_argument(
        "--reference-topic",
        metavar="TOPIC",
        help="reference poses (nav_msgs/Odometry or geometry_msgs/PoseStamped): scored against, and given to supervised calibration",
    )
    p.add_argument("--relations", metavar="FILE", help="Kuemmerle relations 't1 t2 x y z roll pitch yaw' per line (e.g. aces.relations): score on them too")
    p.add_argument("--calibration", metavar="FILE", help="calibration YAML to start from (as the node's calibration_file)")
    p.add_argument("--no-calibration", action="store_true", help="never update the calibration while replaying")
    p.add_argument(
        "--self-supervised", action="store_true", help="score against the reference but do not give it to the mapper: calibrate from map consistency"
    )
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="skip the bag's first S seconds (default 0)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="replay S seconds of bag (default: to the end)")
    p.add_argument("--rate", type=float, default=None, metavar="R", help="R bag seconds per second (1: real time; default: as fast as possible)")
    p.add_argument("--output", metavar="DIR", help="write trajectories, map, plot, calibration and summary here")
    p.add_argument("--record", metavar="OUT_BAG", help="write what the node would publish to this mcap rosbag2 (must not exist)")
    _common(p)
    p.set_defaults(handler=_cmd_replay)

    p = sub.add_parser(
        "learn",
        help="learn a calibration and noise model from bags with a reference, through the solver",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Replay each bag once through the mapping front-end (calibration off), cache every keyframe's odometry, cell\n"
            "observations and reference pose in <experiments-dir>/datasets/, then learn theta (odometry correction, time\n"
            "offset, optionally the extrinsic, and the constant noise model) on subsequences of keyframes with optax,\n"
            "validating on the held-out fold every epoch. The experiment folder gets experiment_config.yaml, checkpoint.npz\n"
            "(after every epoch), metrics.jsonl, calibration.yaml of the best validation epoch (for replay --calibration and\n"
            "the node's calibration_file) and learning_curves.png (with the 'plots' extra). Exit status 2 for a bag, topic,\n"
            "fold or experiment folder that cannot be used (the message names it); 130 when interrupted (--resume continues)."
        ),
        epilog=(
            "examples:\n"
            "  dsg-ros sim --bag sim0 --seed 0 && dsg-ros sim --bag sim1 --seed 1\n"
            "  dsg-ros learn sim0 sim1 --reference-topic /ground_truth --num-folds 2 --dataset-fold 0\n"
            "  dsg-ros learn sim0 sim1 --reference-topic /ground_truth --num-folds 2 --dataset-fold 0 --resume --num-epochs 60\n"
            "  dsg-ros cross-validate --experiment-paths 'experiments/**/'\n\n" + _EPILOG_CACHE
        ),
    )
    p.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 directories, .db3 or .mcap files, or ROS 1 .bag")
    p.add_argument("--reference-topic", required=True, metavar="TOPIC", help="reference poses (nav_msgs/Odometry or geometry_msgs/PoseStamped)")
    _bag_input_flags(p)
    p.add_argument("--start", type=float, default=0.0, metavar="S", help="skip each bag's first S seconds (default 0)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="use S seconds of each bag (default: to the end)")
    from dataclasses import MISSING, fields
    from typing import get_args

    from dsg_ros.learn import config as learn_config

    for f in fields(learn_config.LearnConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        assert default is not MISSING
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=_LEARN_HELP[f.name])
            continue
        choices = get_args(getattr(learn_config, str(f.type), None)) or None
        p.add_argument(flag, type=type(default), default=default, choices=choices, help=f"{_LEARN_HELP[f.name]} (default {default})")
    p.add_argument(
        "--experiment-identifier", default=_DEFAULT_EXPERIMENT, metavar="ID", help=f"experiment folder under --experiments-dir (default {_DEFAULT_EXPERIMENT})"
    )
    p.add_argument("--experiments-dir", default="experiments", metavar="DIR", help="where experiments and the bag cache live (default experiments)")
    p.add_argument("--resume", action="store_true", help="continue the experiment from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _common(p)
    p.set_defaults(handler=_cmd_learn)

    p = sub.add_parser(
        "cross-validate",
        help="every metric of learning experiments across folds: mean ± standard error",
        description=(
            "For each experiment (the parent of fold_K folders), every numeric metric of each fold's best validation epoch\n"
            "(metrics.jsonl), as mean ± standard error (sample standard deviation / sqrt(n)) over the folds."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--experiment-paths", nargs="+", default=["experiments/**/"], metavar="GLOB", help="folders to search (recursive **; default experiments/**/)"
    )
    p.add_argument("--disaggregate", action="store_true", help="also every fold's values")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.set_defaults(handler=_cmd_cross_validate)

    # Listed for --help; main() hands their arguments over before argparse sees them.
    sub.add_parser("node", help="run the ROS 2 mapping node (what hybrid_node and ros2 launch start); see `dsg-ros node --help`")
    sub.add_parser("sim-publisher", help="publish the simulator's odom, points and ground_truth topics; see `dsg-ros sim-publisher --help`")

    p = sub.add_parser(
        "demo",
        help="the node and the sim publisher over real DDS, scored (what `make demo` runs)",
        description=(
            "Start the mapping node and the simulator publisher as separate processes over DDS on this host, "
            "publish the simulated run at real rate, save the calibration through ~/save_calibration, then "
            "print messages received/published, cloud-to-publication latency, ATE of odometry and estimate, "
            "and the learned calibration; writes map.png, summary.json, calibration.yaml and logs to --output."
        ),
        epilog="example: dsg-ros demo --duration 60",
    )
    p.add_argument("--params-file", metavar="YAML", help="node parameters (default: the installed config/hybrid.yaml, as the launch file)")
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds (default 60)")
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.add_argument("--rate", type=float, default=1.0, help="publishing speed as a multiple of real time (default 1)")
    p.add_argument("--output", default="out/demo", help="output folder (default out/demo)")
    _common(p)
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("bench", help="benchmarks; results as JSON and a table in bench/RESULTS.md")
    bench_sub = p.add_subparsers(dest="suite", metavar="SUITE")
    bench_sub.required = True
    b = bench_sub.add_parser(
        "core",
        help="HERO end to end, pose graphs vs GTSAM, hybrid window LM iteration time",
        description=(
            "Runs HERO (cold and warm compile cache, in fresh processes), sphere2500 and "
            "parking-garage against GTSAM's LM in the same process, and an LM solve of a hybrid "
            "window (10 poses, 2,000 voxels, 20,000 observations). Writes "
            "bench/results/core.json and the core section of bench/RESULTS.md."
        ),
    )
    b.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke tests)")
    b.add_argument("--output-dir", default="bench", help="where results/ and RESULTS.md live (default ./bench)")
    _common(b)
    b.set_defaults(handler=_cmd_bench)
    b = bench_sub.add_parser(
        "mapping",
        help="the online mapper on the default sim run: accuracy, calibration, tick latency, memory",
        description=(
            "Runs the default 60 s simulated run through the mapper (supervised calibration) and reports ATE, the "
            "learned calibration against the truth, tick p50/p99, calibration step time, realtime factor and "
            "recompilations; then a long run for memory (RSS growth). Writes bench/results/mapping.json and the "
            "mapping section of bench/RESULTS.md, with a verdict per goal. On a GPU the results go to "
            "mapping-gpu.json and their own section, the speed goals are the GPU ones, and a 40-keyframe window runs too."
        ),
    )
    b.add_argument("--duration", type=float, default=60.0, help="simulated seconds of the default run (default 60)")
    b.add_argument("--memory-duration", type=float, default=600.0, help="simulated seconds of the memory run; 0 skips it (default 600)")
    b.add_argument(
        "--large-window",
        type=int,
        default=None,
        metavar="K",
        help="also run the default scenario with a K-keyframe window (voxel slots scaled with it); "
        "default 40 when JAX sees a GPU (its goal: tick p50 ≤ 10 ms), none on the CPU; 0 skips it",
    )
    b.add_argument("--output-dir", default="bench", help="where results/ and RESULTS.md live (default ./bench)")
    _common(b)
    b.set_defaults(handler=_cmd_bench)
    b = bench_sub.add_parser(
        "node",
        help="the ROS 2 node over real DDS: cloud-to-publication latency, dropped ticks, RSS",
        description=(
            "Starts the node and the sim publisher as separate processes (as `dsg-ros demo`), streams the simulated "
            "10 Hz LiDAR at real rate and reports the latency from a cloud's arrival to the publication of the tick "
            "that used it, dropped clouds and node RSS. Writes bench/results/node.json and the node section of "
            "bench/RESULTS.md."
        ),
    )
    b.add_argument("--duration", type=float, default=60.0, help="simulated seconds streamed (default 60; the RSS goal asks for 600)")
    b.add_argument("--output-dir", default="bench", help="where results/ and RESULTS.md live (default ./bench)")
    _common(b)
    b.set_defaults(handler=_cmd_bench)
    b = bench_sub.add_parser(
        "realdata",
        help="real robot logs (ACES, FR079, Intel): the mapper vs raw odometry and KISS-ICP, scored against the reference",
        description=(
            "Converts each CARMEN log of the data folder to a bag, replays it as `dsg-ros replay` (calibration off, self-supervised "
            "calibration on, and the reference poses as odometry), runs KISS-ICP on the same scans with the odometry increment as "
            "initial guess, and scores all at the reference scans: ATE, ~1 s and ~10 s relation errors, the ACES relations; with "
            "realtime factor, keyframe-tick p50/p99 and RSS. Writes bench/results/realdata.json and the realdata section of "
            "bench/RESULTS.md. Full logs take minutes each; --quick replays their first 300 s."
        ),
        epilog="example: dsg-ros bench realdata --logs aces --quick",
    )
    b.add_argument("--logs", default="aces,fr079,intel", help="comma-separated logs to run (default aces,fr079,intel)")
    b.add_argument("--data", metavar="DIR", default=None, help="folder of the logs (default ../shared/data/realdata from the repository root)")
    b.add_argument("--quick", action="store_true", help="only the first 300 s of each log (for trying things)")
    b.add_argument("--output-dir", default="bench", help="where results/ and RESULTS.md live (default ./bench)")
    _common(b)
    b.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        return _PASSTHROUGH[argv[0]](argv[1:])
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
