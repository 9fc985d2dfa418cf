"""keyops.kms.policy driven through real ansible-playbook runs: check mode, apply, re-run, update, removal.

The policies on the server are read back with the root hvac client, never
through keyops. Refusals (a roles file with an unknown operation, a token
without the security-admin role) change nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
from _plays import apply_play, check_play, play

from keyops import access
from keyops.config import Config
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration


def server_policy(vault_client: Any, name: str) -> str | None:
    try:
        return vault_client.sys.read_policy(name=name)["data"]["rules"]
    except hvac.exceptions.InvalidPath:
        return None


def roles_file(path: Path, role: str, operations: list[str]) -> str:
    path.write_text(f'schema = 1\n[roles.{role}]\nscope = "global"\noperations = {operations!r}\n'
                    .replace("'", '"'))
    return str(path)


def test_policy_check_apply_rerun_update_remove(ansible_playbook: Any, vault_client: Any, config: Config,
                                                 tenant_name: str, tmp_path: Path, stack: Any,
                                                 find_leaks: Any) -> None:
    with Keyops(config) as k:
        k.create_tenant(tenant_name)
    viewer = f"viewer-{uuid.uuid4().hex[:8]}"
    first = roles_file(tmp_path / "roles-1.toml", viewer, ["status.read"])
    app_policy, viewer_policy = f"keyops-app-{tenant_name}", f"keyops-{viewer}"
    tasks = [
        {"name": "app policy", "keyops.kms.policy": {"roles": ["app"], "tenants": [tenant_name]}},
        {"name": "viewer policy", "keyops.kms.policy": {"roles_file": first, "tenants": []}},
    ]
    check = ansible_playbook(check_play(tasks), verbosity=3).assert_ok()
    assert check.changed_tasks() == ["check: app policy", "check: viewer policy"]
    assert check.result("check: app policy")["created"] == [app_policy]
    assert f'path "transit/decrypt/keyops-{tenant_name}"' in check.result("check: app policy")["diff"]["after"][
        app_policy]
    assert server_policy(vault_client, app_policy) is None and server_policy(vault_client, viewer_policy) is None

    run = ansible_playbook(apply_play(tasks), verbosity=3).assert_ok()
    assert run.changed_tasks() == ["apply: app policy", "apply: viewer policy"]
    assert run.result("rerun: app policy")["changed"] is False
    assert run.result("rerun: viewer policy")["policies"] == [{"name": viewer_policy, "action": "unchanged"}]
    expected = access.render_policy(access.load_roles().get("app"), tenant_name, access.Mounts())
    assert server_policy(vault_client, app_policy) == expected
    assert 'path "keyops/data/tenants/+/keyring"' in server_policy(vault_client, viewer_policy)
    assert "audit" not in server_policy(vault_client, viewer_policy)

    second = roles_file(tmp_path / "roles-2.toml", viewer, ["status.read", "audit.read"])
    change = [
        {"name": "viewer update", "keyops.kms.policy": {"roles_file": second, "tenants": []}},
        {"name": "app removal", "keyops.kms.policy": {"roles": ["app"], "tenants": [tenant_name],
                                                      "state": "absent"}},
    ]
    check = ansible_playbook(check_play(change)).assert_ok()
    diff = check.result("check: viewer update")["diff"]
    assert "audit" not in diff["before"][viewer_policy] and 'path "sys/audit"' in diff["after"][viewer_policy]
    assert check.result("check: app removal")["removed"] == [app_policy]
    assert server_policy(vault_client, app_policy) == expected
    run2 = ansible_playbook(apply_play(change, then=[{"name": "viewer removal", "keyops.kms.policy": {
        "roles_file": second, "tenants": [], "state": "absent"}}])).assert_ok()
    assert run2.result("apply: viewer update")["updated"] == [viewer_policy]
    assert run2.result("rerun: viewer update")["changed"] is False
    assert run2.result("rerun: app removal")["changed"] is False
    assert 'path "sys/audit"' in run2.result("apply: viewer update")["diff"]["after"][viewer_policy]
    assert run2.result("viewer removal")["removed"] == [viewer_policy]
    assert server_policy(vault_client, viewer_policy) is None
    assert server_policy(vault_client, app_policy) is None
    env = stack.env()
    secrets = [env["VAULT_TOKEN"], Path(env["KEYOPS_PKCS11_PIN_FILE"]).read_text().strip()]
    assert find_leaks(check.output + run.output + run2.output, secrets) == []


def test_policy_refusals_change_nothing(ansible_playbook: Any, vault_client: Any, config: Config,
                                        tenant_name: str, tmp_path: Path) -> None:
    with Keyops(config) as k:
        k.create_tenant(tenant_name)
        access.apply_policies(k, access.render_policies(k.roles, [], access.Mounts(), only=["auditor"]))
        auditor = access.mint_token(k, k.roles, "auditor", ttl="10m")
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\n[roles.app]\nscope = "tenant"\noperations = ["secrets.read", "keys.steal"]\n')
    before = sorted(vault_client.sys.list_policies()["data"]["policies"])
    run = ansible_playbook(play([
        {"name": "unknown operation", "keyops.kms.policy": {"roles_file": str(bad), "tenants": [tenant_name]},
         "ignore_errors": True},
        {"name": "auditor token", "keyops.kms.policy": {"roles": ["app"], "tenants": [tenant_name],
                                                         "token": auditor.token}, "ignore_errors": True},
    ]), verbosity=3).assert_ok()
    unknown = run.result("unknown operation")
    assert run.status("unknown operation") == "failed" and unknown["error"] == "invalid_input"
    assert "unknown operation 'keys.steal'" in unknown["msg"]
    refused = run.result("auditor token")
    assert refused["error"] == "not_permitted" and "policy.write" in refused["msg"]
    assert "role auditor" in refused["msg"]
    assert sorted(vault_client.sys.list_policies()["data"]["policies"]) == before
    assert auditor.token not in run.output and "Traceback" not in run.output
