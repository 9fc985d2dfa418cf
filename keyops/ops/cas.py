"""One check-and-set retry policy for every read-change-write keyops makes in Vault.

Every document keyops changes (keyrings, usage documents, the master
registry, secret records, job checkpoints) is written with a check-and-set
on the version it was read at, so two writers never both win. The loser
gets ``CheckAndSetFailed`` (a ``Conflict``) from the Vault boundary; here it
reads again and decides again, a bounded number of times, and then gives up
with a ``Conflict`` that says nothing was changed. The per-record moves of re-encryption and
migration loop on ``CAS_ATTEMPTS`` themselves, because they count each lost
race for their reports (an application's write won, and its value stays).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from keyops.errors import CheckAndSetFailed, Conflict

#: Attempts of one read-change-write before giving up (a loser of each round means another writer's change
#: landed, so this bounds the writers a change can lose to, not the time it takes).
CAS_ATTEMPTS = 8

T = TypeVar("T")
D = TypeVar("D")


def retry_on_conflict(attempt: Callable[[], T], what: str) -> T:
    """Run ``attempt`` (a read, a decision and one check-and-set write) again while another writer wins.

    Only a lost check-and-set (``CheckAndSetFailed``) is retried; any other
    ``Conflict`` the attempt raises (a rotation in progress elsewhere) ends it.
    """
    for _ in range(CAS_ATTEMPTS):
        try:
            return attempt()
        except CheckAndSetFailed:
            continue
    raise Conflict(f"{what} kept changing under {CAS_ATTEMPTS} attempts; nothing was changed; retry later")


def update_document(read: Callable[[], tuple[D, int]], write: Callable[[D, int], int], change: Callable[[D], D],
                    what: str) -> tuple[D, int]:
    """Read a document, change it, write it with check-and-set; an unchanged document is not written."""
    def attempt() -> tuple[D, int]:
        document, version = read()
        new = change(document)
        if new == document:
            return document, version
        return new, write(new, version)

    return retry_on_conflict(attempt, what)
