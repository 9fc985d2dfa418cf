"""keyops.kms.tenant, secret and key_info driven through real ansible-playbook runs.

Each scenario is two playbook runs: every mutating task in check mode (then the
test verifies, with the root hvac client or a separate Keyops, that nothing
changed), and every task for real followed by a re-run (then it verifies the
new state independently and that the re-run changed nothing). Both runs are
-vvv and their output is scanned for the plaintexts, the Vault token and the
HSM PIN.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from _plays import apply_play, check_play

from keyops.config import Config
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops, keyring_path, secret_path

pytestmark = pytest.mark.integration


def kv_read(vault_client: Any, path: str) -> dict[str, Any] | None:
    """A keyops document as stored, read with the root token (not through keyops)."""
    import hvac.exceptions

    try:
        resp = vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point="keyops",
                                                              raise_on_deleted_version=True)
    except hvac.exceptions.InvalidPath:
        return None
    return resp["data"]["data"]


def secrets_of(stack: Any) -> list[str]:
    env = stack.env()
    return [env["VAULT_TOKEN"], Path(env["KEYOPS_PKCS11_PIN_FILE"]).read_text().strip()]


@pytest.fixture
def keyops_helper(config: Config) -> Any:
    """A separate Keyops of the test itself, for set-up and independent checks."""
    with Keyops(config) as k:
        yield k


def test_tenant_check_apply_rerun(ansible_playbook: Any, vault_client: Any, keyops_helper: Keyops,
                                  stack: Any, find_leaks: Any) -> None:
    new, transit, update, remove = (f"t-{uuid.uuid4().hex[:8]}" for _ in range(4))
    keyops_helper.create_tenant(update)
    keyops_helper.create_tenant(remove)
    tasks = [
        {"name": "create tenant", "keyops.kms.tenant": {"name": new, "dek_period_days": 10}},
        {"name": "create transit tenant", "keyops.kms.tenant": {"name": transit, "residence": "transit"}},
        {"name": "update policy", "keyops.kms.tenant": {"name": update, "dek_period_days": 7,
                                                        "dek_usage_cap": 1000000}},
        {"name": "remove tenant", "keyops.kms.tenant": {"name": remove, "state": "absent"}},
    ]
    check = ansible_playbook(check_play(tasks), verbosity=3).assert_ok()
    assert check.changed_tasks() == [f"check: {t['name']}" for t in tasks]
    assert kv_read(vault_client, keyring_path(new)) is None
    assert kv_read(vault_client, keyring_path(transit)) is None
    assert kv_read(vault_client, keyring_path(update))["policy"]["dek_period_days"] == 30
    assert kv_read(vault_client, keyring_path(remove)) is not None
    diff = check.result("check: update policy")["diff"]
    assert diff["before"]["policy"]["dek_period_days"] == 30
    assert diff["after"]["policy"]["dek_period_days"] == 7
    assert diff["after"]["dek"] == {"primary": 1, "versions": {"1": "active"}}

    run = ansible_playbook(apply_play(tasks), verbosity=3).assert_ok()
    assert run.changed_tasks() == [f"apply: {t['name']}" for t in tasks]
    created = kv_read(vault_client, keyring_path(new))
    assert created["policy"]["dek_period_days"] == 10 and created["policy"]["kek_period_days"] == 90
    assert created["kek"]["primary"] == 1 and created["dek"]["primary"] == 1
    assert kv_read(vault_client, keyring_path(transit))["policy"]["kek_residence"] == "transit"
    assert vault_client.secrets.transit.read_key(name=f"keyops-{transit}", mount_point="transit")["data"][
        "exportable"] is False
    assert kv_read(vault_client, keyring_path(update))["policy"] == {
        "kek_residence": "kv", "kek_period_days": 90, "dek_period_days": 7, "dek_usage_cap": 1000000}
    assert kv_read(vault_client, keyring_path(remove)) is None

    result = run.result("apply: create tenant")
    assert (result["tenant"], result["kek_version"], result["dek_version"]) == (new, 1, 1)
    assert result["diff"]["before"] == {"exists": False}
    assert result["diff"]["after"]["kek"] == {"primary": 1, "versions": {"1": "active"}}
    assert run.result("apply: remove tenant")["diff"]["after"] == {"exists": False}
    for task in tasks:
        assert run.result(f"rerun: {task['name']}")["changed"] is False, task["name"]
    # Diffs and results carry versions and states, never wrapped keys.
    assert "wrapped" not in run.output and "wrapped" not in check.output
    assert find_leaks(check.output + run.output, secrets_of(stack)) == []


def test_tenant_refuses_residence_change_with_library_message(ansible_playbook: Any, keyops_helper: Keyops,
                                                              tenant_name: str) -> None:
    keyops_helper.create_tenant(tenant_name)
    run = ansible_playbook(apply_play([], then=[
        {"name": "change residence", "keyops.kms.tenant": {"name": tenant_name, "residence": "transit"},
         "ignore_errors": True},
        {"name": "bad name", "keyops.kms.tenant": {"name": "Bad/Name"}, "ignore_errors": True},
        {"name": "secret of a missing tenant", "keyops.kms.secret": {
            "tenant": f"missing-{tenant_name}", "name": "x", "value": "v"}, "ignore_errors": True},
    ])).assert_ok()
    residence = run.result("change residence")
    assert run.status("change residence") == "failed" and residence["error"] == "invalid_input"
    assert "residence cannot change in place" in residence["msg"] and residence["retryable"] is False
    assert run.result("bad name")["error"] == "invalid_input"
    assert "invalid tenant name" in run.result("bad name")["msg"]
    missing = run.result("secret of a missing tenant")
    assert missing["error"] == "tenant_not_found" and "keyops tenant create" in missing["msg"]
    assert "Traceback" not in run.output


def test_action_group_defaults_retryable_errors_and_missing_library(ansible_playbook: Any) -> None:
    run = ansible_playbook(apply_play([], then=[
        {"name": "unreachable through module_defaults", "keyops.kms.key_info": {}, "ignore_errors": True,
         "module_defaults": {"group/keyops.kms.all": {"url": "http://127.0.0.1:9", "kv_mount": "keyops"}}},
        {"name": "python without keyops", "keyops.kms.key_info": {}, "ignore_errors": True,
         "vars": {"ansible_python_interpreter": "/usr/bin/python3"}},
    ])).assert_ok()
    unreachable = run.result("unreachable through module_defaults")
    assert unreachable["error"] == "vault_unreachable" and unreachable["retryable"] is True
    assert "127.0.0.1:9" in unreachable["msg"]
    assert "Failed to import the required Python library (keyops)" in run.result("python without keyops")["msg"]


def test_secret_check_apply_rerun_get_and_key_info(ansible_playbook: Any, vault_client: Any, config: Config,
                                                    keyops_helper: Keyops, tenant_name: str, stack: Any,
                                                    find_leaks: Any) -> None:
    plaintexts = {"db": f"db-pass-{uuid.uuid4().hex}", "api": f"api-key-{uuid.uuid4().hex}",
                  "old": f"old-{uuid.uuid4().hex}", "same": f"same-{uuid.uuid4().hex}"}
    keyops_helper.create_tenant(tenant_name, Policy(dek_period_days=15))
    keyops_helper.put_secret(tenant_name, "old/one", plaintexts["old"])
    unchanged = keyops_helper.put_secret(tenant_name, "same", plaintexts["same"])
    tasks = [
        {"name": "put db", "keyops.kms.secret": {"tenant": tenant_name, "name": "db/password",
                                                 "value": "{{ plaintexts.db }}"}},
        {"name": "put api", "keyops.kms.secret": {"tenant": tenant_name, "name": "api/key",
                                                  "value": "{{ plaintexts.api }}"}},
        {"name": "delete old", "keyops.kms.secret": {"tenant": tenant_name, "name": "old/one", "state": "absent"}},
    ]
    check = ansible_playbook(check_play(tasks + [
        {"name": "put same", "keyops.kms.secret": {"tenant": tenant_name, "name": "same",
                                                   "value": "{{ plaintexts.same }}"}}]),
        verbosity=3, extra_vars={"plaintexts": plaintexts}).assert_ok()
    assert check.changed_tasks() == [f"check: {t['name']}" for t in tasks]
    assert kv_read(vault_client, secret_path(tenant_name, "db/password")) is None
    assert kv_read(vault_client, secret_path(tenant_name, "api/key")) is None
    assert kv_read(vault_client, secret_path(tenant_name, "old/one")) is not None
    assert check.result("check: put db")["diff"] == {
        "before": {"exists": False, "kv_version": None, "dek_version": None},
        "after": {"exists": True, "kv_version": None, "dek_version": None}}
    same = check.result("check: put same")
    assert same["changed"] is False and same["kv_version"] == unchanged.version

    then = [
        {"name": "get db", "keyops.kms.secret": {"tenant": tenant_name, "name": "db/password", "state": "get"},
         "register": "got"},
        {"name": "registered value is the plaintext", "ansible.builtin.assert": {
            "that": ["got.value == plaintexts.db", "got.value_encoding == 'utf-8'"], "quiet": True}},
        {"name": "lookup db", "ansible.builtin.assert": {
            "that": [f"lookup('keyops.kms.secret', '{tenant_name}/db/password') == plaintexts.db",
                     f"lookup('keyops.kms.secret', tenant='{tenant_name}', name='api/key') == plaintexts.api"],
            "quiet": True}},
        {"name": "key info", "keyops.kms.key_info": {"tenant": tenant_name}},
        {"name": "key info all", "keyops.kms.key_info": {}},
    ]
    run = ansible_playbook(apply_play(tasks, then=then), verbosity=3,
                           extra_vars={"plaintexts": plaintexts}).assert_ok()
    assert run.changed_tasks() == [f"apply: {t['name']}" for t in tasks]
    for task in tasks:
        assert run.result(f"rerun: {task['name']}")["changed"] is False, task["name"]

    # Independent checks: what is stored is a keyops ciphertext that a separate Keyops decrypts.
    with Keyops(config) as k:
        assert k.get_secret(tenant_name, "db/password").decode() == plaintexts["db"]
        assert k.get_secret(tenant_name, "api/key").decode() == plaintexts["api"]
    stored = kv_read(vault_client, secret_path(tenant_name, "db/password"))
    assert stored["ciphertext"].startswith(f"keyops:v1:{tenant_name}:1:")
    assert kv_read(vault_client, secret_path(tenant_name, "old/one")) is None
    put = run.result("apply: put db")
    assert put["diff"]["after"] == {"exists": True, "kv_version": 1, "dek_version": 1}
    assert run.result("rerun: put db")["kv_version"] == 1

    # The get result is censored for every callback; register still had the value (assert passed).
    got = run.result("get db")
    assert "value" not in got and got.get("censored")
    assert run.status("registered value is the plaintext") == "ok"
    assert run.status("lookup db") == "ok"

    info = run.result("key info")
    assert info["changed"] is False and info["master"]["primary"] >= 1
    [status] = info["tenants"]
    assert status["tenant"] == tenant_name and status["policy"]["dek_period_days"] == 15
    assert status["dek"]["versions"][0]["state"] == "active" and status["dek"]["versions"][0]["uses"] > 0
    assert status["due"] == [] and info["due"] == []
    assert tenant_name in [t["tenant"] for t in run.result("key info all")["tenants"]]

    leaks = find_leaks(check.output + run.output, list(plaintexts.values()) + secrets_of(stack))
    assert leaks == []
    # The modules leave audit events like the CLI does (the stack sets KEYOPS_AUDIT_LOG).
    from keyops.audit import read_events

    ours = [e for e in read_events(stack.keyops_audit_log) if e.get("tenant") == tenant_name]
    assert {"secret.write", "secret.delete"} <= {e.get("operation") for e in ours}
