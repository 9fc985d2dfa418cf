"""keyops.ops.progress: events, their rate and ETA, and the terminal bar (with a hand-driven clock)."""

from __future__ import annotations

import io

import pytest

from keyops.ops.progress import PhaseClock, ProgressBar, ProgressEvent, format_duration, render


def _event(done: int, total: int = 100, resumed_from: int = 0, elapsed: float = 10.0, phase: str = "reencrypt") \
        -> ProgressEvent:
    return ProgressEvent("job", "acme", phase, done, total, resumed_from, elapsed)


def test_rate_counts_only_this_run() -> None:
    event = _event(done=60, resumed_from=40, elapsed=10.0)
    assert event.rate == 2.0
    assert event.eta == 20.0
    assert event.fraction == 0.6


def test_unknown_rate_total_and_overshoot() -> None:
    assert _event(done=0, elapsed=0.0).rate == 0.0 and _event(done=0, elapsed=0.0).eta is None
    assert _event(done=5, total=0).eta is None and _event(done=5, total=0).fraction == 0.0
    assert _event(done=120, total=100).fraction == 1.0 and _event(done=120, total=100).eta == 0.0


@pytest.mark.parametrize(("seconds", "text"), [(None, "--:--"), (0, "00:00"), (59.6, "01:00"), (61, "01:01"),
                                               (3600 + 62, "1:01:02")])
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_render() -> None:
    line = render(_event(done=25, total=100, elapsed=5.0), width=20)
    assert line == "reencrypt [#####...............] 25/100  25% 5/s ETA 00:15"
    assert "?/s" not in render(_event(done=3, total=0))
    assert " 3/? " in render(_event(done=3, total=0))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bar_throttles_redraws_but_always_draws_the_end_and_new_phases() -> None:
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(stream, min_interval=1.0, clock=clock)
    for done in range(1, 11):
        clock.now += 0.25
        bar(_event(done=done, total=10))
    draws = stream.getvalue().count("\r")
    assert draws == 4  # first, two throttled ticks, last
    assert stream.getvalue().endswith("10/10 100% 1/s ETA 00:00")
    bar(_event(done=1, total=10, phase="verify"))
    bar.close()
    text = stream.getvalue()
    assert "\nverify [" in text.replace("\r", "") and text.endswith("\n")
    assert text.count("\n") == 2


def test_bar_pads_a_shorter_line_over_a_longer_one() -> None:
    stream, clock = io.StringIO(), _Clock()
    bar = ProgressBar(stream, min_interval=0.0, clock=clock)
    clock.now = 1.0
    bar(_event(done=5, total=1000, elapsed=0.001))
    bar(_event(done=6, total=1000, elapsed=100.0))
    first, second = stream.getvalue().split("\r")[1:]
    assert len(second) >= len(first)


def test_close_without_events_writes_nothing() -> None:
    stream = io.StringIO()
    ProgressBar(stream).close()
    assert stream.getvalue() == ""


def test_phase_clock_builds_events() -> None:
    seen: list[ProgressEvent] = []
    clock = _Clock()
    phase = PhaseClock(seen.append, "job", "acme", "migrate", total=10, resumed_from=4, clock=clock)
    clock.now = 2.0
    phase.report(6)
    assert seen == [ProgressEvent("job", "acme", "migrate", 6, 10, 4, 2.0)]
    PhaseClock(None, "job", "acme", "migrate", 10).report(1)  # no callback: nothing to do
