"""A Vault Transit key as a wrapper: ``encrypt``/``decrypt`` with associated data.

The blob is Transit's own ciphertext string (``vault:vN:...``) as bytes. Apps
that must not touch the HSM unwrap DEKs this way with a token limited to
their tenant and never see the KEK.
"""

from __future__ import annotations

from keyops.errors import DecryptionError, VaultError
from keyops.vault import VaultStore


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
        try:
            return self.store.transit_decrypt(self.key_name, ciphertext, context)
        except VaultError as exc:
            # Transit answers 400 "cipher: message authentication failed" for a wrong
            # context or a tampered blob; keep that as the one opaque error.
            if type(exc) is VaultError and "authentication failed" in str(exc):
                raise DecryptionError() from exc
            raise

    def __repr__(self) -> str:
        return f"<TransitWrapper key={self.key_name!r} version={self.key_version}>"
