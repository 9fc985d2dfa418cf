"""Running one job per tenant over many tenants: a bounded pool, a bounded window, results in order.

Tenants are independent (each has its own keyring, usage document, lease and
job checkpoints), so their Vault round trips can overlap. ``fan_out`` takes
the tenants as an iterable and pulls from it only as workers free up: at
most ``2 x workers`` tenants are in flight or waiting to be reported, so
10,000 tenants cost the memory of a few dozen, and a generator of names
(an inventory read as it goes, ``list_tenants`` pages) is never held whole.

When a tenant is done, ``Keyops.done_with`` ends its leases and drops what
the process cached for it, so a long run over many tenants does not grow
with them either.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from keyops.errors import JobFailed

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

T = TypeVar("T")
R = TypeVar("R")

#: Tenants handled at once by default by the operations over many tenants. Each
#: tenant's own pool (re-encryption) adds its workers on top; 8 x 4 fit the
#: Vault client's pool of 32 connections.
DEFAULT_TENANT_WORKERS = 8


def fan_out(items: Iterable[T], work: Callable[[T], R], *, workers: int, stall: float | None = None,
            k: Keyops | None = None, tenant_of: Callable[[T], str] | None = None) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` for every item, in the order given, with ``workers`` of them running at once.

    ``work`` reports its own failures in its result (one tenant failing must
    not stop the others); an exception it raises stops the run. ``stall``: when
    the oldest item has not finished this many seconds after the last one did,
    ``JobFailed`` is raised and items not started are dropped (running ones end
    with their requests' deadlines). With ``k`` and ``tenant_of``, each item's
    tenant is handed to ``k.done_with`` once its work is done.
    """
    def run(item: T) -> R:
        try:
            return work(item)
        finally:
            if k is not None and tenant_of is not None:
                k.done_with(tenant_of(item))

    window: collections.deque[tuple[T, Future[R]]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyops-tenants")
    stalled = False
    last = time.monotonic()

    def oldest() -> tuple[T, R]:
        nonlocal stalled, last
        item, future = window.popleft()
        try:
            result = future.result(timeout=None if stall is None else max(0.0, last + stall - time.monotonic()))
        except concurrent.futures.TimeoutError:
            stalled = True
            raise JobFailed(f"the run over many tenants stalled: one did not finish within {stall:g} s of the "
                            "last one (KEYOPS_JOB_STALL_TIMEOUT); the others not yet done were stopped; run it "
                            "again") from None
        last = time.monotonic()
        return item, result

    try:
        for item in items:
            window.append((item, pool.submit(run, item)))
            if len(window) >= 2 * workers:
                yield oldest()
        while window:
            yield oldest()
    finally:
        for _, future in window:
            future.cancel()
        pool.shutdown(wait=not stalled, cancel_futures=True)
