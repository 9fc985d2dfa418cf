"""A master version rooted in a passphrase: Argon2id, then AES-256-GCM (for development and edge sites).

Each version has a random 256-bit master key of its own. It is stored in the
registry entry wrapped by a key derived from the passphrase::

    wrapping key = Argon2id(passphrase, salt, iterations, lanes, memory_cost) -> 32 bytes
    params.wrapped = base64(nonce(12) || AES-256-GCM(wrapping key, master key, aad) || tag(16))
    aad = encode_fields("keyops-master-passphrase-v1", registry id, version)

The AAD binds the entry to its registry and version, so a wrapped key copied
to another entry fails instead of opening. A wrong passphrase fails the GCM
tag and is reported as such (``ConfigError``), never as a key that decrypts
nothing. The version's master key then wraps KEKs exactly as an in-memory
AEAD key does (``AeadWrapper``).

The default costs are RFC 9106's second recommended option (t=3, p=4,
m=64 MiB), above OWASP's floor for Argon2id (m=19 MiB, t=2, p=1); they are
stored with each version, so raising them later leaves older versions as
they were.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from keyops import crypto
from keyops.errors import ConfigError, DecryptionError, KeyStateError
from keyops.wrappers.aead import AeadWrapper

ITERATIONS = 3
LANES = 4
MEMORY_KIB = 64 * 1024
SALT_BYTES = 16
#: Shorter passphrases are refused for new versions: Argon2id slows guessing, it cannot make a short one strong.
MIN_PASSPHRASE_CHARS = 12
# Bounds on what a stored entry may ask for: a tampered entry gets a clear error, not an hour of hashing.
_BOUNDS = {"iterations": (1, 64), "lanes": (1, 64), "memory_cost": (8, 4 * 1024 * 1024)}


def seal_master(passphrase: str, registry_id: str, version: int) -> dict[str, Any]:
    """The ``params`` of a new passphrase version: Argon2id settings, salt and the wrapped master key."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise ConfigError(f"the root passphrase is too short for a new master version: use at least "
                          f"{MIN_PASSPHRASE_CHARS} characters")
    params: dict[str, Any] = {"kdf": "argon2id", "salt": crypto.b64e(os.urandom(SALT_BYTES)),
                              "iterations": ITERATIONS, "lanes": LANES, "memory_cost": MEMORY_KIB}
    wrapping = crypto.AeadKey(_derive(passphrase, params))
    params["wrapped"] = crypto.b64e(wrapping.seal(crypto.generate_key(), _aad(registry_id, version)))
    return params


def open_master(passphrase: str, params: Mapping[str, Any], registry_id: str, version: int) -> AeadWrapper:
    """The master key of this version as a wrapper; ``ConfigError`` when the passphrase is not the one."""
    if "wrapped" not in params:
        raise KeyStateError(f"master key v{version} was made from a passphrase and has been destroyed")
    wrapping = crypto.AeadKey(_derive(passphrase, params))
    try:
        master = wrapping.open(crypto.b64d(str(params["wrapped"])), _aad(registry_id, version))
    except DecryptionError:
        raise ConfigError(f"the root passphrase does not open master key v{version}: it is not the passphrase "
                          "that made it, or the registry entry was altered (check KEYOPS_ROOT_PASSPHRASE or "
                          "KEYOPS_ROOT_PASSPHRASE_FILE)") from None
    return AeadWrapper(master)


def _derive(passphrase: str, params: Mapping[str, Any]) -> bytes:
    try:
        if params.get("kdf") != "argon2id":
            raise ValueError(f"kdf {params.get('kdf')!r} is not argon2id")
        costs = {name: int(params[name]) for name in _BOUNDS}
        for name, (low, high) in _BOUNDS.items():
            if not low <= costs[name] <= high:
                raise ValueError(f"{name} {costs[name]} is outside {low}..{high}")
        salt = crypto.b64d(str(params["salt"]))
        if len(salt) < SALT_BYTES:
            raise ValueError("the salt is shorter than 16 bytes")
        kdf = Argon2id(salt=salt, length=32, iterations=costs["iterations"], lanes=costs["lanes"],
                       memory_cost=max(costs["memory_cost"], 8 * costs["lanes"]))
    except (KeyError, TypeError, ValueError, DecryptionError) as exc:
        raise KeyStateError(f"the passphrase parameters of a master version are malformed ({exc}); restore an "
                            "earlier version of the registry (KV metadata of path 'master')") from exc
    return kdf.derive(passphrase.encode("utf-8"))


def _aad(registry_id: str, version: int) -> bytes:
    return crypto.encode_fields(b"keyops-master-passphrase-v1", registry_id, version)
