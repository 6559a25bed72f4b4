"""The mapping session: the one per-tick protocol the node and the replay share.

A real Mapper (small window, compiled once for the module) maps a short
simulated run; its learning step is replaced by a fake (``Mapper.learn`` is
what the session calls), so the tests control when a step finishes and what
theta it returns, and no calibration kernel has to compile. Real learning
through the session is covered by test_mapper.py and test_calibration.py,
whose runs go through ``drive()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from dsg_ros.learn import calibration as cal
from dsg_ros.mapping import Mapper, MapperConfig, MappingSession, SessionConfig, Step, TickResult, WindowConfig
from dsg_ros.mapping.calibrator import CalibrationConfig
from dsg_ros.tools.sim import LidarConfig, SimConfig, SimData, simulate

WINDOW = WindowConfig(keyframes=4, max_voxels=1024, max_observations_per_keyframe=400, max_anchors_per_keyframe=200)


@pytest.fixture(scope="module")
def sim() -> SimData:
    return simulate(SimConfig(duration_s=12.0, lidar=LidarConfig(azimuths=256), seed=0))


@pytest.fixture(scope="module")
def compiled(sim: SimData) -> Mapper:
    """Calibration due every 2nd keyframe; its kernels are never compiled (learning is faked)."""
    config = MapperConfig(
        window=WINDOW,
        voxel_size=0.4,
        calibration=CalibrationConfig(every_keyframes=2),
        T_base_sensor=tuple(float(v) for v in sim.T_base_sensor),
        refine_iterations=4,
    )
    mapper = Mapper(config)
    mapper.calibrator.warm_up = lambda *_: None  # type: ignore[method-assign]  # learning is stubbed in these tests: skip compiling it
    mapper.warm_up()
    return mapper


@pytest.fixture
def mapper(compiled: Mapper) -> Mapper:
    compiled.reset()
    compiled.set_theta(cal.zero_theta())
    return compiled


def _theta(k: int) -> cal.HostTheta:
    """A theta told apart from the others by its observation noise scale."""
    return {**cal.as_host(cal.zero_theta()), "log_sigma_obs": np.asarray(0.01 * k)}


def _label(theta: cal.AnyTheta) -> int:
    return int(round(100 * float(theta["log_sigma_obs"])))


def _steps(session: MappingSession, sim: SimData) -> Iterator[Step]:
    """Feed the run's events to the session's mapper, one step per cloud, as ``drive()`` does."""
    for kind, stamp, payload in sim.events():
        if kind == "odom":
            session.mapper.add_odometry(stamp, payload)
        elif kind == "cloud":
            session.mapper.add_cloud(stamp, payload)
            yield session.step()


def _record(monkeypatch: pytest.MonkeyPatch, mapper: Mapper, calls: list[str], *names: str) -> None:
    """Append each named Mapper method's name to ``calls`` when it is called."""
    for name in names:
        method = getattr(mapper, name)

        def wrapped(*args, _name: str = name, _method: Callable = method, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(mapper, name, wrapped)


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_inline_calibration_runs_exactly_when_due_in_the_protocols_order(mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch):
    learned: list[int] = []

    def learn(_snapshot) -> cal.HostTheta:
        learned.append(len(learned) + 1)
        return _theta(learned[-1])

    monkeypatch.setattr(mapper, "learn", learn)
    calls: list[str] = []
    _record(monkeypatch, mapper, calls, "tick", "calibration_snapshot", "set_theta", "marginalize", "refine")
    seen: list[int] = []  # the theta each tick ran with
    tick = mapper.tick

    def labelled_tick() -> TickResult:
        seen.append(_label(mapper.theta))
        return tick()

    monkeypatch.setattr(mapper, "tick", labelled_tick)
    session = MappingSession(mapper, publish=lambda _: calls.append("publish"))
    due, in_effect = 0, 0
    for step in _steps(session, sim):
        protocol, calls[:] = list(calls), []
        assert seen[-1] == in_effect, "each tick runs with the theta the last calibration learned"
        if step.result.calibration_due:
            due += 1
            assert step.calibration_ms is not None and step.calibration_ms >= 0
            assert protocol == ["tick", "publish", "calibration_snapshot", "set_theta", "marginalize", "refine"]
            assert _label(mapper.theta) == learned[-1], "the learned theta is applied inside the step"
            in_effect = learned[-1]
        else:
            assert step.calibration_ms is None
            assert protocol == ["tick", "publish", "marginalize", "refine"]
        assert not step.theta_applied, "inline: nothing is left for the next step to apply"
    assert due >= 3 and len(learned) == due


def test_calibration_off_never_learns(mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(mapper, "learn", lambda _: pytest.fail("learned with calibration off"))
    for config in (SessionConfig(calibrate=False), SessionConfig(calibrate=False, learn_in_background=True)):
        session = MappingSession(mapper, config)
        steps = list(_steps(session, sim))
        assert any(s.result.calibration_due for s in steps)
        assert all(s.calibration_ms is None and not s.theta_applied for s in steps)
        assert not session.calibrating
        mapper.reset()


class _BlockingLearn:
    """A fake ``Mapper.learn`` that holds each step until released, counting how many run at once."""

    def __init__(self, fail_first: bool = False) -> None:
        self.release = threading.Semaphore(0)
        self.started = 0
        self.running = 0
        self.most_at_once = 0
        self.fail_first = fail_first
        self._lock = threading.Lock()

    def __call__(self, _snapshot) -> cal.HostTheta:
        with self._lock:
            self.started += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            k = self.started
        try:
            assert self.release.acquire(timeout=30.0), "never released"
            if self.fail_first and k == 1:
                raise RuntimeError("learning exploded")
            return _theta(k)
        finally:
            with self._lock:
                self.running -= 1


def test_background_learns_one_step_at_a_time_and_applies_its_theta_at_the_next_step(
    mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch
):
    learn = _BlockingLearn()
    monkeypatch.setattr(mapper, "learn", learn)
    seen: list[int] = []
    tick = mapper.tick

    def labelled_tick() -> TickResult:
        seen.append(_label(mapper.theta))
        return tick()

    monkeypatch.setattr(mapper, "tick", labelled_tick)
    session = MappingSession(mapper, SessionConfig(learn_in_background=True))
    try:
        steps = _steps(session, sim)
        # The first due tick hands a snapshot to the worker; the step does not wait for it.
        while not (step := next(steps)).result.calibration_due:
            pass
        assert step.calibration_ms is None
        _wait(lambda: learn.started == 1)
        assert session.calibrating
        # Due again while that step runs: skipped, not queued, and nothing applied.
        skipped = 0
        while skipped < 2:
            step = next(steps)
            skipped += step.result.calibration_due
            assert not step.theta_applied
        assert learn.started == 1 and session.calibrating
        learn.release.release()
        _wait(lambda: not session.calibrating)
        step = next(steps)
        assert step.theta_applied and seen[-1] == 1, "the worker's theta is applied before the next tick"
        assert _label(mapper.theta) == 1
        # From then on each due tick (none in flight) starts a step again.
        for _ in steps:
            learn.release.release()
        _wait(lambda: not session.calibrating)
        assert learn.started >= 3 and learn.most_at_once == 1
    finally:
        session.close()


def test_the_period_skips_steps_that_come_due_sooner(mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch):
    learn = _BlockingLearn()
    for _ in range(100):
        learn.release.release()
    monkeypatch.setattr(mapper, "learn", learn)
    session = MappingSession(mapper, SessionConfig(learn_in_background=True, calibration_period_s=3600.0))
    try:
        due = 0
        for step in _steps(session, sim):
            due += step.result.calibration_due
            _wait(lambda: not session.calibrating)
        assert due >= 3 and learn.started == 1
    finally:
        session.close()


def test_a_failing_background_step_is_reported_and_mapping_goes_on(mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch):
    learn = _BlockingLearn(fail_first=True)
    for _ in range(100):
        learn.release.release()
    monkeypatch.setattr(mapper, "learn", learn)
    reports: list[str] = []
    session = MappingSession(mapper, SessionConfig(learn_in_background=True), report=reports.append)
    try:
        applied, keyframes_after_failure = 0, 0
        for step in _steps(session, sim):
            _wait(lambda: not session.calibrating)
            applied += step.theta_applied
            if reports and step.result.keyframes_added:
                keyframes_after_failure += 1
        assert len(reports) == 1
        assert "calibration step failed" in reports[0] and "learning exploded" in reports[0]
        # The worker lived on: later steps were learned and applied, and mapping continued.
        assert learn.started >= 2 and applied >= 1 and keyframes_after_failure > 0
        assert _label(mapper.theta) >= 2
    finally:
        session.close()


def test_a_reset_waits_for_a_calibration_step_in_flight(mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch):
    """The node resets from its ticking thread while the worker may be
    learning: the reset must not clear the calibrator under a step that then
    leaves a candidate (learned before the reset) behind in it."""
    session = MappingSession(mapper, SessionConfig(calibrate=False))
    for step in _steps(session, sim):
        if step.result.keyframes_added and len(mapper.window.keyframes) >= 2:
            break
    snapshot = mapper.calibration_snapshot()
    in_step = threading.Event()

    def slow_step(theta: cal.AnyTheta) -> cal.HostTheta:
        in_step.set()
        time.sleep(0.3)
        return _theta(7)

    monkeypatch.setattr(mapper.calibrator, "step", slow_step)
    worker = threading.Thread(target=mapper.learn, args=(snapshot,))
    worker.start()
    assert in_step.wait(5.0)
    mapper.reset()
    worker.join(5.0)
    assert not mapper.calibrator.snapshots and mapper.calibrator._candidate is None


def test_close_stops_the_worker(mapper: Mapper):
    def workers() -> int:
        return sum(t.name == "dsg_calibration" for t in threading.enumerate())

    before = workers()
    session = MappingSession(mapper, SessionConfig(learn_in_background=True))
    assert workers() == before + 1
    session.close()
    assert workers() == before
    MappingSession(mapper).close()  # inline: no thread, nothing to stop


def test_refine_runs_after_publishing_until_interrupted(mapper: Mapper, sim: SimData, monkeypatch: pytest.MonkeyPatch):
    iterations: list[int] = []
    refine = mapper.refine

    def counted_refine(interrupt: Callable[[], bool] | None = None) -> int:
        iterations.append(refine(interrupt))
        return iterations[-1]

    monkeypatch.setattr(mapper, "refine", counted_refine)
    config = SessionConfig(calibrate=False)

    asked = 0

    def interrupt() -> bool:
        nonlocal asked
        asked += 1
        return True

    steps = list(_steps(MappingSession(mapper, config, interrupt=interrupt), sim))
    assert asked >= len(steps) and not any(iterations)
    assert all(s.refine_ms is None for s in steps)

    mapper.reset()
    iterations.clear()
    steps = list(_steps(MappingSession(mapper, config, interrupt=lambda: False), sim))
    assert max(iterations) > 1, "uninterrupted, refine iterates while the window improves"
    assert [s.refine_ms is not None for s in steps] == [n > 0 for n in iterations]


def test_publish_sees_the_tick_before_marginalization(mapper: Mapper, sim: SimData):
    """The published window is the tick's: a full window is marginalized only after it was published."""
    published: list[tuple[TickResult, int]] = []
    session = MappingSession(mapper, SessionConfig(calibrate=False), publish=lambda r: published.append((r, len(mapper.window.keyframes))))
    marginalized = [s for s in _steps(session, sim) if s.marginalization_ms is not None]
    assert marginalized
    for result, window_at_publish in published:
        assert window_at_publish == len(result.window_stamps)
    assert max(n for _, n in published) == WINDOW.keyframes
