"""site.yml as declared state (keyops.kms.declared_state): the plan in check mode, create-only seeds, drift.

These runs have an OpenBao and SoftHSM2 of their own (started here, not the
session's), so that drift and ``keyops_prune`` see only the tenants these
tests made. The dev inventory is pointed at that stack through
``KEYOPS_STATE_DIR``, as molecule does. What the store holds is checked with
hvac and with the ``keyops`` command, never with the module under test.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from keyops.dev.stack import DevStack, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "ansible" / "site.yml"
ROTATE = REPO / "ansible" / "rotate.yml"
DEV_INVENTORY = REPO / "inventories" / "dev"
HOST = "keyops-dev"
KV = "keyops"
TASK = "Apply the declared master key, tenants, policies and seed secrets"
POLICIES = {"standard": {"kek_period_days": 90, "dek_period_days": 30},
            "kept": {"kek_period_days": 90, "dek_period_days": 30, "keep_versions": 2}}


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    devstack = DevStack(tmp_path_factory.mktemp("keyops-site"), port=free_port(), die_with_parent=True)
    try:
        devstack.up()
        yield devstack
    finally:
        devstack.down()


@pytest.fixture(scope="module")
def vault(own_stack: DevStack) -> Any:
    import hvac
    import requests

    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=own_stack.addr, token=own_stack.env()["VAULT_TOKEN"], session=session)


def keyops(own_stack: DevStack, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **own_stack.env(), "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def stored(own_stack: DevStack, tenant: str, name: str) -> str:
    proc = keyops(own_stack, "secret", "get", tenant, name)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def site(ansible_playbook: Callable[..., Any], own_stack: DevStack,
         find_leaks: Callable[..., list[str]]) -> Callable[..., Any]:
    """``site(tenants, *args, needles=(), ok=True, playbook=SITE, **extra)``: one -vvv run, scanned for leaks."""
    stack_secrets = [own_stack.root_token_file.read_text().strip(), own_stack.pin_file.read_text().strip()]

    def run(tenants: list[dict[str, Any]], *args: str, needles: Sequence[str] = (), ok: bool = True,
            playbook: Path = SITE, **kw: Any) -> Any:
        check, diff = kw.pop("check", False), kw.pop("diff", False)
        variables = {"keyops_tenants": tenants, "keyops_rotation_policies": POLICIES, **kw}
        result = ansible_playbook(playbook, *args, inventory=DEV_INVENTORY, verbosity=3, extra_vars=variables,
                                  check=check, diff=diff,
                                  env={**own_stack.env(), "KEYOPS_STATE_DIR": str(own_stack.state_dir)})
        values = [s["value"] for t in tenants for s in t.get("secrets", []) if "value" in s]
        leaked = find_leaks(result.output, [*stack_secrets, *values, *needles])
        assert not leaked, f"{playbook.name} -vvv printed secrets: {leaked}"
        if ok:
            result.assert_ok()
        return result

    return run


def tenant(policy: str = "standard", *seeds: str, residence: str = "kv") -> dict[str, Any]:
    return {"name": f"d-{uuid.uuid4().hex[:8]}", "residence": residence, "policy": policy,
            "secrets": [{"name": n, "value": f"pt-{secrets.token_urlsafe(18)}"} for n in seeds]}


def provision_result(run: Any) -> dict[str, Any]:
    return run.result(TASK)


def keyrings(vault: Any) -> dict[str, dict[str, Any]]:
    """Every tenant's keyring document in the store, by name (read with hvac, not with keyops)."""
    import hvac.exceptions

    try:
        keys = vault.secrets.kv.v2.list_secrets(path="tenants", mount_point=KV)["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return {}
    out = {}
    for key in keys:
        try:
            found = vault.secrets.kv.v2.read_secret_version(path=f"tenants/{key}keyring", mount_point=KV,
                                                            raise_on_deleted_version=True)
        except hvac.exceptions.InvalidPath:
            continue
        out[key.rstrip("/")] = found["data"]["data"]
    return out


def test_check_mode_returns_the_plan_naming_seeds_then_apply_then_nothing(
        site: Callable[..., Any], vault: Any, own_stack: DevStack) -> None:
    a, b = tenant("standard", "db/password", "api/token"), tenant("kept", residence="transit")
    plan = site([a, b], check=True, diff=True)
    found = provision_result(plan)
    assert found["changed"] is True
    actions = [(s["action"], s["target"]) for s in found["steps"]]
    assert ("create_tenant", a["name"]) in actions and ("create_tenant", b["name"]) in actions
    assert found["seeds"] == {"create": [f"{a['name']}/db/password", f"{a['name']}/api/token"], "overwrite": []}
    # the diff of a new tenant's policy is lines, one field a line, not one JSON-escaped string
    assert "+keep_versions: 2" in plan.output and "+kek_residence: transit" in plan.output
    assert f"create seed secret {a['name']}/db/password" in plan.output
    assert not {a["name"], b["name"]} & set(keyrings(vault))

    applied = site([a, b])
    assert applied.recap[HOST]["changed"] == 1
    done = provision_result(applied)
    assert done["seeds"]["create"] == [f"{a['name']}/db/password", f"{a['name']}/api/token"]
    assert stored(own_stack, a["name"], "db/password") == a["secrets"][0]["value"]
    policy = keyrings(vault)[b["name"]]["policy"]
    assert policy["keep_versions"] == 2 and policy["kek_residence"] == "transit"

    again = site([a, b])
    assert again.recap[HOST]["changed"] == 0, again.changed_tasks()
    assert all(s["action"] == "drift" for s in provision_result(again)["steps"])


def test_a_policy_change_shows_as_a_readable_diff(site: Callable[..., Any]) -> None:
    a = tenant("standard")
    site([a])
    a["policy"] = {"kek_period_days": 90, "dek_period_days": 14}
    run = site([a], check=True, diff=True)
    steps = provision_result(run)["steps"]
    assert [s["action"] for s in steps if s.get("tenant") == a["name"]] == ["update_policy"]
    # each field on a line of its own in the diff Ansible prints, not one JSON-escaped string
    lines = run.stdout.splitlines()
    assert "-dek_period_days: 30" in lines and "+dek_period_days: 14" in lines


def test_seeds_are_create_only_and_enforce_overwrites_naming_the_seed(
        site: Callable[..., Any], own_stack: DevStack) -> None:
    a = tenant("standard", "db/password", "api/key")
    site([a])
    rotated = {"db/password": f"app-{secrets.token_urlsafe(18)}", "api/key": f"app-{secrets.token_urlsafe(18)}"}
    for name, value in rotated.items():  # the application changes its passwords, as it may
        proc = keyops(own_stack, "secret", "put", a["name"], name, stdin=value)
        assert proc.returncode == 0, proc.stderr

    kept = site([a], needles=list(rotated.values()))
    assert kept.recap[HOST]["changed"] == 0, kept.changed_tasks()
    assert {n: stored(own_stack, a["name"], n) for n in rotated} == rotated

    a["secrets"][1]["enforce"] = True
    preview = site([a], check=True, needles=list(rotated.values()))
    assert provision_result(preview)["seeds"] == {"create": [], "overwrite": [f"{a['name']}/api/key"]}
    assert stored(own_stack, a["name"], "api/key") == rotated["api/key"]

    enforced = site([a], needles=list(rotated.values()))
    assert provision_result(enforced)["seeds"] == {"create": [], "overwrite": [f"{a['name']}/api/key"]}
    assert f"overwrite secret {a['name']}/api/key with the declared seed" in enforced.output
    assert stored(own_stack, a["name"], "api/key") == a["secrets"][1]["value"]
    assert stored(own_stack, a["name"], "db/password") == rotated["db/password"]  # not enforced: stays
    assert site([a], needles=list(rotated.values())).recap[HOST]["changed"] == 0


def test_undeclared_tenants_are_a_warning_and_removed_only_with_prune(
        site: Callable[..., Any], own_stack: DevStack, vault: Any) -> None:
    a = tenant("standard")
    site([a])
    stray = f"stray-{uuid.uuid4().hex[:6]}"
    assert keyops(own_stack, "tenant", "create", stray).returncode == 0
    assert keyops(own_stack, "secret", "put", stray, "x", stdin="v").returncode == 0

    run = site([a])
    assert run.recap[HOST]["changed"] == 0
    result = provision_result(run)
    assert stray in result["drift"]
    assert any(stray in w and "not declared (drift)" in w and "prune: true" in w
               for w in result.get("warnings", [])), result.get("warnings")
    assert "[WARNING]" in run.output and stray in run.output
    assert stray in keyrings(vault)

    # every other tenant of this stack declared as it is, so that only the stray one is undeclared
    declared = [{"name": n, "residence": doc["policy"]["kek_residence"], "policy": {}}
                for n, doc in keyrings(vault).items() if n != stray]
    preview = site(declared, check=True, keyops_prune=True)
    assert ("delete_tenant", stray) in [(s["action"], s["target"]) for s in provision_result(preview)["steps"]]
    assert keyops(own_stack, "secret", "get", stray, "x").returncode == 0  # check mode deleted nothing

    pruned = site(declared, keyops_prune=True)
    assert pruned.recap[HOST]["changed"] == 1
    assert keyops(own_stack, "secret", "get", stray, "x").returncode != 0
    assert stray not in provision_result(site(declared))["drift"]


def test_a_declaration_error_names_the_variable_and_field_and_changes_nothing(
        site: Callable[..., Any], vault: Any) -> None:
    good, bad = tenant("standard"), tenant("platinum")
    empty = tenant("standard", "db/password")
    empty["secrets"][0]["value"] = ""
    run = site([good, bad, empty], ok=False)
    assert run.rc != 0
    assert "keyops_tenants[1].policy: names the policy 'platinum', which is not declared" in run.output
    assert "keyops_tenants[2].secrets[0].value: must be a non-empty string" in run.output
    assert not {t["name"] for t in (good, bad, empty)} & set(keyrings(vault))


def test_rotate_yml_applies_retention_after_the_reencryption(
        site: Callable[..., Any], own_stack: DevStack, vault: Any) -> None:
    a = tenant("kept", "db/password")
    site([a])
    name = a["name"]
    for _ in range(2):  # DEK v1 -> v3, secrets moved to v3: v1 is beyond keep_versions 2 and free
        assert keyops(own_stack, "rotate", "--tenant", name, "--level", "dek").returncode == 0
    assert keyops(own_stack, "reencrypt", "--tenant", name).returncode == 0

    def states() -> dict[int, str]:
        doc = vault.secrets.kv.v2.read_secret_version(path=f"tenants/{name}/keyring", mount_point=KV,
                                                      raise_on_deleted_version=True)["data"]["data"]
        return {v["version"]: v["state"] for v in doc["dek"]["versions"]}

    assert states() == {1: "decrypt_only", 2: "decrypt_only", 3: "active"}
    preview = site([a], check=True, playbook=ROTATE)
    assert f"would retire {name} DEK v1 (keep_versions)" in preview.output
    assert states()[1] == "decrypt_only"

    run = site([a], playbook=ROTATE)
    assert f"retire {name} DEK v1 (keep_versions)" in run.output
    assert states() == {1: "retired", 2: "decrypt_only", 3: "active"}
    assert stored(own_stack, name, "db/password") == a["secrets"][0]["value"]
    assert site([a], playbook=ROTATE).recap[HOST]["changed"] == 0
