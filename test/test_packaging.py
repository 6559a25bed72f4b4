"""Packaging: the package builds with colcon as ROS expects, and its metadata holds.

The colcon build runs for real (the venv's colcon, ament_python build type)
with build/, install/ and log/ redirected to a temporary directory so the
repository stays clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "dsg_ros"
EXEC_DEPENDS = {
    "rclpy",
    "sensor_msgs",
    "geometry_msgs",
    "nav_msgs",
    "visualization_msgs",
    "std_srvs",
    "diagnostic_msgs",
    "python3-numpy",
    "python3-yaml",
}
COLCON_TIMEOUT_S = 600


def _colcon() -> str:
    """The colcon next to this interpreter (the venv's), else the one on PATH."""
    sibling = Path(sys.executable).with_name("colcon")
    if sibling.is_file():
        return str(sibling)
    found = shutil.which("colcon")
    if found is None:
        pytest.fail("colcon not found: install the test extra (pip install -e '.[test]')")
    return found


def _shipped_files(folder: str) -> list[Path]:
    """Files of the repository's `folder`/ that must be installed into share/dsg_ros/`folder`/."""
    root = REPO / folder
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(REPO)
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".")
    )


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run `colcon build` of this package into a temp dir; return its install prefix."""
    work = tmp_path_factory.mktemp("colcon")
    install = work / "install"
    env = dict(os.environ)
    env["COLCON_HOME"] = str(work / "colcon_home")  # no user defaults.yaml
    env.pop("COLCON_DEFAULTS_FILE", None)
    cmd = [
        _colcon(),
        "--log-base", str(work / "log"),
        "build",
        "--base-paths", str(REPO),
        "--packages-select", PACKAGE,
        "--build-base", str(work / "build"),
        "--install-base", str(install),
        "--event-handlers", "console_cohesion+", "status-", "summary+",
    ]
    proc = subprocess.run(
        cmd,
        cwd=work,  # anything colcon writes relative to cwd stays in tmp
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COLCON_TIMEOUT_S,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"colcon build failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    prefix = install / PACKAGE  # colcon's default isolated layout
    assert prefix.is_dir(), f"no {prefix}; colcon output:\n{proc.stdout}\n{proc.stderr}"
    return prefix


@pytest.mark.slow
def test_colcon_build_installs_ament_resources(colcon_install: Path) -> None:
    share = colcon_install / "share"
    assert (share / "ament_index/resource_index/packages" / PACKAGE).is_file()
    assert (share / PACKAGE / "package.xml").is_file()
    assert (share / PACKAGE / "config/hybrid.yaml").is_file()


@pytest.mark.slow
def test_colcon_build_installs_launch_and_config(colcon_install: Path) -> None:
    share = colcon_install / "share" / PACKAGE
    expected = _shipped_files("launch") + _shipped_files("config")
    assert expected, "config/ should hold at least hybrid.yaml"
    missing = [str(rel) for rel in expected if not (share / rel).is_file()]
    assert not missing, f"not installed into {share}: {missing}"
    for rel in ("launch/hybrid.launch.py", "config/hybrid.yaml", "config/hybrid.rviz"):
        assert (share / rel).is_file(), f"{rel} not installed"


@pytest.mark.slow
def test_colcon_build_installs_the_node_executable(colcon_install: Path) -> None:
    node = colcon_install / "lib" / PACKAGE / "hybrid_node"  # `ros2 run dsg_ros hybrid_node`, the launch file's executable
    assert node.is_file() and os.access(node, os.X_OK), f"missing or not executable: {node}"
    text = node.read_text()  # a direct import, or setuptools' load_entry_point by name
    assert "dsg_ros.ros.node" in text or "'hybrid_node'" in text, text


@pytest.mark.slow
def test_colcon_build_puts_console_script_where_ros2_run_looks(colcon_install: Path) -> None:
    script = colcon_install / "lib" / PACKAGE / "dsg-ros"
    assert script.is_file(), f"missing {script}: check setup.cfg [install] install_scripts"
    assert os.access(script, os.X_OK)

    # The installed script runs against the installed package (as after
    # `source install/setup.bash`), from a directory outside the repo.
    site = sorted(colcon_install.glob("lib/python3*/site-packages"))
    assert site, "no site-packages in the colcon install"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site[0]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [str(script), "--help"],
        cwd=colcon_install,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dsg-ros" in proc.stdout


def test_package_xml_is_ament_python_format3() -> None:
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package"
    assert root.get("format") == "3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("export/build_type") == "ament_python"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert EXEC_DEPENDS <= exec_depends, f"missing exec_depend: {EXEC_DEPENDS - exec_depends}"
    test_depends = {e.text for e in root.findall("test_depend")}
    assert {"ament_copyright", "ament_flake8", "ament_pep257", "python3-pytest"} <= test_depends


def test_package_versions_agree() -> None:
    """package.xml, setup.py and dsg_ros.__version__ carry one version."""
    import dsg_ros

    xml_version = ET.parse(REPO / "package.xml").getroot().findtext("version")
    setup_py = (REPO / "setup.py").read_text()
    assert f'version="{xml_version}"' in setup_py
    assert dsg_ros.__version__ == xml_version


def test_ament_marker_exists() -> None:
    assert (REPO / "resource" / PACKAGE).is_file()


def test_cli_help_exits_zero() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dsg_ros.cli", "--help"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage: dsg-ros" in proc.stdout
