"""keyops.kms.login: one login per play, its token reused by the later tasks (issue 9, item 1).

The AppRole's secret ids allow one login each (``secret_id_num_uses=1``), as
the prod inventory documents. With the login step a play of several keyops
tasks succeeds and spends the secret id once; without it the second task
fails with the authentication error. Checked independently: the stored
secret through the test's own Keyops, the secret id through the root client.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
from _plays import play

from keyops import access
from keyops.config import Config
from keyops.errors import SecretNotFound, TenantNotFound
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration

#: The play's connection: the secret id comes from the environment; after the login, the token.
MODULE_DEFAULTS = {"group/keyops.kms.all": "{{ keyops_connection | combine(keyops_session) }}"}
SESSION = ("{{ {'token': keyops_login.token, 'auth_method': 'token'} "
           "if keyops_login.token | default('') else {} }}")
LOGIN = {"name": "log in", "keyops.kms.login": {}, "register": "keyops_login", "check_mode": False}


@pytest.fixture(scope="module")
def helper(config: Config) -> Iterator[Keyops]:
    with Keyops(config) as k:
        access.apply_policies(k, access.render_policies(k.roles, [], access.Mounts.from_config(config)))
        yield k


@pytest.fixture(scope="module")
def approle(vault_client: Any, helper: Keyops) -> tuple[str, str]:
    """(mount, role name) of an AppRole of the security-admin role with single-use secret ids."""
    mount, name = f"approle-{uuid.uuid4().hex[:8]}", "ci-rotation"
    vault_client.sys.enable_auth_method("approle", path=mount)
    vault_client.auth.approle.create_or_update_approle(name, token_policies=["keyops-security-admin"],
                                                       token_ttl="10m", secret_id_num_uses=1, mount_point=mount)
    return mount, name


def run_env(vault_client: Any, approle: tuple[str, str], home: Path) -> tuple[dict[str, str], str]:
    """The environment of a scheduled run: a fresh single-use secret id, no token anywhere."""
    mount, name = approle
    role_id = vault_client.auth.approle.read_role_id(name, mount_point=mount)["data"]["role_id"]
    secret_id = vault_client.auth.approle.generate_secret_id(name, mount_point=mount)["data"]["secret_id"]
    env = {"VAULT_TOKEN": "", "BAO_TOKEN": "", "KEYOPS_VAULT_TOKEN_FILE": "", "HOME": str(home),
           "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id}
    return env, secret_id


def spent(vault_client: Any, approle: tuple[str, str], secret_id: str) -> bool:
    """Whether the secret id is gone: Vault answers 204 (no body) for one that was used up."""
    mount, name = approle
    try:
        answer = vault_client.auth.approle.read_secret_id(name, secret_id, mount_point=mount)
    except hvac.exceptions.InvalidPath:
        return True
    return not isinstance(answer, dict) or not answer.get("data")


def tasks(tenant: str, value: str) -> list[dict[str, Any]]:
    return [{"name": "create tenant", "keyops.kms.tenant": {"name": tenant}},
            {"name": "store secret", "keyops.kms.secret": {"tenant": tenant, "name": "db/password", "value": value}},
            {"name": "status", "keyops.kms.key_info": {"tenant": tenant}}]


def test_one_login_serves_every_task_of_a_play_with_a_single_use_secret_id(
        ansible_playbook: Any, vault_client: Any, approle: tuple[str, str], helper: Keyops, tmp_path: Path,
        find_leaks: Any) -> None:
    tenant, value = f"t-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    env, secret_id = run_env(vault_client, approle, tmp_path)
    check_login = {"name": "log in, check mode", "keyops.kms.login": {}, "register": "checked", "check_mode": True}
    assert_check = {"name": "check mode logs in with nothing", "ansible.builtin.assert": {
        "that": ["checked.token is none", "checked.method == 'approle'"]}}
    text = play([check_login, assert_check, LOGIN, *tasks(tenant, value)], module_defaults=MODULE_DEFAULTS,
                vars={"keyops_connection": {"approle_mount": approle[0]}, "keyops_session": SESSION})
    assert not spent(vault_client, approle, secret_id)
    run = ansible_playbook(text, env=env, verbosity=3).assert_ok()
    logged_in = run.result("log in")
    assert logged_in.get("censored") and "token" not in logged_in and not logged_in.get("changed")
    assert run.result("store secret")["changed"] and run.result("status")["tenants"][0]["tenant"] == tenant
    assert helper.get_secret(tenant, "db/password") == value.encode()
    assert spent(vault_client, approle, secret_id)
    assert find_leaks(run.output, [secret_id, value]) == []


def test_without_the_login_step_the_second_task_fails_to_log_in(
        ansible_playbook: Any, vault_client: Any, approle: tuple[str, str], helper: Keyops, tmp_path: Path) -> None:
    tenant, value = f"t-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    env, secret_id = run_env(vault_client, approle, tmp_path)
    text = play(tasks(tenant, value), module_defaults=MODULE_DEFAULTS,
                vars={"keyops_connection": {"approle_mount": approle[0]}, "keyops_session": SESSION})
    run = ansible_playbook(text, env=env)
    assert run.rc != 0 and run.result("create tenant")["changed"] and run.status("store secret") == "failed"
    failed = run.result("store secret")
    assert failed["error"] == "authentication_failed" and failed["retryable"] is False
    assert failed["msg"].startswith(f"AppRole login at auth/{approle[0]}: Vault refused the login")
    assert secret_id not in run.output
    helper.read_keyring(tenant)  # the first task did its work
    with pytest.raises(SecretNotFound):
        helper.get_secret(tenant, "db/password")


def test_a_failed_login_stops_the_play_before_any_change(
        ansible_playbook: Any, vault_client: Any, approle: tuple[str, str], helper: Keyops, tmp_path: Path) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    env, secret_id = run_env(vault_client, approle, tmp_path)
    env["VAULT_SECRET_ID"] = "not-" + secret_id
    text = play([LOGIN, *tasks(tenant, "v")], module_defaults=MODULE_DEFAULTS,
                vars={"keyops_connection": {"approle_mount": approle[0]}, "keyops_session": SESSION})
    run = ansible_playbook(text, env=env)
    assert run.rc != 0 and run.status("log in") == "failed"
    assert run.result("log in")["error"] == "authentication_failed" and secret_id not in run.output
    with pytest.raises(TenantNotFound):
        helper.read_keyring(tenant)
