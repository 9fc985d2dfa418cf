"""keyops.crypto without servers: the ciphertext format, AAD binding, tampering, Wycheproof."""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest

from keyops import crypto
from keyops.crypto import AeadKey, Ciphertext
from keyops.errors import DecryptionError, InvalidInput, MalformedCiphertext

VECTORS = Path(__file__).parents[2] / "vectors" / "aes_gcm_test.json"

KEY = bytes(range(32))
TENANT = "acme"
CONTEXT = b"secret:db/password"
PLAINTEXT = b"correct horse battery staple"


@pytest.fixture
def key() -> AeadKey:
    return AeadKey(KEY)


@pytest.fixture
def ct(key: AeadKey) -> Ciphertext:
    return crypto.encrypt(key, TENANT, 7, PLAINTEXT, CONTEXT)


def header_len(tenant: str = TENANT) -> int:
    return 2 + len(tenant) + 4


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("plaintext", [b"", b"x", PLAINTEXT, bytes(range(256)) * 256])
def test_text_and_binary_round_trip(key: AeadKey, plaintext: bytes) -> None:
    ct = crypto.encrypt(key, TENANT, 3, plaintext, CONTEXT)
    text = ct.to_text()
    assert text.startswith("keyops:v1:acme:3:")
    binary = ct.to_bytes()
    assert binary[0] == 1 and binary[1] == len(TENANT) and binary[2:6] == b"acme"
    assert struct.unpack(">I", binary[6:10]) == (3,)
    for parsed in (Ciphertext.from_text(text), Ciphertext.from_bytes(binary), Ciphertext.parse(text),
                   Ciphertext.parse(binary), Ciphertext.parse(text.encode("ascii"))):
        assert parsed == ct
        assert crypto.decrypt(key, parsed, CONTEXT) == plaintext
    assert len(binary) == header_len() + crypto.NONCE_SIZE + len(plaintext) + crypto.TAG_SIZE


def test_text_form_tolerates_surrounding_whitespace(key: AeadKey, ct: Ciphertext) -> None:
    assert Ciphertext.from_text("  " + ct.to_text() + "\n") == ct


def test_context_as_str_or_bytes_is_the_same(key: AeadKey) -> None:
    ct = crypto.encrypt(key, TENANT, 1, PLAINTEXT, "path/é")
    assert crypto.decrypt(key, ct, "path/é".encode()) == PLAINTEXT


def test_fresh_nonce_per_encryption(key: AeadKey) -> None:
    nonces = {crypto.encrypt(key, TENANT, 1, PLAINTEXT).nonce for _ in range(200)}
    assert len(nonces) == 200


def test_explicit_nonce_is_deterministic(key: AeadKey) -> None:
    nonce = bytes(12)
    a = crypto.encrypt(key, TENANT, 1, PLAINTEXT, CONTEXT, nonce=nonce)
    b = crypto.encrypt(key, TENANT, 1, PLAINTEXT, CONTEXT, nonce=nonce)
    assert a == b and a.nonce == nonce


def test_context_too_long_is_invalid_input(key: AeadKey) -> None:
    with pytest.raises(InvalidInput):
        crypto.encrypt(key, TENANT, 1, PLAINTEXT, b"c" * (crypto.MAX_CONTEXT_LEN + 1))
    crypto.encrypt(key, TENANT, 1, PLAINTEXT, b"c" * crypto.MAX_CONTEXT_LEN)


def test_key_objects_hide_material(key: AeadKey) -> None:
    assert KEY.hex() not in repr(key) and "material hidden" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        AeadKey(KEY.hex())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AeadKey(KEY[:16])
    with pytest.raises(ValueError):
        key.seal(b"x", b"", nonce=bytes(8))


def test_generate_key_is_random_aes256() -> None:
    a, b = crypto.generate_key(), crypto.generate_key()
    assert len(a) == 32 and a != b


# --- the parser ---------------------------------------------------------------------------------


def test_every_truncation_of_a_binary_ciphertext_fails(key: AeadKey, ct: Ciphertext) -> None:
    """Too short for the fixed fields: MalformedCiphertext; a shorter body: not authentic."""
    data = ct.to_bytes()
    minimum = header_len() + crypto.NONCE_SIZE + crypto.TAG_SIZE
    for n in range(len(data)):
        if n < minimum:
            with pytest.raises(MalformedCiphertext):
                Ciphertext.from_bytes(data[:n])
            with pytest.raises(MalformedCiphertext):
                Ciphertext.parse(data[:n])
        else:
            parsed = Ciphertext.from_bytes(data[:n])
            with pytest.raises(DecryptionError):
                crypto.decrypt(key, parsed, CONTEXT)


def test_every_truncation_of_a_text_ciphertext_fails(key: AeadKey, ct: Ciphertext) -> None:
    text = ct.to_text()
    for n in range(len(text)):
        try:
            parsed = Ciphertext.from_text(text[:n])
        except MalformedCiphertext:
            continue
        with pytest.raises(DecryptionError):
            crypto.decrypt(key, parsed, CONTEXT)


def test_truncated_text_payload_is_malformed(ct: Ciphertext) -> None:
    short = base64.b64encode(ct.sealed[: crypto.NONCE_SIZE + crypto.TAG_SIZE - 1]).decode()
    with pytest.raises(MalformedCiphertext, match="truncated"):
        Ciphertext.from_text(f"keyops:v1:acme:7:{short}")


@pytest.mark.parametrize("version_byte", [0, 2, 0x6B, 255])
def test_unknown_binary_format_version(ct: Ciphertext, version_byte: int) -> None:
    data = bytes([version_byte]) + ct.to_bytes()[1:]
    with pytest.raises(MalformedCiphertext, match="format version"):
        Ciphertext.from_bytes(data)


@pytest.mark.parametrize("garbage", [b"garbage\n", b"hello world", b"vault:v1:abcd", b"{\"json\": 1}"])
def test_text_that_is_no_keyops_ciphertext_says_so(garbage: bytes) -> None:
    # "garbage" starts with byte 103: that is not a format version, it is not a keyops ciphertext at all.
    with pytest.raises(MalformedCiphertext, match="^not a keyops ciphertext: expected text starting with "
                                                  "'keyops:v1:'") as caught:
        Ciphertext.parse(garbage)
    assert "version" not in str(caught.value)


@pytest.mark.parametrize("prefix", ["keyops:v2:", "keyops:v0:", "keyops:V1:", "keyops:v10:"])
def test_unknown_text_format_version(ct: Ciphertext, prefix: str) -> None:
    text = prefix + ct.to_text()[len("keyops:v1:"):]
    with pytest.raises(MalformedCiphertext, match="unknown ciphertext format"):
        Ciphertext.from_text(text)


@pytest.mark.parametrize("payload", [
    "not base64!", "QUJD\nREVG", "QUJD REVG", "QUJDRA", "QUJDRA=", "====", "QUJD-_", "QUJDRA===",
])
def test_bad_base64(ct: Ciphertext, payload: str) -> None:
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(f"keyops:v1:acme:7:{payload}")


def test_non_canonical_base64_is_refused(key: AeadKey) -> None:
    """Unused low bits of the last base64 character must be zero, or a flipped bit would go unnoticed."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for plaintext, padding in ((b"123456", "=="), (b"1234567", "=")):  # 34 and 35 sealed bytes
        text = crypto.encrypt(key, TENANT, 1, plaintext, CONTEXT).to_text()
        assert text.endswith(padding) and not text.endswith(padding + "=")
        i = len(text) - len(padding) - 1
        tampered = text[:i] + alphabet[alphabet.index(text[i]) ^ 1] + text[i + 1:]
        # The decoded bytes are the same: only the canonical-encoding check can tell.
        assert base64.b64decode(tampered.rsplit(":", 1)[1]) == base64.b64decode(text.rsplit(":", 1)[1])
        with pytest.raises(MalformedCiphertext):
            Ciphertext.from_text(tampered)


@pytest.mark.parametrize("text", [
    "", "vault:v1:AAAA", "KEYOPS:v1:acme:1:AAAA", "keyops", "keyops:", "keyopsv1:acme:1:AAAA",
    "keyops:v1:acme:1", "keyops:v1:acme:1:AAAA:extra", "keyops:v1::1:AAAA",
])
def test_wrong_prefix_or_shape(text: str) -> None:
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(text)


def test_parse_dispatches_unknown_bytes_to_binary_and_rejects_them() -> None:
    with pytest.raises(MalformedCiphertext):
        Ciphertext.parse(b"vault:v1:QUJD")
    with pytest.raises(MalformedCiphertext):
        Ciphertext.parse(b"")


@pytest.mark.parametrize("text", [
    "keyops:v1:\u0430cme:7:{p}",  # Cyrillic a in the tenant
    "keyops:v1:acme:7:{p}\u00e9",
    "keyops:v1:acme:\u0661:{p}",  # Arabic-Indic digit one
    "keyops:v1:acme:\uff17:{p}",  # fullwidth 7
    "keyops\uff1av1:acme:7:{p}",
])
def test_non_ascii_text_is_malformed(ct: Ciphertext, text: str) -> None:
    payload = base64.b64encode(ct.sealed).decode()
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(text.format(p=payload))
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(text.format(p=payload).encode("utf-8"))


def test_non_ascii_bytes_are_malformed(ct: Ciphertext) -> None:
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(ct.to_text().encode() + b"\xff")
    raw = ct.to_bytes()
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_bytes(raw[:2] + b"\xd0\xb0c" + raw[5:])  # 'a' -> Cyrillic, same length 4


@pytest.mark.parametrize("tenant", ["Acme", "a/b", "..", "-ac", "a b", "a.b", "ac\x00e"])
def test_invalid_tenant_in_header(ct: Ciphertext, tenant: str) -> None:
    payload = base64.b64encode(ct.sealed).decode()
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(f"keyops:v1:{tenant}:7:{payload}")
    t = tenant.encode()
    binary = bytes([1, len(t)]) + t + struct.pack(">I", 7) + ct.sealed
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_bytes(binary)


@pytest.mark.parametrize("length", [0, 64, 255])
def test_invalid_tenant_length_in_binary_header(ct: Ciphertext, length: int) -> None:
    binary = bytes([1, length]) + b"a" * length + struct.pack(">I", 7) + ct.sealed
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_bytes(binary)


@pytest.mark.parametrize("version", ["0", "-1", "+1", "01", "007", "1.0", "x", "", "2147483648",
                                     "99999999999", " 7"])
def test_invalid_text_dek_version(ct: Ciphertext, version: str) -> None:
    payload = base64.b64encode(ct.sealed).decode()
    with pytest.raises(MalformedCiphertext):
        Ciphertext.from_text(f"keyops:v1:acme:{version}:{payload}")


@pytest.mark.parametrize("version", [0, 2**31, 2**32 - 1])
def test_invalid_binary_dek_version(ct: Ciphertext, version: int) -> None:
    raw = ct.to_bytes()
    binary = raw[:header_len() - 4] + struct.pack(">I", version) + raw[header_len():]
    with pytest.raises(MalformedCiphertext, match="DEK version"):
        Ciphertext.from_bytes(binary)


def test_largest_dek_version_is_accepted(key: AeadKey) -> None:
    ct = crypto.encrypt(key, TENANT, crypto.MAX_KEY_VERSION, PLAINTEXT)
    assert Ciphertext.from_text(ct.to_text()).dek_version == crypto.MAX_KEY_VERSION
    assert Ciphertext.from_bytes(ct.to_bytes()).dek_version == crypto.MAX_KEY_VERSION


def test_parser_refuses_non_bytes() -> None:
    with pytest.raises(TypeError):
        Ciphertext.from_bytes("keyops")  # type: ignore[arg-type]


def test_malformed_messages_do_not_echo_input(ct: Ciphertext) -> None:
    secret_looking = "s3cr3t-" + "Z" * 60
    for bad in (f"keyops:v1:{secret_looking}:1:AAAA", f"keyops:v1:acme:1:{secret_looking}!",
                f"keyops:v9:{secret_looking}"):
        with pytest.raises(MalformedCiphertext) as info:
            Ciphertext.from_text(bad)
        assert "Z" * 20 not in str(info.value)


# --- associated data ------------------------------------------------------------------------------


def test_aad_binds_tenant_version_and_context(key: AeadKey, ct: Ciphertext) -> None:
    assert crypto.decrypt(key, ct, CONTEXT) == PLAINTEXT
    for moved in (dataclasses.replace(ct, tenant="acme2"), dataclasses.replace(ct, tenant="acm"),
                  dataclasses.replace(ct, dek_version=6), dataclasses.replace(ct, dek_version=8)):
        with pytest.raises(DecryptionError):
            crypto.decrypt(key, moved, CONTEXT)
        # Moved through the text and binary forms too.
        with pytest.raises(DecryptionError):
            crypto.decrypt(key, Ciphertext.from_text(moved.to_text()), CONTEXT)
        with pytest.raises(DecryptionError):
            crypto.decrypt(key, Ciphertext.from_bytes(moved.to_bytes()), CONTEXT)
    for context in (b"", b"secret:db/passwor", CONTEXT + b"\x00", b"secret:db/Password", "secret:db/password "):
        with pytest.raises(DecryptionError):
            crypto.decrypt(key, ct, context)


def test_another_key_fails(ct: Ciphertext) -> None:
    with pytest.raises(DecryptionError):
        crypto.decrypt(AeadKey(bytes(32)), ct, CONTEXT)


def test_associated_data_is_unambiguous() -> None:
    assert crypto.secret_aad("ab", 1, b"c") != crypto.secret_aad("a", 1, b"bc")
    assert crypto.secret_aad("a", 11, b"") != crypto.secret_aad("a", 1, b"1")
    assert crypto.encode_fields(b"ab", b"c") != crypto.encode_fields(b"a", b"bc")
    contexts = {crypto.key_context(t, lvl, v, p) for t in ("a", "b") for lvl in ("kek", "dek")
                for v in (1, 2) for p in ("wrap", "escrow")}
    assert len(contexts) == 16


def test_key_context_binds_every_field() -> None:
    base = crypto.key_context("acme", "dek", 1)
    wrapped = AeadKey(KEY).seal(bytes(32), base)
    for other in (crypto.key_context("acme2", "dek", 1), crypto.key_context("acme", "kek", 1),
                  crypto.key_context("acme", "dek", 2), crypto.key_context("acme", "dek", 1, "escrow")):
        with pytest.raises(DecryptionError):
            AeadKey(KEY).open(wrapped, other)
    assert AeadKey(KEY).open(wrapped, base) == bytes(32)


# --- tampering ----------------------------------------------------------------------------------------


def _outcome(key: AeadKey, data: bytes | str) -> type[Exception] | bytes:
    try:
        return crypto.decrypt(key, Ciphertext.parse(data), CONTEXT)
    except (MalformedCiphertext, DecryptionError) as exc:
        return type(exc)


def test_flipping_any_bit_of_a_binary_ciphertext_fails(key: AeadKey, ct: Ciphertext) -> None:
    data = ct.to_bytes()
    for bit in range(len(data) * 8):
        tampered = bytearray(data)
        tampered[bit // 8] ^= 1 << (bit % 8)
        result = _outcome(key, bytes(tampered))
        if bit // 8 >= header_len():
            assert result is DecryptionError, f"bit {bit}"
        else:
            assert result in (MalformedCiphertext, DecryptionError), f"bit {bit}"


def test_changing_any_byte_of_a_binary_ciphertext_fails(key: AeadKey, ct: Ciphertext) -> None:
    data = ct.to_bytes()
    for i in range(len(data)):
        for delta in (0x01, 0x80, 0xFF):
            tampered = bytearray(data)
            tampered[i] ^= delta
            result = _outcome(key, bytes(tampered))
            if i >= header_len():
                assert result is DecryptionError, (i, delta)
            else:
                assert result in (MalformedCiphertext, DecryptionError), (i, delta)


def test_flipping_any_bit_of_a_text_ciphertext_fails(key: AeadKey) -> None:
    for plaintext in (b"", b"1", b"12", PLAINTEXT):  # every base64 padding length
        text = crypto.encrypt(key, TENANT, 7, plaintext, CONTEXT).to_text()
        for i in range(len(text)):
            for bit in range(8):
                tampered = text[:i] + chr(ord(text[i]) ^ (1 << bit)) + text[i + 1:]
                assert _outcome(key, tampered) in (MalformedCiphertext, DecryptionError), (plaintext, i, bit)
                assert _outcome(key, tampered.encode("utf-8")) in (MalformedCiphertext, DecryptionError)


def test_appended_bytes_fail(key: AeadKey, ct: Ciphertext) -> None:
    assert _outcome(key, ct.to_bytes() + b"\x00") is DecryptionError


# --- Wycheproof ---------------------------------------------------------------------------------------


def _wycheproof_groups() -> list[dict[str, Any]]:
    data = json.loads(VECTORS.read_text())
    assert data["algorithm"] == "AES-GCM"
    return data["testGroups"]


def _cases(key_size: int, iv_size: int) -> list[Any]:
    cases = []
    for group in _wycheproof_groups():
        if group["keySize"] == key_size and group["ivSize"] == iv_size and group["tagSize"] == 128:
            cases += [pytest.param(t, id=f"tc{t['tcId']}-{t['result']}") for t in group["tests"]]
    return cases


WYCHEPROOF_256_96 = _cases(256, 96)


def test_wycheproof_vectors_are_present() -> None:
    results = [case.values[0]["result"] for case in WYCHEPROOF_256_96]
    assert len(results) >= 60
    assert results.count("valid") >= 30 and results.count("invalid") >= 20
    assert set(results) <= {"valid", "invalid"}  # an "acceptable" case would need a decision here


@pytest.mark.parametrize("case", WYCHEPROOF_256_96)
def test_wycheproof_aes_256_gcm_96(case: dict[str, Any]) -> None:
    key = AeadKey(bytes.fromhex(case["key"]))
    iv, aad, msg = bytes.fromhex(case["iv"]), bytes.fromhex(case["aad"]), bytes.fromhex(case["msg"])
    sealed = iv + bytes.fromhex(case["ct"]) + bytes.fromhex(case["tag"])
    if case["result"] == "valid":
        assert key.open(sealed, aad) == msg
        assert key.seal(msg, aad, nonce=iv) == sealed
    else:
        assert case["result"] == "invalid"
        with pytest.raises(DecryptionError):
            key.open(sealed, aad)


def test_wycheproof_other_key_sizes_are_refused() -> None:
    sizes = {g["keySize"] for g in _wycheproof_groups()} - {256}
    assert sizes == {128, 192}
    for group in _wycheproof_groups():
        if group["keySize"] != 256:
            with pytest.raises(ValueError):
                AeadKey(bytes.fromhex(group["tests"][0]["key"]))


def test_wycheproof_other_nonce_sizes_are_refused() -> None:
    checked = 0
    for group in _wycheproof_groups():
        if group["keySize"] == 256 and group["ivSize"] != 96:
            t = group["tests"][0]
            with pytest.raises(ValueError):
                AeadKey(bytes.fromhex(t["key"])).seal(bytes.fromhex(t["msg"]), b"", nonce=bytes.fromhex(t["iv"]))
            checked += 1
    assert checked >= 5
