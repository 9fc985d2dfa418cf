"""The HSM lost in the middle of a master rotation (issue 13, item 2): a clear error, no half-written keyring.

A master rotation over several tenants is stopped after it has re-wrapped
two keyrings (a crash: the process's store raises where no keyops code can
catch it). The same rotation is then resumed, as an operator would, by the
CLI in a fresh process, with the HSM unavailable in the two ways a
deployment meets:

* the token store is unreadable (SoftHSM2's ``token.object`` truncated, in a
  copy of the token folder that the run's own ``softhsm2.conf`` names);
* the PIN is wrong.

Each resumed run ends with its HSM exit code and a message that names the
token and what to check, and changes nothing in Vault (every keyring, the
registry and every record keep their KV version and content; only the audit
trail's head moves, since the refusal is itself an audited event). Secrets
still decrypt throughout. The resumed run with the HSM back finishes the
rotation: exactly one new master version, every KEK on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
from _rotation_support import Isolated, check_tenants, isolated_mount, raw_doc
from _tenants import new_tenant

from keyops.backends.vault import VaultStore
from keyops.config import Config
from keyops.errors import HsmLoginFailed, HsmUnavailable
from keyops.model.keyring import Policy
from keyops.ops.front import MASTER_PATH, Keyops, MasterRegistry
from keyops.ops.rotation import rotate_master, stale_kek_versions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = 6
WRONG_PIN = "wrong-pin-0c41d9"


class _Crash(BaseException):
    """Stands for the process dying: no keyops code catches a BaseException that is not its own."""


class CrashAfter(VaultStore):
    """The real store, which stops the process after ``keyrings`` keyring writes."""

    def __init__(self, *args: Any, keyrings: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.left = keyrings

    def write(self, path: str, data: Any, cas: int, mount: str | None = None) -> int:
        version = super().write(path, data, cas, mount)
        if path.endswith("/keyring"):
            self.left -= 1
            if self.left == 0:
                raise _Crash(path)
        return version


@pytest.fixture
def iso(stack: Any, config: Config, vault_client: hvac.Client) -> Iterator[Isolated]:
    with isolated_mount(stack, config, vault_client) as isolated:
        yield isolated


def documents(client: hvac.Client, mount: str) -> dict[str, tuple[int, Any]]:
    """Every document of ``mount`` with its version and content, read around keyops."""
    docs: dict[str, tuple[int, Any]] = {}
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            keys = client.secrets.kv.v2.list_secrets(path=folder, mount_point=mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            keys = []
        for key in keys:
            path = f"{folder}{key}"
            if key.endswith("/"):
                pending.append(path)
            else:
                meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)["data"]
                data = raw_doc(client, path, mount)
                docs[path] = (int(meta["current_version"]), data)
    return docs


def unreadable_token_store(env: dict[str, str], where: Path) -> dict[str, str]:
    """The run's own softhsm2.conf, naming a copy of the token folder whose token.object is cut short."""
    conf = Path(env["SOFTHSM2_CONF"]).read_text()
    tokendir = next(line.split("=", 1)[1].strip() for line in conf.splitlines()
                    if line.strip().startswith("directories.tokendir"))
    copy = where / "tokens"
    shutil.copytree(tokendir, copy)
    for token_object in copy.glob("*/token.object"):
        token_object.write_bytes(token_object.read_bytes()[:7])
    own_conf = where / "softhsm2.conf"
    own_conf.write_text(conf.replace(tokendir, f"{copy}/"))
    return {**env, "SOFTHSM2_CONF": str(own_conf)}


def resume(env: dict[str, str], start: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", "rotate", "--level", "master",
                           "--expect-version", str(start)], env=env, capture_output=True, text=True, timeout=120)


def test_hsm_lost_mid_master_rotation_refuses_cleanly_and_a_rerun_finishes(
        iso: Isolated, vault_client: hvac.Client, tmp_path: Path) -> None:
    cfg, mount = iso.config, iso.mount
    values: dict[str, dict[str, bytes]] = {}
    with Keyops(cfg) as k:
        for i in range(TENANTS):
            tenant = new_tenant(f"hsmf{i}")
            k.create_tenant(tenant, Policy(kek_residence="transit" if i == 0 else "kv"))
            values[tenant] = {"s": f"{tenant} value".encode()}
            k.put_secret(tenant, "s", values[tenant]["s"])
        found = k.read_master()
        assert found is not None
        start = found[0].primary
    with Keyops(cfg, store=CrashAfter(cfg, keyrings=2)) as k, pytest.raises(_Crash):
        rotate_master(k, expect_version=start)
    check_tenants(cfg, values)

    def moved() -> int:
        with Keyops(cfg, keyring_ttl=0.0) as fresh:
            return sum(not stale_kek_versions(fresh.read_keyring(t)[0], start + 1) for t in values)

    assert 0 < moved() < TENANTS, "the rotation was meant to stop part-way"
    before = documents(vault_client, mount)

    broken = {"token store unreadable": (unreadable_token_store(iso.env, tmp_path), HsmUnavailable,
                                         "HSM token 'keyops' is unavailable"),
              "wrong PIN": ({**iso.env, "KEYOPS_PKCS11_PIN": WRONG_PIN}, HsmLoginFailed, "wrong PIN")}
    for how, (env, error, says) in broken.items():
        proc = resume(env, start)
        print(f"\n{how}: exit {proc.returncode}, {proc.stderr.strip()}")
        assert proc.returncode == error.exit_code, (how, proc.returncode, proc.stderr)
        assert proc.stderr.startswith("keyops: error: ") and says in proc.stderr, (how, proc.stderr)
        assert "Traceback" not in proc.stderr and WRONG_PIN not in proc.stderr and proc.stdout == "", how
        after = documents(vault_client, mount)
        changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
        assert all(p.startswith("audit/") for p in changed), (how, changed)  # no keyring, registry or record
        before = after
        check_tenants(cfg, values)

    proc = resume(iso.env, start)
    assert proc.returncode == 0, proc.stderr
    registry = MasterRegistry.from_dict(raw_doc(vault_client, MASTER_PATH, mount))
    assert registry.primary == start + 1 and max(v.version for v in registry.versions) == start + 1
    assert moved() == TENANTS
    check_tenants(cfg, values)
    assert os.environ.get("SOFTHSM2_CONF") == iso.env["SOFTHSM2_CONF"]  # this process's token was never touched
