"""Who refers to which key version: the facts that retirement and destruction rest on.

DEK versions are referred to by secret records (found by listing and reading
them); KEK versions by DEK versions; master versions by KEK versions (both
found in keyrings). A version is retired or destroyed only when its count is
zero.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from keyops import crypto
from keyops.model.keyring import Keyring
from keyops.ops.front import Keyops

DEFAULT_WORKERS = 4


def count_dek_references(k: Keyops, tenant: str, workers: int = DEFAULT_WORKERS,
                         progress: Callable[[int, int], None] | None = None) -> dict[int, int]:
    """Records of ``tenant`` per DEK version (reads every record once)."""
    return {version: len(names) for version, names in
            dek_reference_names(k, tenant, workers=workers, progress=progress).items()}


def dek_reference_names(k: Keyops, tenant: str, workers: int = DEFAULT_WORKERS,
                        progress: Callable[[int, int], None] | None = None) -> dict[int, list[str]]:
    """Names of the records of ``tenant`` per DEK version, sorted (reads every record once).

    The DEK version is taken from the ciphertext's header, which is what
    decryption uses, not from the record's informational field.
    """
    names = k.list_secrets(tenant)
    found: collections.defaultdict[int, list[str]] = collections.defaultdict(list)
    done = 0

    def version_of(name: str) -> int | None:
        record = k.read_record(tenant, name)
        if record is None:
            return None  # deleted since the listing: refers to nothing
        return crypto.Ciphertext.parse(record.ciphertext).dek_version

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, version in zip(names, pool.map(version_of, names), strict=True):
            done += 1
            if version is not None:
                found[version].append(name)
            if progress is not None:
                progress(done, len(names))
    return dict(found)


def count_kek_references(keyring: Keyring) -> dict[int, int]:
    """DEK versions (not destroyed) per KEK version of one keyring."""
    return dict(collections.Counter(kv.parent_version for kv in keyring.dek.versions))


def count_master_references(k: Keyops) -> dict[int, int]:
    """KEK versions (not destroyed) of every tenant per master key version."""
    counts: collections.Counter[int] = collections.Counter()
    for tenant in k.list_tenants():
        keyring = k.read_keyring(tenant)[0]
        counts.update(kv.parent_version for kv in keyring.kek.versions)
    return dict(counts)
