"""What the node would publish, written to a rosbag2 while replaying (``dsg-ros replay --record``).

Mirrors ``dsg_ros.ros.node``'s publications under its name (``/dsg_mapper``):
``~/odometry`` (the corrected pose of every consumed cloud, at its stamp),
``/tf`` map → odom, and on ticks that solved, ``~/poses`` (the window) and
``~/path`` (every keyframe's latest estimate); ``~/voxels`` (the whole map,
one CUBE_LIST) at most ``voxel_rate_hz`` in bag time. Messages are stamped,
and received, at the stamp of the newest cloud their tick consumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dsg_ros.bag import build
from dsg_ros.bag.writer import BagWriter
from dsg_ros.mapping import Mapper, TickResult
from dsg_ros.msgs import ODOMETRY, TF, sec_to_ns

POSE_ARRAY = "geometry_msgs/msg/PoseArray"
PATH = "nav_msgs/msg/Path"
MARKER_ARRAY = "visualization_msgs/msg/MarkerArray"


@dataclass(frozen=True)
class RecordConfig:
    node: str = "/dsg_mapper"  # topic prefix: the node's ~/
    map_frame: str = "map"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    # The node's default: a 30k-voxel map takes ~0.15 s to build as rosbags
    # messages, so a higher rate would dominate a long replay.
    voxel_rate_hz: float = 0.5
    voxel_color: str = "height"  # or "count", as the node's voxel_color

    def __post_init__(self) -> None:
        if not self.voxel_rate_hz > 0.0:
            raise ValueError(f"voxel_rate_hz must be positive, got {self.voxel_rate_hz}")
        if self.voxel_color not in ("height", "count"):
            raise ValueError(f"voxel_color must be 'height' or 'count', got {self.voxel_color!r}")


class Recorder:
    """``on_tick(result)`` after every tick, ``finish()`` after the last."""

    def __init__(self, writer: BagWriter, mapper: Mapper, config: RecordConfig = RecordConfig()) -> None:
        self.writer, self.mapper, self.config = writer, mapper, config
        self._path: dict[float, Any] = {}  # keyframe stamp → its PoseStamped (latest estimate)
        self._stamp_ns: int | None = None  # newest consumed cloud
        self._voxels_ns: int | None = None  # last map written

    def _topic(self, name: str) -> str:
        return f"{self.config.node}/{name}"

    def on_tick(self, result: TickResult) -> None:
        if not result.cloud_stamps:
            return  # nothing consumed: no stamp to publish at (the node would repeat the last state)
        c = self.config
        for stamp, T_map_base in zip(result.cloud_stamps, result.cloud_poses):
            if np.all(np.isfinite(T_map_base)):
                ns = sec_to_ns(stamp)
                self.writer.write(self._topic("odometry"), ODOMETRY, build.odometry(ns, c.map_frame, c.base_frame, T_map_base), ns)
        self._stamp_ns = ns = sec_to_ns(result.cloud_stamps[-1])
        if result.T_map_odom is not None:
            self.writer.write("/tf", TF, build.tf_message([(c.map_frame, c.odom_frame, ns, result.T_map_odom)]), ns)
        if result.solve is not None or result.keyframes_added:
            # Only window keyframes move: the others' entries are reused.
            self._path.update((t, build.pose_stamped(sec_to_ns(t), c.map_frame, T)) for t, T in zip(result.window_stamps.tolist(), result.window_poses))
            self.writer.write(self._topic("poses"), POSE_ARRAY, build.pose_array(ns, c.map_frame, result.window_poses), ns)
            self._write_path(ns)
        if self._voxels_ns is None or ns - self._voxels_ns >= 1e9 / c.voxel_rate_hz:
            self._write_voxels(ns)

    def finish(self) -> None:
        """The final map at the last cloud's stamp (unless just written), so a
        bag played to its end shows the whole map; the path is current after
        every solve already."""
        if self._stamp_ns is None:
            return
        if self._voxels_ns != self._stamp_ns:
            self._write_voxels(self._stamp_ns)

    def _write_path(self, ns: int) -> None:
        entries = [self._path[t] for t in sorted(self._path)]
        self.writer.write(self._topic("path"), PATH, build.path(ns, self.config.map_frame, entries), ns)

    def _write_voxels(self, ns: int) -> None:
        _, centers, counts = self.mapper.voxels()
        values = centers[:, 2] if self.config.voxel_color == "height" else counts.astype(np.float64)
        markers = build.voxel_markers(ns, self.config.map_frame, centers, values, self.mapper.config.voxel_size)
        self.writer.write(self._topic("voxels"), MARKER_ARRAY, markers, ns)
        self._voxels_ns = ns
