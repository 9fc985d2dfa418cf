"""The HSM master key as a wrapper: CKM_AES_GCM on the token, key never leaves it."""

from __future__ import annotations

from keyops.backends.hsm import Hsm


class Pkcs11Wrapper:
    """The token key ``label`` with CKA_ID ``key_id`` (None: a key made before registry ids, found by label)."""

    def __init__(self, hsm: Hsm, label: str, key_id: bytes | None = None) -> None:
        self.hsm = hsm
        self.label = label
        self.key_id = key_id

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self.hsm.gcm_encrypt(self.label, key, context, key_id=self.key_id)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        return self.hsm.gcm_decrypt(self.label, blob, context, key_id=self.key_id)

    def __repr__(self) -> str:
        return f"<Pkcs11Wrapper label={self.label!r}>"
