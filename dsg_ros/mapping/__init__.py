"""The online pipeline: odometry buffering, voxel hashing, keyframes, the sliding window, calibration, the per-tick session."""

from dsg_ros.mapping.mapper import KeyframePolicy, Mapper, MapperConfig, TickDiagnostics, TickResult
from dsg_ros.mapping.session import MappingSession, SessionConfig, Step
from dsg_ros.mapping.window import Window, WindowConfig

__all__ = ["KeyframePolicy", "MappingSession", "Mapper", "MapperConfig", "SessionConfig", "Step", "TickDiagnostics", "TickResult", "Window", "WindowConfig"]
