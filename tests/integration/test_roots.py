"""Root keys beyond PKCS#11 (issue 10, item 3), against real parts.

The HSM is the session's SoftHSM2 token; the KMS is a second OpenBao server
(``kms_stack``) whose Transit key is reached with a token of the generated
``keyops-root-kms`` policy only; the passphrase comes from an owner-only file
or from the environment. Each test works in its own KV mount, since a master
rotation re-wraps every tenant of its mount.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from _rotation_support import Isolated, check_tenants, fresh, isolated_mount, keyops_main, kv_version, raw_doc
from _tenants import new_tenant

from keyops.access import ROOT_KMS_POLICY, render_root_kms_policy
from keyops.config import Config
from keyops.dev.stack import DevStack, free_port
from keyops.errors import ConfigError, VaultUnreachable
from keyops.model.keyring import Policy, utcnow
from keyops.ops.front import MASTER_PATH, Keyops, MasterRegistry, keyring_path
from keyops.ops.lifecycle import destroy, retire
from keyops.ops.rotation import LOCKS_PATH, PENDING, claim_master_version, rotate, rotate_master

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery staple, twice"


@pytest.fixture
def iso(stack: Any, config: Config, vault_client: Any) -> Iterator[Isolated]:
    with isolated_mount(stack, config, vault_client) as isolated:
        yield isolated


def _client(addr: str, token: str) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=addr, token=token, session=session)


def _kms_root(devstack: DevStack, folder: Path) -> dict[str, str]:
    """A Transit key on ``devstack`` and a token file whose token may only encrypt and decrypt with it."""
    key = f"keyops_root_{uuid.uuid4().hex[:8]}"
    admin = _client(str(devstack.addr), devstack.env()["VAULT_TOKEN"])
    admin.secrets.transit.create_key(name=key, key_type="aes256-gcm96", exportable=False, mount_point="transit")
    admin.sys.create_or_update_policy(name=ROOT_KMS_POLICY, policy=render_root_kms_policy("transit", key))
    token = admin.auth.token.create(policies=[ROOT_KMS_POLICY], ttl="2h", no_default_policy=True)["auth"]
    token_file = folder / f"{key}.token"
    token_file.write_text(token["client_token"])
    token_file.chmod(0o600)
    return {"KEYOPS_ROOT_TRANSIT_ADDR": str(devstack.addr), "KEYOPS_ROOT_TRANSIT_KEY": key,
            "KEYOPS_ROOT_TRANSIT_TOKEN_FILE": str(token_file)}


@pytest.fixture(scope="module")
def kms(kms_stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return _kms_root(kms_stack, tmp_path_factory.mktemp("kms-token"))


@pytest.fixture(scope="module")
def passphrase_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("passphrase") / "root.passphrase"
    path.write_text(PASSPHRASE + "\n")
    path.chmod(0o600)
    return str(path)


def with_root(config: Config, env: dict[str, str] | None = None, **settings: Any) -> Config:
    """``config`` with the root settings of ``env`` (KEYOPS_ROOT_* names) and ``settings`` applied."""
    loaded = Config.load(env={k: v for k, v in (env or {}).items() if k.startswith("KEYOPS_ROOT")})
    fields = {name: getattr(loaded, name) for name in Config.__dataclass_fields__ if name.startswith("root")}
    return config.replace(**{**fields, **settings})


def no_hsm(config: Config) -> Config:
    """No PIN and no PKCS#11 module: any attempt to open the HSM fails loudly."""
    return config.replace(pkcs11_pin=None, pkcs11_pin_file=None, pkcs11_module="/nonexistent/libpkcs11.so")


def populate(cfg: Config) -> dict[str, dict[str, bytes]]:
    """Two tenants (residence kv and transit) with secrets, the first after a KEK rotation."""
    made: dict[str, dict[str, bytes]] = {}
    with Keyops(cfg) as k:
        for residence in ("kv", "transit"):
            tenant = new_tenant(f"r-{residence}")
            k.create_tenant(tenant, Policy(kek_residence=residence))
            made[tenant] = {f"s{j}": f"{tenant} secret {j}".encode() for j in range(2)}
            for name, value in made[tenant].items():
                k.put_secret(tenant, name, value)
        rotate(k, next(iter(made)), "kek")
    return made


def registry(iso: Isolated, vault_client: Any) -> MasterRegistry:
    return MasterRegistry.from_dict(raw_doc(vault_client, MASTER_PATH, iso.mount))


def kek_parents(iso: Isolated, vault_client: Any, tenants: Any) -> set[int]:
    return {v["parent_version"] for t in tenants
            for v in raw_doc(vault_client, keyring_path(t), iso.mount)["kek"]["versions"]}


def roots_of(iso: Isolated, vault_client: Any) -> dict[int, str]:
    return {mv.version: mv.root for mv in registry(iso, vault_client).versions}


# --- each root on its own -------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["pkcs11", "transit", "passphrase"])
def test_each_root_provisions_rotates_and_decrypts(root: str, iso: Isolated, vault_client: Any, kms: dict[str, str],
                                                   passphrase_file: str) -> None:
    env = {"KEYOPS_ROOT": root, **(kms if root == "transit" else {}),
           **({"KEYOPS_ROOT_PASSPHRASE_FILE": passphrase_file} if root == "passphrase" else {})}
    cfg = with_root(iso.config, env)
    if root != "pkcs11":
        cfg = no_hsm(cfg)  # proves that the other roots never need the HSM
    made = populate(cfg)
    assert roots_of(iso, vault_client) == {1: root}
    with Keyops(cfg) as k:
        for tenant in made:
            rotate(k, tenant, "kek")
        result = rotate_master(k)
        assert (result.old_version, result.new_version, result.rewrapped) == (1, 2, 5)
    reg = registry(iso, vault_client)
    assert roots_of(iso, vault_client) == {1: root, 2: root}
    assert {mv.version: mv.state for mv in reg.versions} == {1: "decrypt_only", 2: "active"}
    assert kek_parents(iso, vault_client, made) == {2}
    stored = json.dumps(raw_doc(vault_client, MASTER_PATH, iso.mount))
    assert PASSPHRASE not in stored
    if root == "transit":
        assert Path(kms["KEYOPS_ROOT_TRANSIT_TOKEN_FILE"]).read_text() not in stored
    if root == "passphrase":
        params = reg.get(2).params
        assert (params["kdf"], params["iterations"], params["lanes"], params["memory_cost"]) == (
            "argon2id", 3, 4, 65536)
        assert params["salt"] != reg.get(1).params["salt"]  # a fresh salt per version
    if root == "transit":
        assert reg.get(2).params == {"addr": kms["KEYOPS_ROOT_TRANSIT_ADDR"], "mount": "transit",
                                     "key": kms["KEYOPS_ROOT_TRANSIT_KEY"], "namespace": None}
    check_tenants(cfg, made)
    with fresh(cfg) as k:
        rotate(k, next(iter(made)), "dek")
        k.put_secret(next(iter(made)), "after", b"written after the rotations")
        assert k.get_secret(next(iter(made)), "after") == b"written after the rotations"


def test_passphrase_from_the_environment_through_the_cli(iso: Isolated, vault_client: Any) -> None:
    env = {**iso.env, "KEYOPS_ROOT": "passphrase", "KEYOPS_ROOT_PASSPHRASE": PASSPHRASE}
    tenant = new_tenant("r-env")
    created = keyops_main(env, "tenant", "create", tenant)
    assert created.returncode == 0, created
    rotated = keyops_main(env, "rotate", "--level", "master", "--json")
    assert rotated.returncode == 0, rotated
    assert json.loads(rotated.stdout)["result"]["new_version"] == 2
    assert roots_of(iso, vault_client) == {1: "passphrase", 2: "passphrase"}
    for run in (created, rotated):
        assert PASSPHRASE not in run.stdout + run.stderr
    with fresh(with_root(iso.config, env)) as k:
        assert k.read_keyring(tenant)[0].kek.primary_key.parent_version == 2
        k.put_secret(tenant, "x", b"value")
        assert k.get_secret(tenant, "x") == b"value"


# --- moving between roots ---------------------------------------------------------------------------


def test_passphrase_to_hsm_then_the_passphrase_is_needed_by_nothing(iso: Isolated, vault_client: Any) -> None:
    old = no_hsm(with_root(iso.config, root="passphrase", root_passphrase=PASSPHRASE))
    made = populate(old)
    new = with_root(iso.config, root="pkcs11", root_passphrase=PASSPHRASE)  # both roots for the move
    with Keyops(new) as k:
        result = rotate_master(k)
    assert result.new_version == 2 and result.rewrapped == 3
    assert roots_of(iso, vault_client) == {1: "passphrase", 2: "pkcs11"}
    assert kek_parents(iso, vault_client, made) == {2}

    unset = with_root(iso.config, root="pkcs11")  # no passphrase anywhere from here on
    assert unset.root_passphrase is None and unset.root_passphrase_file is None
    check_tenants(unset, made)
    with fresh(unset) as k:
        assert rotate_master(k).new_version == 3  # HSM to HSM: v1 is not even opened
        # The old root really is gone from this process: asking for v1 needs the passphrase.
        with pytest.raises(ConfigError, match="no root passphrase configured"):
            k.master_wrapper(1)
    assert roots_of(iso, vault_client) == {1: "passphrase", 2: "pkcs11", 3: "pkcs11"}
    check_tenants(unset, made)
    # Destroying the passphrase version takes its only copy, the wrapped key, out of the registry.
    with fresh(unset) as k:
        retire(k, None, "master", 1)
        destroyed = destroy(k, None, "master", 1, confirm=True)
    assert destroyed.changed and "HSM" not in destroyed.detail
    gone = registry(iso, vault_client).get(1)
    assert gone.state == "destroyed" and "wrapped" not in gone.params and gone.params["kdf"] == "argon2id"
    check_tenants(unset, made)


def test_hsm_to_kms_then_the_hsm_is_needed_by_nothing(iso: Isolated, vault_client: Any, kms: dict[str, str]) -> None:
    made = populate(iso.config)
    env = {**iso.env, "KEYOPS_ROOT": "transit", **kms}
    moved = keyops_main(env, "rotate", "--level", "master", "--json")
    assert moved.returncode == 0, moved
    assert json.loads(moved.stdout)["result"]["rewrapped"] == 3
    assert roots_of(iso, vault_client) == {1: "pkcs11", 2: "transit"}
    assert kek_parents(iso, vault_client, made) == {2}
    token = Path(kms["KEYOPS_ROOT_TRANSIT_TOKEN_FILE"]).read_text()
    assert token not in moved.stdout + moved.stderr
    trail = Path(env["KEYOPS_AUDIT_LOG"]).read_text()
    assert token not in trail
    event = [e for e in map(json.loads, trail.splitlines()) if e.get("operation") == "rotate"][-1]
    assert (event["level"], event["roots"], event["result"]) == ("master", {"old": "pkcs11", "new": "transit"}, "ok")

    kms_only = no_hsm(with_root(iso.config, env))
    check_tenants(kms_only, made)
    with fresh(kms_only) as k:
        for tenant in [*made, *made]:
            assert k.get_secret(tenant, "s0") == made[tenant]["s0"]
        assert k._hsm is None  # never opened
        # One KMS call for the kv tenant's KEK, then cached; the transit tenant's DEKs unwrap in its Transit key.
        assert k.hierarchy.roots.calls.total("transit.decrypt") == 1
        rotate(k, next(iter(made)), "kek")  # a new KEK is wrapped by the KMS too
    assert kek_parents(iso, vault_client, made) == {2}
    check_tenants(kms_only, made)


def test_kms_to_passphrase(iso: Isolated, vault_client: Any, kms: dict[str, str]) -> None:
    at_kms = no_hsm(with_root(iso.config, {"KEYOPS_ROOT": "transit", **kms}))
    made = populate(at_kms)
    with Keyops(at_kms.replace(root="passphrase", root_passphrase=PASSPHRASE)) as k:
        assert rotate_master(k).new_version == 2
    assert roots_of(iso, vault_client) == {1: "transit", 2: "passphrase"}
    # Neither the KMS token nor the HSM is needed any more.
    check_tenants(no_hsm(with_root(iso.config, root="passphrase", root_passphrase=PASSPHRASE)), made)


def test_a_claimed_version_of_another_root_is_finished_by_a_rerun(iso: Isolated, vault_client: Any,
                                                                   kms: dict[str, str]) -> None:
    """What a crash right after the claim leaves: a pending KMS version, KEKs still under the HSM."""
    made = populate(iso.config)
    cfg = with_root(iso.config, {"KEYOPS_ROOT": "transit", **kms})
    with Keyops(cfg) as k:
        reg = registry(iso, vault_client)
        claimed = claim_master_version(reg, cfg.master_key_label, utcnow(),
                                       lambda r, v: k.hierarchy.roots.new_version(r, v, utcnow()))
        vault_client.secrets.kv.v2.create_or_update_secret(
            path=MASTER_PATH, secret=claimed.to_dict(), cas=kv_version(vault_client, MASTER_PATH, iso.mount),
            mount_point=iso.mount)
        assert registry(iso, vault_client).get(2).state == PENDING
        check_tenants(iso.config, made)  # the pending version changes nothing for readers
        result = rotate_master(k, expect_version=1)
    assert result.resumed and result.new_version == 2
    assert roots_of(iso, vault_client) == {1: "pkcs11", 2: "transit"}
    assert kek_parents(iso, vault_client, made) == {2}
    check_tenants(no_hsm(cfg), made)


# --- failures change nothing ----------------------------------------------------------------------------


def _unchanged(iso: Isolated, vault_client: Any, before: dict[str, Any], revision: int) -> None:
    assert raw_doc(vault_client, MASTER_PATH, iso.mount) == before
    assert kv_version(vault_client, MASTER_PATH, iso.mount) == revision
    assert kv_version(vault_client, f"{LOCKS_PATH}/master", iso.mount) == 0  # no lease taken either


def test_a_wrong_passphrase_is_a_clear_error_and_changes_nothing(iso: Isolated, vault_client: Any,
                                                                  tmp_path: Path) -> None:
    made = populate(no_hsm(with_root(iso.config, root="passphrase", root_passphrase=PASSPHRASE)))
    tenant = next(iter(made))
    keyrings = {t: raw_doc(vault_client, keyring_path(t), iso.mount) for t in made}
    before, revision = raw_doc(vault_client, MASTER_PATH, iso.mount), kv_version(vault_client, MASTER_PATH, iso.mount)
    wrong_file = tmp_path / "wrong.passphrase"
    wrong_file.write_text("not the passphrase at all")
    wrong_file.chmod(0o600)
    env = {**iso.env, "KEYOPS_ROOT": "passphrase", "KEYOPS_ROOT_PASSPHRASE_FILE": str(wrong_file)}

    for args in (("rotate", "--level", "master"), ("secret", "get", tenant, "s0"), ("rotate", "--tenant", tenant,
                                                                                     "--level", "kek")):
        done = keyops_main(env, *args)
        assert done.returncode == 15, (args, done)
        assert "passphrase does not open master key v1" in done.stderr, done
        assert "not the passphrase at all" not in done.stdout + done.stderr

    _unchanged(iso, vault_client, before, revision)
    assert {t: raw_doc(vault_client, keyring_path(t), iso.mount) for t in made} == keyrings
    # A file that others may read is refused before it is read.
    wrong_file.chmod(0o644)
    exposed = keyops_main({**env, "KEYOPS_ROOT_PASSPHRASE_FILE": str(wrong_file)}, "secret", "get", tenant, "s0")
    assert exposed.returncode == 15 and "accessible by group or others" in exposed.stderr, exposed
    check_tenants(no_hsm(with_root(iso.config, root="passphrase", root_passphrase=PASSPHRASE)), made)


def test_rotating_onto_an_unreachable_kms_changes_nothing(iso: Isolated, vault_client: Any,
                                                          kms: dict[str, str]) -> None:
    made = populate(iso.config)
    before, revision = raw_doc(vault_client, MASTER_PATH, iso.mount), kv_version(vault_client, MASTER_PATH, iso.mount)
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**iso.env, "KEYOPS_ROOT": "transit", **kms, "KEYOPS_ROOT_TRANSIT_ADDR": nowhere,
           "KEYOPS_ROOT_TRANSIT_TIMEOUT": "2"}
    done = keyops_main(env, "rotate", "--level", "master")
    assert done.returncode == 11, done
    assert f"root KMS (Transit key {kms['KEYOPS_ROOT_TRANSIT_KEY']!r}" in done.stderr and nowhere in done.stderr
    _unchanged(iso, vault_client, before, revision)
    check_tenants(iso.config, made)


def test_a_kms_that_goes_away_fails_clearly_and_comes_back(iso: Isolated, vault_client: Any,
                                                          stack_factory: Any, tmp_path: Path) -> None:
    own_kms = stack_factory(port=free_port())
    own_kms.up()
    cfg = no_hsm(with_root(iso.config, {"KEYOPS_ROOT": "transit", **_kms_root(own_kms, tmp_path)},
                           root_transit_timeout=2.0))
    made = populate(cfg)
    before, revision = raw_doc(vault_client, MASTER_PATH, iso.mount), kv_version(vault_client, MASTER_PATH, iso.mount)
    keyrings = {t: raw_doc(vault_client, keyring_path(t), iso.mount) for t in made}
    own_kms.down()

    with fresh(cfg) as k:
        with pytest.raises(VaultUnreachable, match="root KMS"):
            k.get_secret(next(iter(made)), "s0")
        with pytest.raises(VaultUnreachable, match="root KMS"):
            rotate_master(k)
    _unchanged(iso, vault_client, before, revision)
    assert {t: raw_doc(vault_client, keyring_path(t), iso.mount) for t in made} == keyrings

    own_kms.up()
    check_tenants(cfg, made)


def test_the_kms_policy_allows_nothing_but_its_key(kms_stack: DevStack, kms: dict[str, str]) -> None:
    token = Path(kms["KEYOPS_ROOT_TRANSIT_TOKEN_FILE"]).read_text()
    client = _client(str(kms_stack.addr), token)
    ct = client.secrets.transit.encrypt_data(name=kms["KEYOPS_ROOT_TRANSIT_KEY"], plaintext="aGk=")["data"]
    assert ct["ciphertext"].startswith("vault:v1:")
    for forbidden in (lambda: client.secrets.transit.encrypt_data(name="another_key", plaintext="aGk="),
                      lambda: client.secrets.transit.read_key(name=kms["KEYOPS_ROOT_TRANSIT_KEY"]),
                      lambda: client.secrets.transit.rotate_key(name=kms["KEYOPS_ROOT_TRANSIT_KEY"])):
        with pytest.raises(hvac.exceptions.Forbidden):
            forbidden()
    assert os.stat(kms["KEYOPS_ROOT_TRANSIT_TOKEN_FILE"]).st_mode & 0o077 == 0
