"""The per-tick protocol, once, for every driver of a Mapper: the ROS node, the
bag replay, the simulator runner and the benches.

One ``MappingSession.step()`` per tick: apply a calibration learned since the
last step, tick, hand the result to the driver (``publish``), start a
calibration step if one is due, make room for the next keyframe, and refine
the window until done or interrupted. Inputs go straight to the mapper
(``session.mapper.add_odometry`` / ``add_reference`` / ``add_cloud``): they
are thread-safe enqueues that any callback may call while a step runs.

Calibration runs either inline (replay, sim: deterministic, the step waits
for it) or in a worker thread (the node: a tick never waits for learning).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from dsg_ros.learn import calibration as cal
from dsg_ros.mapping.calibrator import Snapshot
from dsg_ros.mapping.mapper import Mapper, TickResult

log = logging.getLogger("dsg_ros.mapping")


@dataclass(frozen=True)
class SessionConfig:
    """When and where a session runs the calibration steps its mapper says are due."""

    calibrate: bool = True
    # Learn in a worker thread and apply the new theta at the next step
    # (the node), instead of inside the step that found it due (replay).
    learn_in_background: bool = False
    # Least time.monotonic() seconds between two calibration steps; a step
    # that comes due sooner is skipped, not queued. Wall-clock, so keep 0
    # where a run must be repeatable.
    calibration_period_s: float = 0.0

    def __post_init__(self) -> None:
        if self.calibration_period_s < 0:
            raise ValueError(f"calibration_period_s must be >= 0, got {self.calibration_period_s}")


@dataclass(frozen=True)
class Step:
    """What one ``MappingSession.step`` did; times in milliseconds, None where that part did not run."""

    result: TickResult
    theta_applied: bool  # a theta learned in the background was applied before this tick
    calibration_ms: float | None  # an inline calibration step (snapshot, learn, apply)
    marginalization_ms: float | None  # a keyframe was marginalized after the tick
    refine_ms: float | None  # refine ran at least one LM iteration


class MappingSession:
    """Drives one Mapper tick by tick: the only place that orders tick, calibration, marginalization and refinement.

    ``publish`` gets each tick's result before anything else runs after the
    tick, so what a driver publishes never waits for calibration,
    marginalization or refinement. ``interrupt`` is asked before each
    refinement iteration (the node: "a cloud is waiting"). ``report`` gets a
    failed background calibration step's traceback; mapping goes on.
    Call ``close()`` when done: it stops the worker thread, if any.
    """

    def __init__(
        self,
        mapper: Mapper,
        config: SessionConfig = SessionConfig(),
        publish: Callable[[TickResult], None] | None = None,
        interrupt: Callable[[], bool] | None = None,
        report: Callable[[str], object] = log.error,
    ) -> None:
        self.mapper = mapper
        self.config = config
        self._publish = publish
        self._interrupt = interrupt
        self._next_calibration = 0.0  # time.monotonic() before which no calibration step starts
        self._worker = _Worker(mapper.learn, report) if config.calibrate and config.learn_in_background else None

    @property
    def calibrating(self) -> bool:
        """Whether a background calibration step is queued or running; once False, the
        theta it learned (if any) is what the next ``step()`` applies."""
        return self._worker is not None and self._worker.busy.is_set()

    def step(self) -> Step:
        """One tick of the protocol; see the module docstring for the order and why."""
        theta = self._worker.take() if self._worker is not None else None
        if theta is not None:
            self.mapper.set_theta(theta)
        result = self.mapper.tick()
        if self._publish is not None:
            self._publish(result)
        calibration_ms, snapshot = None, None
        if self._calibration_starts(result):
            if self._worker is None:
                calibration_ms = self.mapper.calibrate()
            else:
                # Taken here, in the ticking thread: the window must not change while it is copied.
                snapshot = self.mapper.calibration_snapshot()
        # Make room for the next keyframe off the latency path, and only then
        # start learning: the two side by side took ~5x as long as the
        # marginalization alone.
        try:
            started = time.perf_counter()
            marginalized = self.mapper.marginalize()
            marginalization_ms = 1000.0 * (time.perf_counter() - started) if marginalized is not None else None
        finally:
            if snapshot is not None and self._worker is not None:  # even if marginalizing failed: the snapshot was taken before
                self._worker.submit(snapshot)
        # Refine until converged or interrupted; the next tick publishes it.
        started = time.perf_counter()
        refine_ms = 1000.0 * (time.perf_counter() - started) if self.mapper.refine(self._interrupt) else None
        return Step(result, theta is not None, calibration_ms, marginalization_ms, refine_ms)

    def close(self) -> None:
        """Stop the calibration worker (a step in flight finishes first); a no-op inline."""
        if self._worker is not None:
            self._worker.close()

    def _calibration_starts(self, result: TickResult) -> bool:
        """Whether a calibration step starts after this tick: due, on, none in
        flight, and the period since the last one elapsed. In stretches of
        back-to-back keyframes, learning beside every tick and marginalization
        doubled their time on 2 cores: a step due sooner is skipped."""
        if not (self.config.calibrate and result.calibration_due) or self.calibrating:
            return False
        now = time.monotonic()
        if now < self._next_calibration:
            return False
        self._next_calibration = now + self.config.calibration_period_s
        return True


class _Worker:
    """One thread learning from snapshots the ticking thread hands it, one at a time."""

    def __init__(self, learn: Callable[[Snapshot], cal.AnyTheta | None], report: Callable[[str], object]) -> None:
        self._learn = learn
        self._report = report
        self.busy = threading.Event()  # a snapshot is queued or being learned from; only the worker clears it
        self._snapshots: queue.Queue[Snapshot | None] = queue.Queue(maxsize=1)  # None: stop
        self._lock = threading.Lock()
        self._theta: cal.AnyTheta | None = None  # learned, not yet taken; a newer one replaces it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dsg_calibration", daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot) -> None:
        self.busy.set()
        self._snapshots.put_nowait(snapshot)

    def take(self) -> cal.AnyTheta | None:
        with self._lock:
            theta, self._theta = self._theta, None
        return theta

    def close(self) -> None:
        self._stop.set()
        try:
            self._snapshots.put_nowait(None)
        except queue.Full:  # a snapshot is waiting: the worker sees _stop when it takes it
            pass
        self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while True:
            snapshot = self._snapshots.get()
            if snapshot is None or self._stop.is_set():
                return
            try:
                theta = self._learn(snapshot)
                if theta is not None:
                    with self._lock:
                        self._theta = theta
            except Exception:  # a failed step loses that step, never the worker
                self._report("calibration step failed: " + traceback.format_exc(limit=3))
            finally:
                # After the theta is handed over: not busy means nothing is left to take later.
                self.busy.clear()
