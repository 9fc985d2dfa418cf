"""Backup and restore: the runbook docs/runbooks/backup-restore.md, followed literally, and restore's guarantees.

Each test works in a KV mount of its own on the session's OpenBao (and an
audit log of its own, so its chain has its own anchor and head there), so
destroying that mount touches no other test's documents. The master key
registry in that mount makes its own keys on the shared SoftHSM2 token.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _tenants import new_tenant
from test_no_leaks import Scanner

from keyops import access
from keyops.config import Config
from keyops.crypto import b64d
from keyops.dev.stack import DevStack, bao_binary
from keyops.errors import Conflict, InvalidInput, MountMissing
from keyops.model.keyring import Policy
from keyops.model.paths import keyring_path, secret_path
from keyops.ops.backup import load_backup, write_backup
from keyops.ops.front import Keyops
from keyops.ops.reencrypt import reencrypt
from keyops.ops.restore import restore
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbooks" / "backup-restore.md"


def runbook_block(name: str) -> str:
    match = re.search(rf"<!-- {name} -->\n```sh\n(.*?)```", RUNBOOK.read_text(), re.S)
    assert match, f"{RUNBOOK} lost its '{name}' block"
    return match.group(1)


@dataclasses.dataclass
class World:
    mount: str
    config: Config
    env: dict[str, str]
    secrets: dict[tuple[str, str], bytes]  # (tenant, name) -> plaintext
    kv_tenant: str
    transit_tenant: str


@pytest.fixture
def world(stack: DevStack, config: Config, tmp_path: Path, vault_client: Any) -> Iterator[World]:
    mount = f"bk-{uuid.uuid4().hex[:8]}"
    own = dataclasses.replace(config, kv_mount=mount, audit_log=str(tmp_path / "audit.jsonl"))
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "keyops").write_text(f'#!/bin/sh\nexec {sys.executable} -m keyops.cli.main "$@"\n')
    (shims / "keyops").chmod(0o755)
    kv_tenant, transit_tenant = new_tenant("bk-kv"), new_tenant("bk-tr")
    plain = {(kv_tenant, "db/password"): b"kv one " + os.urandom(16).hex().encode(),
             (kv_tenant, "api-key"): b"kv two " + os.urandom(16).hex().encode(),
             (transit_tenant, "db/password"): b"tr one " + os.urandom(16).hex().encode(),
             (transit_tenant, "deep/er/name"): b"tr two " + os.urandom(16).hex().encode()}
    env = {**os.environ, **stack.env(), "KEYOPS_KV_MOUNT": mount, "KEYOPS_AUDIT_LOG": own.audit_log or "",
           "BACKUP": str(tmp_path / "backups" / "keyops.jsonl"), "BAO_ADDR": stack.addr,
           "BAO_TOKEN": stack.env()["VAULT_TOKEN"],
           "PATH": f"{shims}:{Path(bao_binary()).parent}:{os.environ.get('PATH', '')}"}
    # The operator's first step: the mount, and the first entry of its keyed audit chain (whose head is there).
    subprocess.run(["keyops", "init"], env=env, check=True, capture_output=True, timeout=120)
    with Keyops(own) as k:
        k.create_tenant(kv_tenant, Policy(kek_residence="kv"))
        k.create_tenant(transit_tenant, Policy(kek_residence="transit"))
        for (tenant, name), value in plain.items():
            k.put_secret(tenant, name, value)
        # Two DEK versions, a job checkpoint and a second Transit key version: more than a fresh tenant has.
        rotate(k, kv_tenant, "dek")
        reencrypt(k, kv_tenant)
        rotate(k, transit_tenant, "kek")
    yield World(mount, own, env, plain, kv_tenant, transit_tenant)
    if f"{mount}/" in vault_client.sys.list_mounted_secrets_engines()["data"]:
        vault_client.sys.disable_secrets_engine(mount)


def run_block(world: World, name: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["sh", "-c", runbook_block(name)], env=world.env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, f"runbook block {name!r} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def unwrapped_keys(k: Keyops, tenant: str) -> dict[str, bytes]:
    keyring = k.get_tenant(tenant)
    keys = {f"KEK {tenant} v{kv.version}": k.hierarchy._kek(keyring, kv.version) for kv in keyring.kek.versions}
    for kv in keyring.dek.versions:
        wrapper = k.hierarchy.kek_wrapper(keyring, kv.parent_version)
        from keyops import crypto

        keys[f"DEK {tenant} v{kv.version}"] = wrapper.unwrap(b64d(kv.wrapped),
                                                             crypto.key_context(tenant, "dek", kv.version))
    return keys


def test_the_runbook_backs_up_destroys_the_mount_restores_and_every_secret_decrypts(
        world: World, stack: DevStack, vault_client: Any) -> None:
    kv = vault_client.secrets.kv.v2
    meta_before = kv.read_secret_metadata(path=keyring_path(world.kv_tenant), mount_point=world.mount)["data"]

    run_block(world, "backup")
    backup = Path(world.env["BACKUP"])
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    text = backup.read_text()
    # Wrapped keys and ciphertexts only: no plaintext, no unwrapped KEK or DEK, no token, no PIN.
    scanner = Scanner()
    for (tenant, name), value in world.secrets.items():
        scanner.add(f"plaintext {tenant}/{name}", value)
    with Keyops(world.config) as k:
        for tenant in (world.kv_tenant, world.transit_tenant):
            for label, key in unwrapped_keys(k, tenant).items():
                scanner.add(label, key)
    scanner.add("root token", stack.env()["VAULT_TOKEN"])
    scanner.add("HSM PIN", Path(stack.env()["KEYOPS_PKCS11_PIN_FILE"]).read_text().strip())
    assert len(scanner.labels) >= 4 + 2 * 3 + 2
    assert scanner.scan(text) == set()
    found = load_backup(backup)
    assert found.counts["keyring"] == 2 and found.counts["secret"] == 4 and found.counts["master"] == 1
    assert found.counts["job"] >= 1 and found.counts["audit_head"] == 1
    assert all(d.data["ciphertext"].startswith("keyops:v1:") for d in found.documents if d.kind == "secret")

    run_block(world, "drill-destroy")
    with Keyops(world.config) as gone, pytest.raises(MountMissing, match="keyops init"):
        gone.get_secret(world.kv_tenant, "db/password")

    restored = run_block(world, "restore")
    assert "FAILED" not in restored.stderr
    assert f"created kv mount {world.mount!r}" in restored.stdout
    # Checked apart from the runbook's own loop: every secret of both residences, by the library.
    with Keyops(world.config) as k:
        for (tenant, name), value in world.secrets.items():
            assert k.get_secret(tenant, name) == value, (tenant, name)
        assert k.get_tenant(world.kv_tenant).dek.primary == 3  # the runbook's fresh DEK after v2
    meta_after = kv.read_secret_metadata(path=keyring_path(world.kv_tenant), mount_point=world.mount)["data"]
    assert meta_after["max_versions"] == meta_before["max_versions"] == access.DOCUMENT_HISTORY
    assert meta_after["cas_required"] is True
    log = [json.loads(line) for line in Path(world.config.audit_log or "").read_text().splitlines()]
    assert [e["result"] for e in log if e["operation"] in ("backup", "restore")][:2] == ["ok", "ok"]


def test_restore_refuses_a_document_that_differs_changes_nothing_and_overwrites_only_when_told(
        world: World, tmp_path: Path) -> None:
    path = tmp_path / "b.jsonl"
    a, b = (world.kv_tenant, "db/password"), (world.kv_tenant, "api-key")
    with Keyops(world.config) as k:
        write_backup(k, path)
        backup = load_backup(path)
        assert restore(k, backup, str(path)).changed is False  # everything in place
        k.put_secret(*a, b"changed since the backup")
        k.delete_secret(*b)
        plan = restore(k, backup, str(path), dry_run=True)
        assert {(s.path, s.action) for s in plan.steps if s.action not in ("unchanged", "kept")} == {
            (secret_path(*a), "conflict"), (secret_path(*b), "create")}
        with pytest.raises(Conflict, match=re.escape(secret_path(*a))):
            restore(k, backup, str(path))
        assert k.read_record(*b) is None  # refused whole: the missing one was not made either
        assert k.get_secret(*a) == b"changed since the backup"
        version = k.read_record(*a).kv_version  # type: ignore[union-attr]
        done = restore(k, backup, str(path), overwrite=True)
        assert done.counts["overwrite"] == 1 and done.counts["create"] == 1
        assert k.get_secret(*a) == world.secrets[a] and k.get_secret(*b) == world.secrets[b]
        assert k.read_record(*a).kv_version == version + 1  # type: ignore[union-attr]  # history keeps the other
        # Usage counts are merged, never lowered: the live document counted more than the backup did.
        usage_now = k.read_usage(world.kv_tenant)[0].to_dict()
        assert restore(k, backup, str(path)).changed is False
        assert k.read_usage(world.kv_tenant)[0].to_dict() == usage_now
        with pytest.raises(InvalidInput, match="holds no documents of tenant"):
            restore(k, backup, str(path), tenants=["nobody-here"])
