"""The one interface for "a key protects a key".

``context`` is always authenticated as associated data, so a blob copied to
another tenant, level, version or purpose fails to unwrap instead of
yielding a wrong key. Composition of wrappers gives the hierarchy; nothing
else knows which backend sits at which level.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class KeyWrapper(Protocol):
    def wrap(self, key: bytes, context: bytes) -> bytes:
        """Encrypt ``key``, binding ``context``; the blob is safe to store."""

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        """Recover the key; raise ``DecryptionError`` when blob or context do not match."""
