"""The node started with a corrupt calibration file, and asked to change its
parameters while running, over real DDS (one node process, not warmed up:
both happen before or beside the compile).

Isolation: a random ROS_DOMAIN_ID and localhost-only discovery; HOME is a
temporary folder (``calibration_file: ~/cal.yaml`` expands into it).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip("rclpy")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.client import Client  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from dsg_ros.learn import calibration as cal  # noqa: E402
from dsg_ros.tools.live import NODE, stop_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_a_corrupt_calibration_is_refused_named_and_kept_and_parameters_cannot_change_at_run_time(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    calibration = home / "cal.yaml"
    cal.save(calibration, {**cal.as_host(cal.zero_theta()), "odom_log_scale": np.full(3, 0.1)})
    written = calibration.read_bytes()
    corrupt = written[: written.index(b"odom_bias")]  # truncated mid-write (by something other than cal.save) inside theta
    calibration.write_bytes(corrupt)
    document = yaml.safe_load((REPO / "config" / "hybrid.yaml").read_text())
    document["/**"]["ros__parameters"].update(calibration_file="~/cal.yaml", diagnostics_rate_hz=5.0)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(document))
    domain = random.randint(150, 229)
    log_path = tmp_path / "node.log"
    env = dict(os.environ, HOME=str(home), ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        command = [sys.executable, "-m", "dsg_ros", "node", "--params-file", str(params)]
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node("dsg_test_faults", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    diagnostics: list[dict[str, str]] = []
    node.create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: diagnostics.extend({kv.key: kv.value for kv in s.values} for s in m.status if s.name.startswith(NODE)), 10
    )

    def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while not (value := predicate()):
            assert proc.poll() is None, f"the node exited with code {proc.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}; the node's log:\n{log_path.read_text()}"
            executor.spin_once(timeout_sec=0.05)
        return value

    def result(future) -> Any:
        return wait_for(lambda: future.done() and (future.result() or True), "a service answer") and future.result()

    try:
        # Refused with the reason and the file's full path, and the node runs on the identity calibration.
        wait_for(lambda: f"ignoring calibration file, starting from the identity calibration: {calibration}" in log_path.read_text(), "the refusal")
        values = wait_for(lambda: diagnostics[-1] if diagnostics else None, "diagnostics")
        assert values["calibration_odom_scale"] == "1" and values["calibration_time_offset_s"] == "0", values

        # Every parameter is read once at start: a change is refused with a reason, and changes nothing.
        parameters = AsyncParameterClient(node, NODE)
        assert parameters.wait_for_services(timeout_sec=30.0)
        before = result(parameters.get_parameters(["rate_hz", "mapper.voxel_size"])).values
        changes = [Parameter("rate_hz", value=20.0), Parameter("mapper.voxel_size", value="big"), Parameter("no_such_parameter", value=1)]
        answers = result(parameters.set_parameters(changes)).results
        assert [a.successful for a in answers] == [False, False, False]
        assert "read-only" in answers[0].reason and "read-only" in answers[1].reason and answers[2].reason, [a.reason for a in answers]
        assert result(parameters.get_parameters(["rate_hz", "mapper.voxel_size"])).values == before

        # Saving would replace the refused file: refused, and the file is left as it was.
        save: Client[Any, Any] = node.create_client(Trigger, f"/{NODE}/save_calibration")
        assert save.wait_for_service(timeout_sec=30.0)
        answer = result(save.call_async(Trigger.Request()))
        assert not answer.success and "not overwriting" in answer.message and str(calibration) in answer.message, answer.message
    finally:
        stop_process(proc)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert calibration.read_bytes() == corrupt
    assert [p.name for p in home.iterdir() if p.name.startswith(".cal.yaml")] == []  # no save was started
