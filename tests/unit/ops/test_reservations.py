"""How many DEK uses a process asks for next (pure; the real usage document is in tests/integration)."""

from __future__ import annotations

import itertools
import math

import pytest

from keyops.ops import reservations
from keyops.ops.reservations import FIRST_RESERVATION, Reservation, next_block

CAP = 1_000_000  # the dev inventory's payments policy


def spent(block: int, used: int, start: int = 0) -> Reservation:
    """A reservation of ``block`` uses from ``start`` of which ``used`` were drawn."""
    counter = itertools.count(start)
    for _ in range(used):
        next(counter)
    return Reservation(1, start, start + block, block, 0.0, counter, True)


def test_a_process_starts_small() -> None:
    assert next_block(None, CAP) == FIRST_RESERVATION <= 32
    assert CAP // FIRST_RESERVATION > 60_000  # one-shot runs before the cap: not 244 as with 4,096


def test_blocks_double_while_spent_and_shrink_to_demand() -> None:
    assert next_block(spent(16, 16), CAP) == 32
    assert next_block(spent(1024, 1024), CAP) == 2048
    assert next_block(spent(1024, 5), CAP) == FIRST_RESERVATION  # the lease ended with little spent
    assert next_block(spent(1024, 300), CAP) == 600


def test_blocks_stop_at_the_maximum_and_at_a_share_of_the_cap() -> None:
    assert next_block(spent(1 << 20, 1 << 20), 1 << 30) == reservations.MAX_RESERVATION
    assert next_block(spent(16384, 16384), CAP) == CAP // reservations.CAP_SHARE
    assert next_block(spent(4096, 4096), CAP, max_block=4096) == 4096  # a process's own maximum
    assert next_block(None, CAP, max_block=4) == 4
    assert next_block(None, 100) == FIRST_RESERVATION  # a small cap still gets whole first blocks


@pytest.mark.parametrize("n", [1, 100, 10_000, 1_000_000])
def test_a_busy_process_reserves_o_log_n_times(n: int) -> None:
    """Writes of the usage document for ``n`` encryptions in one lease: about log2(n / 16) + n / (cap / 64)."""
    cap = 1 << 30
    r: Reservation | None = None
    writes = done = 0
    while done < n:
        block = next_block(r, cap)
        r = spent(block, block, done)
        writes += 1
        done += block
    assert writes <= math.ceil(math.log2(n / FIRST_RESERVATION + 1)) + 1
    assert done - n < max(n, FIRST_RESERVATION)  # never more than about as many stranded as spent


def test_a_race_lost_to_another_writer_doubles_the_block() -> None:
    assert next_block(None, CAP, lost=1) == 2 * FIRST_RESERVATION
    assert next_block(spent(64, 64), CAP, lost=2) == 512
    assert next_block(None, CAP, lost=1000) == CAP // reservations.CAP_SHARE  # still within the ceiling
    assert next_block(None, CAP, max_block=20, lost=3) == 20


def test_a_stated_demand_sets_the_least_block() -> None:
    assert next_block(None, CAP, demand=100) == 100  # a job's batch, at once
    assert next_block(spent(16, 2), CAP, demand=100) == 100  # and again after a lease with little spent
    assert next_block(spent(256, 256), CAP, demand=100) == 512  # growth still wins when it is larger
    assert next_block(None, CAP, demand=10**9) == CAP // reservations.CAP_SHARE  # within the ceiling
