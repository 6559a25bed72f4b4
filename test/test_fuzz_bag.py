"""Damaged bags (property-based, ``hypothesis``): truncated, overwritten with
garbage, or with a topic of the wrong type.

Reading must either succeed, every message then converting or raising
ConversionError, or fail with a BagError naming the bag: never another
exception, never a hang. A topic of the wrong type stops a replay before
anything is compiled or written, with the file and topic named.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, strategies as st

from dsg_ros import msgs, se3
from dsg_ros.bag import Bag, BagError, BagWriter, build
from dsg_ros.bag.replay import ReplayConfig, replay

S = msgs.NS_PER_S
STORAGES = ("sqlite3", "mcap")


def _write(path: Path, storage: str, types: dict[str, str] | None = None) -> None:
    """A few messages of each supported type; ``types`` replaces a topic's message type."""
    types = {"/odom": msgs.ODOMETRY, "/points": msgs.POINT_CLOUD, "/scan": msgs.LASER_SCAN, "/tf": msgs.TF, **(types or {})}
    rng = np.random.default_rng(0)
    makers = {
        msgs.ODOMETRY: lambda t: build.odometry(t, "odom", "base_link", se3.exp(rng.normal(size=6))),
        msgs.POINT_CLOUD: lambda t: build.point_cloud(t, "lidar", rng.normal(size=(30, 3))),
        msgs.LASER_SCAN: lambda t: build.laser_scan(t, "lidar", rng.uniform(0.5, 5.0, 16).astype(np.float32), -0.5, 0.05, 0.1, 30.0),
        msgs.TF: lambda t: build.tf_message([("odom", "base_link", t, se3.exp(rng.normal(size=6)))]),
    }
    with BagWriter(path, storage) as w:
        for k in range(4):
            for topic, msgtype in types.items():
                t = (10 + k) * S + len(topic)
                w.write(topic, msgtype, makers[msgtype](t), t)


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    for storage in STORAGES:
        _write(root / storage, storage)
    return {storage: root / storage for storage in STORAGES}


def _convert(m) -> None:
    """A message read from a damaged bag converts, or raises ConversionError."""
    convert: dict[str, Callable[[Any], object]] = {msgs.ODOMETRY: msgs.odometry_from_msg, msgs.POINT_CLOUD: msgs.points_from_cloud,
                                                   msgs.LASER_SCAN: msgs.points_from_scan, msgs.TF: msgs.transforms_from_tf}
    try:
        convert[m.msgtype](m.msg)
    except msgs.ConversionError:
        pass


damages = st.lists(
    st.one_of(
        st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.just(b"")),
        st.tuples(st.just("overwrite"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.just(b"")),
    ),
    min_size=1,
    max_size=3,
)


@given(st.sampled_from(STORAGES), st.sampled_from(["storage", "metadata"]), damages)
def test_a_damaged_bag_reads_or_fails_with_a_bag_error_naming_it(bags: dict[str, Path], tmp_path_factory, storage: str, part: str, damage):
    source = bags[storage]
    work = tmp_path_factory.getbasetemp() / "damaged" / storage
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    (target,) = [p for p in work.iterdir() if (p.name == "metadata.yaml") == (part == "metadata")]
    data = bytearray(target.read_bytes())
    for kind, where, garbage in damage:
        at = int(where * len(data))
        if kind == "truncate":
            del data[at:]
        elif kind == "overwrite":
            data[at : at + len(garbage)] = garbage
        elif data:
            data[min(at, len(data) - 1)] ^= 0xFF
    target.write_bytes(bytes(data))
    try:
        with Bag(work) as bag:
            for m in bag.messages(list(bag.info.topics)):
                _convert(m)
    except BagError as exc:
        assert str(work) in str(exc)


@pytest.mark.parametrize(
    "topic,msgtype,config,named",
    [
        ("/points", msgs.ODOMETRY, ReplayConfig(points_topic="/points"), "topic /points has type nav_msgs/msg/Odometry"),
        ("/scan", msgs.POINT_CLOUD, ReplayConfig(scan_topic="/scan"), "topic /scan has type sensor_msgs/msg/PointCloud2"),
        ("/odom", msgs.LASER_SCAN, ReplayConfig(scan_topic="/scan"), "topic /odom has type sensor_msgs/msg/LaserScan"),
        ("/scan", msgs.LASER_SCAN, ReplayConfig(points_topic="/points", reference_topic="/scan"), "topic /scan has type sensor_msgs/msg/LaserScan"),
    ],
)
def test_a_topic_of_the_wrong_type_stops_the_replay_naming_file_and_topic(tmp_path, topic, msgtype, config, named):
    _write(tmp_path / "bag", "mcap", {topic: msgtype})
    with pytest.raises(BagError, match=named) as err:
        replay(tmp_path / "bag", config, output=tmp_path / "out")
    assert str(tmp_path / "bag") in str(err.value)
    assert not (tmp_path / "out").exists()
