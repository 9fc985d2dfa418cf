"""A Vault Transit key as a wrapper: ``encrypt``/``decrypt`` with associated data.

The blob is Transit's own ciphertext string (``vault:vN:...``) as bytes. Apps
that must not touch the HSM unwrap DEKs this way with a token limited to
their tenant and never see the KEK.
"""

from __future__ import annotations

import base64
import re

from keyops.backends.vault import VaultStore
from keyops.errors import DecryptionError, TransitNotAuthentic

_TRANSIT_CIPHERTEXT = re.compile(r"vault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})")


class TransitWrapper:
    def __init__(self, store: VaultStore, key_name: str, key_version: int | None = None) -> None:
        self.store = store
        self.key_name = key_name
        self.key_version = key_version

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self.store.transit_encrypt(self.key_name, key, context, self.key_version).encode("ascii")

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        try:
            ciphertext = blob.decode("ascii")
        except UnicodeDecodeError:
            raise DecryptionError() from None
        # Transit tolerates some changes (a "v0" key version, non-zero unused
        # base64 bits); a flipped bit must never go unnoticed, so only the exact
        # form that wrap() returns for this key version is sent.
        match = _TRANSIT_CIPHERTEXT.fullmatch(ciphertext)
        if (match is None
                or (self.key_version is not None and int(match.group(1)) != self.key_version)
                or not _canonical_base64(match.group(2))):
            raise DecryptionError()
        try:
            return self.store.transit_decrypt(self.key_name, ciphertext, context)
        except TransitNotAuthentic as exc:
            # A wrong context, a tampered or a mangled blob: the one opaque error.
            raise DecryptionError() from exc

    def __repr__(self) -> str:
        return f"<TransitWrapper key={self.key_name!r} version={self.key_version}>"


def _canonical_base64(text: str) -> bool:
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode("ascii") == text
    except ValueError:
        return False
