"""Files on disk: writers killed at random moments never leave a partial
file, and nothing is loaded in a way that runs code (YAML safe-load only,
arrays without pickle)."""

from __future__ import annotations

import os
import re
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

import dsg_ros
from dsg_ros.learn import calibration as cal
from dsg_ros.mapping.ply import write_ply

KILLS = 30
VERTICES = 50_000  # 0.8 MB of PLY: long enough to write that many kills land mid-write
ZERO = cal.as_host(cal.zero_theta())


def _write_forever(directory: Path) -> None:
    """The writer that gets killed: saves version i of both files, i = 1, 2, …
    (every value of version i says i, so a mix of two versions shows)."""
    i = 0
    while True:
        i += 1
        cal.save(directory / "calibration.yaml", {**ZERO, "odom_bias": np.full(6, i * 1e-3)}, {"version": i})
        n = VERTICES + i % 7
        write_ply(directory / "map.ply", np.full((n, 3), float(i)), np.full(n, i))


def _check_calibration(path: Path) -> None:
    if not path.exists():
        return
    version = yaml.safe_load(path.read_text())["metadata"]["version"]
    np.testing.assert_array_equal(np.asarray(cal.load(path)["odom_bias"]), np.full(6, version * 1e-3))


def _check_ply(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    n = int(re.search(rb"element vertex (\d+)", head)[1])  # type: ignore[index]
    vertices = np.frombuffer(body, np.dtype([("xyz", "<f4", 3), ("observations", "<u4")]))
    version = int(vertices["observations"][0])
    assert len(body) == 16 * n and n == VERTICES + version % 7
    assert np.all(vertices["xyz"] == version) and np.all(vertices["observations"] == version)


def test_writers_killed_at_random_moments_leave_the_old_file_or_the_new_one(tmp_path: Path):
    """SIGKILL a writer of calibrations and PLY maps KILLS times, at random
    moments: the targets are always absent or one complete version, and the
    only leftovers are temporary files, at most one per kill."""
    rng = np.random.default_rng(0)
    for _ in range(KILLS):
        with warnings.catch_warnings():  # JAX warns that its threads do not survive a fork: the writer uses none
            warnings.simplefilter("ignore", RuntimeWarning)
            pid = os.fork()
        if pid == 0:
            try:
                _write_forever(tmp_path)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the writer ended before it was killed"
        _check_calibration(tmp_path / "calibration.yaml")
        _check_ply(tmp_path / "map.ply")
    assert (tmp_path / "calibration.yaml").exists() and (tmp_path / "map.ply").exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("calibration.yaml", "map.ply"))
    assert all(re.fullmatch(r"\.(calibration\.yaml\.\w+\.yaml|map\.ply\.\w+\.ply)", name) for name in leftovers), leftovers
    assert len(leftovers) <= KILLS
    print(f"{KILLS} kills left {len(leftovers)} temporary files")


# Ways of loading that can run code from the file: a YAML loader that builds
# Python objects, and pickled NumPy arrays.
_UNSAFE = re.compile(r"yaml\.(load|load_all|unsafe_load|full_load)\(|UnsafeLoader|FullLoader|allow_pickle\s*=\s*True|\bimport pickle\b|\bpickle\.loads?\(")


@pytest.mark.parametrize("root", ["dsg_ros", "launch", "docs"])
def test_nothing_is_loaded_in_a_way_that_runs_code(root: str):
    folder = Path(dsg_ros.__file__).resolve().parents[1] / root
    found = [f"{p}:{n}: {line.strip()}" for p in sorted(folder.rglob("*.py")) for n, line in enumerate(p.read_text().splitlines(), 1) if _UNSAFE.search(line)]
    assert found == []


def test_a_save_onto_a_symlink_replaces_the_link_and_never_writes_through_it(tmp_path: Path):
    """The node saves only to its ``calibration_file`` (a read-only parameter;
    no service takes a path). Were that a link to a file elsewhere, the save
    replaces the link in its own folder: the file it pointed to is untouched."""
    outside, configured = tmp_path / "outside", tmp_path / "configured"
    outside.mkdir()
    configured.mkdir()
    (outside / "victim.yaml").write_text("not yours\n")
    (configured / "cal.yaml").symlink_to(outside / "victim.yaml")
    cal.save(configured / "cal.yaml", ZERO)
    assert (outside / "victim.yaml").read_text() == "not yours\n" and sorted(p.name for p in outside.iterdir()) == ["victim.yaml"]
    assert not (configured / "cal.yaml").is_symlink() and sorted(p.name for p in configured.iterdir()) == ["cal.yaml"]
    cal.load(configured / "cal.yaml")
