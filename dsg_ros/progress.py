"""A one-line progress bar on stderr: fraction done, items per second, ETA.

Redrawn in place (carriage return) at most every ``interval_s`` so that a
fast loop spends nothing on it; a stream that is not a terminal gets a plain
line every ``log_interval_s`` instead (CI logs stay readable).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``bar.update(fraction, items)`` from the loop, ``bar.close()`` after it.

    ``fraction`` in [0, 1] says how far the work is (bag time, say), ``items``
    how many things were handled so far (messages), for the rate."""

    def __init__(
        self,
        label: str,
        unit: str = "msg",
        stream: TextIO | None = None,
        enabled: bool = True,
        interval_s: float = 0.25,
        log_interval_s: float = 10.0,
        width: int = 30,
    ) -> None:
        self.label, self.unit, self.width = label, unit, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if self.tty else log_interval_s
        self.started = time.perf_counter()
        self._last_draw = -float("inf")
        self._fraction, self._items = 0.0, 0
        self._note = ""

    def update(self, fraction: float, items: int, note: str = "") -> None:
        """``note``: shown after the ETA (the training loss, say)."""
        self._fraction, self._items, self._note = min(max(fraction, 0.0), 1.0), items, note
        now = time.perf_counter()
        if self.enabled and now - self._last_draw >= self.interval_s:
            self._last_draw = now
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(time.perf_counter())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        """The text of the bar at time ``now`` (``time.perf_counter()``)."""
        elapsed = max(now - self.started, 1e-9)
        filled = int(round(self.width * self._fraction))
        rate = self._items / elapsed
        if self._fraction >= 1.0:
            eta = "done"
        elif self._fraction > 0.0:
            eta = "ETA " + _clock(elapsed * (1.0 - self._fraction) / self._fraction)
        else:
            eta = "ETA --:--"
        return (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {100.0 * self._fraction:5.1f} % "
            f"{rate:7.0f} {self.unit}/s  {_clock(elapsed)} {eta}" + (f"  {self._note}" if self._note else "")
        )

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()


def _clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
