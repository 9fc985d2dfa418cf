"""Helpers of the re-encryption and migration tests (not a test module).

Checks go through the root ``vault_client`` (hvac, independent of keyops'
store) wherever they can: record fields, ciphertext headers, KV versions and
version history are read straight from OpenBao.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _tenants import new_tenant

from keyops import crypto
from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.ops.front import Keyops, b64e

KV = "keyops"


#: A fresh tenant (or other) name ``<prefix>-<8 hex>``.
unique = new_tenant


def values_for(names: Iterable[str], tag: str = "v1", size: int = 48) -> dict[str, bytes]:
    """Distinct values per name (random bytes, so no two runs share them)."""
    return {name: f"{tag}:{name}:".encode() + os.urandom(size).hex().encode() for name in names}


def fill(k: Keyops, tenant: str, values: Mapping[str, bytes], workers: int = 8) -> None:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda item: k.put_secret(tenant, item[0], item[1]), values.items()))


def rotate_dek(k: Keyops, tenant: str) -> int:
    """A new primary DEK; the rotation engineer's ``rotate`` when present."""
    try:
        from keyops.ops.rotation import rotate
    except ImportError:
        def change(keyring: Any) -> Any:
            version = keyring.dek.latest_version + 1
            wrapper = k.hierarchy.kek_wrapper(keyring, keyring.kek.primary)
            wrapped = wrapper.wrap(crypto.generate_key(), crypto.key_context(tenant, "dek", version))
            return keyring.add_version("dek", b64e(wrapped), keyring.kek.primary, k.clock())

        k.update_keyring(tenant, change)
    else:
        rotate(k, tenant, "dek")
    return k.read_keyring(tenant)[0].dek.primary


def raw_record(vault_client: Any, tenant: str, name: str) -> tuple[dict[str, Any], int]:
    resp = vault_client.secrets.kv.v2.read_secret_version(path=f"secrets/{tenant}/{name}", mount_point=KV,
                                                          raise_on_deleted_version=True)
    return resp["data"]["data"], int(resp["data"]["metadata"]["version"])


def raw_records(vault_client: Any, tenant: str, names: Iterable[str]) -> dict[str, tuple[dict[str, Any], int]]:
    names = list(names)
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(names, pool.map(lambda n: raw_record(vault_client, tenant, n), names), strict=True))


def header_version(ciphertext: str, tenant: str) -> int:
    """The DEK version in a text ciphertext's header, parsed here rather than by keyops."""
    prefix, version, _ = ciphertext.rsplit(":", 2)
    assert prefix == f"keyops:v1:{tenant}"
    return int(version)


def kv_version(vault_client: Any, path: str, mount: str = KV) -> int:
    meta = vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
    return int(meta["data"]["current_version"])


def kv_versions(vault_client: Any, paths: Iterable[str], mount: str = KV) -> dict[str, int]:
    paths = list(paths)
    with ThreadPoolExecutor(8) as pool:
        return dict(zip(paths, pool.map(lambda p: kv_version(vault_client, p, mount), paths), strict=True))


def kv_read(vault_client: Any, path: str, version: int | None = None, mount: str = KV) -> tuple[dict[str, Any], int]:
    resp = vault_client.secrets.kv.v2.read_secret_version(path=path, version=version, mount_point=mount,
                                                          raise_on_deleted_version=True)
    return resp["data"]["data"], int(resp["data"]["metadata"]["version"])


def kv_write(vault_client: Any, path: str, data: Mapping[str, Any], mount: str = KV) -> int:
    resp = vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret=dict(data), mount_point=mount)
    return int(resp["data"]["version"])


def job_docs(vault_client: Any, tenant: str) -> dict[str, dict[str, Any]]:
    try:
        keys = vault_client.secrets.kv.v2.list_secrets(path=f"tenants/{tenant}/jobs", mount_point=KV)["data"]["keys"]
    except Exception as exc:  # hvac InvalidPath: no jobs yet
        if type(exc).__name__ != "InvalidPath":
            raise
        return {}
    return {key: kv_read(vault_client, f"tenants/{tenant}/jobs/{key}")[0] for key in keys}


def decrypt_all(config: Config, tenant: str, names: Iterable[str]) -> dict[str, bytes]:
    """Every secret through a fresh Keyops (no cache shared with the code under test)."""
    names = list(names)
    with Keyops(config) as k, ThreadPoolExecutor(8) as pool:
        return dict(zip(names, pool.map(lambda n: k.get_secret(tenant, n), names), strict=True))


def transit_encrypt(vault_client: Any, key: str, plaintext: bytes, context: bytes | None = None) -> str:
    resp = vault_client.secrets.transit.encrypt_data(
        name=key, plaintext=base64.b64encode(plaintext).decode(), mount_point="transit",
        associated_data=base64.b64encode(context).decode() if context else None)
    return str(resp["data"]["ciphertext"])


def cli_env(stack: DevStack) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "KEYOPS_", "BAO_"))}
    env.update(stack.env())
    return env


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "keyops.cli.main", *argv]


def run_cli(stack: DevStack, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*argv), env=cli_env(stack), capture_output=True, text=True,
                          timeout=timeout, check=False)
