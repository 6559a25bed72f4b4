"""Odometry buffer: validation, bounded history, SE(3) interpolation at cloud stamps."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

import numpy as np

from dsg_ros import se3


@dataclass(frozen=True)
class OdometryLimits:
    """What counts as bad odometry.

    A sample is rejected when its stamp does not increase by at least
    ``min_interval_s``, its quaternion is not unit (beyond round-off), or it
    jumps further than ``max_speed_m_s`` / ``max_rate_rad_s`` would allow
    since the previous sample (a reset or a corrupt message; feeding it in
    would tear the map apart).
    """

    max_speed_m_s: float = 10.0
    max_rate_rad_s: float = 6.0
    history_s: float = 30.0
    # A cloud stamped this little after the newest sample is placed by
    # extrapolating the last motion instead of waiting for the next sample:
    # LiDAR and odometry are rarely synchronized, and waiting for 50 Hz
    # odometry added ~16 ms to every cloud. 0 waits always.
    max_extrapolation_s: float = 0.03
    # Closer samples are duplicates: the jump check's slack over so short a
    # time would admit any speed, and a velocity derived from them is noise.
    min_interval_s: float = 1e-4


class OdometryBuffer:
    """Time-ordered ``T_odom_base`` samples; rejects bad ones with a reason."""

    def __init__(self, limits: OdometryLimits = OdometryLimits()) -> None:
        self.limits = limits
        self._stamps: deque[float] = deque()
        self._poses: deque[np.ndarray] = deque()

    def add(self, stamp: float, T_odom_base: np.ndarray) -> str | None:
        """Append a sample; returns None when accepted, else why it was not."""
        pose = se3.normalized(T_odom_base)
        if not np.isfinite(stamp):
            return f"odometry stamp {stamp} is not finite"
        if pose is None:
            return f"odometry pose {np.asarray(T_odom_base).tolist()} is not finite or has a non-unit quaternion"
        if self._stamps:
            last_stamp, last_pose = self._stamps[-1], self._poses[-1]
            if stamp <= last_stamp and self._isolated():
                # A lone sample far ahead that nothing confirmed (a bad clock):
                # dropped, or it would refuse every later sample until a reset.
                self._stamps.pop()
                self._poses.pop()
                return self.add(stamp, T_odom_base)
            if stamp < last_stamp + self.limits.min_interval_s:
                return f"odometry stamp {stamp:.9f} is not after the previous one ({last_stamp:.9f}) by at least {self.limits.min_interval_s} s"
            dt = stamp - last_stamp
            # Distance between the positions and the angle between the
            # rotations: a plain check for a 50 Hz stream (the SE(3) log
            # cost ~0.25 ms per sample, 0.8 s per simulated minute).
            step = float(np.linalg.norm(pose[4:] - last_pose[4:]))
            turn = _angle(pose, last_pose)
            # Allow a little slack for the first sample after a long gap.
            if step > self.limits.max_speed_m_s * dt + 0.05 or turn > self.limits.max_rate_rad_s * dt + 0.05:
                return f"odometry jumps {step:.2f} m / {np.degrees(turn):.1f} deg in {dt:.3f} s; beyond the configured limits"
        self._stamps.append(float(stamp))
        self._poses.append(pose)
        while self._stamps and self._stamps[-1] - self._stamps[0] > self.limits.history_s:
            self._stamps.popleft()
            self._poses.popleft()
        return None

    def _isolated(self) -> bool:
        """Whether the newest sample is the only one, or follows the one before it by more than the history."""
        return len(self._stamps) == 1 or self._stamps[-1] - self._stamps[-2] > self.limits.history_s

    @property
    def latest_stamp(self) -> float | None:
        return self._stamps[-1] if self._stamps else None

    def covers(self, stamp: float) -> bool:
        """Whether :meth:`interpolate` can place ``stamp`` now (interpolated or
        extrapolated at most ``max_extrapolation_s`` past the newest sample)."""
        return bool(self._stamps) and stamp <= self._stamps[-1] + (self.limits.max_extrapolation_s if len(self._stamps) >= 2 else 0.0)

    @property
    def earliest_stamp(self) -> float | None:
        return self._stamps[0] if self._stamps else None

    def interpolate(self, stamp: float) -> np.ndarray | None:
        """``T_odom_base`` (7,) at ``stamp`` (geodesic between neighbours, or
        along the last motion just past the newest sample: see ``covers``),
        or None outside that span."""
        if not self._stamps or stamp < self._stamps[0] or not self.covers(stamp):
            return None
        if stamp > self._stamps[-1]:
            t0, t1 = self._stamps[-2], self._stamps[-1]
            p0, p1 = self._poses[-2], self._poses[-1]
            # Past the newest sample, move no faster than the limits allow: a
            # short last segment with a noisy step would otherwise fling the
            # pose far away.
            ahead, step, turn = stamp - t1, float(np.linalg.norm(p1[4:] - p0[4:])), _angle(p0, p1)
            fastest = 1.0 + min(self.limits.max_speed_m_s * ahead / max(step, 1e-300), self.limits.max_rate_rad_s * ahead / max(turn, 1e-300))
            return se3.interpolate(p0, p1, min((stamp - t0) / (t1 - t0), fastest))
        i = bisect_left(self._stamps, stamp)
        if self._stamps[i] == stamp:
            return self._poses[i].copy()
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        return se3.interpolate(self._poses[i - 1], self._poses[i], (stamp - t0) / (t1 - t0))

    def velocity(self, stamp: float) -> np.ndarray:
        """Body twist rate (6,) = (ρ̇, ω̇) of the odometry segment that places
        ``stamp`` (the one ending at the first sample at or after it; the last
        one past the newest sample): the same segment ``interpolate`` used,
        so the velocity never needs a sample that has not arrived. Zero with
        fewer than two samples. Capped at the limits: a short segment with a
        noisy step is not a fast motion."""
        if len(self._stamps) < 2:
            return np.zeros(6)
        i = min(max(bisect_left(self._stamps, stamp), 1), len(self._stamps) - 1)
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        twist = se3.log(se3.between(self._poses[i - 1], self._poses[i])) / (t1 - t0)
        for part, limit in ((twist[:3], self.limits.max_speed_m_s), (twist[3:], self.limits.max_rate_rad_s)):
            norm = float(np.linalg.norm(part))
            if norm > limit:
                part *= limit / norm
        return twist

    def clear(self) -> None:
        self._stamps.clear()
        self._poses.clear()


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad) between the rotations of two poses (7,)."""
    return 2.0 * math.acos(min(1.0, abs(float(np.dot(a[:4], b[:4])))))
