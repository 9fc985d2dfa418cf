"""Retire and destroy: refusals (primary, still referred to, no confirmation) and the paths that succeed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from _rotation_support import (
    check_secrets,
    cli_env,
    fresh,
    isolated_mount,
    keyops_main,
    kv_version,
    raw_doc,
    write_doc,
)
from _tenants import new_tenant

from keyops.config import Config
from keyops.errors import ConfirmationRequired, InvalidInput, KeyInUse, KeyNotFound, KeyStateError
from keyops.model.keyring import Policy
from keyops.ops.front import MASTER_PATH, Keyops, keyring_path, transit_key_name
from keyops.ops.lifecycle import LifecycleResult, destroy, retire
from keyops.ops.rotation import _with_new_transit_kek, rotate, rotate_master

pytestmark = pytest.mark.integration


def make(k: Keyops, residence: str = "kv") -> tuple[str, dict[str, bytes]]:
    tenant = new_tenant(f"life-{residence}")
    k.create_tenant(tenant, Policy(kek_residence=residence))
    values = {f"s{i}": f"{tenant} {i}".encode() for i in range(3)}
    for name, value in values.items():
        k.put_secret(tenant, name, value)
    return tenant, values


@pytest.mark.slow  # about a minute: retire waits out the lease of the reservation this test made
def test_dek_retire_and_destroy(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = make(k)
    with pytest.raises(KeyStateError, match="primary"):
        retire(k, tenant, "dek", 1)
    rotate(k, tenant, "dek")
    with pytest.raises(KeyInUse, match="3 secret records still use it"):
        retire(k, tenant, "dek", 1)
    with pytest.raises(KeyInUse):
        destroy(k, tenant, "dek", 1, confirm=True, dry_run=True)
    # Move every record to DEK v2 (what a re-encryption does), one by one: still in use until the last.
    for i, name in enumerate(values):
        values[name] = f"{values[name].decode()} updated".encode()
        with fresh(config) as writer:
            writer.put_secret(tenant, name, values[name])
        if i == 0:
            with pytest.raises(KeyInUse, match="2 secret records"):
                retire(k, tenant, "dek", 1)
    version = kv_version(vault_client, keyring_path(tenant))
    plan = retire(k, tenant, "dek", 1, dry_run=True)
    assert plan.changed and plan.dry_run and plan.state_after == "retired"
    assert kv_version(vault_client, keyring_path(tenant)) == version

    done = retire(k, tenant, "dek", 1)

    assert done == LifecycleResult("retire", tenant, "dek", 1, True, "decrypt_only", "retired", 0, False,
                                   detail=done.detail)
    assert not retire(k, tenant, "dek", 1).changed
    with pytest.raises(ConfirmationRequired, match="confirm with confirm=True, or look first with dry_run=True$"):
        destroy(k, tenant, "dek", 1, confirm=False)
    assert kv_version(vault_client, keyring_path(tenant)) == version + 1

    gone = destroy(k, tenant, "dek", 1, confirm=True)

    assert gone.changed and gone.state_after == "destroyed"
    doc = raw_doc(vault_client, keyring_path(tenant))
    assert [v["version"] for v in doc["dek"]["versions"]] == [2]
    assert [t["version"] for t in doc["dek"]["tombstones"]] == [1]
    assert not destroy(k, tenant, "dek", 1, confirm=True).changed
    with pytest.raises(KeyNotFound):
        retire(k, tenant, "dek", 7)
    check_secrets(config, tenant, values)


def test_kek_retire_and_destroy_kv(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = make(k)
    rotate(k, tenant, "kek")
    with pytest.raises(KeyStateError, match="primary"):
        destroy(k, tenant, "kek", 2, confirm=True)
    assert retire(k, tenant, "kek", 1).state_after == "retired"
    assert destroy(k, tenant, "kek", 1, confirm=True).changed
    doc = raw_doc(vault_client, keyring_path(tenant))
    assert [v["version"] for v in doc["kek"]["versions"]] == [2]
    check_secrets(config, tenant, values)


def test_kek_still_wrapping_deks_is_refused(k: Keyops, config: Config) -> None:
    tenant, values = make(k, "transit")
    keyring, version = k.read_keyring(tenant)
    k.write_keyring(tenant, _with_new_transit_kek(k, keyring), cas=version)  # KEK v2 persisted, DEKs still under v1
    with pytest.raises(KeyInUse, match="1 DEK version is still wrapped by it"):
        retire(k, tenant, "kek", 1)
    rotate(k, tenant, "kek")  # finishes the interrupted rotation
    assert retire(k, tenant, "kek", 1).changed
    check_secrets(config, tenant, values)


def test_transit_kek_destroy_trims_the_transit_key(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = make(k, "transit")
    rotate(k, tenant, "kek")
    rotate(k, tenant, "kek")
    name = transit_key_name(tenant)
    assert int(vault_client.secrets.transit.read_key(name=name)["data"]["min_decryption_version"]) == 3

    destroy(k, tenant, "kek", 2, confirm=True)  # not the lowest: Transit cannot trim it alone
    info = vault_client.secrets.transit.read_key(name=name)["data"]
    assert int(info["min_available_version"]) == 0
    result = destroy(k, tenant, "kek", 1, confirm=True)

    assert result.changed and "trimmed" in result.detail
    info = vault_client.secrets.transit.read_key(name=name)["data"]
    assert int(info["min_available_version"]) == 3 and sorted(info["keys"]) == ["3"]
    assert int(info["latest_version"]) == 3
    check_secrets(config, tenant, values)
    # Rotating after a trim moves every minimum along (min_encryption_version was set for the trim).
    rotate(k, tenant, "kek")
    info = vault_client.secrets.transit.read_key(name=name)["data"]
    assert [int(info[f"min_{m}_version"]) for m in ("decryption", "encryption")] == [4, 4]
    check_secrets(config, tenant, values)
    with fresh(config) as other:
        other.put_secret(tenant, "after", b"trim")
        assert other.get_secret(tenant, "after") == b"trim"


def test_master_retire_and_destroy(stack: Any, config: Config, vault_client: Any) -> None:
    with isolated_mount(stack, config, vault_client) as iso, Keyops(iso.config) as k:
        tenant, values = make(k)
        with pytest.raises(KeyStateError, match="primary"):
            retire(k, None, "master", 1)
        with pytest.raises(InvalidInput, match="no tenant"):
            retire(k, tenant, "master", 1)
        with pytest.raises(InvalidInput, match="belongs to a tenant"):
            retire(k, None, "dek", 1)
        rotate_master(k)
        laggard = raw_doc(vault_client, keyring_path(tenant), iso.mount)
        laggard["kek"]["versions"][0]["parent_version"] = 1  # as if the tenant pass had not reached it
        keyring_doc = raw_doc(vault_client, keyring_path(tenant), iso.mount)
        write_doc(vault_client, keyring_path(tenant), laggard, iso.mount)
        with pytest.raises(KeyInUse, match="1 KEK version is still wrapped"):
            destroy(k, None, "master", 1, confirm=True)
        write_doc(vault_client, keyring_path(tenant), keyring_doc, iso.mount)

        label = k.master_label(1)
        assert destroy(k, None, "master", 1, confirm=True, dry_run=True).changed
        assert k.hsm.has_key(label)
        result = destroy(k, None, "master", 1, confirm=True)

        assert result.changed and result.state_before == "decrypt_only" and result.state_after == "destroyed"
        # The key was made non-destroyable: it stays on the token, and the detail says what removing it takes.
        assert k.hsm.has_key(label) and k.hsm.attributes(label).destroyable is False
        assert "stays on the token" in result.detail and "security officer" in result.detail
        states = {v["version"]: v["state"] for v in raw_doc(vault_client, MASTER_PATH, iso.mount)["versions"]}
        assert states == {1: "destroyed", 2: "active"}
        with pytest.raises(KeyStateError, match="master key version 1 is destroyed"):
            fresh(iso.config).master_wrapper(1)  # keyops never uses it again
        again = destroy(k, None, "master", 1, confirm=True)
        assert not again.changed and "already destroyed" in again.detail and "security officer" in again.detail
        check_secrets(iso.config, tenant, values)


def test_cli_exit_codes(stack: Any, k: Keyops, vault_client: Any) -> None:
    tenant, _ = make(k)
    rotate(k, tenant, "kek")
    env = cli_env(stack)
    base = ["--tenant", tenant, "--level", "kek", "--version"]

    primary = keyops_main(env, "retire", *base, "2")
    assert primary.returncode == 8 and "primary" in primary.stderr, primary
    unconfirmed = keyops_main(env, "destroy", *base, "1")
    assert unconfirmed.returncode == 2 and "confirm with --yes, or look first with --dry-run" in unconfirmed.stderr
    assert "confirm=" not in unconfirmed.stderr, unconfirmed
    dry = keyops_main(env, "destroy", *base, "1", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith("would destroy KEK v1"), dry
    assert raw_doc(vault_client, keyring_path(tenant))["kek"]["versions"][0]["state"] == "decrypt_only"
    retired = keyops_main(env, "retire", *base, "1", "--json")
    assert retired.returncode == 0, retired
    assert json.loads(retired.stdout)["result"]["state_after"] == "retired"
    assert keyops_main(env, "retire", *base, "1").returncode == 0
    assert keyops_main(env, "--detailed-exitcode", "retire", *base, "1").returncode == 3
    destroyed = keyops_main(env, "destroy", *base, "1", "--yes")
    assert destroyed.returncode == 0 and "destroyed KEK v1" in destroyed.stdout, destroyed
    in_use = keyops_main(env, "retire", "--tenant", tenant, "--level", "dek", "--version", "1", "--json")
    assert in_use.returncode == 8 and json.loads(in_use.stderr)["error"] == "key_state", in_use
    rotate(k, tenant, "dek")
    in_use = keyops_main(env, "retire", "--tenant", tenant, "--level", "dek", "--version", "1", "--json")
    assert in_use.returncode == 8 and json.loads(in_use.stderr)["error"] == "key_in_use", in_use
