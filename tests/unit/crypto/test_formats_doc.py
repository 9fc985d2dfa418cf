"""docs/formats.md is byte-exact: its test vector, checked against keyops.crypto and against plain AES-GCM."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyops import crypto

DOC = Path(__file__).resolve().parents[3] / "docs" / "formats.md"
KEY, NONCE = bytes(range(32)), bytes(range(12))
TENANT, VERSION, CONTEXT, PLAINTEXT = "acme", 3, b"secret:db/password", b"hello"


def vector() -> dict[str, list[str]]:
    block = re.search(r"### Test vector.*?```text\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/formats.md lost its test vector"
    lines = dict(line.split(":", 1) for line in block.group(1).splitlines() if line.strip())
    return {name.strip(): value.split() for name, value in lines.items()}


def groups_of_fields(groups: list[str]) -> list[bytes]:
    """The doc's ``length value`` pairs, each length checked against its value: the encoding as written."""
    assert len(groups) % 2 == 0
    fields = []
    for length, value in zip(groups[::2], groups[1::2], strict=True):
        raw = bytes.fromhex(value)
        assert len(length) == 8 and int(length, 16) == len(raw)  # 4 bytes, big-endian
        fields.append(raw)
    return fields


def test_the_associated_data_is_as_documented() -> None:
    doc = vector()
    assert b"".join(bytes.fromhex(g) for g in doc["aad"]) == crypto.secret_aad(TENANT, VERSION, CONTEXT)
    assert groups_of_fields(doc["aad"]) == [b"keyops-data-v1", b"1", b"acme", b"3", CONTEXT]  # decimal ASCII


def test_the_wrapping_context_is_as_documented() -> None:
    doc = vector()
    assert b"".join(bytes.fromhex(g) for g in doc["key_context"]) == crypto.key_context(TENANT, "dek", VERSION)
    assert groups_of_fields(doc["key_context"]) == [b"keyops-key-v1", b"acme", b"dek", b"3", b"wrap"]


def test_the_binary_and_text_forms_are_as_documented() -> None:
    doc = vector()
    fmt, tlen, tenant, version, nonce, body, tag = (bytes.fromhex(g) for g in doc["binary"])
    assert (fmt, tlen, tenant, version, nonce) == (b"\x01", b"\x04", b"acme", (3).to_bytes(4, "big"), NONCE)
    assert len(body) == len(PLAINTEXT) and len(tag) == 16
    aad = b"".join(bytes.fromhex(g) for g in doc["aad"])
    assert AESGCM(KEY).encrypt(NONCE, PLAINTEXT, aad) == body + tag  # plain AES-GCM, not keyops
    ct = crypto.encrypt(crypto.AeadKey(KEY), TENANT, VERSION, PLAINTEXT, CONTEXT, nonce=NONCE)
    assert ct.to_bytes() == b"".join(bytes.fromhex(g) for g in doc["binary"])
    assert ct.to_text() == doc["text"][0]
    for form in (doc["text"][0], ct.to_bytes()):
        assert crypto.decrypt(crypto.AeadKey(KEY), crypto.Ciphertext.parse(form), CONTEXT) == PLAINTEXT
