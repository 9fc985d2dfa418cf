"""The fan-out over tenants: results in order, the input pulled as workers free up, each tenant let go."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from keyops.errors import JobFailed
from keyops.ops.fanout import fan_out


class _Front:
    def __init__(self) -> None:
        self.done: list[str] = []
        self._lock = threading.Lock()

    def done_with(self, tenant: str) -> None:
        with self._lock:
            self.done.append(tenant)


def test_results_come_in_the_order_given_and_each_tenant_is_let_go() -> None:
    k = _Front()

    def work(t: str) -> str:
        time.sleep(0.002 * (int(t[1:]) % 3))  # finish out of order
        return t.upper()

    names = [f"t{i}" for i in range(40)]
    out = list(fan_out(names, work, workers=4, k=k, tenant_of=lambda t: t))  # type: ignore[arg-type]
    assert out == [(t, t.upper()) for t in names]
    assert sorted(k.done) == sorted(names)


def test_the_input_is_pulled_as_it_goes_never_whole() -> None:
    pulled = [0]
    most_ahead = [0]
    yielded = [0]

    def names() -> Iterator[str]:
        for i in range(1000):
            pulled[0] += 1
            most_ahead[0] = max(most_ahead[0], pulled[0] - yielded[0])
            yield f"t{i}"

    for _ in fan_out(names(), lambda t: t, workers=3):
        yielded[0] += 1
    assert yielded[0] == 1000
    assert most_ahead[0] <= 2 * 3 + 1  # a window of twice the workers, whatever the number of tenants


def test_a_stalled_tenant_stops_the_run_with_a_clear_error() -> None:
    release = threading.Event()

    def work(t: str) -> str:
        if t == "t1":
            release.wait(5)
        return t

    with pytest.raises(JobFailed, match="stalled"):
        list(fan_out([f"t{i}" for i in range(5)], work, workers=2, stall=0.2))
    release.set()


def test_an_error_raised_by_the_work_stops_the_run() -> None:
    def work(t: str) -> Any:
        if t == "t3":
            raise ValueError("boom")
        return t

    with pytest.raises(ValueError, match="boom"):
        list(fan_out([f"t{i}" for i in range(10)], work, workers=2))
