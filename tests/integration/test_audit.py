"""The audit trail end to end: the CLI's events, tampering caught, KV copies, monitoring fields."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyops import access
from keyops.audit import AuditLog, AuditTrail, KvSink, read_events, verify_log
from keyops.cli.main import main
from keyops.config import Config
from keyops.devstack import DevStack
from keyops.errors import AuditChainBroken, PermissionDenied
from keyops.model import Policy
from keyops.service import Keyops

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEYOPS = str(Path(sys.executable).parent / "keyops")


def new_tenant(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cli_env(stack: DevStack, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_"))}
    env.update(stack.env())
    env["KEYOPS_AUDIT_LOG"] = str(tmp_path / "keyops-audit.jsonl")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def keyops(env: dict[str, str], *args: str, stdin: str | None = None, rc: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KEYOPS, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == rc, f"keyops {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_cli_operations_leave_events_and_verify_catches_tampering(cli_env: dict[str, str], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    tenant = new_tenant("aud")
    value = f"plaintext-{uuid.uuid4().hex}"
    keyops(cli_env, "tenant", "create", tenant, "--residence", "transit")
    keyops(cli_env, "secret", "put", tenant, "db/password", stdin=value)
    assert keyops(cli_env, "secret", "get", tenant, "db/password").stdout == value
    keyops(cli_env, "policy", "apply", "--role", "app", "--tenant", tenant)
    minted = keyops(cli_env, "policy", "mint", "--role", "app", "--tenant", tenant, "--output",
                    str(tmp_path / "app.token"), "--json")
    token = (tmp_path / "app.token").read_text().strip()
    assert token not in minted.stdout + minted.stderr and (tmp_path / "app.token").stat().st_mode & 0o777 == 0o600
    app_env = dict(cli_env, VAULT_TOKEN=token)
    app_env.pop("KEYOPS_VAULT_TOKEN_FILE")
    app_env.pop("KEYOPS_PKCS11_PIN_FILE")  # an app of a transit tenant needs no PIN
    assert keyops(app_env, "secret", "get", tenant, "db/password").stdout == value
    denied = keyops(app_env, "tenant", "list", rc=PermissionDenied.exit_code)
    assert "not permitted" in denied.stderr and "tenants.list" in denied.stderr

    log = Path(cli_env["KEYOPS_AUDIT_LOG"])
    ok = keyops(cli_env, "audit", "verify")
    assert "hash chain intact" in ok.stdout
    shown = [json.loads(line) for line in keyops(cli_env, "audit", "show", "--tenant", tenant, "--json").stdout
             .splitlines()]
    ops = [(e["operation"], e["result"]) for e in shown]
    for expected in [("tenant.create", "ok"), ("kek.unwrap", "ok"), ("dek.unwrap", "ok"), ("secret.write", "ok"),
                     ("policy.create", "ok"), ("policy.mint_token", "ok")]:
        assert expected in ops
    app_actor = f"token:{json.loads(minted.stdout)['accessor']}"
    assert any(e["operation"] == "dek.unwrap" and e["actor"] == app_actor for e in shown)
    assert any(e["operation"] == "access.denied" and e["actor"] == app_actor
               for e in read_events(log))
    text = log.read_text()
    assert value not in text and token not in text and cli_env["VAULT_TOKEN"] not in text

    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) >= 6
    entry = json.loads(lines[2])
    entry["result"] = "error:forged"
    tampered = {
        "edited": lines[:2] + [json.dumps(entry) + "\n"] + lines[3:],
        "deleted": lines[:2] + lines[3:],
        "reordered": lines[:2] + [lines[3], lines[2]] + lines[4:],
    }
    for kind, content in tampered.items():
        copy = tmp_path / f"{kind}.jsonl"
        copy.write_text("".join(content))
        # In-process: verifying a file needs no server, and spares a process start per case.
        assert main(["audit", "verify", "--log", str(copy)]) == AuditChainBroken.exit_code
        err = capsys.readouterr().err
        assert "line 3:" in err, (kind, err)
        assert {"edited": "edited", "deleted": "missing", "reordered": "missing"}[kind] in err
    assert main(["audit", "verify", "--log", str(log)]) == 0  # the original is untouched


def test_kv_copies_are_create_only(config: Config, tmp_path: Path, vault_client: Any) -> None:
    tenant = new_tenant("aud-kv")
    log = tmp_path / "keyops-audit.jsonl"
    root = Keyops(config, audit=AuditTrail(AuditLog(log), KvSink("audit")))
    root.create_tenant(tenant, Policy(kek_residence="transit"))
    access.apply_policies(root, access.render_policies(root.roles, [tenant], access.Mounts(), only=["app"]))
    token = access.mint_token(root, root.roles, "app", tenant, ttl="10m")
    app = Keyops(config.replace(vault_token=token.token, vault_token_file=None, pkcs11_pin_file=None),
                 audit=AuditTrail(AuditLog(log), KvSink("audit")))
    app.put_secret(tenant, "x", b"value")
    entry = [e for e in read_events(log) if e["operation"] == "secret.write" and e["tenant"] == tenant][-1]
    assert entry["actor"] == f"token:{token.accessor}"
    day = entry["time"][:10]
    names = vault_client.secrets.kv.v2.list_secrets(path=f"audit/{day}", mount_point="keyops")["data"]["keys"]
    name = next(n for n in names if n.endswith(entry["request_id"]))
    stored = vault_client.secrets.kv.v2.read_secret_version(path=f"audit/{day}/{name}", mount_point="keyops",
                                                            raise_on_deleted_version=True)["data"]["data"]
    assert stored == entry  # the same entry, hash and chain fields included
    with pytest.raises(PermissionDenied):
        app.store.write(f"audit/{day}/{name}", {"forged": True}, cas=1)
    with pytest.raises(PermissionDenied):
        app.store.delete_all_versions(f"audit/{day}/{name}")
    with pytest.raises(PermissionDenied):
        app.store.read(f"audit/{day}/{name}")
    assert app.audit.kv.failures == 0 and verify_log(log).ok  # type: ignore[union-attr]
    root.close()
    app.close()


def test_the_server_keeps_its_own_record(cli_env: dict[str, str], stack: DevStack) -> None:
    devices = json.loads(keyops(cli_env, "audit", "server", "--json").stdout)
    assert {"path": "file/", "type": "file", "file_path": str(stack.bao_audit_log)}.items() <= devices[0].items()
    assert stack.bao_audit_log.stat().st_size > 0


# --- monitoring --------------------------------------------------------------------------------------


def documented_check() -> str:
    text = (REPO / "docs" / "audit.md").read_text()
    match = re.search(r"<!-- monitoring-check -->\n```sh\n(.*?)```", text, re.S)
    assert match, "docs/audit.md lost its monitoring check"
    return match.group(1)


@pytest.fixture
def monitored(config: Config) -> Iterator[dict[str, str]]:
    with Keyops(config) as k:
        fresh, busy, soon = new_tenant("mon-ok"), new_tenant("mon-busy"), new_tenant("mon-soon")
        k.create_tenant(fresh)
        k.create_tenant(busy, Policy(dek_usage_cap=5000))
        k.encrypt(busy, b"x")  # reserves one block of 4096 uses: 82 % of the cap
        k.create_tenant(soon, Policy(dek_period_days=3))
        yield {"fresh": fresh, "busy": busy, "soon": soon}


def test_status_json_has_what_monitoring_alerts_on(cli_env: dict[str, str], monitored: dict[str, str]) -> None:
    status = json.loads(keyops(cli_env, "status", "--tenant", monitored["busy"], "--json").stdout)
    (tenant,) = status["tenants"]
    assert tenant["dek_usage"] == 4096 and tenant["dek_usage_cap"] == 5000
    assert tenant["dek_usage_ratio"] == pytest.approx(4096 / 5000)
    assert tenant["dek_usage_due_ratio"] == 0.9 and tenant["is_due"] is False
    for level, days in (("kek", 90), ("dek", 30)):
        assert days * 86400 - 120 < tenant[level]["seconds_until_due"] <= days * 86400
        assert 0 <= tenant[level]["primary_age_days"] < 0.01
        assert tenant[level]["state_counts"] == {"active": 1}
    assert tenant["seconds_until_due"] == tenant["dek"]["seconds_until_due"]


@pytest.mark.parametrize(("which", "rc", "first_word"), [("fresh", 0, "OK"), ("soon", 1, "WARNING"),
                                                          ("busy", 2, "CRITICAL")])
def test_the_documented_check_alerts(cli_env: dict[str, str], monitored: dict[str, str], which: str, rc: int,
                                     first_word: str) -> None:
    env = dict(cli_env, KEYOPS_TENANT=monitored[which])
    proc = subprocess.run(["sh", "-c", documented_check()], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert proc.stdout.startswith(first_word)


def test_the_documented_check_is_unknown_when_status_fails(cli_env: dict[str, str]) -> None:
    env = dict(cli_env, VAULT_ADDR="http://127.0.0.1:9", KEYOPS_TENANT="nobody")
    proc = subprocess.run(["sh", "-c", documented_check()], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 3 and proc.stdout.startswith("UNKNOWN")
