"""Tenants, keyrings and the key hierarchy against the real OpenBao and SoftHSM2 of the fixtures.

Checks go through independent clients (the root hvac client, raw
python-pkcs11) wherever the property is about what is stored, not about
what keyops reports.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import uuid
from typing import Any

import hvac.exceptions
import pkcs11
import pkcs11.exceptions as p11e
import pytest
from _rotation_support import isolated_mount
from _rotation_support import raw_doc as support_raw_doc
from _tenants import new_tenant
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from keyops import crypto
from keyops.cli.main import main
from keyops.config import Config
from keyops.errors import CheckAndSetFailed, Conflict, InvalidInput, KeyringCorrupt, SecretNotFound, TenantExists
from keyops.model.keyring import Policy
from keyops.ops import lifecycle
from keyops.ops import tenants as tenant_ops
from keyops.ops.front import Keyops, keyring_path, secret_path, transit_key_name, usage_path
from keyops.ops.reencrypt import reencrypt
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration

RESIDENCES = ["kv", "transit"]
KV = "keyops"


@pytest.fixture(scope="module")
def tenants(k: Keyops) -> dict[str, str]:
    """One tenant per residence, shared by the read-only tests of this module."""
    made = {}
    for residence in RESIDENCES:
        name = new_tenant(f"kr-{residence}")
        k.create_tenant(name, Policy(kek_residence=residence))
        made[residence] = name
    return made


def u_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def raw_doc(vault_client: Any, path: str) -> tuple[dict[str, Any], int]:
    resp = vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV, raise_on_deleted_version=True)
    return resp["data"]["data"], int(resp["data"]["metadata"]["version"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_encrypt_decrypt_round_trip(k: Keyops, config: Config, tenants: dict[str, str], residence: str) -> None:
    tenant = tenants[residence]
    samples = [b"", b"x", b"\x00\xff" * 3, os.urandom(1024), os.urandom(64 * 1024)]
    texts = [k.encrypt(tenant, pt, "ctx/a") for pt in samples]
    binaries = [k.encrypt_bytes(tenant, pt, b"ctx/b") for pt in samples]
    for pt, text, binary in zip(samples, texts, binaries, strict=True):
        assert text.startswith(f"keyops:v1:{tenant}:1:")
        assert crypto.Ciphertext.parse(binary).tenant == tenant
        assert k.decrypt(tenant, text, "ctx/a") == pt
        assert k.decrypt(tenant, binary, b"ctx/b") == pt
        assert k.decrypt(tenant, crypto.Ciphertext.parse(text), "ctx/a") == pt
        if len(pt) >= 16:
            assert pt not in text.encode() and pt not in binary
    # Another process (a fresh Keyops, cold caches) reads the same ciphertexts.
    with Keyops(config) as cold:
        for pt, text, binary in zip(samples, texts, binaries, strict=True):
            assert cold.decrypt(tenant, text, "ctx/a") == pt
            assert cold.decrypt(tenant, binary, b"ctx/b") == pt
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("residence", RESIDENCES)
def test_secrets_round_trip(k: Keyops, config: Config, vault_client: Any, tenants: dict[str, str],
                            residence: str) -> None:
    tenant = tenants[residence]
    value = b"p\x00ss\nw\xffrd-" + uuid.uuid4().hex.encode()
    first = k.put_secret(tenant, "db/password", value)
    assert first.changed and first.version == 1 and first.dek_version == 1
    assert k.get_secret(tenant, "db/password") == value
    again = k.put_secret(tenant, "db/password", value)
    assert not again.changed and again.version == 1  # no write for the same value
    assert raw_doc(vault_client, secret_path(tenant, "db/password"))[1] == 1
    second = k.put_secret(tenant, "db/password", "new value")
    assert second.changed and second.version == 2
    assert k.get_secret(tenant, "db/password") == b"new value"

    # As stored: a keyops record, no plaintext.
    doc, _ = raw_doc(vault_client, secret_path(tenant, "db/password"))
    assert doc["schema"] == 1 and doc["dek_version"] == 1
    assert doc["ciphertext"].startswith(f"keyops:v1:{tenant}:1:")
    assert "new value" not in str(doc) and b64(b"new value") not in str(doc)

    k.put_secret(tenant, "db/user", b"admin")
    k.put_secret(tenant, "api/token", b"")
    k.put_secret(tenant, "api/v2/token", b"t2")
    planned = k.put_secret(tenant, "planned", b"x", dry_run=True)
    assert planned.changed and k.read_record(tenant, "planned") is None
    assert k.list_secrets(tenant) == ["api/token", "api/v2/token", "db/password", "db/user"]
    assert k.list_secrets(tenant, "api") == ["api/token", "api/v2/token"]
    assert k.get_secret(tenant, "api/token") == b""

    with Keyops(config) as cold:
        assert cold.get_secret(tenant, "db/user") == b"admin"

    assert k.delete_secret(tenant, "db/user", dry_run=True) is True
    assert k.get_secret(tenant, "db/user") == b"admin"
    assert k.delete_secret(tenant, "db/user") is True
    with pytest.raises(SecretNotFound):
        k.get_secret(tenant, "db/user")
    assert k.delete_secret(tenant, "db/user") is False
    with pytest.raises(hvac.exceptions.InvalidPath):  # history gone too, not only soft-deleted
        vault_client.secrets.kv.v2.read_secret_metadata(path=secret_path(tenant, "db/user"), mount_point=KV)
    assert "db/user" not in k.list_secrets(tenant)


# --- the keyring as stored ---------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_keyring_document_as_stored(k: Keyops, vault_client: Any, tenants: dict[str, str], residence: str) -> None:
    tenant = tenants[residence]
    doc, _ = raw_doc(vault_client, keyring_path(tenant))
    assert doc["schema"] == 1 and doc["tenant"] == tenant
    assert doc["policy"]["kek_residence"] == residence
    (kek,) = doc["kek"]["versions"]
    (dek,) = doc["dek"]["versions"]
    assert doc["kek"]["primary"] == 1 and doc["dek"]["primary"] == 1
    assert kek["state"] == dek["state"] == "active"
    assert dek["parent_version"] == 1
    registry, _ = raw_doc(vault_client, "master")
    assert kek["parent_version"] == registry["primary"]
    # The KEK (escrow copy for transit) is wrapped by the HSM master key: 12 + 32 + 16 bytes.
    assert len(base64.b64decode(kek["wrapped"])) == 60
    keyring = k.get_tenant(tenant)
    assert len(k.hierarchy._kek(keyring, 1)) == 32
    wrapped_dek = base64.b64decode(dek["wrapped"])
    if residence == "transit":
        assert kek["transit_version"] == 1
        assert wrapped_dek.startswith(b"vault:v1:")
    else:
        assert "transit_version" not in kek
        assert len(wrapped_dek) == 60
        with pytest.raises(hvac.exceptions.InvalidPath):
            vault_client.secrets.transit.read_key(name=transit_key_name(tenant))


def test_transit_key_is_imported_and_not_exportable(k: Keyops, vault_client: Any, tenants: dict[str, str]) -> None:
    tenant = tenants["transit"]
    info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]
    assert info["name"] == f"keyops-{tenant}" and info["type"] == "aes256-gcm96"
    assert info["exportable"] is False and info["allow_plaintext_backup"] is False
    assert info["imported_key"] is True and info["deletion_allowed"] is False
    assert info["latest_version"] == 1
    with pytest.raises(hvac.exceptions.InvalidRequest):
        vault_client.secrets.transit.export_key(name=transit_key_name(tenant), key_type="encryption-key")
    with pytest.raises(hvac.exceptions.VaultError, match="exporting is disallowed"):  # no backup either
        vault_client.secrets.transit.backup_key(name=transit_key_name(tenant))
    # Transit holds exactly the KEK whose escrow copy is in KV: Transit encrypts, the escrowed KEK decrypts.
    kek = k.hierarchy._kek(k.get_tenant(tenant), 1)
    probe = vault_client.secrets.transit.encrypt_data(
        name=transit_key_name(tenant), plaintext=b64(b"probe"), associated_data=b64(b"aad"))["data"]["ciphertext"]
    assert probe.startswith("vault:v1:")
    assert crypto.AeadKey(kek).open(base64.b64decode(probe[len("vault:v1:"):]), b"aad") == b"probe"


def test_app_unwraps_its_dek_through_transit(k: Keyops, vault_client: Any, tenants: dict[str, str]) -> None:
    """What an app with a Transit-only token does: Transit decrypt of the wrapped DEK, then local AES-GCM."""
    tenant = tenants["transit"]
    text = k.encrypt(tenant, b"app data", "orders/42")
    doc, _ = raw_doc(vault_client, keyring_path(tenant))
    (dek,) = doc["dek"]["versions"]
    wrapped = base64.b64decode(dek["wrapped"]).decode("ascii")
    context = crypto.key_context(tenant, "dek", 1)
    plain = vault_client.secrets.transit.decrypt_data(
        name=transit_key_name(tenant), ciphertext=wrapped, associated_data=b64(context))["data"]["plaintext"]
    dek_bytes = base64.b64decode(plain)
    assert len(dek_bytes) == 32
    ct = crypto.Ciphertext.from_text(text)
    assert crypto.decrypt(crypto.AeadKey(dek_bytes), ct, "orders/42") == b"app data"
    # Without the right associated data Transit refuses to unwrap.
    for wrong in (b"", crypto.key_context(tenant, "dek", 2), crypto.key_context(tenant, "kek", 1)):
        with pytest.raises(hvac.exceptions.InvalidRequest):
            vault_client.secrets.transit.decrypt_data(
                name=transit_key_name(tenant), ciphertext=wrapped, associated_data=b64(wrong))


def test_transit_tenant_works_without_the_hsm_pin(stack: Any, tenants: dict[str, str]) -> None:
    """Residence transit: apps encrypt, decrypt, put and get without any PIN configured."""
    tenant = tenants["transit"]
    env = {**os.environ, **stack.env()}
    env.pop("KEYOPS_PKCS11_PIN_FILE")
    env.pop("KEYOPS_PKCS11_PIN", None)

    def run(*args: str, data: bytes = b"") -> bytes:
        proc = subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], input=data, env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    ct = run("encrypt", "--tenant", tenant, "--context", "c", data=b"no pin needed")
    assert run("decrypt", "--tenant", tenant, "--context", "c", data=ct) == b"no pin needed"
    run("secret", "put", tenant, "nopin", data=b"\x00value")
    assert run("secret", "get", tenant, "nopin") == b"\x00value"


# --- the DEK cache ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_ten_thousand_decryptions_cost_one_unwrap(config: Config, tenants: dict[str, str], residence: str) -> None:
    tenant = tenants[residence]
    with Keyops(config) as writer:
        texts = [writer.encrypt(tenant, f"item {i}".encode(), "ctx") for i in range(100)]
    with Keyops(config) as fresh:
        for i in range(10_000):
            assert fresh.decrypt(tenant, texts[i % 100], "ctx") == f"item {i % 100}".encode()
        calls = fresh.calls.snapshot()
    if residence == "kv":
        assert calls.get("hsm.decrypt") == 1, calls  # the KEK; the DEK is unwrapped in memory
        assert calls.get("transit.decrypt", 0) == 0, calls
    else:
        assert calls.get("transit.decrypt") == 1, calls  # the DEK, through Transit
        assert calls.get("hsm.decrypt", 0) == 0, calls
    assert calls.get("hsm.encrypt", 0) == 0 and calls.get("kv.write", 0) == 0, calls
    # The keyring and the master registry, each read a few times at most (TTL refreshes on a slow machine).
    assert 1 <= calls.get("kv.read", 0) <= 6, calls
    assert sum(v for key, v in calls.items() if key.startswith(("kv.", "transit."))) <= 8, calls


def test_encryptions_reserve_uses_in_blocks(config: Config, vault_client: Any, tenants: dict[str, str]) -> None:
    tenant = tenants["kv"]
    keyring_before = raw_doc(vault_client, keyring_path(tenant))
    try:
        before = raw_doc(vault_client, usage_path(tenant))[0]["versions"].get("1", {}).get("reserved", 0)
    except hvac.exceptions.InvalidPath:
        before = 0  # nothing encrypted yet
    with Keyops(config) as fresh:
        for _ in range(5000):
            fresh.encrypt(tenant, b"x")
        writes = fresh.calls.snapshot().get("kv.write", 0)
    after = raw_doc(vault_client, usage_path(tenant))[0]["versions"]["1"]
    assert 1 <= writes <= 10  # blocks of 16, 32, ... 4,096 uses: O(log n) writes, not one per encryption
    assert after["reserved"] - before >= 5000  # never undercounts
    assert after["external"] >= 5000  # handed to this caller, outside keyops' store
    assert raw_doc(vault_client, keyring_path(tenant)) == keyring_before  # encryptions never write the keyring


# --- concurrent writers ---------------------------------------------------------------------------------


def test_two_writers_with_the_same_cas_cannot_both_win(config: Config, vault_client: Any) -> None:
    tenant = new_tenant("cas")
    with Keyops(config) as setup:
        setup.create_tenant(tenant)
    for round_ in range(4):
        writers = [Keyops(config), Keyops(config)]
        base, version = writers[0].read_keyring(tenant)
        outcomes = _race_two_writes(writers, tenant, base, version)
        kinds = sorted(o[0] for o in outcomes)
        assert kinds == ["lost", "won"], (round_, outcomes)
        (winner,) = [o for o in outcomes if o[0] == "won"]
        (loser,) = [o for o in outcomes if o[0] == "lost"]
        assert type(loser[1]) is CheckAndSetFailed and "check-and-set" in str(loser[1])
        assert isinstance(loser[1], Conflict) and loser[1].code == "conflict"  # reported as a Conflict
        doc, stored_version = raw_doc(vault_client, keyring_path(tenant))
        assert stored_version == version + 1 == winner[1]
        assert doc == winner[2].to_dict()  # the winner's document, whole
        for w in writers:
            w.close()


def _race_two_writes(writers: list[Keyops], tenant: str, base: Any, version: int) -> list[Any]:
    """Both writers write a different change of ``base`` with the same check-and-set ``version`` at once."""
    outcomes: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def write(i: int) -> None:
        mine = dataclasses.replace(base, created_at=f"2020-01-0{1 + i}T00:00:00Z")  # two different changes
        barrier.wait()
        try:
            outcomes[i] = ("won", writers[i].write_keyring(tenant, mine, cas=version), mine)
        except Conflict as exc:
            outcomes[i] = ("lost", exc, mine)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


def test_concurrent_updates_lose_nothing(config: Config, vault_client: Any) -> None:
    """update_keyring retries on conflict: every writer's change lands.

    Each lost check-and-set of a writer means another writer's write landed,
    so with 4 writers of 2 updates a writer loses at most 3 * 2 = 6 times,
    within update_keyring's retries however the threads are scheduled.
    """
    tenant = new_tenant("upd")
    with Keyops(config) as setup:
        setup.create_tenant(tenant)
    writers = [Keyops(config) for _ in range(4)]
    barrier = threading.Barrier(len(writers))
    errors: list[BaseException] = []

    def work(w: Keyops) -> None:
        barrier.wait()
        try:
            for _ in range(2):
                w.update_usage(tenant, lambda u: u.reserve(1, 10, 10**6, external=False, holder=w.holder, now=u_now(),
                                                           lease_until=u_now())[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    doc, _ = raw_doc(vault_client, usage_path(tenant))
    assert doc["versions"]["1"]["reserved"] == 4 * 2 * 10
    for w in writers:
        w.close()


def test_two_processes_creating_one_tenant(stack: Any, vault_client: Any) -> None:
    """Two CLI processes create the same tenant at once: one keyring, the same KEK for both."""
    tenant = new_tenant("race")
    env = {**os.environ, **stack.env()}
    procs = [subprocess.Popen([sys.executable, "-m", "keyops.cli.main", "tenant", "create", tenant], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _, _ in results)
    # Both succeed (one waits for the other) or the loser says it lost the race (Conflict, exit 7).
    assert codes in ([0, 0], [0, 7]), results
    for code, _, err in results:
        if code == 7:
            assert b"being created by another process" in err or b"check-and-set" in err
    doc, _ = raw_doc(vault_client, keyring_path(tenant))
    assert [v["version"] for v in doc["kek"]["versions"]] == [1]
    assert [v["version"] for v in doc["dek"]["versions"]] == [1]


def test_first_tenants_created_in_parallel_share_one_master(stack_factory: Any, config: Config) -> None:
    """On a fresh Vault, two first tenants at once: both see no master registry, one registers it, both succeed."""
    extra = stack_factory()
    extra.up()
    # This process's SoftHSM2 is bound to the session token: the extra Vault uses its master key.
    cfg = extra.config().replace(pkcs11_module=config.pkcs11_module, pkcs11_token_label=config.pkcs11_token_label,
                                 pkcs11_pin_file=config.pkcs11_pin_file, pkcs11_pin=config.pkcs11_pin)
    rendezvous = threading.Barrier(2)

    class BothSeeNoRegistry(Keyops):
        def read_master(self) -> Any:
            found = super().read_master()
            if found is None and not rendezvous.broken:
                rendezvous.wait(timeout=60)  # both read "none" before either writes
            return found

    results: list[Any] = [None, None]

    def create(i: int) -> None:
        with BothSeeNoRegistry(cfg) as k:
            try:
                results[i] = k.create_tenant(new_tenant(f"first{i}")).keyring
            except Exception as exc:  # noqa: BLE001 - reported below
                results[i] = exc

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and not isinstance(r, Exception) for r in results), results
    with Keyops(cfg) as k:
        registry, _ = k.read_master()  # type: ignore[misc]
        # One registry, one version: the loser of the race waited for the winner's first key.
        assert registry.primary == 1 and [(v.version, v.state) for v in registry.versions] == [(1, "active")]
        for keyring in results:
            assert keyring.kek.primary_key.parent_version == 1
            assert k.decrypt(keyring.tenant, k.encrypt(keyring.tenant, b"ok")) == b"ok"


# --- the master key on the token ---------------------------------------------------------------------------


def test_master_key_is_sensitive_and_not_extractable(k: Keyops, config: Config, tenants: dict[str, str]) -> None:
    version, wrapper = k.master_wrapper()
    label = wrapper.label
    attrs = k.hsm.attributes(label)
    assert attrs.label == label and attrs.key_length_bits == 256
    assert attrs.token is True and attrs.sensitive is True and attrs.extractable is False
    assert attrs.always_sensitive is True and attrs.never_extractable is True

    # The same, read with python-pkcs11 directly (this process is logged in already through k.hsm).
    lib = pkcs11.lib(config.resolve_pkcs11_module())
    token = lib.get_token(token_label=config.pkcs11_token_label)
    try:
        session = token.open(user_pin=config.resolve_pkcs11_pin(), rw=True)
    except p11e.UserAlreadyLoggedIn:
        session = token.open(rw=True)
    try:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=label)
        assert key[Attribute.KEY_TYPE] == KeyType.AES and key[Attribute.VALUE_LEN] == 32
        assert key[Attribute.TOKEN] is True and key[Attribute.PRIVATE] is True
        assert key[Attribute.SENSITIVE] is True and key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.ALWAYS_SENSITIVE] is True and key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.WRAP] is False and key[Attribute.UNWRAP] is False
        with pytest.raises(p11e.AttributeSensitive):
            key[Attribute.VALUE]
        # Neither can it be wrapped out, made extractable, or copied into an extractable key.
        wrapping = session.generate_key(KeyType.AES, 256, store=False,
                                        capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP)
        with pytest.raises(p11e.KeyUnextractable):
            wrapping.wrap_key(key)
        # Read-only attributes, of a key made non-modifiable (CKR_ACTION_PROHIBITED) where the token allows.
        with pytest.raises(p11e.PKCS11Error):
            key[Attribute.EXTRACTABLE] = True
        with pytest.raises(p11e.PKCS11Error):
            key[Attribute.SENSITIVE] = False
        with pytest.raises(p11e.PKCS11Error):
            key.copy({Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False, Attribute.TOKEN: False})
        assert key[Attribute.EXTRACTABLE] is False and key[Attribute.SENSITIVE] is True
    finally:
        session.close()
    # Still usable for its one job afterwards.
    assert k.decrypt(tenants["kv"], k.encrypt(tenants["kv"], b"still works")) == b"still works"


# --- create_tenant ------------------------------------------------------------------------------------------------


def test_create_tenant_is_idempotent(k: Keyops, vault_client: Any) -> None:
    tenant = new_tenant("idem")
    policy = Policy(kek_period_days=60, dek_period_days=7, dek_usage_cap=1000)
    planned = k.create_tenant(tenant, policy, dry_run=True)
    assert planned.changed and planned.keyring is None
    with pytest.raises(hvac.exceptions.InvalidPath):
        raw_doc(vault_client, keyring_path(tenant))
    created = k.create_tenant(tenant, policy)
    assert created.changed and created.kek_version == 1 and created.dek_version == 1
    doc, version = raw_doc(vault_client, keyring_path(tenant))
    again = k.create_tenant(tenant, policy)
    assert not again.changed and again.keyring == created.keyring
    assert k.create_tenant(tenant, policy, dry_run=True).changed is False
    assert raw_doc(vault_client, keyring_path(tenant)) == (doc, version)
    with pytest.raises(TenantExists):
        k.create_tenant(tenant, dataclasses.replace(policy, dek_usage_cap=999))
    assert raw_doc(vault_client, keyring_path(tenant)) == (doc, version)
    assert tenant in k.list_tenants()
    assert k.get_tenant(tenant).policy == policy


@pytest.mark.parametrize("residence", RESIDENCES)
def test_create_tenant_resumes_a_half_made_keyring(k: Keyops, vault_client: Any, residence: str) -> None:
    """A crash after the KEK was stored (first write) is finished by running create_tenant again.

    Residence kv now stores the KEK and the first DEK in one write; a kv keyring with a KEK alone is
    what earlier keyops versions left after such a crash, and is still finished.
    """
    tenant = new_tenant(f"half-{residence}")
    policy = Policy(kek_residence=residence)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tenant_ops, "_with_first_dek", lambda k, keyring: keyring)  # the KEK alone, as before
        tenant_ops._create_kek_first(k, tenant, policy)
    doc, version = raw_doc(vault_client, keyring_path(tenant))
    assert doc["dek"]["versions"] == [] and len(doc["kek"]["versions"]) == 1
    kek_wrapped = doc["kek"]["versions"][0]["wrapped"]
    with pytest.raises(TenantExists):
        k.create_tenant(tenant, Policy(kek_residence=residence, dek_usage_cap=5))
    result = k.create_tenant(tenant, policy)
    assert result.changed and result.dek_version == 1
    doc2, version2 = raw_doc(vault_client, keyring_path(tenant))
    assert version2 == version + 1
    assert doc2["kek"]["versions"][0]["wrapped"] == kek_wrapped  # the same KEK, not a new one
    assert [v["version"] for v in doc2["dek"]["versions"]] == [1]
    assert k.decrypt(tenant, k.encrypt(tenant, b"resumed"), b"") == b"resumed"
    assert not k.create_tenant(tenant, policy).changed
    if residence == "transit":
        info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]
        assert info["latest_version"] == 1


def test_create_tenant_resumes_after_the_transit_import(k: Keyops, vault_client: Any) -> None:
    """Crash between the BYOK import and the DEK write: the imported key is recognised, not imported again."""
    tenant = new_tenant("half-imp")
    policy = Policy(kek_residence="transit")
    keyring, _ = tenant_ops._create_kek_first(k, tenant, policy)
    k.hierarchy.ensure_transit_kek(keyring, 1)
    assert vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]["latest_version"] == 1
    result = k.create_tenant(tenant, policy)
    assert result.changed and result.dek_version == 1
    assert vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]["latest_version"] == 1
    k.put_secret(tenant, "s", b"v")
    assert k.get_secret(tenant, "s") == b"v"


def test_status_reports_versions_and_usage(k: Keyops, tenants: dict[str, str]) -> None:
    for residence, tenant in tenants.items():
        st = k.tenant_status(tenant)
        assert st.tenant == tenant and st.residence == residence
        assert st.kek.primary == 1 and st.dek.primary == 1
        assert [v.state for v in st.kek.versions] == ["active"]
        assert st.dek_usage_cap == Policy().dek_usage_cap and st.due == ()
        assert st.kek.period_days == 90 and st.dek.period_days == 30
    listed = {s.tenant for s in k.status()}
    assert set(tenants.values()) <= listed


# --- a keyring is only used, and written, at its own tenant's path --------------------------------


def _write_as_admin(vault_client: Any, path: str, doc: dict[str, Any], mount: str = KV) -> int:
    """Overwrite a keyring as a token with write rights could: check-and-set on its current version."""
    meta = vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"]
    resp = vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, cas=meta["current_version"],
                                                              mount_point=mount)
    return int(resp["data"]["version"])


def test_a_keyring_naming_another_tenant_is_refused_and_nothing_is_written(
        k: Keyops, config: Config, vault_client: Any) -> None:
    x1, x2 = new_tenant("mm-x1"), new_tenant("mm-x2")
    for tenant in (x1, x2):
        k.create_tenant(tenant)
    k.put_secret(x2, "s", b"x2's secret")
    rotate(k, x2, "dek")
    reencrypt(k, x2)  # x2's DEK v1 protects nothing now: a privileged retire of it would be accepted
    x1_doc, x2_doc = raw_doc(vault_client, keyring_path(x1))[0], raw_doc(vault_client, keyring_path(x2))[0]
    # x2's keyring stored at x1's path (what an app of x1 could write when apps wrote keyrings), at the
    # same KV version as x2's own keyring, so a write back "to the tenant it names" would pass check-and-set.
    for _ in range(8):
        v1, v2 = raw_doc(vault_client, keyring_path(x1))[1], raw_doc(vault_client, keyring_path(x2))[1]
        if v1 == v2 and raw_doc(vault_client, keyring_path(x1))[0] == x2_doc:
            break
        if v1 <= v2:
            _write_as_admin(vault_client, keyring_path(x1), x2_doc)
        else:
            _write_as_admin(vault_client, keyring_path(x2), x2_doc)
    before = {t: raw_doc(vault_client, keyring_path(t)) for t in (x1, x2)}
    assert before[x1] == before[x2]
    try:
        _refused_at_the_wrong_path(config, x1, x2, before)
    finally:  # x1 gets its own keyring back (the session's other tests list every tenant)
        _write_as_admin(vault_client, keyring_path(x1), x1_doc)
    assert raw_doc(vault_client, keyring_path(x2)) == before[x2]
    assert k.get_secret(x2, "s") == b"x2's secret"
    with Keyops(config) as after:
        assert after.status(x1)[0].tenant == x1


def _refused_at_the_wrong_path(config: Config, x1: str, x2: str, before: dict[str, Any]) -> None:
    with Keyops(config) as fresh:
        with pytest.raises(KeyringCorrupt) as info:
            fresh.read_keyring(x1)
        text = str(info.value)
        assert f"keyring of tenant '{x1}' names tenant '{x2}'" in text
        assert f"version {before[x1][1]} of {KV}/{keyring_path(x1)}" in text and "Restoring a keyring" in text
        assert info.value.exit_code == 8 and info.value.code == "keyring_corrupt"
        for attempt in (lambda: lifecycle.retire(fresh, x1, "dek", 1), lambda: rotate(fresh, x1, "dek"),
                        lambda: fresh.encrypt(x1, b"x"), lambda: fresh.get_tenant(x1)):
            with pytest.raises(KeyringCorrupt):
                attempt()
        keyring_x2 = fresh.read_keyring(x2)[0]
        with pytest.raises(InvalidInput, match=f"refusing to write a keyring of tenant '{x2}' to the path of "
                                               f"tenant '{x1}'"):
            fresh.write_keyring(x1, keyring_x2, cas=before[x1][1])
        assert fresh.status(x2)[0].tenant == x2
        assert [p.tenant for p in fresh.status().problems if p.tenant in (x1, x2)] == [x1]
    with Keyops(config) as other:  # nothing was written anywhere
        assert {t: other.store.read(keyring_path(t)) for t in (x1, x2)} == before


# --- one tenant's broken keyring does not hide the others -------------------------------------------


def test_status_reports_a_corrupted_keyring_on_its_own(stack: Any, config: Config, vault_client: Any,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with isolated_mount(stack, config, vault_client) as iso, Keyops(iso.config) as k:
        good1, good2, bad = new_tenant("st-ok1"), new_tenant("st-ok2"), new_tenant("st-dd")
        for tenant in (good1, good2, bad):
            k.create_tenant(tenant)
        doc = support_raw_doc(vault_client, keyring_path(bad), iso.mount)
        # `bao kv put ... schema=1` stores the string "1": the garbage write of the issue.
        version = _write_as_admin(vault_client, keyring_path(bad), {**doc, "schema": "1"}, iso.mount)
        problem = (f"keyring of tenant '{bad}' has schema '1' (a string); expected the number 1 "
                   f"(version {version} of {iso.mount}/{keyring_path(bad)})")
        for key, value in iso.env.items():
            monkeypatch.setenv(key, value)

        assert main(["status"]) == 1
        out, err = capsys.readouterr()
        assert good1 in out and good2 in out and bad not in out
        assert f"keyops: error: tenant {bad}: {problem}" in err and "Restoring a keyring" in err
        assert "1 of 3 tenants could not be read; the others are shown" in err and "Traceback" not in err

        assert main(["status", "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["schema"] == 1 and sorted(t["tenant"] for t in report["tenants"]) == sorted([good1, good2])
        (listed,) = report["problems"]
        assert listed["tenant"] == bad and listed["error"] == "keyring_corrupt" and listed["exit_code"] == 8
        assert listed["message"].startswith(problem)

        assert main(["status", "--tenant", bad]) == KeyringCorrupt.exit_code
        assert problem in capsys.readouterr().err
        assert main(["status", "--tenant", good1]) == 0
        assert good1 in capsys.readouterr().out

        library = k.status()
        assert sorted(s.tenant for s in library) == sorted([good1, good2]) and len(library) == 2
        assert [(p.tenant, p.error) for p in library.problems] == [(bad, "keyring_corrupt")]
