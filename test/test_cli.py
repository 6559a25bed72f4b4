"""The dsg-ros console script: help, JSON contract, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DATA

CLI = [sys.executable, "-m", "dsg_ros.cli"]


SUBCOMMANDS: list[list[str]] = [
    ["hero"], ["solve-g2o"], ["run-sim"], ["demo"], ["node"], ["sim-publisher"], ["bench", "core"], ["bench", "mapping"], ["bench", "node"],
    ["convert", "carmen"], ["sim"], ["replay"], ["bench", "realdata"], ["learn"], ["cross-validate"],
]


@pytest.mark.parametrize("args", [[], *SUBCOMMANDS], ids=lambda a: " ".join(a) or "dsg-ros")
def test_every_subcommand_teaches_with_help(args):
    out = subprocess.run(CLI + args + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: dsg-ros" in out.stdout
    if not args:  # the top-level help lists every command
        assert all(cmd[0] in out.stdout for cmd in SUBCOMMANDS)


@pytest.mark.parametrize("command", ["node", "sim-publisher"])
def test_ros_commands_refuse_a_misspelt_option(command):
    # Their ROS arguments pass through after --ros-args; anything else must be theirs.
    out = subprocess.run(CLI + [command, "--durration", "5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: --durration" in out.stderr


def test_solve_g2o_prints_json_last(tmp_path):
    src = (DATA / "posegraphs" / "parking-garage.g2o").read_text().splitlines()
    # A small prefix of the garage: the first 60 vertices and the edges among them.
    keep = [line for line in src if line.startswith("VERTEX") and int(line.split()[1]) < 60]
    keep += [line for line in src if line.startswith("EDGE") and int(line.split()[1]) < 60 and int(line.split()[2]) < 60]
    path = tmp_path / "small.g2o"
    path.write_text("\n".join(keep) + "\n")
    out_path = tmp_path / "solved.g2o"
    out = subprocess.run(
        CLI + ["solve-g2o", str(path), "--json", "--output", str(out_path), "--compile-cache", "off"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("iterations", "initial_cost", "final_cost", "seconds_compile", "seconds_solve"):
        assert key in result
    assert result["converged"] and result["final_cost"] < result["initial_cost"]
    assert result["linear_solver"] == "dense" and result["poses"] == 60
    assert out_path.read_text().count("VERTEX_SE3:QUAT") == 60


def test_solve_g2o_reports_a_bad_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.g2o"
    path.write_text("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nEDGE_SE3:QUAT 0 1 2\n")
    out = subprocess.run(CLI + ["solve-g2o", str(path), "--compile-cache", "off"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "bad.g2o:2: EDGE_SE3:QUAT expects 30 fields, got 3" in out.stderr


@pytest.mark.parametrize(
    "args, module, extra",
    [
        (["run-sim"], "matplotlib", "plots"),
        (["replay", "some.bag", "--output", "out"], "matplotlib", "plots"),
        (["demo"], "rclpy", "ros"),
        (["node"], "rclpy", "ros"),
        (["sim-publisher"], "rclpy", "ros"),
        (["bench", "core"], "gtsam", "bench"),
        (["bench", "realdata"], "kiss_icp", "bench"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else a,
)
def test_a_tool_without_its_optional_dependency_names_the_extra(args, module, extra, monkeypatch, capsys):
    from dsg_ros.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # what find_spec reports for a module that is not installed
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"needs {module}" in err and f"pip install '.[{extra}]'" in err
