"""An in-memory AES-256-GCM key wrapping other keys (a KEK of residence kv)."""

from __future__ import annotations

from typing import NoReturn

from keyops.crypto import AeadKey


class AeadWrapper:
    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = AeadKey(key)

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return self._key.seal(key, context)

    def unwrap(self, blob: bytes, context: bytes) -> bytes:
        return self._key.open(blob, context)

    def __repr__(self) -> str:
        return "<AeadWrapper (material hidden)>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key objects cannot be pickled")
