"""Master key rotation against the real OpenBao and SoftHSM2, each test in its own KV mount.

A master rotation re-wraps the KEKs of every tenant of its mount, so these
tests run on an isolated mount (and master label prefix) to leave the
session's shared tenants alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from _rotation_support import (
    Isolated,
    check_secrets,
    escrow_unwraps,
    fresh,
    isolated_mount,
    keyops_main,
    kv_version,
    raw_doc,
    write_doc,
)
from _tenants import new_tenant

from keyops.config import Config
from keyops.errors import Conflict, NotFound
from keyops.model.keyring import Policy, utcnow
from keyops.ops.front import MASTER_PATH, Keyops, MasterRegistry, keyring_path
from keyops.ops.rotation import LOCKS_PATH, PENDING, claim_master_version, rotate, rotate_master

pytestmark = pytest.mark.integration


@pytest.fixture
def iso(stack: Any, config: Config, vault_client: Any) -> Iterator[Isolated]:
    with isolated_mount(stack, config, vault_client) as isolated:
        yield isolated


def populate(cfg: Config, residences: tuple[str, ...] = ("kv", "kv", "transit")) -> dict[str, dict[str, bytes]]:
    """Tenants with secrets; the first one with two KEK versions."""
    made: dict[str, dict[str, bytes]] = {}
    with Keyops(cfg) as k:
        for i, residence in enumerate(residences):
            tenant = new_tenant(f"m{i}-{residence}")
            k.create_tenant(tenant, Policy(kek_residence=residence))
            made[tenant] = {f"s{j}": f"{tenant} secret {j}".encode() for j in range(2)}
            for name, value in made[tenant].items():
                k.put_secret(tenant, name, value)
        rotate(k, next(iter(made)), "kek")
    return made


def registry(vault_client: Any, mount: str) -> MasterRegistry:
    return MasterRegistry.from_dict(raw_doc(vault_client, MASTER_PATH, mount))


def kek_parents(vault_client: Any, mount: str, tenants: Any) -> set[int]:
    return {v["parent_version"] for t in tenants
            for v in raw_doc(vault_client, keyring_path(t), mount)["kek"]["versions"]}


def test_master_rotation_rewraps_every_kek(iso: Isolated, vault_client: Any) -> None:
    made = populate(iso.config)
    mount = iso.mount
    with Keyops(iso.config) as k:
        versions = {t: kv_version(vault_client, keyring_path(t), mount) for t in made}
        registry_version = kv_version(vault_client, MASTER_PATH, mount)
        plan = rotate_master(k, dry_run=True)
        assert plan.changed and plan.dry_run and plan.new_version == 2 and plan.rewrapped == 4
        assert sorted(plan.tenants) == sorted(made)
        assert not k.hsm.has_key(k.master_label(2))  # the dry run created nothing
        assert {t: kv_version(vault_client, keyring_path(t), mount) for t in made} == versions
        assert kv_version(vault_client, MASTER_PATH, mount) == registry_version

        result = rotate_master(k)

        assert (result.changed, result.old_version, result.new_version, result.resumed) == (True, 1, 2, False)
        assert sorted(result.tenants) == sorted(made) and result.rewrapped == 4
        attrs = k.hsm.attributes(k.master_label(2))
        assert attrs.sensitive and not attrs.extractable and attrs.never_extractable and attrs.token
        assert attrs.key_length_bits == 256
        assert k.hsm.has_key(k.master_label(1))  # kept until nothing refers to it
    reg = registry(vault_client, mount)
    assert reg.primary == 2 and {v.version: v.state for v in reg.versions} == {1: "decrypt_only", 2: "active"}
    assert kek_parents(vault_client, mount, made) == {2}
    assert kv_version(vault_client, f"{LOCKS_PATH}/master", mount) == 0
    for tenant, values in made.items():
        check_secrets(iso.config, tenant, values)
    with fresh(iso.config) as cold:
        transit_tenant = next(t for t in made if "transit" in t)
        assert len(escrow_unwraps(cold, transit_tenant)) == 32  # the escrow copy, now under master v2
        # New KEKs are wrapped by the new master key.
        rotate(cold, transit_tenant, "kek")
        assert cold.read_keyring(transit_tenant)[0].kek.primary_key.parent_version == 2
    check_secrets(iso.config, transit_tenant, made[transit_tenant])


def test_master_rotation_expect_version_and_cli(iso: Isolated, vault_client: Any) -> None:
    made = populate(iso.config, ("kv",))
    env = iso.env
    done = keyops_main(env, "rotate", "--level", "master", "--expect-version", "1", "--json")
    assert done.returncode == 0, done
    out = json.loads(done.stdout)["result"]
    assert out["new_version"] == 2 and out["level"] == "master" and out["tenant"] is None
    again = keyops_main(env, "rotate", "--level", "master", "--expect-version", "1", "--detailed-exitcode")
    assert again.returncode == 3 and "nothing to do" in again.stdout, again
    assert registry(vault_client, iso.mount).primary == 2
    check_secrets(iso.config, next(iter(made)), next(iter(made.values())))


def test_master_rotation_without_a_master_key(iso: Isolated) -> None:
    with Keyops(iso.config) as k, pytest.raises(NotFound, match="no master key"):
        rotate_master(k)


def test_rerun_finishes_a_claimed_master_version(iso: Isolated, vault_client: Any) -> None:
    """What a crash right after the claim leaves: version 2 pending, no HSM key, KEKs under v1."""
    made = populate(iso.config)
    mount = iso.mount
    with Keyops(iso.config) as k:
        reg = registry(vault_client, mount)
        claimed = claim_master_version(reg, iso.config.master_key_label, utcnow())
        write_doc(vault_client, MASTER_PATH, claimed.to_dict(), mount)
        assert registry(vault_client, mount).get(2).state == PENDING
        for tenant, values in made.items():  # the pending version changes nothing for readers
            check_secrets(iso.config, tenant, values)

        result = rotate_master(k, expect_version=1)

        assert result.changed and result.resumed and result.new_version == 2
        assert sorted(result.tenants) == sorted(made)
        assert k.hsm.has_key(k.master_label(2)) and not k.hsm.has_key(k.master_label(3))
    assert registry(vault_client, mount).primary == 2
    assert kek_parents(vault_client, mount, made) == {2}
    for tenant, values in made.items():
        check_secrets(iso.config, tenant, values)


def test_rerun_finishes_an_interrupted_tenant_pass(iso: Isolated, vault_client: Any) -> None:
    """What a crash in the middle of the re-wrapping leaves: one keyring still under the old master."""
    made = populate(iso.config)
    mount = iso.mount
    laggard = next(iter(made))
    before = raw_doc(vault_client, keyring_path(laggard), mount)
    with Keyops(iso.config) as k:
        rotate_master(k)
        write_doc(vault_client, keyring_path(laggard), before, mount)  # as if never re-wrapped
        assert kek_parents(vault_client, mount, [laggard]) == {1}

        plan = rotate_master(k, dry_run=True, expect_version=1)
        assert plan.resumed and plan.tenants == (laggard,)
        result = rotate_master(k, expect_version=1)
        assert result.resumed and result.tenants == (laggard,) and result.new_version == 2
        assert not rotate_master(k, expect_version=1).changed
        assert not k.hsm.has_key(k.master_label(3))
    assert kek_parents(vault_client, mount, made) == {2}
    for tenant, values in made.items():
        check_secrets(iso.config, tenant, values)


def test_a_master_rotation_in_progress_is_not_joined(iso: Isolated, vault_client: Any) -> None:
    """A second master rotation that finds a live lease reports the conflict and changes nothing."""
    populate(iso.config, ("kv",))
    lease = {"owner": "someone-else", "host": "another-host", "pid": 1, "what": "master key rotation",
             "since": "2026-01-01T00:00:00Z", "expires_at": 4102444800.0}
    write_doc(vault_client, f"{LOCKS_PATH}/master", lease, iso.mount)
    with Keyops(iso.config) as k, pytest.raises(Conflict, match="in progress .*another-host"):
        rotate_master(k)
    assert registry(vault_client, iso.mount).primary == 1
    # An expired lease (its holder crashed on another host) is taken over.
    write_doc(vault_client, f"{LOCKS_PATH}/master", {**lease, "expires_at": 0}, iso.mount)
    with Keyops(iso.config) as k:
        assert rotate_master(k).new_version == 2
    assert kv_version(vault_client, f"{LOCKS_PATH}/master", iso.mount) == 0


def test_a_master_rotation_with_a_wrong_pin_changes_nothing(iso: Isolated, vault_client: Any) -> None:
    """Issue 8, item 9: the HSM login comes before the lease and the claim; the registry stays byte-identical."""
    made = populate(iso.config, ("kv",))
    mount = iso.mount
    before = raw_doc(vault_client, MASTER_PATH, mount)
    revision = kv_version(vault_client, MASTER_PATH, mount)
    env = {k: v for k, v in iso.env.items() if k != "KEYOPS_PKCS11_PIN_FILE"}
    env["KEYOPS_PKCS11_PIN"] = "not-the-pin"

    done = keyops_main(env, "rotate", "--level", "master")

    assert done.returncode == 22 and "wrong PIN" in done.stderr, done
    assert "not-the-pin" not in done.stderr + done.stdout
    assert json.dumps(raw_doc(vault_client, MASTER_PATH, mount), sort_keys=True) == json.dumps(before, sort_keys=True)
    assert kv_version(vault_client, MASTER_PATH, mount) == revision  # not even rewritten with the same content
    assert PENDING not in {v["state"] for v in before["versions"]}
    assert kv_version(vault_client, f"{LOCKS_PATH}/master", mount) == 0  # no lease taken either
    # With the right PIN the same command rotates at once: nothing was left to finish.
    again = keyops_main(iso.env, "rotate", "--level", "master", "--json")
    assert again.returncode == 0, again
    out = json.loads(again.stdout)["result"]
    assert (out["old_version"], out["new_version"], out["resumed"]) == (1, 2, False)
    check_secrets(iso.config, next(iter(made)), next(iter(made.values())))
