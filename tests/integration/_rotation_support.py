"""Helpers shared by the rotation, lifecycle and crash tests (internal to the tests).

``isolated_mount`` gives a test its own KV v2 mount and master key label on
the session's real OpenBao and SoftHSM2: a master rotation re-wraps every
tenant of its mount, and a ``--due`` run looks at every tenant, so such tests
must not see (or change) the tenants of other tests.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hvac
import hvac.exceptions
import requests

from keyops.backends.vault import VaultStore
from keyops.config import Config
from keyops.ops.front import Keyops, secret_context, secret_path

KV = "keyops"


@dataclasses.dataclass(frozen=True)
class Isolated:
    config: Config
    env: dict[str, str]  # the environment for CLI subprocesses

    @property
    def mount(self) -> str:
        return self.config.kv_mount


@contextlib.contextmanager
def isolated_mount(stack: Any, config: Config, vault_client: hvac.Client) -> Iterator[Isolated]:
    """A fresh KV v2 mount and master label prefix (the Transit mount stays shared: keys are per tenant)."""
    tag = uuid.uuid4().hex[:8]
    mount = f"ko-{tag}"
    vault_client.sys.enable_secrets_engine(backend_type="kv", path=mount, options={"version": "2"})
    _wait_for_kv_mount(vault_client, mount)
    cfg = config.replace(kv_mount=mount, master_key_label=f"km-{tag}")
    env = cli_env(stack, KEYOPS_KV_MOUNT=mount, KEYOPS_MASTER_KEY_LABEL=cfg.master_key_label)
    try:
        yield Isolated(cfg, env)
    finally:
        vault_client.sys.disable_secrets_engine(path=mount)


def _wait_for_kv_mount(client: hvac.Client, mount: str, timeout: float = 30.0) -> None:
    """A new KV v2 mount answers "upgrading" for a moment; wait until it answers normally."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.secrets.kv.v2.read_secret_metadata(path="ready-probe", mount_point=mount)
        except hvac.exceptions.InvalidPath:
            return
        except hvac.exceptions.InvalidRequest:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cli_env(stack: Any, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_"))}
    env.update(stack.env())
    if "KEYOPS_KV_MOUNT" in extra:
        # Another KV mount is another deployment: its audit chain has its own log (and head, in that mount).
        env["KEYOPS_AUDIT_LOG"] = str(stack.audit_dir / f"keyops-audit-{extra['KEYOPS_KV_MOUNT']}.jsonl")
    env.update(extra)
    return env


def keyops_cli(env: Mapping[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], env=dict(env), capture_output=True,
                          text=True, timeout=timeout)


@dataclasses.dataclass(frozen=True)
class CliRun:
    returncode: int
    stdout: str
    stderr: str


def keyops_main(env: Mapping[str, str], *args: str) -> CliRun:
    """The CLI in this process (``keyops.cli.main.main``), with ``env`` as the environment.

    The same code path as the ``keyops`` program minus the interpreter start,
    which dominates on a busy machine; tests that need a process boundary
    (kills, races between processes) use ``keyops_cli``.
    """
    import io
    import os
    from contextlib import redirect_stderr, redirect_stdout

    from keyops.cli.main import main

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliRun(code, out.getvalue(), err.getvalue())


def kv_version(client: hvac.Client, path: str, mount: str = KV) -> int:
    """The current version of a KV v2 document (0 when absent), read around keyops."""
    try:
        meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
    except hvac.exceptions.InvalidPath:
        return 0
    return int(meta["data"]["current_version"])


def raw_doc(client: hvac.Client, path: str, mount: str = KV) -> dict[str, Any]:
    resp = client.secrets.kv.v2.read_secret_version(path=path, mount_point=mount, raise_on_deleted_version=True)
    return resp["data"]["data"]


def current_version(client: hvac.Client, path: str, mount: str = KV) -> int:
    """The document's latest KV version (0: none yet): the check-and-set that keyrings and the registry require."""
    try:
        meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
    except hvac.exceptions.InvalidPath:
        return 0
    return int(meta["data"]["current_version"])


def write_doc(client: hvac.Client, path: str, data: Mapping[str, Any], mount: str = KV) -> None:
    """Overwrite a document as an administrator would: check-and-set on its current version."""
    client.secrets.kv.v2.create_or_update_secret(path=path, secret=dict(data), cas=current_version(client, path, mount),
                                                 mount_point=mount)


def fresh(config: Config) -> Keyops:
    """A Keyops with nothing cached: what a new process would see."""
    return Keyops(config, keyring_ttl=0.0)


def check_secrets(config: Config, tenant: str, expected: Mapping[str, bytes]) -> None:
    check_tenants(config, {tenant: expected})


def check_tenants(config: Config, expected: Mapping[str, Mapping[str, bytes]]) -> None:
    """Every secret decrypts to its latest value, read by a Keyops with cold caches."""
    with fresh(config) as k:
        for tenant, values in expected.items():
            for name, value in values.items():
                assert k.get_secret(tenant, name) == value, f"{tenant}/{name} does not decrypt to its latest value"


def seed_records(k: Keyops, addr: str, token: str, tenant: str, count: int, workers: int = 4,
                 mount: str = KV) -> dict[str, bytes]:
    """``count`` real keyops records, encrypted in memory, written straight to KV by several hvac clients."""
    values = {f"s{i:05d}": f"value-{i}".encode() for i in range(count)}
    dek_version = k.read_keyring(tenant)[0].dek.primary
    records = {name: {"schema": 1, "ciphertext": k.encrypt(tenant, value, secret_context(name)),
                      "dek_version": dek_version}
               for name, value in values.items()}
    names = sorted(records)

    def write(chunk: list[str]) -> None:
        session = requests.Session()
        session.trust_env = False
        client = hvac.Client(url=addr, token=token, session=session)
        for name in chunk:
            client.secrets.kv.v2.create_or_update_secret(path=secret_path(tenant, name), secret=records[name],
                                                         mount_point=mount, cas=0)

    chunks = [names[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(write, chunks))
    return values


class PathCountingStore(VaultStore):
    """The real VaultStore, recording which KV paths each call touched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.touched: list[tuple[str, str]] = []

    def read(self, path: str, mount: str | None = None) -> Any:
        self.touched.append(("read", path))
        return super().read(path, mount)

    def write(self, path: str, data: Any, cas: int, mount: str | None = None) -> int:
        self.touched.append(("write", path))
        return super().write(path, data, cas, mount)

    def list(self, path: str, mount: str | None = None) -> list[str]:
        self.touched.append(("list", path))
        return super().list(path, mount)

    def delete_all_versions(self, path: str, mount: str | None = None) -> None:
        self.touched.append(("delete", path))
        super().delete_all_versions(path, mount)


def escrow_unwraps(k: Keyops, tenant: str) -> bytes:
    """The primary KEK's escrow copy (KeyVersion.wrapped) unwrapped by the HSM master key it names."""
    keyring = k.read_keyring(tenant)[0]
    return k.hierarchy._kek(keyring, keyring.kek.primary)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
