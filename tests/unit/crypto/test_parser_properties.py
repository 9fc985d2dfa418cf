"""Property and fuzz tests of every parser that takes a ciphertext or a key name from outside (issue 13, item 4).

For arbitrary input, each parser either returns a value or raises one of its
documented errors (``MalformedCiphertext``, an ``InvalidInput``, or the one
opaque ``DecryptionError``), never anything else; and nothing but the exact
ciphertext that keyops made ever decrypts to its plaintext. The example
count comes from the Hypothesis profile in tests/conftest.py.
"""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from keyops import crypto
from keyops.errors import DecryptionError, InvalidInput, MalformedCiphertext
from keyops.kms.plugin import MAX_CIPHERTEXT, TAIL_ANNOTATION, join_ciphertext, split_ciphertext
from keyops.model.keyring import KeyChain, Keyring, Policy
from keyops.serve.tenant_keys import key_id, parse_key_id

KEY = crypto.AeadKey(bytes(range(32)))
TENANT = "acme"
VERSION = 3
CONTEXT = b"secret:db/password"
PLAINTEXT = b"the plaintext that must never come out of a forged ciphertext"
REAL = crypto.encrypt(KEY, TENANT, VERSION, PLAINTEXT, CONTEXT)
REAL_BYTES = REAL.to_bytes()
REAL_TEXT = REAL.to_text()
BOUND = crypto.BoundKey(KEY, TENANT, VERSION)

#: Input near the real thing: a right header or prefix with garbage after it reaches the deeper checks.
near_bytes = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=120).map(lambda tail: REAL_BYTES[:10] + tail),
    st.binary(max_size=120).map(lambda tail: crypto.binary_header(TENANT, VERSION) + tail),
)
near_text = st.one_of(
    st.text(max_size=200),
    st.text(max_size=120).map(lambda tail: crypto.TEXT_PREFIX + tail),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=:", max_size=120)
    .map(lambda tail: f"{crypto.TEXT_PREFIX}{TENANT}:{VERSION}:{tail}"),
)


def _open_any(ct: crypto.Ciphertext) -> bytes:
    """Decrypt a parsed ciphertext with the one real key and context, as keyops would."""
    return crypto.decrypt(KEY, ct, CONTEXT)


def _is_real(ct: crypto.Ciphertext) -> bool:
    return ct == REAL


@given(near_bytes)
@example(b"")
@example(b"\x01")
@example(REAL_BYTES[:-1])
@example(b"keyops:")
def test_binary_input_parses_or_is_refused_and_never_decrypts(data: bytes) -> None:
    assume(data != REAL_BYTES)
    try:
        ct = crypto.Ciphertext.parse(data)
    except MalformedCiphertext as exc:
        assert str(exc)  # names what is wrong
        return
    if _is_real(ct):
        return  # the same ciphertext in another spelling (text with surrounding whitespace)
    with pytest.raises(DecryptionError):
        _open_any(ct)


@given(near_text)
@example("keyops:v1:acme:3:")
@example("keyops:v1:acme:07:AAAA")
@example(REAL_TEXT[:-1])
@example(REAL_TEXT + "=")
def test_text_input_parses_or_is_refused_and_never_decrypts(text: str) -> None:
    assume(text.strip() != REAL_TEXT)
    try:
        ct = crypto.Ciphertext.from_text(text)
    except MalformedCiphertext as exc:
        assert str(exc)
        return
    assert not _is_real(ct)
    with pytest.raises(DecryptionError):
        _open_any(ct)


@given(st.integers(min_value=0, max_value=len(REAL_BYTES) - 1), st.integers(min_value=1, max_value=255))
def test_every_flipped_byte_of_a_real_ciphertext_is_refused(position: int, mask: int) -> None:
    forged = bytearray(REAL_BYTES)
    forged[position] ^= mask
    with pytest.raises((MalformedCiphertext, DecryptionError)):
        _open_any(crypto.Ciphertext.parse(bytes(forged)))
    with pytest.raises((MalformedCiphertext, DecryptionError)):
        BOUND.open(bytes(forged), CONTEXT)


@given(st.integers(min_value=0, max_value=len(REAL_TEXT) - 1),
       st.characters(codec="ascii", exclude_characters="\t\n\r\x0b\x0c "))
def test_every_changed_character_of_a_real_text_ciphertext_is_refused(position: int, char: str) -> None:
    assume(REAL_TEXT[position] != char)
    forged = REAL_TEXT[:position] + char + REAL_TEXT[position + 1:]
    with pytest.raises((MalformedCiphertext, DecryptionError)):
        _open_any(crypto.Ciphertext.from_text(forged))
    with pytest.raises((MalformedCiphertext, DecryptionError)):
        BOUND.open_text(forged, CONTEXT)


@given(near_bytes, near_text)
def test_the_hot_path_refuses_what_the_parser_refuses(data: bytes, text: str) -> None:
    """``BoundKey.open``/``open_text`` (no full parse) raise only the two documented errors."""
    assume(data != REAL_BYTES and text != REAL_TEXT)
    with pytest.raises((MalformedCiphertext, DecryptionError)):
        BOUND.open(data, CONTEXT)
    with pytest.raises((MalformedCiphertext, DecryptionError)):
        BOUND.open_text(text, CONTEXT)


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_the_transit_body_decoder_raises_only_decryption_error(payload: bytes, junk: bytes) -> None:
    """``b64d`` (wrapped keys, Transit bodies) refuses anything but canonical base64 with the opaque error."""
    text = base64.b64encode(payload).decode("ascii")
    assert crypto.b64d(text) == payload
    try:
        decoded = crypto.b64d(junk.decode("latin-1"))
    except DecryptionError:
        return
    assert crypto.b64e(decoded) == junk.decode("latin-1")


# --- the Kubernetes KMS plugin's ciphertext and the servers' key ids ------------------------------------


@given(st.binary(max_size=2 * MAX_CIPHERTEXT + 10))
def test_kms_split_then_join_gives_back_the_blob(blob: bytes) -> None:
    ciphertext, annotations = split_ciphertext(blob)
    assert len(ciphertext) <= MAX_CIPHERTEXT
    assert join_ciphertext(ciphertext, annotations) == blob


@given(st.binary(max_size=MAX_CIPHERTEXT + 10),
       st.dictionaries(st.one_of(st.just(TAIL_ANNOTATION), st.text(max_size=30)), st.binary(max_size=50),
                       max_size=3))
def test_kms_join_of_anything_raises_only_documented_errors(ciphertext: bytes, annotations: dict[str, bytes]) -> None:
    try:
        joined = join_ciphertext(ciphertext, annotations)
    except (InvalidInput, DecryptionError):
        return
    assert set(annotations) <= {TAIL_ANNOTATION}
    assert joined.startswith(ciphertext)
    # Whatever is joined is then a keyops ciphertext to parse: it either parses or is refused, never decrypts.
    try:
        ct = crypto.Ciphertext.parse(joined)
    except MalformedCiphertext:
        return
    assume(not _is_real(ct))
    with pytest.raises(DecryptionError):
        _open_any(ct)


def _keyring() -> Keyring:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    chain = KeyChain(0, ())
    empty = Keyring(TENANT, Policy(), "2026-01-01T00:00:00Z", chain, chain)
    return empty.add_version("kek", "d3JhcHBlZA==", 1, now).add_version("dek", "d3JhcHBlZA==", 1, now)


@given(st.text(max_size=120))
@example("keyops:acme:dek:v1:")
@example("keyops:acme:dek:v:x")
@example("keyops:ACME:dek:v1:x")
@example("keyops:acme:dek:v99999999999999999999999:x")
def test_key_ids_parse_or_are_refused_with_invalid_input(text: str) -> None:
    try:
        tenant, version = parse_key_id(text)
    except InvalidInput as exc:
        assert str(exc)
        return
    assert text.startswith(f"keyops:{tenant}:dek:v{version}:")


def test_a_key_id_names_its_tenant_and_version() -> None:
    keyring = _keyring()
    assert parse_key_id(key_id(keyring, 1)) == (TENANT, 1)
