"""``rotate_due`` / ``keyops rotate --due``: only what is due rotates, and a quiet run says so.

Each test has its own KV mount, because a due run looks at every tenant
(and at the master key) of its mount. Time is simulated with the model's
clock: tenants are created by a Keyops whose clock runs in the past.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _rotation_support import (
    Isolated,
    check_secrets,
    isolated_mount,
    keyops_main,
    kv_version,
    raw_doc,
    write_doc,
)
from _tenants import new_tenant

from keyops.config import Config
from keyops.model.keyring import Policy, utcnow
from keyops.ops.front import MASTER_PATH, Keyops, keyring_path, transit_key_name, usage_path
from keyops.ops.rotation import (
    DueRotationReport,
    MasterRotationResult,
    RotationResult,
    _with_new_transit_kek,
    rotate_due,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def iso(stack: Any, config: Config, vault_client: Any) -> Iterator[Isolated]:
    with isolated_mount(stack, config, vault_client) as isolated:
        yield isolated


def days_ago(days: float) -> Callable[[], dt.datetime]:
    return lambda: utcnow() - dt.timedelta(days=days)


def make(cfg: Config, age_days: float = 0, residence: str = "kv", **policy: Any) -> tuple[str, dict[str, bytes]]:
    tenant = new_tenant(f"due-{residence}")
    with Keyops(cfg, clock=days_ago(age_days)) as k:
        k.create_tenant(tenant, Policy(kek_residence=residence, **policy))
        values = {"s": f"secret of {tenant}".encode()}
        k.put_secret(tenant, "s", values["s"])
        if "dek_usage_cap" in policy:  # busy processes reserved all but a few uses
            cap, now = policy["dek_usage_cap"], dt.datetime.now(dt.UTC)
            k.update_usage(tenant, lambda u: u.reserve(1, cap, cap, external=False, holder="due-test", now=now,
                                                       lease_until=now)[0])
    return tenant, values


def keyring_versions(vault_client: Any, mount: str, tenants: Any) -> dict[str, int]:
    return {t: kv_version(vault_client, keyring_path(t), mount) for t in tenants}


def test_nothing_due_does_nothing_and_says_so(iso: Isolated, vault_client: Any) -> None:
    tenants = [make(iso.config)[0], make(iso.config, age_days=10, residence="transit")[0]]
    before = keyring_versions(vault_client, iso.mount, tenants)
    master_before = kv_version(vault_client, MASTER_PATH, iso.mount)

    proc = keyops_main(iso.env, "rotate", "--due", "--detailed-exitcode")
    assert proc.returncode == 3, proc
    assert proc.stdout.strip() == "nothing due (2 tenants and the master key checked)"
    assert keyops_main(iso.env, "rotate", "--due").returncode == 0  # a scheduled job: nothing due is a success
    as_json = keyops_main(iso.env, "rotate", "--due", "--json", "--detailed-exitcode")
    assert as_json.returncode == 3, as_json
    out = json.loads(as_json.stdout)
    assert out["nothing_due"] and not out["changed"] and out["rotations"] == [] and out["tenants_checked"] == 2

    assert keyring_versions(vault_client, iso.mount, tenants) == before
    assert kv_version(vault_client, MASTER_PATH, iso.mount) == master_before


def test_a_dek_past_due_rotates_and_nothing_else(iso: Isolated, vault_client: Any) -> None:
    fresh_tenant, _ = make(iso.config)
    old_tenant, values = make(iso.config, age_days=40)  # DEK period 30 days, KEK 90
    before = keyring_versions(vault_client, iso.mount, [fresh_tenant, old_tenant])

    dry = keyops_main(iso.env, "rotate", "--due", "--dry-run")
    assert dry.returncode == 0 and f"would create DEK v2 of tenant {old_tenant}" in dry.stdout, dry
    assert "would rotate 1 key" in dry.stdout
    assert keyring_versions(vault_client, iso.mount, [fresh_tenant, old_tenant]) == before

    done = keyops_main(iso.env, "rotate", "--due", "--json")
    assert done.returncode == 0, done
    out = json.loads(done.stdout)
    assert [(r["tenant"], r["level"], r["new_version"]) for r in out["rotations"]] == [(old_tenant, "dek", 2)]
    assert out["rotations"][0]["reason"].startswith("due: age: 40")
    doc = raw_doc(vault_client, keyring_path(old_tenant), iso.mount)
    assert doc["dek"]["primary"] == 2 and doc["kek"]["primary"] == 1
    assert kv_version(vault_client, keyring_path(fresh_tenant), iso.mount) == before[fresh_tenant]
    check_secrets(iso.config, old_tenant, values)

    again = keyops_main(iso.env, "rotate", "--due", "--detailed-exitcode")
    assert again.returncode == 3 and again.stdout.startswith("nothing due"), again


def test_a_dek_near_its_usage_cap_rotates(iso: Isolated, vault_client: Any) -> None:
    tenant, values = make(iso.config, dek_usage_cap=100)
    assert raw_doc(vault_client, usage_path(tenant), iso.mount)["versions"]["1"]["reserved"] >= 90
    assert raw_doc(vault_client, keyring_path(tenant), iso.mount)["dek"]["versions"][0]["uses"] == 0

    with Keyops(iso.config) as k:
        report = rotate_due(k, tenants=[tenant], include_master=False)

    assert isinstance(report, DueRotationReport) and report.changed and not report.failures
    (rotation,) = report.rotations
    assert isinstance(rotation, RotationResult)
    assert (rotation.level, rotation.new_version) == ("dek", 2) and rotation.reason.startswith("due: usage")
    assert not report.master_checked and report.summary() == "rotated 1 key (1 tenant checked)"
    check_secrets(iso.config, tenant, values)


def test_master_and_kek_due_rotate_master_first(iso: Isolated, vault_client: Any) -> None:
    tenant, values = make(iso.config, age_days=400, residence="transit", dek_period_days=1000)

    with Keyops(iso.config) as k:
        report = rotate_due(k)

    assert [(r.level, r.new_version) for r in report.rotations] == [("master", 2), ("kek", 2)]
    assert isinstance(report.rotations[0], MasterRotationResult)
    assert report.rotations[0].reason.startswith("due: age: 400")
    doc = raw_doc(vault_client, keyring_path(tenant), iso.mount)
    # The new KEK is wrapped by the new master key, the old KEK was re-wrapped by it too.
    assert {v["parent_version"] for v in doc["kek"]["versions"]} == {2}
    info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]
    assert int(info["latest_version"]) == 2 and int(info["min_decryption_version"]) == 2
    check_secrets(iso.config, tenant, values)
    with Keyops(iso.config) as k:
        assert rotate_due(k).nothing_due


def test_due_finishes_an_interrupted_transit_kek_rotation(iso: Isolated, vault_client: Any) -> None:
    tenant, values = make(iso.config, residence="transit")
    with Keyops(iso.config) as k:
        # What a crash right after step 1 leaves: the new KEK in the keyring, not yet in Transit.
        keyring, version = k.read_keyring(tenant)
        k.write_keyring(tenant, _with_new_transit_kek(k, keyring), cas=version)
        check_secrets(iso.config, tenant, values)
        plan = rotate_due(k, dry_run=True)
        assert [r.resumed for r in plan.rotations] == [True] and "import KEK v2" in plan.rotations[0].detail

        report = rotate_due(k)

    (rotation,) = report.rotations
    assert rotation.resumed and rotation.new_version == 2 and rotation.rewrapped == 1
    info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]
    assert int(info["latest_version"]) == 2 and int(info["min_decryption_version"]) == 2
    doc = raw_doc(vault_client, keyring_path(tenant), iso.mount)
    assert {v["parent_version"] for v in doc["dek"]["versions"]} == {2}
    check_secrets(iso.config, tenant, values)


def test_one_failing_tenant_does_not_stop_the_others(iso: Isolated, vault_client: Any) -> None:
    broken, _ = make(iso.config, age_days=40)
    doc = raw_doc(vault_client, keyring_path(broken), iso.mount)
    doc["dek"] = {"primary": 0, "versions": [], "tombstones": []}  # half-made: no DEK
    write_doc(vault_client, keyring_path(broken), doc, iso.mount)
    due, values = make(iso.config, age_days=40)

    proc = keyops_main(iso.env, "rotate", "--due", "--json")

    assert proc.returncode == 1, proc
    out = json.loads(proc.stdout)
    assert [(f["tenant"], f["error"]) for f in out["failures"]] == [(broken, "key_state")]
    assert "half-made" in out["failures"][0]["message"]
    assert [(r["tenant"], r["level"]) for r in out["rotations"]] == [(due, "dek")]
    assert "1 failed" in out["summary"]
    check_secrets(iso.config, due, values)


def test_master_period_comes_from_the_registry(iso: Isolated, vault_client: Any) -> None:
    make(iso.config, age_days=20)
    registry = raw_doc(vault_client, MASTER_PATH, iso.mount)
    assert registry["period_days"] == 365
    write_doc(vault_client, MASTER_PATH, {**registry, "period_days": 10}, iso.mount)
    with Keyops(iso.config) as k:
        plan = rotate_due(k, dry_run=True)
    assert [(r.level, r.dry_run) for r in plan.rotations] == [("master", True)]
    assert "period 10 days" in plan.rotations[0].reason
    assert dataclasses.asdict(plan)["rotations"][0]["new_version"] == 2
