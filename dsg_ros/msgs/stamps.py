"""``builtin_interfaces/Time`` <-> integer nanoseconds and float seconds.

Works on anything with ``sec`` and ``nanosec`` attributes (an rclpy Time, a
rosbags dataclass). Integer nanoseconds are the exact form; float seconds are
correctly rounded from them.
"""

from __future__ import annotations

import math
from typing import Any

from dsg_ros.msgs.errors import ConversionError

NS_PER_S = 1_000_000_000
_INT32 = 2**31


def stamp_to_ns(t: Any) -> int:
    """Integer nanoseconds of a Time (``sec`` may be negative, ``nanosec`` in [0, 1e9))."""
    return int(t.sec) * NS_PER_S + int(t.nanosec)


def stamp_to_sec(t: Any) -> float:
    """Seconds as float64, correctly rounded (integer nanoseconds divided
    once). Exact to the nanosecond only below ~2²² s (48 days, e.g. sim
    time): at epoch times (~1.7e9 s) float64 resolves ~0.24 µs."""
    return stamp_to_ns(t) / NS_PER_S


def sec_to_ns(s: float) -> int:
    """Nearest integer nanosecond of ``s`` seconds. Splitting off the whole
    seconds first keeps epoch-sized stamps exact (``s * 1e9`` would round to
    ~256 ns above 2⁵³ ns)."""
    s = float(s)
    if not math.isfinite(s):
        raise ConversionError(f"non-finite stamp {s}")
    whole = math.trunc(s)  # s - whole is exact for either sign; floor is not for small negatives
    return whole * NS_PER_S + round((s - whole) * NS_PER_S)


def ns_to_parts(ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` of a Time with ``nanosec`` in [0, 1e9), also for
    negative times; ConversionError if ``sec`` does not fit int32."""
    sec, nanosec = divmod(int(ns), NS_PER_S)
    if not -_INT32 <= sec < _INT32:
        raise ConversionError(f"stamp {ns / NS_PER_S} s does not fit builtin_interfaces/Time (int32 seconds)")
    return sec, nanosec
