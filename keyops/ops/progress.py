"""Progress of long jobs (re-encryption, migration): one event type and a terminal bar.

The library reports through a plain callable, ``Callable[[ProgressEvent], None]``,
called from the job's coordinating thread only, so a callback needs no lock.
The CLI turns events into a one-line bar with rate and ETA on stderr; the
Ansible modules ignore them. Events carry counts and names of phases, never a
secret's name or value.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import TextIO


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """Where a job stands.

    ``done`` counts items finished by the job so far, including those a
    previous, interrupted run finished (``resumed_from`` of them), so the bar
    starts where the checkpoint stands while the rate counts only this run.
    ``total`` is the number of items the job found when it started (items
    created meanwhile can make ``done`` pass it); 0 when not known yet.
    """

    job_id: str
    tenant: str
    phase: str  # "reencrypt", "verify", "migrate", "purge"
    done: int
    total: int
    resumed_from: int = 0
    elapsed: float = 0.0  # seconds since this run started the phase

    @property
    def rate(self) -> float:
        """Items per second finished by this run."""
        if self.elapsed <= 0:
            return 0.0
        return max(0, self.done - self.resumed_from) / self.elapsed

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate; None while the rate is unknown."""
        rate = self.rate
        if rate <= 0 or self.total <= 0:
            return None
        return max(0, self.total - self.done) / rate

    @property
    def fraction(self) -> float:
        if self.total <= 0:
            return 0.0
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[ProgressEvent], None]


class PhaseClock:
    """Builds events for one phase of a job, timed from the phase's start."""

    def __init__(self, callback: ProgressCallback | None, job_id: str, tenant: str, phase: str,
                 total: int, resumed_from: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.callback = callback
        self.job_id = job_id
        self.tenant = tenant
        self.phase = phase
        self.total = total
        self.resumed_from = resumed_from
        self.clock = clock
        self.started = clock()

    def report(self, done: int) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(self.job_id, self.tenant, self.phase, done, self.total,
                                        self.resumed_from, self.clock() - self.started))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def render(event: ProgressEvent, width: int = 28) -> str:
    """One line: ``reencrypt [#####.....] 1200/10000  12% 850/s ETA 00:10``."""
    filled = int(event.fraction * width)
    bar = "#" * filled + "." * (width - filled)
    percent = f"{event.fraction * 100:3.0f}%" if event.total else "  ?%"
    total = str(event.total) if event.total else "?"
    return (f"{event.phase} [{bar}] {event.done}/{total} {percent} "
            f"{event.rate:,.0f}/s ETA {format_duration(event.eta)}")


class ProgressBar:
    """A ``ProgressCallback`` drawing one self-overwriting line on a terminal stream.

    Redraws at most every ``min_interval`` seconds (and always at a phase's
    last item), so 10,000 events cost a few hundred writes.
    """

    def __init__(self, stream: TextIO | None = None, min_interval: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.clock = clock
        self._last_draw = float("-inf")
        self._phase: str | None = None
        self._width = 0

    def __call__(self, event: ProgressEvent) -> None:
        now = self.clock()
        new_phase = event.phase != self._phase
        if new_phase and self._phase is not None:
            self.stream.write("\n")
            self._width = 0
        finished = event.total > 0 and event.done >= event.total
        if not (new_phase or finished or now - self._last_draw >= self.min_interval):
            return
        self._phase = event.phase
        self._last_draw = now
        line = render(event)
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + pad)
        self.stream.flush()

    def close(self) -> None:
        """End the line, so that what follows starts on a fresh one."""
        if self._phase is not None:
            self.stream.write("\n")
            self.stream.flush()
            self._phase = None
