"""A master version rooted in a KMS: a Transit key of another Vault or OpenBao.

Each KEK is encrypted and decrypted by that server's Transit (the key never
leaves it). The associated data sent along is the KEK's own context bound to
the registry id and master version, so that two registries sharing one KMS
key (staging and prod) cannot use each other's blobs, nor a blob made for
one master version pass as another's. Failures name the KMS, not the Vault
that holds the keyrings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from keyops import crypto
from keyops.backends.vault import VaultStore
from keyops.errors import NotFound, VaultError
from keyops.wrappers.transit import TransitWrapper


class KmsWrapper:
    def __init__(self, store: VaultStore, key_name: str, registry_id: str, version: int) -> None:
        self._transit = TransitWrapper(store, key_name)
        self._binding = (registry_id, version)
        self.where = f"Transit key {key_name!r} of mount {store.transit_mount!r} at {store.config.vault_addr}"

    def wrap(self, key: bytes, context: bytes) -> bytes:
        with _kms_errors(self.where):
            return self._transit.wrap(key, self._bound(context))

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        with _kms_errors(self.where):
            return self._transit.unwrap(blob, self._bound(context))

    def _bound(self, context: bytes) -> bytes:
        return crypto.encode_fields(b"keyops-master-transit-v1", *self._binding, context)

    def __repr__(self) -> str:
        return f"<KmsWrapper {self.where}>"


@contextlib.contextmanager
def _kms_errors(where: str) -> Iterator[None]:
    """A Vault failure of the KMS, re-raised as the same kind of error, saying that it is the root KMS that failed."""
    try:
        yield
    except (VaultError, NotFound) as exc:
        raise type(exc)(f"the root KMS ({where}) failed: {exc}; check KEYOPS_ROOT_TRANSIT_ADDR, its token and "
                        "that the key exists") from exc
