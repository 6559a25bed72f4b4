"""The online pipeline: odometry buffering, voxel hashing, keyframes, the sliding window, calibration."""

from dsg_ros.mapping.mapper import KeyframePolicy, Mapper, MapperConfig, TickResult
from dsg_ros.mapping.window import Window, WindowConfig

__all__ = ["KeyframePolicy", "Mapper", "MapperConfig", "TickResult", "Window", "WindowConfig"]
