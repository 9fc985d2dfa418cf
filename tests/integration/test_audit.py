"""The audit trail end to end: the CLI's events, tampering caught, KV copies, monitoring fields."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
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
from _tenants import new_tenant

from keyops import access
from keyops.audit import AuditLog, AuditTrail, KvSink, read_events, verify_log
from keyops.cli.main import main
from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.errors import AuditChainBroken, PermissionDenied
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEYOPS = str(Path(sys.executable).parent / "keyops")


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
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
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
    assert "keyed chain intact" in ok.stdout and "anchored" in ok.stdout
    shown = [json.loads(line) for line in keyops(cli_env, "audit", "show", "--tenant", tenant, "--json").stdout
             .splitlines()]
    ops = [(e["operation"], e["result"]) for e in shown]
    for expected in [("tenant.create", "ok"), ("kek.unwrap", "ok"), ("dek.unwrap", "ok"), ("secret.write", "ok"),
                     ("policy.create", "ok"), ("policy.mint_token", "ok")]:
        assert expected in ops
    # The app may not write the keyed chain: its process leaves no entry (the server's audit device
    # records its requests, see test_access.py), and the chain stays whole.
    app_actor = f"token:{json.loads(minted.stdout)['accessor']}"
    assert not any(e["actor"] == app_actor for e in read_events(log))
    assert any(e["operation"] == "dek.unwrap" for e in shown)
    text = log.read_text()
    assert value not in text and token not in text and cli_env["VAULT_TOKEN"] not in text

    lines = log.read_text().splitlines(keepends=True)
    assert len(lines) >= 6
    for name, value in cli_env.items():  # verifying the MACs asks Vault
        monkeypatch.setenv(name, value)
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
    access.apply_policies(root, access.render_policies(root.roles, [tenant], access.Mounts(), only=["rotation"]))
    token = access.mint_token(root, root.roles, "rotation", ttl="10m")
    writer = Keyops(config.replace(vault_token=token.token, vault_token_file=None),
                    audit=AuditTrail(AuditLog(log), KvSink("audit")))
    writer.put_secret(tenant, "x", b"value")
    entry = [e for e in read_events(log) if e["operation"] == "secret.write" and e["tenant"] == tenant][-1]
    assert entry["actor"] == f"token:{token.accessor}"
    day = entry["time"][:10]
    names = vault_client.secrets.kv.v2.list_secrets(path=f"audit/{day}", mount_point="keyops")["data"]["keys"]
    name = next(n for n in names if n.endswith(entry["request_id"]))
    stored = vault_client.secrets.kv.v2.read_secret_version(path=f"audit/{day}/{name}", mount_point="keyops",
                                                            raise_on_deleted_version=True)["data"]["data"]
    assert stored == entry  # the same entry, hash and chain fields included
    with pytest.raises(PermissionDenied):
        writer.store.write(f"audit/{day}/{name}", {"forged": True}, cas=1)
    with pytest.raises(PermissionDenied):
        writer.store.delete_all_versions(f"audit/{day}/{name}")
    with pytest.raises(PermissionDenied):
        writer.store.read(f"audit/{day}/{name}")
    assert writer.audit.kv.failures == 0 and verify_log(log).ok  # type: ignore[union-attr]
    root.close()
    writer.close()


# --- the keyed, anchored chain against the real OpenBao ---------------------------------------------


@pytest.fixture
def anchored(stack: DevStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A log written by root through the stack's own settings (keyops dev env), and that environment set."""
    env = dict(stack.env(), KEYOPS_AUDIT_LOG=str(tmp_path / "live" / "keyops-audit.jsonl"))
    for name in [n for n in os.environ if n.startswith(("VAULT_", "BAO_", "KEYOPS_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = Config.load(env=env)
    from keyops.audit import sink_from_config

    tenant = new_tenant("aud-chain")
    with Keyops(config, audit=sink_from_config(config)) as k:
        k.create_tenant(tenant, Policy(kek_residence="transit"))
        for i in range(3):
            k.put_secret(tenant, f"s{i}", b"value")
        k.get_secret(tenant, "s0")
    log = Path(env["KEYOPS_AUDIT_LOG"])
    assert len(log.read_text().splitlines()) >= 6
    yield log


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _rechain(entries: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """What someone who can write the file but holds no audit key can do: re-link, re-hash, guess a MAC."""
    for i in range(start, len(entries)):
        entry = entries[i]
        if i:
            entry["prev"] = entries[i - 1].get("mac", entries[i - 1].get("hash"))
        if "hash" in entry:
            entry["hash"] = hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()
        if "mac" in entry:
            body = b"keyops-audit-chain-v2\n" + _canonical({k: v for k, v in entry.items() if k != "mac"})
            entry["mac"] = "vault:v1:" + base64.b64encode(hmac.new(b"guessed", body, "sha256").digest()).decode()
    return entries


def _rechained_edit(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries[2]["result"] = "error:forged"
    return _rechain(entries, 2)


def _rechained_delete(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    del entries[2]
    for entry in entries[2:]:
        entry["seq"] -= 1
    return _rechain(entries, 2)


def _new_unkeyed_chain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for entry in entries:
        for name in ("mac", "chain", "anchor"):
            entry.pop(name, None)
        entry["hash"] = ""
    entries[0]["prev"] = "0" * 64
    return _rechain(entries, 0)


def _new_keyed_chain(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for entry in entries:
        entry["chain"] = uuid.uuid4().hex if entry is entries[0] else entries[0]["chain"]
    entries[0]["prev"] = "0" * 64
    return _rechain(entries, 0)


def _forged_append(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    forged = dict(entries[-1], operation="destroy", level="master", versions=[1], result="ok",
                  seq=entries[-1]["seq"] + 1, request_id=uuid.uuid4().hex)
    return _rechain([*entries, forged], len(entries))


ATTACKS = {
    "rechained-edit": (_rechained_edit, "does not match its MAC"),
    "rechained-delete": (_rechained_delete, "does not match its MAC"),
    "new-unkeyed-chain": (_new_unkeyed_chain, "only unkeyed entries"),
    "new-keyed-chain": (_new_keyed_chain, "does not match its MAC"),
    "forged-append": (_forged_append, "does not match its MAC"),
    "cut-tail": (lambda entries: entries[:-2], "cut off"),
    "emptied": (lambda entries: [], "the log is empty but its head"),
}


def test_rechained_forged_truncated_and_emptied_logs_are_detected(anchored: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    original = anchored.read_text()
    assert main(["audit", "verify"]) == 0
    intact = capsys.readouterr().out
    for name, (attack, words) in ATTACKS.items():
        entries = [json.loads(line) for line in original.splitlines()]
        anchored.write_text("".join(json.dumps(e) + "\n" for e in attack(entries)))
        # In-process: one verify per attack, with the stack's settings (keyops dev env).
        assert main(["audit", "verify"]) == AuditChainBroken.exit_code, name
        err = capsys.readouterr().err
        assert words in err and "is not intact" in err, (name, err)
    anchored.write_text(original)
    assert "keyed chain intact" in intact and "anchored: head" in intact
    assert main(["audit", "verify", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] and answer["keyed_entries"] == answer["entries"] == answer["head_seq"] >= 6


def test_a_writer_refuses_to_append_to_a_cut_log(anchored: Path) -> None:
    from keyops.audit import sink_from_config

    content = anchored.read_text().splitlines(keepends=True)
    tenant = next(e["tenant"] for e in map(json.loads, content) if e.get("tenant"))
    anchored.write_text("".join(content[:-1]))
    config = Config.load()
    # The DEK unwrap's event comes first, and is refused: nothing is written, on disk or in Vault.
    with Keyops(config, audit=sink_from_config(config)) as k, pytest.raises(AuditChainBroken, match="was cut off"):
        k.put_secret(tenant, "after-the-cut", b"value")
    assert anchored.read_text() == "".join(content[:-1])  # nothing appended after the gap
    with Keyops(config) as plain:
        assert "after-the-cut" not in plain.list_secrets(tenant)


def test_only_the_writer_roles_hold_the_chain_key_and_its_head(anchored: Path, config: Config,
                                                               vault_client: Any) -> None:
    from keyops import audit
    tenant = new_tenant("aud-roles")
    with Keyops(config) as root:
        root.create_tenant(tenant, Policy(kek_residence="transit"))
        access.apply_policies(root, access.render_policies(root.roles, [tenant], access.Mounts.from_config(config)))
        tokens = {role: access.mint_token(root, root.roles, role, tenant if role == "app" else None, ttl="10m")
                  for role in ("app", "rotation", "auditor")}
    env_config = Config.load()

    def acting(role: str) -> Keyops:
        return Keyops(env_config.replace(vault_token=tokens[role].token, vault_token_file=None),
                      audit=audit.sink_from_config(env_config))

    def head_path() -> str:
        return f"audit/head/{audit.anchor_name('auto', anchored)}"

    def key(k: Keyops) -> Any:
        return audit.TransitHmacKey(store=k.store)

    before = anchored.read_text()
    with acting("app") as app:
        for attempt in (lambda: app.store.write(f"audit/2026-01-01/{uuid.uuid4().hex}", {"operation": "destroy"},
                                                cas=0),
                        lambda: app.store.write(head_path(), {"seq": 1}, cas=0),
                        lambda: app.store.read(head_path()),
                        lambda: key(app).sign(b"forged"),
                        lambda: key(app).verify_many([(b"x", "vault:v1:AAAA")])):
            with pytest.raises(PermissionDenied):
                attempt()
        assert app.put_secret(tenant, "by-app", b"v").changed
        assert anchored.read_text() == before  # the app wrote no entry: it holds no audit right
        assert app.audit.skipped >= 1  # type: ignore[union-attr]
    head = vault_client.secrets.kv.v2.read_secret_version(path=head_path(), mount_point="keyops",
                                                          raise_on_deleted_version=True)["data"]["data"]
    assert head["seq"] == len(before.splitlines())
    with acting("rotation") as rot:
        rot.put_secret(tenant, "by-rotation", b"v")
        ours = [json.loads(line) for line in anchored.read_text().splitlines()][-1]
        assert ours["actor"] == f"token:{tokens['rotation'].accessor}" and ours["operation"] == "secret.write"
        with pytest.raises(PermissionDenied):
            rot.store.read(f"audit/{ours['time'][:10]}/x")  # adds, never reads or rewrites events
        with pytest.raises(PermissionDenied):
            key(rot).verify_many([(b"x", "vault:v1:AAAA")])
    with acting("auditor") as aud:
        result = audit.verify_log(anchored, key=key(aud), heads=audit.KvHeads(store=aud.store),
                                  anchor=audit.anchor_name("auto", anchored))
        assert result.ok and result.head_seq == result.entries > len(before.splitlines()), result
        for attempt in (lambda: key(aud).sign(b"forged"), lambda: aud.store.write(head_path(), {"seq": 1}, cas=1)):
            with pytest.raises(PermissionDenied):
                attempt()


def test_a_missing_audit_key_says_how_to_make_it(config: Config, tmp_path: Path) -> None:
    from keyops.audit import AuditLog, KvHeads, TransitHmacKey
    from keyops.errors import AuditError

    with Keyops(config) as root:
        log = AuditLog(tmp_path / "a.jsonl", TransitHmacKey("no_such_audit_key", store=root.store),
                       KvHeads(store=root.store), "missing-key-check")
        with pytest.raises(AuditError, match="does not exist on this Vault.*keyops audit init"):
            AuditTrail(log)("rotate", result="ok")
    assert (tmp_path / "a.jsonl").read_text() == ""


def test_rotate_and_init_from_the_cli(anchored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "init"]) == 0
    assert "already present" in capsys.readouterr().out  # keyops dev up made it
    assert main(["audit", "rotate", "--json"]) == 0
    archived = Path(json.loads(capsys.readouterr().out)["archived"])
    assert archived.parent == anchored.parent and anchored.exists()
    assert main(["audit", "verify", "--log", str(archived)]) == 0
    assert "archived by a rotation" in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
    assert "continues" in capsys.readouterr().out
    archived.write_text("".join(archived.read_text().splitlines(keepends=True)[:-1]))
    assert main(["audit", "verify", "--log", str(archived)]) == AuditChainBroken.exit_code
    assert "cut off" in capsys.readouterr().err


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
        now = dt.datetime.now(dt.UTC)  # 4096 uses reserved, as busy processes would: 82 % of the cap
        k.update_usage(busy, lambda u: u.reserve(1, 4096, 5000, external=True, holder="monitor-test", now=now,
                                                 lease_until=now)[0])
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
