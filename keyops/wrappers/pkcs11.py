"""The HSM master key as a wrapper: CKM_AES_GCM on the token, key never leaves it."""

from __future__ import annotations

from keyops.hsm import Hsm


class Pkcs11Wrapper:
    def __init__(self, hsm: Hsm, label: str) -> None:
        self.hsm = hsm
        self.label = label

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self.hsm.gcm_encrypt(self.label, key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        return self.hsm.gcm_decrypt(self.label, blob, context)

    def __repr__(self) -> str:
        return f"<Pkcs11Wrapper label={self.label!r}>"
