"""AES-256-GCM and keyops' self-describing ciphertext. No I/O.

Binary form (all integers big-endian)::

    offset  size  field
    0       1     format version (1)
    1       1     tenant length T, 1..MAX_NAME_LEN
    2       T     tenant name, ASCII
    2+T     4     DEK version, 1..2**31-1
    6+T     12    nonce (random per encryption)
    18+T    n     AES-GCM ciphertext (n >= 0)
    18+T+n  16    GCM tag

Text form: ``keyops:v1:<tenant>:<dek version>:<base64(nonce || ciphertext || tag)>``
(compare Transit's ``vault:v1:``). Both forms carry the same fields.

Associated data binds format version, tenant, DEK version and the caller's
context (for a stored secret: its name), each length-prefixed, so a
ciphertext moved to another tenant, version or path fails to authenticate.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import struct
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyops.errors import DecryptionError, InvalidInput, MalformedCiphertext
from keyops.model.names import MAX_NAME_LEN, validate_tenant

FORMAT_VERSION = 1
TEXT_PREFIX = "keyops:v1:"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_KEY_VERSION = 2**31 - 1
MAX_CONTEXT_LEN = 4096

_B64_RE = re.compile(r"\A[A-Za-z0-9+/]*={0,2}\Z")


def b64e(data: bytes) -> str:
    """The one base64 of keyops' documents: standard alphabet, padded."""
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """A stored wrapped key: anything but canonical base64 is tampered with, so not authentic."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error, UnicodeEncodeError
        raise DecryptionError() from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise DecryptionError()  # non-zero unused bits: a flipped bit must not go unnoticed
    return raw


def generate_key() -> bytes:
    """A fresh AES-256 key from the OS CSPRNG."""
    return AESGCM.generate_key(bit_length=256)


def _as_bytes(value: bytes | str, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def encode_fields(*fields: bytes | str | int) -> bytes:
    """Canonical, unambiguous encoding: each field length-prefixed (4 bytes)."""
    out = bytearray()
    for field in fields:
        raw = str(field).encode() if isinstance(field, int) else _as_bytes(field, "field")
        out += struct.pack(">I", len(raw))
        out += raw
    return bytes(out)


def key_context(tenant: str, level: str, version: int, purpose: str = "wrap") -> bytes:
    """Associated data for a key wrapped by the level above it.

    A wrapped KEK or DEK copied to another tenant, level or version then fails
    to unwrap instead of yielding a wrong key.
    """
    return encode_fields(b"keyops-key-v1", tenant, level, version, purpose)


def secret_aad(tenant: str, dek_version: int, context: bytes | str) -> bytes:
    return encode_fields(b"keyops-data-v1", FORMAT_VERSION, tenant, dek_version, context)


class AeadKey:
    """An AES-256-GCM key with random 96-bit nonces.

    ``seal`` returns ``nonce || ciphertext || tag``. The key bytes are kept
    private; the object refuses to be pickled or printed.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("key must be bytes")
        if len(key) != KEY_SIZE:
            raise ValueError(f"key must be {KEY_SIZE} bytes (AES-256), got {len(key)}")
        self._aead = AESGCM(bytes(key))

    def seal(self, plaintext: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
        nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"nonce must be {NONCE_SIZE} bytes")
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError()
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptionError() from None

    def __repr__(self) -> str:
        return "<AeadKey (material hidden)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")


@dataclasses.dataclass(frozen=True)
class Ciphertext:
    """A parsed keyops ciphertext (no key material, safe to log)."""

    tenant: str
    dek_version: int
    nonce: bytes
    body: bytes  # ciphertext || tag

    @property
    def sealed(self) -> bytes:
        return self.nonce + self.body

    def to_bytes(self) -> bytes:
        t = self.tenant.encode("ascii")
        return (bytes([FORMAT_VERSION, len(t)]) + t + struct.pack(">I", self.dek_version)
                + self.nonce + self.body)

    def to_text(self) -> str:
        payload = base64.b64encode(self.sealed).decode("ascii")
        return f"{TEXT_PREFIX}{self.tenant}:{self.dek_version}:{payload}"

    @classmethod
    def from_bytes(cls, data: bytes) -> Ciphertext:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("binary ciphertext must be bytes")
        data = bytes(data)
        if len(data) < 2:
            raise MalformedCiphertext("ciphertext is truncated: missing header")
        if data[0] != FORMAT_VERSION:
            if all(32 <= b < 127 or b in b"\t\r\n" for b in data[:64]):
                # Text that is not "keyops:...": a paste of something else, not a newer keyops format.
                raise MalformedCiphertext(f"not a keyops ciphertext: expected text starting with {TEXT_PREFIX!r} "
                                          f"or the binary form (first byte {FORMAT_VERSION})")
            raise MalformedCiphertext(f"unknown ciphertext format version {data[0]} (this keyops reads "
                                      f"{FORMAT_VERSION}): not a keyops ciphertext, or one of a newer keyops")
        tlen = data[1]
        if not 1 <= tlen <= MAX_NAME_LEN:
            raise MalformedCiphertext(f"ciphertext header names a tenant of invalid length {tlen}")
        need = 2 + tlen + 4 + NONCE_SIZE + TAG_SIZE
        if len(data) < need:
            raise MalformedCiphertext(f"ciphertext is truncated: {len(data)} bytes, at least {need} needed")
        tenant = _parse_tenant(data[2:2 + tlen])
        (version,) = struct.unpack(">I", data[2 + tlen:6 + tlen])
        _check_version(version)
        nonce = data[6 + tlen:6 + tlen + NONCE_SIZE]
        return cls(tenant, version, nonce, data[6 + tlen + NONCE_SIZE:])

    @classmethod
    def from_text(cls, text: str | bytes) -> Ciphertext:
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("ascii")
            except UnicodeDecodeError:
                raise MalformedCiphertext("text ciphertext contains non-ASCII bytes") from None
        if not text.isascii():
            raise MalformedCiphertext("text ciphertext contains non-ASCII characters")
        text = text.strip()
        if not text.startswith("keyops:"):
            raise MalformedCiphertext("not a keyops ciphertext: expected the prefix 'keyops:v1:'")
        if not text.startswith(TEXT_PREFIX):
            format_name = text.split(":", 2)[1] if text.count(":") >= 2 else "?"
            raise MalformedCiphertext(f"unknown ciphertext format {format_name!r} (this keyops reads v1)")
        parts = text[len(TEXT_PREFIX):].split(":")
        if len(parts) != 3:
            raise MalformedCiphertext("malformed ciphertext: expected keyops:v1:<tenant>:<version>:<base64>")
        tenant_s, version_s, payload = parts
        tenant = _parse_tenant(tenant_s.encode("ascii"))
        # Canonical digits only ("07" is not 7), so that one version has one spelling.
        if not version_s.isdigit() or len(version_s) > 10 or version_s != str(int(version_s)):
            raise MalformedCiphertext("malformed ciphertext: DEK version is not a positive integer")
        version = int(version_s)
        _check_version(version)
        if not _B64_RE.match(payload):
            raise MalformedCiphertext("malformed ciphertext: payload is not base64")
        try:
            sealed = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedCiphertext("malformed ciphertext: payload is not valid base64") from None
        if base64.b64encode(sealed).decode("ascii") != payload:
            # Non-zero unused bits in the last character: the same bytes, but a
            # flipped bit must never go unnoticed.
            raise MalformedCiphertext("malformed ciphertext: payload is not canonical base64")
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise MalformedCiphertext("ciphertext is truncated: payload shorter than nonce and tag")
        return cls(tenant, version, sealed[:NONCE_SIZE], sealed[NONCE_SIZE:])

    @classmethod
    def parse(cls, data: str | bytes) -> Ciphertext:
        """Accept either form: text starts with ``keyops:``, binary with a version byte."""
        if isinstance(data, str) or bytes(data[:7]) == b"keyops:":
            return cls.from_text(data)
        return cls.from_bytes(data)


def _parse_tenant(raw: bytes) -> str:
    try:
        tenant = raw.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedCiphertext("ciphertext header holds a non-ASCII tenant name") from None
    try:
        return validate_tenant(tenant)
    except ValueError:
        raise MalformedCiphertext("ciphertext header holds an invalid tenant name") from None


def _check_version(version: int) -> None:
    if not 1 <= version <= MAX_KEY_VERSION:
        raise MalformedCiphertext(f"ciphertext names an invalid DEK version {version}")


def encrypt(key: AeadKey, tenant: str, dek_version: int, plaintext: bytes, context: bytes | str = b"",
            nonce: bytes | None = None) -> Ciphertext:
    plaintext = _as_bytes(plaintext, "plaintext")
    ctx = _check_context(context)
    sealed = key.seal(plaintext, secret_aad(tenant, dek_version, ctx), nonce)
    return Ciphertext(tenant, dek_version, sealed[:NONCE_SIZE], sealed[NONCE_SIZE:])


def decrypt(key: AeadKey, ct: Ciphertext, context: bytes | str = b"") -> bytes:
    ctx = _check_context(context)
    return key.open(ct.sealed, secret_aad(ct.tenant, ct.dek_version, ctx))


def _check_context(context: bytes | str) -> bytes:
    ctx = _as_bytes(context, "context")
    if len(ctx) > MAX_CONTEXT_LEN:
        raise InvalidInput(f"context is {len(ctx)} bytes long; at most {MAX_CONTEXT_LEN} are allowed")
    return ctx


# --- the hot path ------------------------------------------------------------------------

#: Contexts whose associated data a BoundKey remembers; the map is emptied when
#: full, so memory stays bounded whatever the callers' contexts.
AAD_CACHE_SIZE = 256

_urandom = os.urandom  # one global look-up instead of two on the hot path
_COPY_BELOW = 8192  # bytes of binary ciphertext up to which BoundKey.open slices the body


def binary_tenant_prefix(tenant: str) -> bytes:
    """The first bytes of every binary ciphertext of ``tenant`` (before the DEK version)."""
    raw = validate_tenant(tenant).encode("ascii")
    return bytes([FORMAT_VERSION, len(raw)]) + raw


def binary_header(tenant: str, version: int) -> bytes:
    """The header of every binary ciphertext of DEK ``version`` of ``tenant``."""
    _check_version(version)
    return binary_tenant_prefix(tenant) + struct.pack(">I", version)


def text_tenant_prefix(tenant: str) -> str:
    """The first characters of every text ciphertext of ``tenant`` (before the DEK version)."""
    return f"{TEXT_PREFIX}{validate_tenant(tenant)}:"


class BoundKey:
    """A DEK bound to one tenant and DEK version: the hot path of encrypt and decrypt.

    Everything that depends on neither the plaintext nor the caller's context
    is computed once: the binary header, the text prefix and the prefix of the
    associated data; the associated data of recent contexts is remembered (a
    bounded map). Output is exactly that of ``encrypt`` + ``Ciphertext``, and
    ``open``/``open_text`` accept exactly those ciphertexts of this tenant and
    version; anything else raises ``MalformedCiphertext`` (so a caller can fall
    back to the full parser for its precise error) or ``DecryptionError``.
    """

    __slots__ = ("tenant", "version", "header", "text_prefix", "_aead", "_hlen", "_body_at", "_min_len", "_tlen",
                 "_aad_prefix", "_aads")

    def __init__(self, key: AeadKey, tenant: str, version: int) -> None:
        if not isinstance(key, AeadKey):
            raise TypeError("key must be an AeadKey")
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError("DEK version must be an int")
        _check_version(version)
        self.tenant = validate_tenant(tenant)
        self.version = version
        self.header = binary_header(tenant, version)
        self.text_prefix = f"{text_tenant_prefix(tenant)}{version}:"
        self._aead = key._aead
        self._hlen = len(self.header)
        self._body_at = self._hlen + NONCE_SIZE
        self._min_len = self._body_at + TAG_SIZE
        self._tlen = len(self.text_prefix)
        # secret_aad(tenant, version, context) == _aad_prefix + len(context) (4 bytes) + context
        self._aad_prefix = secret_aad(tenant, version, b"")[:-4]
        self._aads: dict[bytes, bytes] = {}

    def aad(self, context: bytes | str) -> bytes:
        """``secret_aad(tenant, version, context)``, from the map when seen recently."""
        if context.__class__ is not bytes:
            context = _check_context(context)
        aad = self._aads.get(context)
        if aad is None:
            if len(context) > MAX_CONTEXT_LEN:
                raise InvalidInput(f"context is {len(context)} bytes long; at most {MAX_CONTEXT_LEN} are allowed")
            aad = self._aad_prefix + len(context).to_bytes(4, "big") + context
            if len(self._aads) >= AAD_CACHE_SIZE:
                self._aads.clear()
            self._aads[context] = aad
        return aad

    # seal and seal_text (and open and open_text) repeat their first lines on purpose: a shared helper
    # would add a Python call to every encryption of the hot path, about a tenth of its cost.
    def seal(self, plaintext: bytes, context: bytes | str = b"") -> bytes:
        """Encrypt to the binary form (a fresh random nonce each call)."""
        if plaintext.__class__ is not bytes:
            plaintext = _as_bytes(plaintext, "plaintext")
        aad = self._aads.get(context) if context.__class__ is bytes else None  # inlined aad(): hot
        if aad is None:
            aad = self.aad(context)
        nonce = _urandom(NONCE_SIZE)
        return self.header + nonce + self._aead.encrypt(nonce, plaintext, aad)

    def seal_text(self, plaintext: bytes, context: bytes | str = b"") -> str:
        """Encrypt to the text form ``keyops:v1:<tenant>:<version>:<base64>``."""
        if plaintext.__class__ is not bytes:
            plaintext = _as_bytes(plaintext, "plaintext")
        aad = self._aads.get(context) if context.__class__ is bytes else None  # inlined aad(): hot
        if aad is None:
            aad = self.aad(context)
        nonce = _urandom(NONCE_SIZE)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, aad)
        return self.text_prefix + binascii.b2a_base64(sealed, newline=False).decode("ascii")

    def open(self, data: bytes, context: bytes | str = b"") -> bytes:
        """Decrypt a binary ciphertext of this tenant and DEK version."""
        if not data.startswith(self.header):
            raise MalformedCiphertext("ciphertext is not of this tenant and DEK version")
        size = len(data)
        if size < self._min_len:
            raise MalformedCiphertext("ciphertext is truncated")
        aad = self._aads.get(context) if context.__class__ is bytes else None  # inlined aad(): hot
        if aad is None:
            aad = self.aad(context)
        # A slice copies; a memoryview costs more than copying a small body, less than a large one.
        body = data[self._body_at:] if size <= _COPY_BELOW else memoryview(data)[self._body_at:]
        try:
            return self._aead.decrypt(data[self._hlen:self._body_at], body, aad)
        except InvalidTag:
            raise DecryptionError() from None

    def open_text(self, text: str, context: bytes | str = b"") -> bytes:
        """Decrypt a text ciphertext of this tenant and DEK version."""
        if not text.startswith(self.text_prefix):
            raise MalformedCiphertext("ciphertext is not of this tenant and DEK version")
        try:
            # strict: only the base64 alphabet and correct padding, as Ciphertext.from_text
            sealed = binascii.a2b_base64(text[self._tlen:], strict_mode=True)
        except (binascii.Error, ValueError):
            raise MalformedCiphertext("malformed ciphertext: payload is not valid base64") from None
        tail = len(sealed) % 3
        if tail and binascii.b2a_base64(sealed[-tail:], newline=False) != text[-4:].encode("ascii"):
            # Non-zero unused bits in the last character: the same bytes, but a
            # flipped bit must never go unnoticed. Strict decoding leaves only
            # the last, padded group able to be non-canonical: re-encode just it.
            raise MalformedCiphertext("malformed ciphertext: payload is not canonical base64")
        if len(sealed) < NONCE_SIZE + TAG_SIZE:
            raise MalformedCiphertext("ciphertext is truncated: payload shorter than nonce and tag")
        aad = self._aads.get(context) if context.__class__ is bytes else None  # inlined aad(): hot
        if aad is None:
            aad = self.aad(context)
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag:
            raise DecryptionError() from None

    def __repr__(self) -> str:
        return f"<BoundKey tenant={self.tenant!r} version={self.version} (material hidden)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")
