"""keyops.kms.rotate, reencrypt, migrate, transit_key and master_key through real ansible-playbook runs.

As in test_modules.py: a check-mode run (then an independent check that
nothing changed), a real run followed by a re-run (then an independent check
of the new state and that the re-run changed nothing), -vvv output scanned
for plaintexts, the token and the PIN.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from _plays import apply_play, check_play

from keyops.config import Config
from keyops.model.keyring import Policy, utcnow
from keyops.ops import rotation
from keyops.ops.front import Keyops, keyring_path, secret_path

pytestmark = pytest.mark.integration


def uid() -> str:
    return uuid.uuid4().hex[:8]


def kv_read(client: Any, path: str) -> dict[str, Any] | None:
    try:
        resp = client.secrets.kv.v2.read_secret_version(path=path, mount_point="keyops", raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return resp["data"]["data"]


def record_dek(client: Any, tenant: str, name: str) -> int:
    return int(kv_read(client, secret_path(tenant, name))["ciphertext"].split(":")[3])


def secrets_of(env: dict[str, str]) -> list[str]:
    return [env["VAULT_TOKEN"], Path(env["KEYOPS_PKCS11_PIN_FILE"]).read_text().strip()]


def transit_key(client: Any, name: str) -> dict[str, Any] | None:
    try:
        return client.secrets.transit.read_key(name=name, mount_point="transit")["data"]
    except hvac.exceptions.InvalidPath:
        return None


def test_rotate_and_reencrypt(ansible_playbook: Any, vault_client: Any, config: Config, stack: Any,
                              find_leaks: Any) -> None:
    dek_t, kek_t, moved_a, moved_b, due_t, fresh_t = (f"t-{uid()}" for _ in range(6))
    plaintexts = {f"{t}/{n}": f"pt-{uid()}-{n}" for t in (moved_a, moved_b, kek_t) for n in ("a", "b/c")}
    past = utcnow() - dt.timedelta(days=40)
    with Keyops(config) as k, Keyops(config, clock=lambda: past) as old:
        for tenant in (dek_t, kek_t, moved_a, moved_b, fresh_t):
            k.create_tenant(tenant)
        old.create_tenant(due_t, Policy(dek_period_days=30, kek_period_days=90))
        for key, value in plaintexts.items():
            tenant, name = key.split("/", 1)
            k.put_secret(tenant, name, value)
        for tenant in (moved_a, moved_b):
            rotation.rotate(k, tenant, "dek")  # their records are now behind the primary DEK v2
    tasks = [
        {"name": "rotate dek", "keyops.kms.rotate": {"tenant": dek_t, "level": "dek", "expect_version": 1,
                                                     "reason": "test"}},
        {"name": "rotate kek", "keyops.kms.rotate": {"tenant": kek_t, "level": "kek", "expect_version": 1}},
        {"name": "rotate due", "keyops.kms.rotate": {"due_only": True, "tenants": [due_t, fresh_t],
                                                     "include_master": False}},
        {"name": "reencrypt", "keyops.kms.reencrypt": {"tenants": [moved_a, moved_b], "workers": 2,
                                                       "batch_size": 1}},
    ]
    check = ansible_playbook(check_play(tasks), verbosity=3).assert_ok()
    assert check.changed_tasks() == [f"check: {t['name']}" for t in tasks]
    for tenant in (dek_t, kek_t, due_t):
        ring = kv_read(vault_client, keyring_path(tenant))
        assert ring["dek"]["primary"] == 1 and ring["kek"]["primary"] == 1, tenant
    assert {record_dek(vault_client, t, n) for t in (moved_a, moved_b) for n in ("a", "b/c")} == {1}
    due = check.result("check: rotate due")
    assert [(r["tenant"], r["level"], r["old_version"], r["new_version"]) for r in due["rotated"]] == [
        (due_t, "dek", 1, 2)]
    assert due["rotated"][0]["reason"].startswith("due: age") and due["checked"] == 2
    plan = check.result("check: reencrypt")
    assert [(r["tenant"], r["rewritten"], r["changed"]) for r in plan["results"]] == [
        (moved_a, 2, True), (moved_b, 2, True)]
    assert check.result("check: rotate kek")["diff"] == {"before": {f"{kek_t}/kek": {"primary": 1}},
                                                          "after": {f"{kek_t}/kek": {"primary": 2}}}

    run = ansible_playbook(apply_play(tasks, then=[
        {"name": "nothing due now", "keyops.kms.rotate": {"due_only": True, "tenants": [due_t, fresh_t],
                                                          "include_master": False}, "check_mode": True},
    ]), verbosity=3).assert_ok()
    assert run.changed_tasks() == [f"apply: {t['name']}" for t in tasks]
    for task in tasks:
        assert run.result(f"rerun: {task['name']}")["changed"] is False, task["name"]
    assert run.result("rerun: rotate dek")["unchanged"][0]["detail"]
    assert run.result("rerun: rotate due")["summary"] == "nothing due (2 tenants checked)"
    assert run.result("nothing due now")["rotated"] == []

    # Independent checks of the new state.
    assert kv_read(vault_client, keyring_path(dek_t))["dek"]["primary"] == 2
    kek_ring = kv_read(vault_client, keyring_path(kek_t))
    assert kek_ring["kek"]["primary"] == 2 and {d["parent_version"] for d in kek_ring["dek"]["versions"]} == {2}
    assert kv_read(vault_client, keyring_path(due_t))["dek"]["primary"] == 2
    assert kv_read(vault_client, keyring_path(fresh_t))["dek"]["primary"] == 1
    assert {record_dek(vault_client, t, n) for t in (moved_a, moved_b) for n in ("a", "b/c")} == {2}
    with Keyops(config) as k:
        for key, value in plaintexts.items():
            tenant, name = key.split("/", 1)
            assert k.get_secret(tenant, name).decode() == value
    done = run.result("apply: reencrypt")
    assert [(r["tenant"], r["rewritten"], r["references"], r["unreferenced"]) for r in done["results"]] == [
        (moved_a, 2, {"2": 2}, [1]), (moved_b, 2, {"2": 2}, [1])]
    assert done["diff"]["after"][moved_a] == {"primary_dek": 2, "records_under_primary": 2,
                                              "records_under_older_deks": 0}
    rotated = run.result("apply: rotate dek")["rotated"]
    assert [(r["tenant"], r["level"], r["new_version"], r["reason"]) for r in rotated] == [(dek_t, "dek", 2, "test")]
    assert '"wrapped"' not in run.output  # no wrapped key in any result or diff
    assert find_leaks(check.output + run.output, list(plaintexts.values()) + secrets_of(stack.env())) == []


def test_rotate_and_reencrypt_argument_errors(ansible_playbook: Any) -> None:
    run = ansible_playbook(apply_play([], then=[
        {"name": "master with tenant", "keyops.kms.rotate": {"level": "master", "tenant": "x"}, "ignore_errors": True},
        {"name": "dek without tenant", "keyops.kms.rotate": {"level": "dek"}, "ignore_errors": True},
        {"name": "level and due", "keyops.kms.rotate": {"level": "dek", "due_only": True, "tenant": "x"},
         "ignore_errors": True},
        {"name": "missing tenants", "keyops.kms.reencrypt": {"tenants": [f"missing-{uid()}", f"missing-{uid()}"]},
         "ignore_errors": True},
    ])).assert_ok()
    assert "give no tenant" in run.result("master with tenant")["msg"]
    assert "needs tenant or tenants" in run.result("dek without tenant")["msg"]
    assert "mutually exclusive" in run.result("level and due")["msg"]
    missing = run.result("missing tenants")
    assert run.status("missing tenants") == "failed" and missing["error"] == "tenant_not_found"
    assert len(missing["failures"]) == 2 and missing["results"] == []


def test_a_failing_tenant_fails_the_task_with_the_error_tables_retryable(ansible_playbook: Any, vault_client: Any,
                                                                         config: Config) -> None:
    """The others still rotate; the task fails with the first failure's code, and retryable from the table."""
    free, locked = f"t-{uid()}", f"t-{uid()}"
    with Keyops(config) as k:
        for tenant in (free, locked):
            k.create_tenant(tenant)
    # A live rotation of ``locked`` (this test's process holds its lease): rotating it now is a Conflict.
    vault_client.secrets.kv.v2.create_or_update_secret(
        path=f"locks/tenants/{locked}", mount_point="keyops",
        secret={"owner": uid(), "host": socket.gethostname(), "pid": os.getpid(), "what": "a test's rotation",
                "since": "2025-01-01T00:00:00Z", "expires_at": time.time() + 600})
    run = ansible_playbook(apply_play([], then=[
        {"name": "rotate both", "keyops.kms.rotate": {"tenants": [locked, free], "level": "dek"},
         "ignore_errors": True},
        {"name": "reencrypt a missing one", "keyops.kms.reencrypt": {"tenants": [free, f"missing-{uid()}"]},
         "ignore_errors": True},
    ])).assert_ok()
    both = run.result("rotate both")
    assert run.status("rotate both") == "failed" and both["error"] == "conflict" and both["retryable"] is True
    assert both["msg"].startswith("rotated 1 key; 1 failed: another rotation of tenant")
    assert [(r["tenant"], r["new_version"]) for r in both["rotated"]] == [(free, 2)] and both["changed"] is True
    assert [(f["tenant"], f["level"], f["error"]) for f in both["failures"]] == [(locked, "dek", "conflict")]
    assert kv_read(vault_client, keyring_path(locked))["dek"]["primary"] == 1
    missing = run.result("reencrypt a missing one")
    assert missing["error"] == "tenant_not_found" and missing["retryable"] is False
    assert missing["msg"].startswith("re-encryption failed for 1 of 2 tenants: tenant ")
    assert [r["tenant"] for r in missing["results"]] == [free] and set(missing["failures"][0]) == {
        "tenant", "error", "message"}


def test_migrate(ansible_playbook: Any, vault_client: Any, config: Config, stack: Any, find_leaks: Any) -> None:
    tenant, source, key = f"t-{uid()}", f"legacy/{uid()}", f"legacy-{uid()}"
    plain = {"db": f"db-{uid()}", "api": f"api-{uid()}", "enc": f"enc-{uid()}"}
    with Keyops(config) as k:
        k.create_tenant(tenant)
    vault_client.secrets.transit.create_key(name=key, mount_point="transit")
    encrypted = vault_client.secrets.transit.encrypt_data(
        name=key, plaintext=base64.b64encode(plain["enc"].encode()).decode(), mount_point="transit")["data"][
        "ciphertext"]
    for name, data in (("db", {"password": plain["db"]}), ("api", {"value": plain["api"]}),
                       ("enc", {"value": encrypted})):
        vault_client.secrets.kv.v2.create_or_update_secret(path=f"{source}/{name}", secret=data, mount_point="keyops")
    tasks = [{"name": "migrate", "keyops.kms.migrate": {"tenant": tenant, "source": source, "transit_key": key,
                                                        "workers": 2}}]
    check = ansible_playbook(check_play(tasks), verbosity=3).assert_ok()
    planned = check.result("check: migrate")
    assert planned["changed"] is True and (planned["total"], planned["migrated"]) == (3, 3)
    assert all(kv_read(vault_client, secret_path(tenant, n)) is None for n in plain)
    assert kv_read(vault_client, f"{source}/db") == {"password": plain["db"]}

    run = ansible_playbook(apply_play(tasks), verbosity=3).assert_ok()
    done, again = run.result("apply: migrate"), run.result("rerun: migrate")
    assert done["changed"] is True and (done["migrated"], done["from_plaintext"], done["from_transit"]) == (3, 2, 1)
    assert done["diff"]["after"] == {f"keyops/{source}": {"migrated": 3, "not_migrated": 0,
                                                          "original_versions_purged": 0}}
    assert again["changed"] is False and again["already_migrated"] == 3 and again["migrated"] == 0
    with Keyops(config) as k:
        assert {n: k.get_secret(tenant, n).decode() for n in plain} == plain
    assert kv_read(vault_client, f"{source}/db") == {"password": plain["db"]}  # copy: readers keep working

    cutover = [{"name": "migrate", "keyops.kms.migrate": {"tenant": tenant, "source": source, "transit_key": key,
                                                          "mode": "cutover"}}]
    cut = ansible_playbook(apply_play(cutover), verbosity=3).assert_ok()
    done, again = cut.result("apply: migrate"), cut.result("rerun: migrate")
    assert done["changed"] is True and (done["mode"], done["migrated"], done["total"]) == ("cutover", 3, 3)
    assert again["changed"] is False and again["already_migrated"] == 3
    assert "keyops_migrated" in kv_read(vault_client, f"{source}/db")
    leaks = find_leaks(check.output + run.output + cut.output, list(plain.values()) + [encrypted]
                       + secrets_of(stack.env()))
    assert leaks == []


def test_transit_key(ansible_playbook: Any, vault_client: Any, config: Config) -> None:
    created, rotated, deleted, signing = (f"app-{uid()}" for _ in range(4))
    for name in (rotated, deleted):
        vault_client.secrets.transit.create_key(name=name, mount_point="transit")
    tenant = f"t-{uid()}"
    with Keyops(config) as k:
        k.create_tenant(tenant, Policy(kek_residence="transit"))
    tasks = [
        {"name": "create", "keyops.kms.transit_key": {"name": created, "auto_rotate_period": "24h",
                                                      "deletion_allowed": False}},
        {"name": "rotate and trim", "keyops.kms.transit_key": {
            "name": rotated, "rotate": True, "expect_version": 1, "min_decryption_version": 2,
            "min_encryption_version": 2, "trim_below": 2}},
        {"name": "delete", "keyops.kms.transit_key": {"name": deleted, "state": "absent", "deletion_allowed": True}},
        {"name": "signing", "keyops.kms.transit_key": {"name": signing, "type": "ed25519"}},
    ]
    check = ansible_playbook(check_play(tasks)).assert_ok()
    assert check.changed_tasks() == [f"check: {t['name']}" for t in tasks]
    assert transit_key(vault_client, created) is None and transit_key(vault_client, signing) is None
    assert transit_key(vault_client, rotated)["latest_version"] == 1 and transit_key(vault_client, deleted)
    plan = check.result("check: rotate and trim")
    assert plan["actions"] == ["rotate", "set min_decryption_version=2", "set min_encryption_version=2",
                               "trim versions below 2"]
    assert plan["diff"]["before"]["versions"] == [1] and plan["diff"]["after"]["versions"] == [2]

    run = ansible_playbook(apply_play(tasks, then=[
        {"name": "exportable", "keyops.kms.transit_key": {"name": created, "exportable": True}, "ignore_errors": True},
        {"name": "change type", "keyops.kms.transit_key": {"name": created, "type": "rsa-2048"},
         "ignore_errors": True},
        {"name": "delete a tenant's key", "keyops.kms.transit_key": {
            "name": f"keyops-{tenant}", "state": "absent", "deletion_allowed": True}, "ignore_errors": True},
    ])).assert_ok()
    assert run.changed_tasks() == [f"apply: {t['name']}" for t in tasks]
    for task in tasks:
        assert run.result(f"rerun: {task['name']}")["changed"] is False, task["name"]
    assert run.result("rerun: rotate and trim")["notes"] == ["not rotated: the latest version is 2, not 1"]
    made = transit_key(vault_client, created)
    assert made["auto_rotate_period"] == 86400 and made["exportable"] is False and made["type"] == "aes256-gcm96"
    trimmed = transit_key(vault_client, rotated)
    assert (trimmed["latest_version"], trimmed["min_decryption_version"], trimmed["min_encryption_version"],
            trimmed["min_available_version"], sorted(trimmed["keys"])) == (2, 2, 2, 2, ["2"])
    assert transit_key(vault_client, deleted) is None
    assert transit_key(vault_client, signing)["type"] == "ed25519"
    assert run.result("apply: signing")["key"]["versions"] == [1]
    assert "public_key" not in run.output
    assert run.result("exportable")["error"] == "invalid_input"
    assert "type cannot change" in run.result("change type")["msg"]
    refused = run.result("delete a tenant's key")
    assert refused["error"] == "key_state" and tenant in refused["msg"]
    assert transit_key(vault_client, f"keyops-{tenant}") is not None


def test_master_key_on_its_own_stack(ansible_playbook: Any, stack_factory: Any, find_leaks: Any) -> None:
    """Master rotation re-wraps every tenant's KEK, so it runs on a stack of its own."""
    own = stack_factory()
    own.up()
    env = own.env()
    client = hvac.Client(url=env["VAULT_ADDR"], token=env["VAULT_TOKEN"], session=_session())
    tenant, value = f"t-{uid()}", f"v-{uid()}"
    tasks = [
        {"name": "master present", "keyops.kms.master_key": {}},
        {"name": "tenant", "keyops.kms.tenant": {"name": tenant}},
        {"name": "secret", "keyops.kms.secret": {"tenant": tenant, "name": "s", "value": value}, "check_mode": False},
        {"name": "rotate master", "keyops.kms.master_key": {"rotate": True, "expect_version": 1}},
    ]
    check = ansible_playbook(check_play(tasks[:2]), verbosity=3, env=env).assert_ok()
    assert check.changed_tasks() == ["check: master present", "check: tenant"]
    assert check.result("check: master present")["diff"]["after"] == {
        "exists": True, "primary": 1, "versions": {"1": "active"}}
    assert kv_read(client, "master") is None and kv_read(client, keyring_path(tenant)) is None

    first = ansible_playbook(apply_play(tasks[:3]), env=env).assert_ok()
    assert first.result("apply: master present")["created"] is True
    assert first.result("rerun: master present")["changed"] is False
    plan = ansible_playbook(check_play(tasks[3:]), env=env).assert_ok()
    planned = plan.result("check: rotate master")
    assert planned["changed"] is True and planned["rotation"]["tenants"] == 1 and planned["version"] == 2
    assert planned["diff"]["after"]["versions"] == {"1": "decrypt_only", "2": "active"}
    assert kv_read(client, "master")["primary"] == 1

    run = ansible_playbook(apply_play(tasks[3:]), verbosity=3, env=env).assert_ok()
    assert run.result("apply: rotate master")["rotation"]["new_version"] == 2
    assert run.result("rerun: rotate master")["changed"] is False
    assert kv_read(client, "master")["primary"] == 2
    assert {kv["parent_version"] for kv in kv_read(client, keyring_path(tenant))["kek"]["versions"]} == {2}
    # Read back by the CLI, a separate process on that stack's token.
    got = subprocess.run([str(Path(sys.executable).parent / "keyops"), "secret", "get", tenant, "s"],
                         env={**_plain_env(), **env}, capture_output=True, text=True, check=True, timeout=120)
    assert got.stdout == value
    assert find_leaks(check.output + run.output, [value] + secrets_of(env)) == []
    label_v2 = kv_read(client, "master")["versions"][1]["label"]  # <prefix>-<registry id>-v2
    assert label_v2.startswith("keyops-master-") and label_v2.endswith("-v2")
    assert run.result("apply: rotate master")["label"] == label_v2


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def _plain_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "KEYOPS_", "BAO_", "SOFTHSM2"))}


def test_master_key_makes_the_mounts_of_a_fresh_namespace(ansible_playbook: Any, stack: Any, vault_client: Any,
                                                           ansible_env: dict[str, str]) -> None:
    """init_mounts (the default): check mode plans the mounts and the key, changes nothing; apply makes both."""
    name = f"ns-{uid()}"
    vault_client.adapter.post(f"/v1/sys/namespaces/{name}")
    client = hvac.Client(url=stack.addr, token=stack.env()["VAULT_TOKEN"], namespace=name, session=_session())
    # A keyed audit trail needs its Transit key in each namespace; this test is about the mounts.
    env = {"VAULT_NAMESPACE": name, "KEYOPS_AUDIT_LOG": "", "KEYOPS_AUDIT_ANCHOR": ""}
    tasks = [{"name": "master present", "keyops.kms.master_key": {}}]
    try:
        check = ansible_playbook(check_play(tasks), env=env).assert_ok()
        planned = check.result("check: master present")
        assert planned["changed"] is True and planned["created"] is True
        assert planned["mounts"] == [{"path": "keyops", "engine": "kv", "action": "create"},
                                     {"path": "transit", "engine": "transit", "action": "create"}]
        assert "keyops/" not in client.sys.list_mounted_secrets_engines()["data"]

        run = ansible_playbook(apply_play(tasks), env=env).assert_ok()
        assert [m["action"] for m in run.result("apply: master present")["mounts"]] == ["create", "create"]
        rerun = run.result("rerun: master present")
        first = run.result("apply: master present")
        assert first["created"] is True and first["label"] == rerun["label"]
        assert rerun["changed"] is False and rerun["created"] is False
        assert [m["action"] for m in rerun["mounts"]] == ["unchanged", "unchanged"]
        mounts = client.sys.list_mounted_secrets_engines()["data"]
        assert mounts["keyops/"]["options"]["version"] == "2" and mounts["transit/"]["type"] == "transit"
        assert client.secrets.kv.v2.read_secret_version(path="master", mount_point="keyops",
                                                        raise_on_deleted_version=True)["data"]["data"]["primary"] == 1
    finally:
        for mount in ("keyops", "transit"):
            with contextlib.suppress(hvac.exceptions.VaultError):
                client.sys.disable_secrets_engine(path=mount)
        with contextlib.suppress(hvac.exceptions.VaultError):
            vault_client.adapter.delete(f"/v1/sys/namespaces/{name}")
