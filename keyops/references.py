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

from keyops.model import Keyring
from keyops.service import Keyops

DEFAULT_WORKERS = 4


def count_dek_references(k: Keyops, tenant: str, workers: int = DEFAULT_WORKERS,
                         progress: Callable[[int, int], None] | None = None) -> dict[int, int]:
    """Records of ``tenant`` per DEK version (reads every record once)."""
    names = k.list_secrets(tenant)
    counts: collections.Counter[int] = collections.Counter()
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for record in pool.map(lambda n: k.read_record(tenant, n), names):
            done += 1
            if record is not None:
                counts[record.dek_version] += 1
            if progress is not None:
                progress(done, len(names))
    return dict(counts)


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
