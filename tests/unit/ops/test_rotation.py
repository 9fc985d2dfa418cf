"""Rotation's pure logic without servers: interrupted work, Transit targets, master claims, due reports, leases, CLI."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import subprocess
import sys
import time

import pytest

from keyops.cli.main import main
from keyops.errors import ConfigError, ConfirmationRequired, InvalidInput, KeyInUse, KeyStateError
from keyops.model.keyring import KeyChain, Keyring, Policy, format_time
from keyops.ops.front import MasterRegistry, MasterVersion
from keyops.ops.rotation import (
    PENDING,
    DueFailure,
    DueRotationReport,
    MasterRotationResult,
    RotationResult,
    _as_rewrapped,
    _holder_alive,
    claim_master_version,
    master_due,
    pending_master_version,
    promote_master_version,
    stale_dek_versions,
    stale_kek_versions,
    transit_targets,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def keyring(residence: str = "transit") -> Keyring:
    kr = Keyring(tenant="acme", policy=Policy(kek_residence=residence), created_at=format_time(T0),
                 kek=KeyChain(0, ()), dek=KeyChain(0, ()))
    kr = kr.add_version("kek", "a2VrMQ==", 1, T0, transit_version=1)
    kr = kr.add_version("dek", "ZGVrMQ==", 1, T0)
    return kr.add_version("dek", "ZGVrMg==", 1, T0)


def with_new_kek(kr: Keyring, transit_version: int | None = None) -> Keyring:
    return kr.add_version("kek", "a2VrMg==", 1, T0, transit_version=transit_version or kr.kek.latest_version + 1)


def registry(*states: str) -> MasterRegistry:
    versions = tuple(MasterVersion(i + 1, f"m-v{i + 1}", s, format_time(T0)) for i, s in enumerate(states))
    return MasterRegistry(states.index("active") + 1, versions)


# --- interrupted KEK rotations -----------------------------------------------------------------


def test_dek_versions_left_under_an_old_kek_are_stale() -> None:
    kr = keyring()
    assert stale_dek_versions(kr) == []
    rotated = with_new_kek(kr)
    assert stale_dek_versions(rotated) == [1, 2]
    assert stale_dek_versions(_as_rewrapped(rotated)) == []
    assert {d.parent_version for d in _as_rewrapped(rotated).dek.versions} == {2}


def test_kek_versions_under_an_old_master_are_stale() -> None:
    kr = with_new_kek(keyring())
    assert stale_kek_versions(kr, 1) == []
    assert stale_kek_versions(kr, 2) == [1, 2]


def test_transit_targets_follow_what_deks_need() -> None:
    kr = keyring()
    assert transit_targets(kr) == (1, 1)
    rotated = with_new_kek(kr)
    # DEKs still under KEK 1: Transit version 1 must keep decrypting.
    assert transit_targets(rotated) == (1, 1)
    assert transit_targets(_as_rewrapped(rotated)) == (2, 1)
    destroyed = _as_rewrapped(rotated).set_state("kek", 1, "destroyed", T0)
    assert transit_targets(destroyed) == (2, 2)


def test_transit_targets_use_transit_versions_not_kek_numbers() -> None:
    # A version imported twice (two racing resumes) shifts Transit's numbers past the KEK's.
    rotated = _as_rewrapped(with_new_kek(keyring(), transit_version=3))
    assert rotated.kek.primary == 2
    assert transit_targets(rotated) == (3, 1)


# --- master claims -------------------------------------------------------------------------------


def test_claim_then_promote_master_version() -> None:
    reg = registry("active")
    assert pending_master_version(reg) is None
    claimed = claim_master_version(reg, "m", T0)
    rid = claimed.registry_id
    assert rid is not None and len(rid) == 16 and reg.registry_id is None  # a legacy registry gets an id
    assert claimed.primary == 1 and pending_master_version(claimed) == 2
    assert claimed.get(2) == MasterVersion(2, f"m-{rid}-v2", PENDING, format_time(T0), rid + "00000002")
    assert claimed.get(1) == reg.get(1) and not claimed.get(1).owned  # the legacy version keeps its name
    promoted = promote_master_version(claimed, 2)
    assert promoted.primary == 2
    assert {v.version: v.state for v in promoted.versions} == {1: "decrypt_only", 2: "active"}
    assert promote_master_version(promoted, 2) is promoted  # idempotent
    assert MasterRegistry.from_dict(promoted.to_dict()) == promoted
    assert claim_master_version(promoted, "m", T0).registry_id == rid  # the id never changes


def test_first_registry_claims_version_one_under_a_random_id() -> None:
    a, b = MasterRegistry.first("keyops-master", T0), MasterRegistry.first("keyops-master", T0)
    assert a.registry_id != b.registry_id  # two Vaults on one token never share names
    first = a.get(1)
    assert (a.primary, first.state, first.owned) == (1, PENDING, True)
    assert first.label == f"keyops-master-{a.registry_id}-v1" and first.key_id == f"{a.registry_id}00000001"
    promoted = promote_master_version(a, 1)  # the pending primary turns active
    assert promoted.get(1).state == "active" and promote_master_version(promoted, 1) is promoted


def test_a_legacy_registry_document_still_reads() -> None:
    legacy = {"schema": 1, "primary": 1, "period_days": 365,
              "versions": [{"version": 1, "label": "keyops-master-v1", "state": "active",
                            "created_at": "2025-01-01T00:00:00Z"}]}
    reg = MasterRegistry.from_dict(legacy)
    assert reg.registry_id is None and reg.get(1).key_id is None and not reg.get(1).owned


@pytest.mark.parametrize("change", [{"registry_id": "../x"}, {"registry_id": "ABCDEF0123456789"},
                                    {"versions": [{"version": 1, "label": "l", "state": "active",
                                                   "created_at": "t", "key_id": "zz"}]}, {"versions": None}])
def test_a_malformed_registry_is_refused_by_name(change: dict) -> None:
    doc = {"schema": 1, "primary": 1, "versions": [{"version": 1, "label": "l", "state": "active",
                                                    "created_at": "t"}], **change}
    with pytest.raises(KeyStateError, match="master key registry in Vault is malformed"):
        MasterRegistry.from_dict(doc)


def test_claim_never_reuses_a_destroyed_version_number() -> None:
    reg = registry("destroyed", "decrypt_only", "active")
    assert claim_master_version(reg, "m", T0).versions[-1].version == 4


def test_master_due_by_age_against_the_registry_period() -> None:
    reg = registry("active")
    assert master_due(reg, T0 + dt.timedelta(days=364)) is None
    assert master_due(reg, T0 + dt.timedelta(days=365)).startswith("age: 365.0 days old, period 365 days")
    short = dataclasses.replace(reg, period_days=10)
    assert master_due(short, T0 + dt.timedelta(days=11)) is not None
    assert MasterRegistry.from_dict({"primary": 1, "versions": []}).period_days == 365


# --- reports ---------------------------------------------------------------------------------------


def test_due_report_says_nothing_due() -> None:
    empty = DueRotationReport(False, 3, True, (), ())
    assert empty.nothing_due and not empty.changed
    assert empty.summary() == "nothing due (3 tenants and the master key checked)"
    quiet = DueRotationReport(False, 1, False, (RotationResult("a", "dek", False, 2, 2, "due", False),), ())
    assert quiet.nothing_due and quiet.summary() == "nothing due (1 tenant checked)"


def test_due_report_counts_rotations_and_failures() -> None:
    rotations = (MasterRotationResult(True, 1, 2, "due: age", False),
                 RotationResult("a", "kek", True, 1, 2, "due: age", False))
    report = DueRotationReport(False, 2, True, rotations, (DueFailure("b", "kek", "vault", "sealed"),))
    assert report.changed and not report.nothing_due
    assert report.summary() == "rotated 2 keys (2 tenants and the master key checked); 1 failed"
    planned = DueRotationReport(True, 2, False, rotations[1:], ())
    assert planned.summary() == "would rotate 1 key (2 tenants checked)"


# --- leases ------------------------------------------------------------------------------------------


def lease(**changes: object) -> dict[str, object]:
    doc: dict[str, object] = {"owner": "x", "host": socket.gethostname(), "pid": os.getpid(),
                              "expires_at": time.time() + 60}
    doc.update(changes)
    return doc


def test_a_lease_is_alive_until_it_expires_or_its_process_dies() -> None:
    assert _holder_alive(lease())  # another thread of this process
    assert not _holder_alive(lease(expires_at=time.time() - 1))
    assert _holder_alive(lease(host="another-host", pid=1))  # cannot look there: trust the expiry
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not _holder_alive(lease(pid=dead.pid))
    assert not _holder_alive({"owner": "x"})  # not a lease we understand


# --- errors and CLI arguments (checked before any server is contacted) ---------------------------------


def test_error_codes_of_the_contract() -> None:
    assert KeyInUse.exit_code == KeyStateError.exit_code == 8 and KeyInUse.code == "key_in_use"
    assert ConfirmationRequired.exit_code == InvalidInput.exit_code == 2
    assert ConfigError.exit_code not in (0, 1, 3)  # 3 means "nothing to do"


@pytest.mark.parametrize("argv", [
    ["rotate"],
    ["rotate", "--level", "dek"],
    ["rotate", "--tenant", "a", "--tenant", "b", "--level", "kek"],
    ["rotate", "--level", "master", "--tenant", "a"],
    ["rotate", "--due", "--level", "dek"],
    ["rotate", "--due", "--expect-version", "2"],
    ["rotate", "--tenant", "a", "--level", "dek", "--no-master"],
])
def test_cli_rotate_refuses_contradictory_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("keyops: error: ")


def test_cli_parsers_register_rotate_retire_destroy(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("rotate", "retire", "destroy"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        helptext = " ".join(capsys.readouterr().out.split())
        assert "Exit codes: 0 done or nothing to do (3 with --detailed-exitcode)" in helptext
    with pytest.raises(SystemExit):
        main(["retire", "--level", "dek"])  # --version is required
