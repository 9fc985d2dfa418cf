"""keyops.crypto's hot path (BoundKey) without servers.

The contract: BoundKey produces exactly the ciphertexts of ``crypto.encrypt``
+ ``Ciphertext`` and accepts exactly those of its tenant and DEK version;
everything else is refused with ``MalformedCiphertext`` or the one opaque
``DecryptionError``, never a wrong plaintext.
"""

from __future__ import annotations

import base64
import pickle

import pytest

from keyops import crypto
from keyops.crypto import AeadKey, BoundKey, Ciphertext
from keyops.errors import DecryptionError, InvalidInput, MalformedCiphertext

KEY = bytes(range(32))
TENANT = "acme"
VERSION = 7
CONTEXT = b"secret:db/password"
PLAINTEXT = b"correct horse battery staple"
SIZES = [0, 1, 2, 3, 64, 1024, crypto._COPY_BELOW, 64 * 1024]  # both sides of the slice/memoryview switch

REFUSED = (DecryptionError, MalformedCiphertext)


@pytest.fixture
def key() -> AeadKey:
    return AeadKey(KEY)


@pytest.fixture
def bound(key: AeadKey) -> BoundKey:
    return BoundKey(key, TENANT, VERSION)


# --- same format as the reference path ------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_seal_is_the_binary_form_that_the_parser_and_decrypt_accept(key: AeadKey, bound: BoundKey,
                                                                     size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    blob = bound.seal(plaintext, CONTEXT)
    ct = Ciphertext.from_bytes(blob)
    assert (ct.tenant, ct.dek_version) == (TENANT, VERSION)
    assert ct.to_bytes() == blob
    assert crypto.decrypt(key, ct, CONTEXT) == plaintext
    assert bound.open(blob, CONTEXT) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_seal_text_is_the_text_form_that_the_parser_and_decrypt_accept(key: AeadKey, bound: BoundKey,
                                                                        size: int) -> None:
    plaintext = bytes(size)
    text = bound.seal_text(plaintext, CONTEXT)
    assert text.startswith(f"keyops:v1:{TENANT}:{VERSION}:")
    ct = Ciphertext.from_text(text)
    assert ct.to_text() == text
    assert crypto.decrypt(key, ct, CONTEXT) == plaintext
    assert bound.open_text(text, CONTEXT) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_open_accepts_what_the_reference_path_made(key: AeadKey, bound: BoundKey, size: int) -> None:
    plaintext = b"\x5a" * size
    ct = crypto.encrypt(key, TENANT, VERSION, plaintext, CONTEXT)
    assert bound.open(ct.to_bytes(), CONTEXT) == plaintext
    assert bound.open_text(ct.to_text(), CONTEXT) == plaintext


@pytest.mark.parametrize("context", [b"", b"x", CONTEXT, "secret:ünï", bytearray(b"ctx"), memoryview(b"ctx"),
                                     b"x" * crypto.MAX_CONTEXT_LEN])
def test_aad_is_secret_aad(bound: BoundKey, context: bytes | str) -> None:
    expected = crypto.secret_aad(TENANT, VERSION, crypto._check_context(context))
    assert bound.aad(context) == expected
    assert bound.aad(context) == expected  # remembered the second time, same bytes


def test_str_and_bytes_context_and_plaintext_are_the_same(key: AeadKey, bound: BoundKey) -> None:
    text = bound.seal_text("pässword", "secret:a")
    assert bound.open_text(text, b"secret:a") == "pässword".encode()
    assert crypto.decrypt(key, Ciphertext.from_text(text), "secret:a") == "pässword".encode()
    assert bound.open(bound.seal(bytearray(b"ab"), bytearray(b"c")), "c") == b"ab"


def test_fresh_nonce_per_encryption(bound: BoundKey) -> None:
    assert len({bound.seal(PLAINTEXT, CONTEXT) for _ in range(50)}) == 50
    assert len({bound.seal_text(PLAINTEXT, CONTEXT) for _ in range(50)}) == 50


def test_prefixes_match_the_format() -> None:
    assert crypto.binary_tenant_prefix("acme") == b"\x01\x04acme"
    assert crypto.text_tenant_prefix("acme") == "keyops:v1:acme:"
    bound = BoundKey(AeadKey(KEY), "acme", 258)
    assert bound.header == b"\x01\x04acme\x00\x00\x01\x02"
    assert bound.text_prefix == "keyops:v1:acme:258:"


# --- binding ----------------------------------------------------------------------------------


def test_another_context_fails(bound: BoundKey) -> None:
    with pytest.raises(DecryptionError):
        bound.open(bound.seal(PLAINTEXT, CONTEXT), b"secret:other")
    with pytest.raises(DecryptionError):
        bound.open_text(bound.seal_text(PLAINTEXT, CONTEXT), b"")


def test_another_version_or_tenant_is_refused_before_decryption(key: AeadKey, bound: BoundKey) -> None:
    for other in (BoundKey(key, TENANT, VERSION + 1), BoundKey(key, "acme2", VERSION), BoundKey(key, "acm", VERSION)):
        with pytest.raises(MalformedCiphertext):
            other.open(bound.seal(PLAINTEXT, CONTEXT), CONTEXT)
        with pytest.raises(MalformedCiphertext):
            other.open_text(bound.seal_text(PLAINTEXT, CONTEXT), CONTEXT)


def test_rewritten_header_fails_authentication(key: AeadKey, bound: BoundKey) -> None:
    """The same key under another version's header: the AAD no longer matches."""
    blob = bound.seal(PLAINTEXT, CONTEXT)
    moved = BoundKey(key, TENANT, VERSION + 1)
    with pytest.raises(DecryptionError):
        moved.open(moved.header + blob[len(bound.header):], CONTEXT)
    text = bound.seal_text(PLAINTEXT, CONTEXT)
    with pytest.raises(DecryptionError):
        moved.open_text(moved.text_prefix + text[len(bound.text_prefix):], CONTEXT)


def test_another_key_fails(bound: BoundKey) -> None:
    other = BoundKey(AeadKey(bytes(32)), TENANT, VERSION)
    with pytest.raises(DecryptionError):
        other.open(bound.seal(PLAINTEXT, CONTEXT), CONTEXT)


# --- tampering and truncation -------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, crypto._COPY_BELOW + 1])
def test_every_flipped_bit_of_a_binary_ciphertext_fails(bound: BoundKey, size: int) -> None:
    blob = bound.seal(b"\x00" * size, CONTEXT)
    positions = range(len(blob)) if size < 100 else [*range(64), *range(len(blob) - 64, len(blob))]
    for i in positions:
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[i] ^= 1 << bit
            with pytest.raises(REFUSED):
                bound.open(bytes(tampered), CONTEXT)


def test_every_changed_character_of_a_text_ciphertext_fails(bound: BoundKey) -> None:
    text = bound.seal_text(b"abcd", CONTEXT)  # 32 payload bytes: the last group is padded
    for i, char in enumerate(text):
        for other in {"A", "B", "z", "/", "+", "=", ":", "0"} - {char}:
            with pytest.raises(REFUSED):
                bound.open_text(text[:i] + other + text[i + 1:], CONTEXT)


@pytest.mark.parametrize("size", [0, 1])  # payloads of 28 and 29 bytes: "==" and "=" padding
def test_non_canonical_base64_is_refused(bound: BoundKey, size: int) -> None:
    text = bound.seal_text(b"\x01" * size, CONTEXT)
    prefix, payload = text[:len(bound.text_prefix)], text[len(bound.text_prefix):]
    sealed = base64.b64decode(payload)
    stripped = payload.rstrip("=")
    padding = len(payload) - len(stripped)
    assert padding == 2 - size
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(stripped[-1])
    for unused_bit in range(2 * padding):  # 2 unused bits per "=": each one set alone
        odd = stripped[:-1] + alphabet[last | (1 << unused_bit)] + "=" * padding
        assert base64.b64decode(odd) == sealed  # the same bytes: only canonical form can tell
        with pytest.raises(MalformedCiphertext):
            bound.open_text(prefix + odd, CONTEXT)


def test_every_truncation_fails(bound: BoundKey) -> None:
    blob = bound.seal(PLAINTEXT, CONTEXT)
    for n in range(len(blob)):
        with pytest.raises(REFUSED):
            bound.open(blob[:n], CONTEXT)
    text = bound.seal_text(PLAINTEXT, CONTEXT)
    for n in range(len(text)):
        with pytest.raises(REFUSED):
            bound.open_text(text[:n], CONTEXT)


@pytest.mark.parametrize("payload", ["", "A", "AAAA", "****", "QUFB\n", "QUFB QUFB", "QUFB====", "QU=B", "é"])
def test_bad_text_payload_is_malformed(bound: BoundKey, payload: str) -> None:
    with pytest.raises(MalformedCiphertext):
        bound.open_text(bound.text_prefix + payload, CONTEXT)


def test_whitespace_is_left_to_the_full_parser(bound: BoundKey) -> None:
    """The fast path accepts only the exact form; the service falls back to the parser."""
    text = bound.seal_text(PLAINTEXT, CONTEXT)
    with pytest.raises(MalformedCiphertext):
        bound.open_text(f" {text}\n", CONTEXT)
    assert crypto.decrypt(AeadKey(KEY), Ciphertext.from_text(f" {text}\n"), CONTEXT) == PLAINTEXT


# --- inputs and bounds ----------------------------------------------------------------------------


def test_context_too_long_is_invalid_input(bound: BoundKey) -> None:
    too_long = b"x" * (crypto.MAX_CONTEXT_LEN + 1)
    for _ in range(2):  # never remembered, so refused every time
        with pytest.raises(InvalidInput):
            bound.seal(PLAINTEXT, too_long)
        with pytest.raises(InvalidInput):
            bound.open(bound.seal(PLAINTEXT, CONTEXT), too_long)
        with pytest.raises(InvalidInput):
            bound.seal_text(PLAINTEXT, too_long.decode())


@pytest.mark.parametrize("bad", [None, 5, 1.5, ["x"]])
def test_wrong_types_are_type_errors(bound: BoundKey, bad: object) -> None:
    with pytest.raises(TypeError):
        bound.seal(bad, CONTEXT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bound.seal(PLAINTEXT, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bound.open(bound.seal(PLAINTEXT, CONTEXT), bad)  # type: ignore[arg-type]


def test_aad_map_stays_bounded(bound: BoundKey) -> None:
    blobs = {}
    for i in range(crypto.AAD_CACHE_SIZE * 2 + 3):
        context = f"secret:{i}".encode()
        blobs[context] = bound.seal(str(i).encode(), context)
        assert len(bound._aads) <= crypto.AAD_CACHE_SIZE
    for context, blob in blobs.items():
        assert bound.open(blob, context) == context.split(b":")[1]


@pytest.mark.parametrize("tenant, version, error", [
    ("Acme", 1, InvalidInput), ("a/b", 1, InvalidInput), ("", 1, InvalidInput),
    (TENANT, 0, MalformedCiphertext), (TENANT, 2**31, MalformedCiphertext), (TENANT, True, TypeError),
    (TENANT, "1", TypeError),
])
def test_constructor_validates(key: AeadKey, tenant: str, version: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        BoundKey(key, tenant, version)


def test_constructor_wants_an_aead_key() -> None:
    with pytest.raises(TypeError):
        BoundKey(KEY, TENANT, VERSION)  # type: ignore[arg-type]


def test_bound_keys_hide_material(bound: BoundKey) -> None:
    assert KEY.hex() not in repr(bound) and "material hidden" in repr(bound)
    with pytest.raises(TypeError):
        pickle.dumps(bound)
    assert not hasattr(bound, "__dict__")
