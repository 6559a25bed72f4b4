"""Packaging for dsg_ros: one setup.py serves pip (wheel/editable) and colcon (ament_python)."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "dsg_ros"

# The ROS 2 Python wheels on PyPI. Kept in an extra and never in
# install_requires: inside a ROS distro workspace they would shadow the
# distro's own rclpy and message packages.
ROS_WHEELS = [
    "ros-rclpy",
    "ros-sensor-msgs",
    "ros-geometry-msgs",
    "ros-nav-msgs",
    "ros-visualization-msgs",
    "ros-std-srvs",
    "ros-diagnostic-msgs",
    "ros-std-msgs",
    "ros-builtin-interfaces",
    "ros-rcl-interfaces",
    "ros-rosgraph-msgs",
    "ros-rmw-fastrtps-cpp",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description=(
        "Online differentiable mapping: sliding-window SE(3)+voxel factor "
        "graphs solved and calibrated with JAX"
    ),
    maintainer="dsg_ros maintainers",
    maintainer_email="maintainers@users.noreply.r-seed-e861d1ec.example",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        # Globs, so launch files (.launch.py/.xml/.yaml) and configs (yaml, rviz)
        # are installed as they are added.
        (f"share/{PACKAGE}/launch", sorted(glob("launch/*.launch.*"))),
        (f"share/{PACKAGE}/config", sorted(p for p in glob("config/*") if os.path.isfile(p))),
    ],
    install_requires=[
        "numpy",
        "scipy",
        "threadpoolctl",
        "jax",
        "jaxlib",
        "jaxlie",
        "jax_dataclasses",
        "optax",
        "pyyaml",
        "rosbags",
    ],
    extras_require={
        "ros": ROS_WHEELS,
        # JAX with NVIDIA CUDA 12 wheels (driver >= 525; jax's plain `cuda`
        # extra means the same). `cuda13` needs driver >= 580.
        "cuda": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        # Top-view PNGs (run-sim, replay --output, demo): tools only, never
        # needed by the node.
        "plots": ["matplotlib"],
        # Reference solver and odometry (KISS-ICP, bench realdata), and the
        # benches' plots; never runtime dependencies.
        "bench": ["gtsam", "kiss-icp", "matplotlib"],
        # The suite, and `make lint`'s linter and type checker (minor
        # versions pinned: a new release may add checks).
        "test": ["pytest", "hypothesis", "colcon-common-extensions", "setuptools", "ruff>=0.17.6,<0.18", "mypy>=2.4.1,<2.5", "types-PyYAML"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "dsg-ros = dsg_ros.cli:main",
            # The mapping node, for `ros2 run dsg_ros hybrid_node` and launch/hybrid.launch.py.
            "hybrid_node = dsg_ros.ros.node:main",
        ],
    },
)
