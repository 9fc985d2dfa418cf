"""The keyring model without servers: lifecycle, usage, due-ness, documents, policy."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from typing import Any

import pytest

from keyops.errors import InvalidInput, KeyNotFound, KeyStateError
from keyops.model.keyring import (
    DUE_USAGE_FRACTION,
    MAX_DEK_USAGE_CAP,
    MAX_TOMBSTONES,
    KeyChain,
    Keyring,
    Policy,
    due_rotations,
    format_time,
    next_due,
    parse_time,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def new_keyring(policy: Policy | None = None, tenant: str = "acme") -> Keyring:
    kr = Keyring(tenant=tenant, policy=policy or Policy(), created_at=format_time(T0),
                 kek=KeyChain(0, ()), dek=KeyChain(0, ()))
    kr = kr.add_version("kek", "d3JhcHBlZC1rZWs=", 1, T0)
    return kr.add_version("dek", "d3JhcHBlZC1kZWs=", 1, T0)


def states(kr: Keyring, level: str) -> dict[int, str]:
    return {kv.version: kv.state for kv in kr.chain(level).versions}


# --- lifecycle --------------------------------------------------------------------------------


def test_first_versions() -> None:
    kr = new_keyring()
    assert kr.kek.primary == 1 and kr.dek.primary == 1
    assert states(kr, "kek") == {1: "active"} and states(kr, "dek") == {1: "active"}
    assert kr.dek.primary_key.uses == 0 and kr.dek.primary_key.parent_version == 1


def test_add_version_makes_a_new_primary_and_demotes_the_old() -> None:
    kr = new_keyring()
    kr2 = kr.add_version("dek", "djI=", 1, day(3))
    assert kr2.dek.primary == 2
    assert states(kr2, "dek") == {1: "decrypt_only", 2: "active"}
    assert kr2.dek.get(1).state_changed_at == format_time(day(3))
    assert kr2.dek.get(2).created_at == format_time(day(3))
    assert kr2.kek == kr.kek  # the other level is untouched
    assert states(kr, "dek") == {1: "active"}  # immutable: the original is unchanged
    kr3 = kr2.add_version("dek", "djM=", 1, day(4))
    assert states(kr3, "dek") == {1: "decrypt_only", 2: "decrypt_only", 3: "active"}
    assert [kv.state for kv in kr3.dek.versions].count("active") == 1


def test_lifecycle_forward_only() -> None:
    kr = new_keyring().add_version("dek", "djI=", 1, day(1))
    kr = kr.set_state("dek", 1, "retired", day(2))
    assert states(kr, "dek") == {1: "retired", 2: "active"}
    for back in ("decrypt_only", "active"):
        with pytest.raises(KeyStateError):
            kr.set_state("dek", 1, back, day(3))
    demoted = new_keyring().add_version("dek", "djI=", 1, day(1))
    with pytest.raises(KeyStateError):
        demoted.set_state("dek", 1, "active", day(2))  # a second active version


def test_primary_cannot_leave_active() -> None:
    kr = new_keyring()
    for state in ("decrypt_only", "retired", "destroyed"):
        for level in ("kek", "dek"):
            with pytest.raises(KeyStateError, match="primary"):
                kr.set_state(level, 1, state, day(1))


def test_destroyed_leaves_a_tombstone_and_the_number_is_never_reused() -> None:
    kr = new_keyring().add_version("dek", "djI=", 1, day(1))
    kr = kr.set_state("dek", 1, "destroyed", day(5))
    assert [kv.version for kv in kr.dek.versions] == [2]
    (tomb,) = kr.dek.tombstones
    assert (tomb.version, tomb.created_at, tomb.destroyed_at) == (1, format_time(T0), format_time(day(5)))
    assert "wrapped" not in tomb.to_dict()  # no key material, not even wrapped
    with pytest.raises(KeyNotFound):
        kr.dek.get(1)
    with pytest.raises(KeyNotFound):
        kr.set_state("dek", 1, "retired", day(6))
    assert kr.add_version("dek", "djM=", 1, day(6)).dek.primary == 3


def test_tombstones_are_bounded() -> None:
    kr = new_keyring()
    for n in range(2, 202):
        kr = kr.add_version("dek", f"v{n}", 1, day(n))
        kr = kr.set_state("dek", n - 1, "destroyed", day(n))
    assert len(kr.dek.versions) == 1 and kr.dek.primary == 201
    assert len(kr.dek.tombstones) == MAX_TOMBSTONES
    assert [t.version for t in kr.dek.tombstones] == list(range(201 - MAX_TOMBSTONES, 201))
    size = len(json.dumps(kr.to_dict()))
    assert size < 200 * MAX_TOMBSTONES
    # Still numbered past everything ever seen.
    assert kr.add_version("dek", "x", 1, day(300)).dek.primary == 202


def test_invalid_state_and_level() -> None:
    kr = new_keyring().add_version("dek", "djI=", 1, day(1))
    with pytest.raises(InvalidInput):
        kr.set_state("dek", 1, "deleted", day(2))
    with pytest.raises(InvalidInput):
        kr.set_state("master", 1, "retired", day(2))
    with pytest.raises(InvalidInput):
        kr.chain("DEK")
    with pytest.raises(KeyNotFound):
        kr.set_state("dek", 9, "retired", day(2))


# --- usage --------------------------------------------------------------------------------------


def with_uses(kr: Keyring, uses: int) -> Keyring:
    """A keyring whose primary DEK counted ``uses`` itself, as keyrings did before the usage document."""
    return kr.replace_version("dek", dataclasses.replace(kr.dek.primary_key, uses=uses))


# --- due-ness ------------------------------------------------------------------------------------


def test_due_by_age() -> None:
    kr = new_keyring(Policy(kek_period_days=90, dek_period_days=30))
    assert due_rotations(kr, day(29.9)) == []
    (due,) = due_rotations(kr, day(30))
    assert (due.level, due.version, due.reason) == ("dek", 1, "age")
    levels = {(d.level, d.reason) for d in due_rotations(kr, day(90))}
    assert levels == {("kek", "age"), ("dek", "age")}
    assert next_due(kr, "dek") == day(30) and next_due(kr, "kek") == day(90)
    # A new DEK resets the DEK clock, not the KEK's.
    kr2 = kr.add_version("dek", "djI=", 1, day(31))
    assert due_rotations(kr2, day(40)) == []
    assert next_due(kr2, "dek") == day(61)
    assert due_rotations(kr2, day(60.9)) == []
    assert [d.level for d in due_rotations(kr2, day(61))] == ["dek"]
    assert [d.level for d in due_rotations(kr2, day(90))] == ["kek", "dek"]


def test_due_by_usage() -> None:
    cap = 1000
    kr = new_keyring(Policy(dek_usage_cap=cap))
    assert due_rotations(kr, day(1), primary_dek_uses=int(cap * DUE_USAGE_FRACTION) - 1) == []
    (due,) = due_rotations(kr, day(1), primary_dek_uses=int(cap * DUE_USAGE_FRACTION))
    assert (due.level, due.reason) == ("dek", "usage") and "900 of 1000" in due.detail
    assert [d.reason for d in due_rotations(kr, day(1), primary_dek_uses=cap)] == ["usage"]
    # A keyring that counted its own uses (before the usage document) is still read.
    (legacy,) = due_rotations(with_uses(kr, 950), day(1))
    assert "950 of 1000" in legacy.detail
    assert "950 of 1000" in due_rotations(with_uses(kr, 950), day(1), primary_dek_uses=10)[0].detail


# --- documents -----------------------------------------------------------------------------------


def rich_keyring() -> Keyring:
    kr = new_keyring(Policy(kek_residence="transit", kek_period_days=10, dek_period_days=5, dek_usage_cap=77))
    kr = kr.add_version("kek", "a2VrMg==", 1, day(1), transit_version=2)
    kr = kr.add_version("dek", "ZGVrMg==", 2, day(1)).add_version("dek", "ZGVrMw==", 2, day(2))
    kr = kr.set_state("dek", 1, "destroyed", day(3)).set_state("dek", 2, "retired", day(3))
    return with_uses(kr, 5)


def test_to_dict_from_dict_round_trip() -> None:
    kr = rich_keyring()
    doc = kr.to_dict()
    assert json.loads(json.dumps(doc)) == doc  # plain JSON, as stored in KV
    assert Keyring.from_dict(doc) == kr
    assert Keyring.from_dict(json.loads(json.dumps(doc))) == kr
    assert doc["schema"] == 1 and doc["tenant"] == "acme" and doc["policy"]["kek_residence"] == "transit"
    assert doc["kek"]["versions"][1]["transit_version"] == 2
    assert "transit_version" not in doc["dek"]["versions"][0]
    assert [t["version"] for t in doc["dek"]["tombstones"]] == [1]
    fresh = new_keyring()
    assert Keyring.from_dict(fresh.to_dict()) == fresh


def test_each_new_version_gets_its_own_random_uid() -> None:
    kr = rich_keyring()
    uids = [kv.uid for chain in (kr.kek, kr.dek) for kv in chain.versions]
    assert all(uid is not None and len(uid) == 32 and int(uid, 16) >= 0 for uid in uids)
    assert len(set(uids)) == len(uids)
    assert new_keyring().dek.get(1).uid != new_keyring().dek.get(1).uid  # a tenant made again: new uids
    # a version stored before uids existed reads back without one
    doc = kr.to_dict()
    del doc["dek"]["versions"][0]["uid"]
    assert Keyring.from_dict(doc).dek.versions[0].uid is None


def _mutations() -> list[Any]:
    def drop(*keys: str) -> Any:
        def f(d: dict[str, Any]) -> None:
            target = d
            for k in keys[:-1]:
                target = target[k]
            del target[keys[-1]]
        return f

    def setv(value: Any, *keys: Any) -> Any:
        def f(d: dict[str, Any]) -> None:
            target = d
            for k in keys[:-1]:
                target = target[k]
            target[keys[-1]] = value
        return f

    return [
        pytest.param(setv(2, "schema"), id="schema-2"),
        pytest.param(drop("schema"), id="no-schema"),
        pytest.param(drop("tenant"), id="no-tenant"),
        pytest.param(setv("Acme/../x", "tenant"), id="bad-tenant"),
        pytest.param(drop("kek"), id="no-kek"),
        pytest.param(drop("dek", "versions"), id="no-dek-versions"),
        pytest.param(setv(5, "dek", "versions"), id="versions-not-a-list"),
        pytest.param(setv("one", "dek", "primary"), id="primary-not-int"),
        pytest.param(setv(9, "dek", "primary"), id="primary-missing"),
        pytest.param(setv("frozen", "dek", "versions", 0, "state"), id="unknown-state"),
        pytest.param(setv("yes", "dek", "versions", 0, "key"), id="unknown-version-field"),
        pytest.param(drop("dek", "versions", 0, "wrapped"), id="version-without-wrapped"),
        pytest.param(setv(0, "dek", "versions", 0, "version"), id="version-zero"),
        pytest.param(setv(3, "dek", "versions", 0, "version"), id="duplicate-version"),
        pytest.param(setv("x", "dek", "tombstones", 0, "destroyed"), id="bad-tombstone"),
        pytest.param(setv({"kek_residence": "s3"}, "policy"), id="bad-residence"),
        pytest.param(setv({"kek_period_days": 0}, "policy"), id="bad-period"),
        pytest.param(setv({"color": "red"}, "policy"), id="unknown-policy-field"),
        pytest.param(setv("not a dict", "policy"), id="policy-not-a-dict"),
        pytest.param(setv(None, "kek"), id="kek-none"),
    ]


@pytest.mark.parametrize("mutate", _mutations())
def test_malformed_documents_are_invalid_input(mutate: Any) -> None:
    doc = copy.deepcopy(rich_keyring().to_dict())
    mutate(doc)
    with pytest.raises(InvalidInput):
        Keyring.from_dict(doc)


@pytest.mark.parametrize("doc", [None, [], "keyring", 5])
def test_documents_that_are_not_objects(doc: Any) -> None:
    with pytest.raises(InvalidInput):
        Keyring.from_dict(doc)


def test_parse_time() -> None:
    assert parse_time(format_time(T0)) == T0
    with pytest.raises(InvalidInput):
        parse_time("2025-01-01 00:00:00")


# --- policy ---------------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    p = Policy()
    assert (p.kek_residence, p.kek_period_days, p.dek_period_days) == ("kv", 90, 30)
    assert 1 <= p.dek_usage_cap <= 2**32
    assert p.period_days("kek") == 90 and p.period_days("dek") == 30
    assert Policy.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("changes", [
    {"kek_residence": "s3"}, {"kek_residence": "KV"}, {"kek_residence": ""},
    {"kek_period_days": 0}, {"kek_period_days": -1}, {"kek_period_days": 36501}, {"kek_period_days": True},
    {"kek_period_days": 1.5}, {"kek_period_days": "30"}, {"dek_period_days": 0}, {"dek_period_days": None},
    {"dek_usage_cap": 0}, {"dek_usage_cap": MAX_DEK_USAGE_CAP + 1}, {"dek_usage_cap": 2**40},
    {"dek_usage_cap": True}, {"dek_usage_cap": 10.0},
])
def test_invalid_policies(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        Policy(**changes)
    with pytest.raises(InvalidInput):
        Policy.from_dict({**Policy().to_dict(), **changes})


@pytest.mark.parametrize("changes", [
    {"kek_residence": "transit"}, {"kek_period_days": 1}, {"kek_period_days": 36500},
    {"dek_usage_cap": 1}, {"dek_usage_cap": MAX_DEK_USAGE_CAP},
])
def test_valid_policies(changes: dict[str, Any]) -> None:
    assert dataclasses.asdict(Policy(**changes))  # constructs


def test_policy_unknown_field() -> None:
    with pytest.raises(InvalidInput, match="unknown policy fields"):
        Policy.from_dict({"kek_residence": "kv", "rotation": "weekly"})
