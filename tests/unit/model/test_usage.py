"""The usage document: reservations, leases, fences (pure logic; the real server is in tests/integration)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from keyops.errors import InvalidInput, KeyStateError
from keyops.model.usage import Usage, VersionUsage, seconds_until

T0 = dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def reserve(u: Usage, version: int, count: int, cap: int, *, external: bool = False, holder: str = "p1",
            until: float = 30, now: float = 0, legacy: int = 0) -> tuple[Usage, int, int]:
    return u.reserve(version, count, cap, external=external, holder=holder, now=at(now), lease_until=at(until),
                     legacy_uses=legacy)


def test_reserve_counts_up_to_the_cap_and_splits_external_uses() -> None:
    u = Usage("acme")
    u1, start, end = reserve(u, 1, 4, 10)
    assert (start, end) == (0, 4) and u1.get(1) == VersionUsage(4, 0, {"p1": "2026-05-01T12:00:30Z"})
    u2, start, end = reserve(u1, 1, 4, 10, external=True, until=10)
    assert (start, end) == (4, 8)
    assert u2.get(1).external == 4 and u2.get(1).leases == {"p1": "2026-05-01T12:00:30Z"}  # never shrinks
    u3, start, end = reserve(u2, 1, 4, 10, external=True, holder="p2", until=40.2)
    assert (start, end) == (8, 10) and u3.get(1).external == 6
    assert u3.get(1).leases["p2"] == "2026-05-01T12:00:41Z"  # rounded up, never down
    assert u3.get(1).lease_end() == at(41)  # the last of all holders' leases
    u4, start, end = reserve(u3, 1, 4, 10, until=50)
    assert start == end == 10 and u4 is u3  # at the cap: nothing reserved, nothing changed
    assert u.get(1) == VersionUsage()  # values, not shared state


def test_leases_are_released_by_their_holder_and_pruned_once_long_expired() -> None:
    u = reserve(reserve(Usage("acme"), 1, 4, 100, holder="p1")[0], 1, 4, 100, holder="p2", until=20)[0]
    released = u.release("p1", at(5.5))
    assert released.get(1).leases == {"p1": "2026-05-01T12:00:06Z", "p2": "2026-05-01T12:00:20Z"}
    assert released.get(1).reserved == 8
    assert released.release("p2", at(7)).get(1).lease_end() == at(7)  # ended: the last write's bound
    assert released.release("p1", at(9)).get(1).leases["p1"] == "2026-05-01T12:00:06Z"  # never extended
    assert u.leases_end([1, 2]) == at(30) and Usage("acme").leases_end([1]) is None
    later = reserve(u, 1, 4, 100, holder="p3", now=400, until=430)[0]
    assert set(later.get(1).leases) == {"p3"}  # the others ended more than LEASE_PRUNE_SECONDS ago


def test_a_legacy_count_from_the_keyring_is_a_floor() -> None:
    u, start, end = reserve(Usage("acme"), 2, 5, 100, until=1, legacy=40)
    assert (start, end) == (40, 45) and u.uses(2, legacy_uses=40) == 45 and u.uses(3) == 0


def test_a_closed_version_is_never_reserved_again() -> None:
    u = reserve(Usage("acme"), 1, 4, 10)[0].close(1, at(5))
    assert u.get(1).closed_at == "2026-05-01T12:00:05Z"
    assert u.close(1, at(9)) is u  # idempotent: the first fence stays
    with pytest.raises(KeyStateError, match="DEK version 1 of tenant 'acme' is being retired"):
        reserve(u, 1, 4, 10, until=60)
    u2, start, end = reserve(u, 2, 4, 10, until=60)  # other versions are untouched
    assert (start, end) == (0, 4) and u2.forget({1}).versions.keys() == {2}


def test_round_trip_and_refusals() -> None:
    u = reserve(Usage("acme"), 3, 7, 10, external=True)[0].close(3, at(1))
    doc = json.loads(json.dumps(u.to_dict()))
    assert Usage.from_dict(doc, "acme") == u
    with pytest.raises(InvalidInput, match="names tenant 'acme'; a document must name the tenant of its path"):
        Usage.from_dict(doc, "beta")
    with pytest.raises(InvalidInput, match=r"schema '1' \(str\); expected the number 1"):
        Usage.from_dict({**doc, "schema": "1"}, "acme")
    for bad in ({**doc, "versions": {"x": {}}}, {**doc, "versions": {"3": {"reserved": -1}}},
                {**doc, "versions": {"3": {"reserved": 1, "extra": 2}}},
                {**doc, "versions": {"3": {"leases": {"p": "soon"}}}}, {**doc, "versions": {"3": {"leases": []}}},
                {**doc, "versions": []}, "garbage"):
        with pytest.raises(InvalidInput):
            Usage.from_dict(bad, "acme")


def test_seconds_until() -> None:
    assert seconds_until(None, T0) == 0.0
    assert seconds_until(at(-3), T0) == 0.0
    assert seconds_until(at(2.1), T0) == 3.0
