"""HERO, the seed tutorial's experiment: both inner solvers must learn it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dsg_ros.tools import hero


@pytest.mark.parametrize("diff", ["implicit", "unroll"])
def test_gd_inner_solver_learns_to_the_targets(diff):
    result = hero.run(hero.HeroConfig(inner="gd", diff=diff))
    assert result.final_loss < 1e-4, result.losses
    assert result.max_voxel_error < 0.01
    assert result.final_loss < result.losses[0] / 100
    # Voxels moved: the seed's voxel residual never moved them.
    assert np.abs(result.voxels[:, 0] - np.arange(6)).max() < 0.01


def test_lm_inner_solver_via_the_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dsg_ros.cli", "hero", "--json", "--quiet", "--compile-cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"final_loss", "seconds_total", "max_voxel_error"} <= set(summary)
    assert summary["inner"] == "lm" and summary["outer_steps"] == 30
    assert summary["final_loss"] < 1e-4
    assert summary["max_voxel_error"] < 0.01
