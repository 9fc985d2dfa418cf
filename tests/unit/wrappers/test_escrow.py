"""The break-glass recovery key (keyops.wrappers.escrow) and its copy in the keyring, without servers."""

from __future__ import annotations

import functools

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyops import crypto
from keyops.errors import ConfigError, DecryptionError, InvalidInput, KeyStateError
from keyops.model.keyring import Escrow, KeyVersion
from keyops.wrappers.escrow import EscrowKey, RecoveryKey

CONTEXT = crypto.key_context("acme", "kek", 3)


@functools.cache
def _private(bits: int = 3072) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _pems(bits: int = 3072, password: bytes | None = None) -> tuple[bytes, bytes]:
    key = _private(bits)
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return (key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def test_a_copy_opens_with_the_private_key_and_its_own_context_only() -> None:
    public, private = _pems()
    escrow, recovery = EscrowKey.from_pem(public), RecoveryKey.from_pem(private)
    assert escrow.fingerprint == recovery.fingerprint and escrow.fingerprint.startswith("sha256:")
    kek = crypto.generate_key()
    blob = escrow.wrap(kek, CONTEXT)
    assert recovery.unwrap(blob, CONTEXT) == kek
    with pytest.raises(DecryptionError):
        recovery.unwrap(blob, crypto.key_context("other", "kek", 3))  # moved to another tenant
    with pytest.raises(DecryptionError):
        recovery.unwrap(blob[:-1] + bytes([blob[-1] ^ 1]), CONTEXT)
    with pytest.raises(KeyStateError, match="recovery private key"):
        escrow.unwrap(blob, CONTEXT)  # the hosts' half never opens anything


def test_an_encrypted_private_key_needs_its_passphrase() -> None:
    _, private = _pems(password=b"long enough passphrase")
    assert RecoveryKey.from_pem(private, b"long enough passphrase").fingerprint
    with pytest.raises(InvalidInput, match="encrypted"):
        RecoveryKey.from_pem(private)
    with pytest.raises(InvalidInput, match="wrong passphrase"):
        RecoveryKey.from_pem(private, b"not it")


def test_weak_foreign_or_private_keys_are_refused_as_the_public_key() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="2048 bits; at least 3072"):
        EscrowKey.from_pem(small)
    curve = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match="not an RSA key"):
        EscrowKey.from_pem(curve)
    _, private = _pems()
    with pytest.raises(ConfigError, match="never belongs on keyops' hosts"):
        EscrowKey.from_pem(private)


def test_the_recovery_key_hides_its_material() -> None:
    _, private = _pems()
    recovery = RecoveryKey.from_pem(private)
    assert "material hidden" in repr(recovery)
    with pytest.raises(TypeError):
        __import__("pickle").dumps(recovery)


def test_keyrings_without_escrow_still_read_and_the_field_round_trips() -> None:
    old = {"version": 1, "state": "active", "created_at": "2026-01-01T00:00:00Z", "wrapped": "d3JhcA==",
           "parent_version": 1}
    assert KeyVersion.from_dict(old).escrow is None
    assert "escrow" not in KeyVersion.from_dict(old).to_dict()
    new = KeyVersion.from_dict({**old, "escrow": {"key": "sha256:ab", "wrapped": "YmxvYg=="}})
    assert new.escrow == Escrow("sha256:ab", "YmxvYg==")
    assert KeyVersion.from_dict(new.to_dict()) == new
    for bad in ({"key": "sha256:ab"}, {"key": "", "wrapped": "x"}, "sha256:ab", {"key": 1, "wrapped": "x"}):
        with pytest.raises(InvalidInput, match="escrow"):
            KeyVersion.from_dict({**old, "escrow": bad})
