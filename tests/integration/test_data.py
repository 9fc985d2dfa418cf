"""Data and wrapped keys moved or tampered with fail to decrypt, against the real servers.

Tampering is done the way an attacker with write access to Vault would do
it: by editing the stored documents with the root hvac client, then reading
through keyops.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from typing import Any

import hvac.exceptions
import pytest
from _tenants import new_tenant

from keyops import crypto
from keyops.config import Config
from keyops.errors import DecryptionError, KeyNotFound, MalformedCiphertext
from keyops.model.keyring import Keyring, Policy
from keyops.ops.front import Keyops, keyring_path, secret_path

pytestmark = pytest.mark.integration

RESIDENCES = ["kv", "transit"]
KV = "keyops"


@pytest.fixture(scope="module")
def uncached(config: Config) -> Iterator[Keyops]:
    """Re-reads the keyring on every call, so edits made behind its back are seen at once."""
    with Keyops(config, keyring_ttl=0) as keyops:
        yield keyops


def make_tenant(k: Keyops, prefix: str, residence: str) -> str:
    tenant = new_tenant(f"{prefix}-{residence}")
    k.create_tenant(tenant, Policy(kek_residence=residence))
    return tenant


def read_doc(vault_client: Any, path: str) -> dict[str, Any]:
    resp = vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV, raise_on_deleted_version=True)
    return resp["data"]["data"]


def write_doc(vault_client: Any, path: str, doc: dict[str, Any]) -> None:
    """Overwrite as an administrator would: check-and-set on the current version (keyrings require it)."""
    try:
        current = int(vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=KV)["data"][
            "current_version"])
    except hvac.exceptions.InvalidPath:
        current = 0
    vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, cas=current, mount_point=KV)


def add_dek_version(k: Keyops, tenant: str) -> int:
    """A new primary DEK, wrapped by the primary KEK (what a DEK rotation stores)."""
    def change(kr: Keyring) -> Keyring:
        kek_version = kr.kek.primary
        version = kr.dek.latest_version + 1
        wrapped = k.hierarchy.kek_wrapper(kr, kek_version).wrap(crypto.generate_key(),
                                                       crypto.key_context(tenant, "dek", version))
        return kr.add_version("dek", base64.b64encode(wrapped).decode(), kek_version, k.clock())

    return k.update_keyring(tenant, change)[0].dek.primary


def with_version(text: str, version: int) -> str:
    prefix, tenant, _, payload = text.rsplit(":", 3)
    return f"{prefix}:{tenant}:{version}:{payload}"


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def flip_char(text: str, index: int, bit: int) -> str:
    return text[:index] + chr(ord(text[index]) ^ (1 << bit)) + text[index + 1:]


# --- ciphertexts moved ------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_ciphertext_moved_to_another_tenant(k: Keyops, config: Config, vault_client: Any, residence: str) -> None:
    a, b = make_tenant(k, "mva", residence), make_tenant(k, "mvb", residence)
    text = k.encrypt(a, b"tenant a's data", "ctx")
    binary = k.encrypt_bytes(a, b"tenant a's data", "ctx")
    assert k.decrypt(a, text, "ctx") == k.decrypt(a, binary, "ctx") == b"tenant a's data"
    k.encrypt(b, b"warm b", "ctx")  # b's DEK is cached too: the hot path must refuse as well
    ct = crypto.Ciphertext.from_text(text)
    relabelled_text = text.replace(f"keyops:v1:{a}:", f"keyops:v1:{b}:")
    relabelled_binary = crypto.Ciphertext(b, ct.dek_version, ct.nonce, ct.body).to_bytes()
    with Keyops(config) as cold:
        for keyops in (k, cold):
            for moved in (text, binary, ct, relabelled_text, relabelled_binary):
                with pytest.raises(DecryptionError):
                    keyops.decrypt(b, moved, "ctx")

    # The same through stored records: a's record under b's path, as is and relabelled.
    k.put_secret(a, "shared/name", b"a's secret")
    record = read_doc(vault_client, secret_path(a, "shared/name"))
    write_doc(vault_client, secret_path(b, "shared/name"), record)
    with pytest.raises(DecryptionError):
        k.get_secret(b, "shared/name")
    relabelled = {**record, "ciphertext": record["ciphertext"].replace(f":{a}:", f":{b}:")}
    write_doc(vault_client, secret_path(b, "shared/name"), relabelled)
    with pytest.raises(DecryptionError):
        k.get_secret(b, "shared/name")
    assert k.get_secret(a, "shared/name") == b"a's secret"


def test_ciphertext_moved_across_residences(k: Keyops) -> None:
    a, b = make_tenant(k, "mvx", "kv"), make_tenant(k, "mvy", "transit")
    text = k.encrypt(a, b"data", "ctx")
    with pytest.raises(DecryptionError):
        k.decrypt(b, text.replace(f":{a}:", f":{b}:"), "ctx")
    text_b = k.encrypt(b, b"data", "ctx")
    with pytest.raises(DecryptionError):
        k.decrypt(a, text_b.replace(f":{b}:", f":{a}:"), "ctx")


@pytest.mark.parametrize("residence", RESIDENCES)
def test_ciphertext_moved_to_another_dek_version(k: Keyops, vault_client: Any, residence: str) -> None:
    tenant = make_tenant(k, "ver", residence)
    k.put_secret(tenant, "old", b"under dek 1")
    text1 = k.encrypt(tenant, b"under dek 1", "ctx")
    assert add_dek_version(k, tenant) == 2
    k.put_secret(tenant, "new", b"under dek 2")
    text2 = k.encrypt(tenant, b"under dek 2", "ctx")
    assert crypto.Ciphertext.from_text(text2).dek_version == 2
    assert read_doc(vault_client, secret_path(tenant, "new"))["dek_version"] == 2

    # In memory: the version number rewritten in the ciphertext.
    with pytest.raises(DecryptionError):
        k.decrypt(tenant, with_version(text1, 2), "ctx")
    with pytest.raises(DecryptionError):
        k.decrypt(tenant, with_version(text2, 1), "ctx")
    with pytest.raises(KeyNotFound):
        k.decrypt(tenant, with_version(text1, 3), "ctx")

    # As stored: the record's ciphertext text (and its dek_version field) edited in Vault.
    for name, version in (("old", 2), ("new", 1)):
        original = read_doc(vault_client, secret_path(tenant, name))
        edited = {**original, "ciphertext": with_version(original["ciphertext"], version), "dek_version": version}
        write_doc(vault_client, secret_path(tenant, name), edited)
        with pytest.raises(DecryptionError):
            k.get_secret(tenant, name)
        write_doc(vault_client, secret_path(tenant, name), original)
    assert k.get_secret(tenant, "old") == b"under dek 1"
    assert k.get_secret(tenant, "new") == b"under dek 2"


@pytest.mark.parametrize("residence", RESIDENCES)
def test_ciphertext_moved_to_another_context(k: Keyops, vault_client: Any, residence: str) -> None:
    tenant = make_tenant(k, "ctx", residence)
    text = k.encrypt(tenant, b"bound to orders/1", "orders/1")
    for other in ("orders/2", "", "orders/1 ", "Orders/1", b"orders/1\x00"):
        with pytest.raises(DecryptionError):
            k.decrypt(tenant, text, other)
    assert k.decrypt(tenant, text, b"orders/1") == b"bound to orders/1"
    # A record copied under another name of the same tenant: its context is its name.
    k.put_secret(tenant, "db/password", b"pw")
    record = read_doc(vault_client, secret_path(tenant, "db/password"))
    for other_name in ("db/passwords", "db/Password", "app/db/password"):
        write_doc(vault_client, secret_path(tenant, other_name), record)
        with pytest.raises(DecryptionError):
            k.get_secret(tenant, other_name)
    # Nor does data encrypted with encrypt() pass as a stored secret of that name.
    forged = {**record, "ciphertext": k.encrypt(tenant, b"forged", "")}
    write_doc(vault_client, secret_path(tenant, "forged"), forged)
    with pytest.raises(DecryptionError):
        k.get_secret(tenant, "forged")


# --- wrapped keys moved -----------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_wrapped_dek_copied_into_another_tenant(k: Keyops, config: Config, vault_client: Any,
                                                residence: str) -> None:
    a, b = make_tenant(k, "wda", residence), make_tenant(k, "wdb", residence)
    k.put_secret(b, "s", b"b's secret")
    text_b = k.encrypt(b, b"b's data", "ctx")
    doc_a = read_doc(vault_client, keyring_path(a))
    doc_b = read_doc(vault_client, keyring_path(b))
    forged = copy.deepcopy(doc_b)
    forged["dek"]["versions"][0]["wrapped"] = doc_a["dek"]["versions"][0]["wrapped"]
    write_doc(vault_client, keyring_path(b), forged)
    with Keyops(config) as fresh:
        with pytest.raises(DecryptionError):
            fresh.decrypt(b, text_b, "ctx")
        with pytest.raises(DecryptionError):
            fresh.get_secret(b, "s")
    # Put back, all is well: the copy alone was the cause.
    write_doc(vault_client, keyring_path(b), doc_b)
    with Keyops(config) as fresh:
        assert fresh.get_secret(b, "s") == b"b's secret"


@pytest.mark.parametrize("residence", RESIDENCES)
def test_wrapped_kek_copied_into_another_tenant(k: Keyops, config: Config, vault_client: Any,
                                                residence: str) -> None:
    a, b = make_tenant(k, "wka", residence), make_tenant(k, "wkb", residence)
    doc_a = read_doc(vault_client, keyring_path(a))
    doc_b = read_doc(vault_client, keyring_path(b))
    forged = copy.deepcopy(doc_b)
    forged["kek"]["versions"][0]["wrapped"] = doc_a["kek"]["versions"][0]["wrapped"]
    write_doc(vault_client, keyring_path(b), forged)
    with Keyops(config) as fresh:
        keyring = fresh.get_tenant(b)
        with pytest.raises(DecryptionError):
            fresh.hierarchy._kek(keyring, 1)  # the HSM refuses: the context names tenant b
        if residence == "kv":
            with pytest.raises(DecryptionError):
                fresh.encrypt(b, b"x")
    write_doc(vault_client, keyring_path(b), doc_b)


@pytest.mark.parametrize("residence", RESIDENCES)
def test_wrapped_dek_moved_to_another_version(k: Keyops, config: Config, vault_client: Any,
                                              residence: str) -> None:
    tenant = make_tenant(k, "wdv", residence)
    add_dek_version(k, tenant)
    text2 = k.encrypt(tenant, b"under dek 2", "ctx")
    doc = read_doc(vault_client, keyring_path(tenant))
    forged = copy.deepcopy(doc)
    v1, v2 = forged["dek"]["versions"]
    v2["wrapped"] = v1["wrapped"]
    write_doc(vault_client, keyring_path(tenant), forged)
    with Keyops(config) as fresh, pytest.raises(DecryptionError):
        fresh.decrypt(tenant, text2, "ctx")


def test_wrapped_dek_moved_to_the_kek_level(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = make_tenant(k, "lvl", "kv")
    doc = read_doc(vault_client, keyring_path(tenant))
    forged = copy.deepcopy(doc)
    forged["kek"]["versions"][0]["wrapped"] = doc["dek"]["versions"][0]["wrapped"]
    write_doc(vault_client, keyring_path(tenant), forged)
    with Keyops(config) as fresh, pytest.raises(DecryptionError):
        fresh.hierarchy._kek(fresh.get_tenant(tenant), 1)


# --- flipped bits ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_flipped_bit_in_a_stored_record(k: Keyops, vault_client: Any, residence: str) -> None:
    tenant = make_tenant(k, "flip", residence)
    k.put_secret(tenant, "s", b"flip me!")
    path = secret_path(tenant, "s")
    original = read_doc(vault_client, path)
    prefix, payload = original["ciphertext"].rsplit(":", 1)
    sealed = base64.b64decode(payload)
    # Every byte of nonce || ciphertext || tag, one bit each (cycling through the bit positions).
    for i in range(len(sealed)):
        tampered = flip_bit(sealed, i * 8 + i % 8)
        write_doc(vault_client, path, {**original, "ciphertext": f"{prefix}:{base64.b64encode(tampered).decode()}"})
        with pytest.raises(DecryptionError):
            k.get_secret(tenant, "s")
    # Every character of the stored text (header included), one bit each.
    text = original["ciphertext"]
    for i in range(len(text)):
        write_doc(vault_client, path, {**original, "ciphertext": flip_char(text, i, i % 7)})
        with pytest.raises((DecryptionError, MalformedCiphertext, KeyNotFound)):
            k.get_secret(tenant, "s")
    write_doc(vault_client, path, original)
    assert k.get_secret(tenant, "s") == b"flip me!"


@pytest.mark.parametrize("residence", RESIDENCES)
def test_every_flipped_bit_of_a_ciphertext_fails(k: Keyops, config: Config, residence: str) -> None:
    """Through the whole API, warm (hot path) and cold: no single-bit change decrypts."""
    tenant = make_tenant(k, "bits", residence)
    text = k.encrypt(tenant, b"0123456", "ctx")  # 35 sealed bytes: a padded base64 tail
    binary = k.encrypt_bytes(tenant, b"0123456", "ctx")
    with Keyops(config) as cold:
        for keyops in (k, cold):
            for bit in range(len(binary) * 8):
                with pytest.raises((DecryptionError, MalformedCiphertext, KeyNotFound)):
                    keyops.decrypt(tenant, flip_bit(binary, bit), "ctx")
            for i in range(len(text)):
                for bit in range(8):
                    with pytest.raises((DecryptionError, MalformedCiphertext, KeyNotFound)):
                        keyops.decrypt(tenant, flip_char(text, i, bit), "ctx")
            assert keyops.decrypt(tenant, text, "ctx") == keyops.decrypt(tenant, binary, "ctx") == b"0123456"


@pytest.mark.parametrize("residence", RESIDENCES)
def test_flipped_bit_in_a_stored_wrapped_key(k: Keyops, uncached: Keyops, vault_client: Any, residence: str) -> None:
    """Every byte of the wrapped DEK and KEK as stored, and every character of their base64, one bit each."""
    tenant = make_tenant(k, "wflip", residence)
    text = k.encrypt(tenant, b"payload", "ctx")
    path = keyring_path(tenant)
    original = read_doc(vault_client, path)
    levels = ["dek", "kek"] if residence == "kv" else ["dek"]
    for level in levels:
        wrapped_b64 = original[level]["versions"][0]["wrapped"]
        blob = base64.b64decode(wrapped_b64)
        tampered_values = [base64.b64encode(flip_bit(blob, i * 8 + i % 8)).decode() for i in range(len(blob))]
        tampered_values += [flip_char(wrapped_b64, i, i % 6) for i in range(len(wrapped_b64))]
        for tampered in tampered_values:
            doc = copy.deepcopy(original)
            doc[level]["versions"][0]["wrapped"] = tampered
            write_doc(vault_client, path, doc)
            with pytest.raises(DecryptionError):
                uncached.decrypt(tenant, text, "ctx")
    write_doc(vault_client, path, original)
    assert uncached.decrypt(tenant, text, "ctx") == b"payload"


def test_flipped_bit_in_the_transit_escrow_copy(k: Keyops, uncached: Keyops, vault_client: Any) -> None:
    tenant = make_tenant(k, "esc", "transit")
    path = keyring_path(tenant)
    original = read_doc(vault_client, path)
    blob = base64.b64decode(original["kek"]["versions"][0]["wrapped"])
    for i in range(0, len(blob), 3):
        doc = copy.deepcopy(original)
        doc["kek"]["versions"][0]["wrapped"] = base64.b64encode(flip_bit(blob, i * 8 + i % 8)).decode()
        write_doc(vault_client, path, doc)
        with pytest.raises(DecryptionError):
            uncached.hierarchy._kek(uncached.get_tenant(tenant), 1)
    write_doc(vault_client, path, original)
