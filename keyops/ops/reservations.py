"""A process's reservations of DEK uses, and the per-tenant state of the encryption hot path.

The ``Keyops`` front reserves blocks of uses in the tenant's usage document
(``keyops.model.usage``) and spends them here, in memory: ``next`` on a
counter per block, and ``FastTenant`` for the few look-ups an encryption or
decryption makes when nothing is stale.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections.abc import Iterator

from keyops import crypto
from keyops.model.keyring import Keyring

#: First block of DEK uses a process reserves: a one-shot ``keyops encrypt`` strands at most
#: this many uses of the cap. Blocks double while a process spends them, up to the maximum (a
#: ``Keyops(max_reservation=...)`` may set a lower one) and never beyond a 1/``CAP_SHARE`` share
#: of the cap, so a busy process writes the usage document O(log n) times for n encryptions
#: and one process that stops early never strands much of the cap.
FIRST_RESERVATION = 16
MAX_RESERVATION = 1 << 20
CAP_SHARE = 32
#: ``next()`` on an ``itertools.count`` is atomic while the GIL serialises
#: bytecode, so the hot path draws DEK uses without a lock; a free-threaded
#: interpreter takes the locked path for every encryption instead.
LOCK_FREE_USES = getattr(sys, "_is_gil_enabled", lambda: True)()


def wall() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass
class Reservation:
    """Uses ``[start, end)`` of DEK ``dek_version``, reserved in the usage document by this process.

    ``counter`` hands out each number once (``next`` is atomic under the GIL);
    a number at or past ``end`` is never used for an encryption, so the
    recorded count is always an upper bound of the encryptions done. No
    encryption under it starts at or after ``deadline`` (monotonic): the
    lease recorded in the usage document ends later than that by this
    process's request deadline, which is what retire and destroy wait out.
    """

    dek_version: int
    start: int
    end: int
    block: int
    deadline: float
    counter: Iterator[int]
    external: bool


def next_block(previous: Reservation | None, cap: int, max_block: int | None = None, *, lost: int = 0,
               demand: int = 0) -> int:
    """How many uses to ask for next: blocks double while spent within the lease, else shrink to the demand.

    Each race ``lost`` to another writer doubles the block too: busy
    neighbours are demand as well, and larger blocks let every writer of the
    tenant write less often. ``demand``: the uses the process said it is
    about to make (a job's batch, ``Keyops.expect_uses``); the block is at
    least that. The result is at least 1 and at most ``max_block`` (default:
    the maximum) and the larger of the first block and the cap's share. It
    only says what to ask for: the usage document never grants past the cap.
    The module's constants are read at each call (tests lower them).
    """
    limit = MAX_RESERVATION if max_block is None else max_block
    ceiling = min(limit, max(FIRST_RESERVATION, cap // CAP_SHARE))
    if previous is None:
        block = FIRST_RESERVATION
    else:
        spent = next(previous.counter) - previous.start
        all_spent = spent >= previous.end - previous.start
        block = previous.block * 2 if all_spent else max(FIRST_RESERVATION, spent * 2)
    return max(1, min(max(block, demand) << min(lost, 32), ceiling))


class FastTenant:
    """The hot path of one tenant, valid while ``src`` is the tenant's cached keyring entry.

    ``src`` is the ``(keyring, kv_version, loaded_at)`` tuple of
    ``Keyops._keyrings``; any re-read or write of the keyring replaces that
    tuple and so retires this object, and it expires with the keyring TTL.
    Bound DEKs enter only after their state was checked against ``src``.
    """

    __slots__ = ("src", "expires", "header_len", "text_tenant_len", "by_version", "by_header", "by_text", "enc")

    def __init__(self, tenant: str, src: tuple[Keyring, int, float], ttl: float) -> None:
        self.src = src
        self.expires = src[2] + ttl
        self.header_len = len(crypto.binary_tenant_prefix(tenant)) + 4
        self.text_tenant_len = len(crypto.text_tenant_prefix(tenant))
        self.by_version: dict[int, crypto.BoundKey] = {}
        self.by_header: dict[bytes, crypto.BoundKey] = {}  # binary header up to the DEK version
        self.by_text: dict[str, crypto.BoundKey] = {}  # "keyops:v1:<tenant>:<version>:"
        # Per purpose (index 0: records of keyops' store, 1: callers outside it): the primary
        # DEK, this process's live reservation of it and when encrypting with it must stop.
        self.enc: list[tuple[crypto.BoundKey, Reservation, float] | None] = [None, None]
