"""The playbooks of ansible/ with the dev inventory, against the session's real OpenBao and SoftHSM2.

Every run is ``ansible-playbook -vvv`` on ``inventories/dev``, pointed at the
session stack through ``KEYOPS_STATE_DIR`` (the inventory reads the address,
token file and HSM files from that folder), with the tenants of each test
given as extra variables (unique names: the stack is shared by the session).
Each output is scanned for the plaintexts stored, the PIN, the token and key
material. Results are checked with independent clients: hvac for what Vault
holds, the keyops library for decryption.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from keyops import crypto
from keyops.ops.front import Keyops
from keyops.wrappers import AeadWrapper

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "ansible"
DEV_INVENTORY = REPO / "inventories" / "dev"
HOST = "keyops-dev"
KV_MOUNT = "keyops"

POLICIES = {
    "standard": {"kek_period_days": 90, "dek_period_days": 30},
    "fast": {"kek_period_days": 30, "dek_period_days": 7, "dek_usage_cap": 1000000},
}


def declare(*specs: tuple[str, str, Sequence[str]]) -> list[dict[str, Any]]:
    """Tenants as an inventory declares them: (residence, policy, secret names), fresh names and plaintexts."""
    run = uuid.uuid4().hex[:8]
    return [{"name": f"p{i}-{run}", "residence": residence, "policy": policy,
             "secrets": [{"name": name, "value": f"pt-{secrets.token_urlsafe(18)}"} for name in names]}
            for i, (residence, policy, names) in enumerate(specs)]


def extra_vars(tenants: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    return {"keyops_tenants": tenants, "keyops_rotation_policies": POLICIES, **more}


def plaintexts(tenants: list[dict[str, Any]]) -> list[str]:
    return [s["value"] for t in tenants for s in t["secrets"]]


def changed(run: Any) -> int:
    """Tasks that reported a change (the PLAY RECAP's count)."""
    return run.recap[HOST]["changed"]


PROVISION_TASK = "Apply the declared master key, tenants, policies and seed secrets"


def provision_steps(run: Any, action: str, key: str = "steps") -> list[str]:
    """Targets of the provisioning task's steps (``key="outcomes"``: those carried out and changed) of ``action``."""
    result = run.result(PROVISION_TASK)
    return [s["target"] for s in result.get(key, [])
            if s["action"] == action and (key == "steps" or s["changed"])]


@pytest.fixture(scope="module")
def stack_needles(stack: Any) -> list[str]:
    """Secrets of the stack itself that no output may show."""
    return [stack.root_token_file.read_text().strip(), stack.pin_file.read_text().strip(),
            stack.so_pin_file.read_text().strip(), stack.unseal_key_file.read_text().strip()]


def key_material(k: Keyops, tenant: str) -> list[str]:
    """Every KEK and DEK of a residence-kv tenant, raw, in base64 and in hex: what no output may show."""
    keyring = k.read_keyring(tenant)[0]
    out: list[bytes] = []
    for kek in keyring.kek.versions:
        out.append(k.hierarchy._kek(keyring, kek.version))
    for dek in keyring.dek.versions:
        kek = k.hierarchy._kek(keyring, dek.parent_version)
        out.append(AeadWrapper(kek).unwrap(base64.b64decode(dek.wrapped),
                                           crypto.key_context(tenant, "dek", dek.version)))
    return [form for key in out for form in (base64.b64encode(key).decode(), key.hex())]


@pytest.fixture(scope="module")
def playbook(ansible_playbook: Callable[..., Any], stack: Any, find_leaks: Callable[..., list[str]],
             stack_needles: list[str]) -> Callable[..., Any]:
    """``playbook(name, extra_vars, *args, needles=(), ok=True, **kw)``: one -vvv run, scanned for leaks."""

    def run(name: str, variables: dict[str, Any], *args: str, needles: Sequence[str] = (), ok: bool = True,
            **kw: Any) -> Any:
        result = ansible_playbook(PLAYBOOKS / f"{name}.yml", *args, inventory=DEV_INVENTORY, verbosity=3,
                                  extra_vars=variables, env={"KEYOPS_STATE_DIR": str(stack.state_dir)}, **kw)
        leaked = find_leaks(result.output, [*stack_needles, *plaintexts(variables.get("keyops_tenants", [])),
                                            *needles])
        assert not leaked, f"{name}.yml -vvv printed secrets: {leaked}"
        if ok:
            result.assert_ok()
        return result

    return run


def read_kv(vault_client: Any, path: str) -> dict[str, Any] | None:
    import hvac.exceptions

    try:
        return vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT,
                                                              raise_on_deleted_version=True)["data"]["data"]
    except hvac.exceptions.InvalidPath:
        return None


def keyring_doc(vault_client: Any, tenant: str) -> dict[str, Any] | None:
    return read_kv(vault_client, f"tenants/{tenant}/keyring")


@pytest.fixture(scope="module")
def provisioned(playbook: Callable[..., Any]) -> tuple[list[dict[str, Any]], Any]:
    """Three tenants (kv with two secrets, transit with one, kv with none) after one site.yml run."""
    tenants = declare(("kv", "standard", ["db/password", "api/token"]), ("transit", "fast", ["stripe/key"]),
                      ("kv", "standard", []))
    return tenants, playbook("site", extra_vars(tenants))


# --- site.yml --------------------------------------------------------------------------------


def test_site_provisions_every_declared_tenant_and_seed_then_changes_nothing(
        provisioned: tuple[list[dict[str, Any]], Any], playbook: Callable[..., Any], vault_client: Any,
        k: Keyops) -> None:
    tenants, first = provisioned
    assert sorted(provision_steps(first, "create_tenant", "outcomes")) == sorted(t["name"] for t in tenants)
    assert first.result(PROVISION_TASK)["seeds"]["create"] == [f"{t['name']}/{s['name']}" for t in tenants
                                                              for s in t["secrets"]]
    for tenant in tenants:
        doc = keyring_doc(vault_client, tenant["name"])
        assert doc is not None, f"no keyring for {tenant['name']}"
        want = {"kek_residence": tenant["residence"], **POLICIES[tenant["policy"]]}
        assert {name: doc["policy"][name] for name in want} == want
        if tenant["residence"] == "transit":
            key = vault_client.secrets.transit.read_key(name=f"keyops-{tenant['name']}", mount_point="transit")
            assert key["data"]["exportable"] is False
        for seed in tenant["secrets"]:
            record = read_kv(vault_client, f"secrets/{tenant['name']}/{seed['name']}")
            assert record is not None
            assert record["ciphertext"].startswith(f"keyops:v1:{tenant['name']}:")
            assert seed["value"] not in str(record)
            assert k.get_secret(tenant["name"], seed["name"]).decode() == seed["value"]

    # -vvv shows every module's arguments and results: a value not hidden would be in this output
    assert '"module_args"' in first.output and '"token_file"' in first.output
    needles = key_material(k, tenants[0]["name"])
    assert not [n for n in needles if n in first.output]
    second = playbook("site", extra_vars(tenants), needles=needles)
    assert changed(second) == 0, second.changed_tasks()


def test_site_check_mode_reports_changes_and_creates_nothing(playbook: Callable[..., Any],
                                                             vault_client: Any) -> None:
    tenants = declare(("kv", "standard", ["db/password"]), ("transit", "fast", []))
    run = playbook("site", extra_vars(tenants), check=True)
    assert run.result(PROVISION_TASK)["changed"] is True
    assert sorted(provision_steps(run, "create_tenant")) == sorted(t["name"] for t in tenants)
    assert provision_steps(run, "create_secret") == [f"{tenants[0]['name']}/db/password"]
    assert f"create seed secret {tenants[0]['name']}/db/password" in run.output
    for tenant in tenants:
        assert keyring_doc(vault_client, tenant["name"]) is None


def test_site_refuses_an_undeclared_policy_and_changes_nothing(playbook: Callable[..., Any],
                                                               vault_client: Any) -> None:
    tenants = declare(("kv", "standard", []), ("kv", "platinum", []))
    run = playbook("site", extra_vars(tenants), ok=False)
    assert run.rc != 0
    assert "keyops_tenants[1].policy: names the policy 'platinum', which is not declared" in run.output
    assert all(keyring_doc(vault_client, t["name"]) is None for t in tenants)


def test_site_refuses_an_empty_seed_secret_naming_it_and_changes_nothing(playbook: Callable[..., Any],
                                                                         vault_client: Any) -> None:
    tenants = declare(("kv", "standard", ["db/password", "api/token"]))
    tenants[0]["secrets"][1]["value"] = ""
    run = playbook("site", extra_vars(tenants), ok=False)
    assert run.rc != 0
    assert "keyops_tenants[0].secrets[1].value: must be a non-empty string, not an empty string" in run.output
    assert keyring_doc(vault_client, tenants[0]["name"]) is None


# --- rotate.yml ------------------------------------------------------------------------------


def test_rotate_with_nothing_due_changes_nothing(provisioned: tuple[list[dict[str, Any]], Any],
                                                 playbook: Callable[..., Any], vault_client: Any) -> None:
    tenants, _ = provisioned
    before = {t["name"]: keyring_doc(vault_client, t["name"]) for t in tenants}
    run = playbook("rotate", extra_vars(tenants))
    assert changed(run) == 0, run.changed_tasks()
    assert f"nothing due ({len(tenants)} tenants and the master key checked)" in run.output
    assert {t["name"]: keyring_doc(vault_client, t["name"]) for t in tenants} == before


def backdate_primary_dek(vault_client: Any, tenant: str, days: float) -> None:
    """Make the tenant's primary DEK ``days`` old, as an independent client would (check-and-set)."""
    path = f"tenants/{tenant}/keyring"
    found = vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV_MOUNT,
                                                           raise_on_deleted_version=True)
    doc, version = found["data"]["data"], found["data"]["metadata"]["version"]
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for kv in doc["dek"]["versions"]:
        if kv["version"] == doc["dek"]["primary"]:
            kv["created_at"] = stamp
    vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, cas=version, mount_point=KV_MOUNT)


def audit_events(stack: Any, tenant: str) -> list[dict[str, Any]]:
    """The keyops audit events of ``tenant`` in the stack's log (where the dev inventory sends them)."""
    lines = stack.keyops_audit_log.read_text().splitlines()
    return [event for event in map(json.loads, lines) if event.get("tenant") == tenant]


def test_rotate_rotates_a_past_due_dek_and_reencrypts_its_secrets_in_one_run(
        playbook: Callable[..., Any], vault_client: Any, k: Keyops, stack: Any) -> None:
    tenants = declare(("kv", "standard", ["db/password", "api/token", "smtp/password"]),
                      ("transit", "standard", ["stripe/key"]))
    playbook("site", extra_vars(tenants))
    due, control = tenants[0]["name"], tenants[1]["name"]
    backdate_primary_dek(vault_client, due, days=31)
    control_before = keyring_doc(vault_client, control)

    due_before = keyring_doc(vault_client, due)
    preview = playbook("rotate", extra_vars(tenants), check=True)
    assert f"would re-encrypt the secrets of {due}" in preview.output
    assert "would rotate 1 key" in preview.output
    assert keyring_doc(vault_client, due) == due_before

    run = playbook("rotate", extra_vars(tenants), needles=key_material(k, due))

    assert changed(run) >= 2  # the rotation and the re-encryption
    doc = keyring_doc(vault_client, due)
    assert doc is not None and doc["dek"]["primary"] == 2
    states = {v["version"]: v["state"] for v in doc["dek"]["versions"]}
    assert states[1] == "decrypt_only" and states[2] == "active"
    for seed in tenants[0]["secrets"]:
        record = read_kv(vault_client, f"secrets/{due}/{seed['name']}")
        assert record is not None and record["dek_version"] == 2
        assert record["ciphertext"].startswith(f"keyops:v1:{due}:2:")
        assert k.get_secret(due, seed["name"]).decode() == seed["value"]
    assert keyring_doc(vault_client, control) == control_before
    assert f"{due} DEK v1 -> v2" in run.output
    assert f"{control} DEK" not in run.output
    events = [(e["operation"], e["level"], e["result"]) for e in audit_events(stack, due)]
    assert ("rotate", "dek", "ok") in events and ("reencrypt.finish", "dek", "ok") in events

    again = playbook("rotate", extra_vars(tenants), needles=key_material(k, due))
    assert changed(again) == 0, again.changed_tasks()


# --- status.yml, reencrypt.yml, migrate.yml -----------------------------------------------------


def test_status_reports_every_declared_tenant_and_changes_nothing(
        provisioned: tuple[list[dict[str, Any]], Any], playbook: Callable[..., Any]) -> None:
    tenants, _ = provisioned
    run = playbook("status", extra_vars(tenants))
    assert changed(run) == 0
    assert "master key: v" in run.output
    for tenant in tenants:
        assert f"{tenant['name']}: KEK in {tenant['residence']}" in run.output
    assert f"{tenants[1]['name']}: KEK in transit; periods KEK 30 d, DEK 7 d" in run.output


def test_status_fails_for_a_declared_tenant_that_does_not_exist(playbook: Callable[..., Any]) -> None:
    tenants = declare(("kv", "standard", []))
    run = playbook("status", extra_vars(tenants), ok=False)
    assert run.rc != 0
    assert f"tenants {tenants[0]['name']} do not exist" in run.output


def test_reencrypt_moves_secrets_to_the_primary_dek_after_a_manual_rotation(
        playbook: Callable[..., Any], vault_client: Any, k: Keyops) -> None:
    from keyops.ops import rotation
    tenants = declare(("kv", "standard", ["a", "b"]), ("kv", "standard", ["c"]))
    playbook("site", extra_vars(tenants))
    name = tenants[0]["name"]
    rotation.rotate(k, name, "dek")

    run = playbook("reencrypt", extra_vars(tenants, keyops_reencrypt_tenants=[name]),
                   needles=key_material(k, name))
    assert changed(run) >= 1
    for seed in tenants[0]["secrets"]:
        record = read_kv(vault_client, f"secrets/{name}/{seed['name']}")
        assert record is not None and record["dek_version"] == 2
        assert k.get_secret(name, seed["name"]).decode() == seed["value"]
    other = read_kv(vault_client, f"secrets/{tenants[1]['name']}/c")
    assert other is not None and other["dek_version"] == 1
    done = re.search(rf"{name}: 2 of 2 secrets re-encrypted to DEK v2 \(job (\S+)\)", run.output)
    assert done is not None, run.output[-3000:]

    # The finished job, named: reported as it finished, nothing changes.
    again = playbook("reencrypt", extra_vars(tenants, keyops_reencrypt_tenants=[name],
                                             keyops_reencrypt_job_id=done.group(1)))
    assert changed(again) == 0, again.changed_tasks()
    assert f"{name}: 2 of 2 secrets re-encrypted to DEK v2 (job {done.group(1)})" in again.output


def test_reencrypt_refuses_a_job_id_with_several_tenants(playbook: Callable[..., Any]) -> None:
    tenants = declare(("kv", "standard", []), ("kv", "standard", []))
    run = playbook("reencrypt", extra_vars(tenants, keyops_reencrypt_job_id="reencrypt-x"), ok=False)
    assert run.rc != 0 and "resumes the job of one tenant" in run.output


def test_migrate_brings_plaintext_kv_secrets_under_keyops_then_changes_nothing(
        playbook: Callable[..., Any], vault_client: Any, k: Keyops) -> None:
    tenants = declare(("kv", "standard", []))
    playbook("site", extra_vars(tenants))
    name = tenants[0]["name"]
    mount = f"legacy-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    legacy = {f"app/{n}": f"pt-{secrets.token_urlsafe(18)}" for n in ("db", "smtp")}
    for path, value in legacy.items():
        vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret={"value": value}, mount_point=mount)
    params = {"keyops_migrate_tenant": name, "keyops_migrate_source": "app", "keyops_migrate_source_mount": mount,
              "keyops_migrate_kind": "plaintext"}

    def source(path: str) -> dict[str, Any]:
        return dict(vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point=mount,
                                                                   raise_on_deleted_version=True)["data"]["data"])

    run = playbook("migrate", extra_vars(tenants, **params), needles=list(legacy.values()))
    assert changed(run) >= 1
    assert f"{name} (copy): 2 secrets (2 plaintext, 0 from Transit), 0 already done" in run.output
    for path, value in legacy.items():
        secret = path.split("/", 1)[1]
        record = read_kv(vault_client, f"secrets/{name}/{secret}")
        assert record is not None and value not in str(record)
        assert k.get_secret(name, secret).decode() == value
        assert source(path) == {"value": value}  # the default copy leaves the source to its readers

    cut = playbook("migrate", extra_vars(tenants, **params, keyops_migrate_mode="cutover"),
                   needles=list(legacy.values()))
    assert f"{name} (cutover): 2 secrets" in cut.output
    for path, value in legacy.items():
        assert value not in str(source(path)) and "keyops_migrated" in source(path)  # replaced by the marker

    for mode in ("copy", "cutover"):
        again = playbook("migrate", extra_vars(tenants, **params, keyops_migrate_mode=mode),
                         needles=list(legacy.values()))
        assert changed(again) == 0, again.changed_tasks()


def test_migrate_validates_its_parameters_and_changes_nothing(playbook: Callable[..., Any]) -> None:
    run = playbook("migrate", extra_vars([], keyops_migrate_source="app", keyops_migrate_kind="rot13"), ok=False)
    assert run.rc != 0
    assert "keyops_migrate_tenant" in run.output
    assert "keyops_migrate_kind" in run.output
    assert "Migrate the source secrets" not in "".join(r["task"] for r in run.results)
