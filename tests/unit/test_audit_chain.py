"""The hash-chained audit log, its verification and filters: files only, no server."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import socket
from pathlib import Path
from typing import Any

import pytest

from keyops import audit
from keyops.audit import GENESIS, AuditLog, AuditTrail, verify_log
from keyops.cli.main import main
from keyops.errors import AuditChainBroken, AuditError, InvalidInput


def write_log(path: Path, n: int, **extra: Any) -> list[dict[str, Any]]:
    trail = AuditTrail(AuditLog(path))
    return [trail(f"op.{i % 3}", tenant=f"t{i % 2}", level="dek", versions=[i], result="ok", **extra)
            for i in range(n)]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_entries_chain_from_the_genesis(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    entries = write_log(log, 4)
    assert entries[0]["prev"] == GENESIS and entries[0]["seq"] == 1
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["prev"] == before["hash"] and after["seq"] == before["seq"] + 1
    for entry in entries:
        assert audit.entry_hash(entry) == entry["hash"]
    assert [json.loads(line) for line in lines(log)] == entries
    result = verify_log(log)
    assert result.ok and result.entries == 4 and result.last_hash == entries[-1]["hash"]
    assert log.stat().st_mode & 0o777 == 0o600


def test_event_fields(tmp_path: Path) -> None:
    entry = AuditTrail(AuditLog(tmp_path / "a.jsonl"))("rotate", tenant="acme", level="kek",
                                                        versions={"old": 1, "new": 2}, result="ok",
                                                        actor="token:acc1")
    assert {"schema", "time", "request_id", "operation", "actor", "tenant", "level", "versions", "result",
            "seq", "prev", "hash"} <= set(entry)
    assert entry["versions"] == {"old": 1, "new": 2} and entry["actor"] == "token:acc1"
    assert dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).tzinfo is not None


def test_an_empty_or_missing_log(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    assert verify_log(tmp_path / "empty.jsonl").ok
    with pytest.raises(AuditError, match="cannot be read"):
        verify_log(tmp_path / "missing.jsonl")


# --- tampering: each kind is caught at the first entry concerned ------------------------------------


def tamper_and_verify(tmp_path: Path, change: Any) -> audit.ChainProblem:
    log = tmp_path / "a.jsonl"
    log.unlink(missing_ok=True)
    write_log(log, 6)
    content = lines(log)
    log.write_text("".join(change(content)))
    result = verify_log(log)
    assert not result.ok and result.problem is not None
    with pytest.raises(AuditChainBroken, match=f"line {result.problem.line}"):
        verify_log(log, raise_on_error=True)
    return result.problem


def edit_result(content: list[str]) -> list[str]:
    entry = json.loads(content[2])
    entry["result"] = "ok" if entry["result"] != "ok" else "error:forged"
    content[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    return content


def test_an_edited_entry_is_named(tmp_path: Path) -> None:
    problem = tamper_and_verify(tmp_path, edit_result)
    assert problem.line == 3 and "edited" in problem.message


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    def forge(content: list[str]) -> list[str]:
        entry = json.loads(content[2])
        entry["tenant"] = "someone-else"
        entry["hash"] = audit.entry_hash(entry)
        content[2] = json.dumps(entry) + "\n"
        return content

    problem = tamper_and_verify(tmp_path, forge)
    assert problem.line == 4 and "does not chain" in problem.message


def test_a_deleted_entry_is_named(tmp_path: Path) -> None:
    problem = tamper_and_verify(tmp_path, lambda c: c[:2] + c[3:])
    assert problem.line == 3 and "entry seq 3 is missing" in problem.message


def test_deleted_first_entries_are_named(tmp_path: Path) -> None:
    problem = tamper_and_verify(tmp_path, lambda c: c[2:])
    assert problem.line == 1 and "entries seq 1-2 are missing" in problem.message


def test_reordered_entries_are_named(tmp_path: Path) -> None:
    problem = tamper_and_verify(tmp_path, lambda c: c[:2] + [c[3], c[2]] + c[4:])
    assert problem.line == 3 and "missing" in problem.message  # seq 4 arrives where 3 belongs
    problem = tamper_and_verify(tmp_path, lambda c: c[:-2] + [c[-1], c[-2]])
    assert problem.line == 5


def test_a_duplicated_entry_is_named(tmp_path: Path) -> None:
    problem = tamper_and_verify(tmp_path, lambda c: c[:3] + [c[2]] + c[3:])
    assert problem.line == 4 and "reordered, duplicated or inserted" in problem.message


def test_garbage_and_torn_lines_are_named(tmp_path: Path) -> None:
    assert "not valid JSON" in tamper_and_verify(tmp_path, lambda c: c[:1] + ["{not json\n"] + c[1:]).message
    assert "not a keyops audit entry" in tamper_and_verify(tmp_path, lambda c: c[:1] + ['{"a": 1}\n'] + c[1:]).message
    torn = tamper_and_verify(tmp_path, lambda c: c[:-1] + [c[-1][:40]])
    assert torn.line == 6 and "incomplete" in torn.message


def test_appending_after_a_torn_line_keeps_the_damage_visible(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    write_log(log, 3)
    with log.open("a") as fh:
        fh.write('{"torn": ')
    write_log(log, 2)
    result = verify_log(log)
    assert result.problem is not None and result.problem.line == 4
    assert len(lines(log)) == 6  # the torn write stayed a line of its own


# --- concurrent writers ----------------------------------------------------------------------------


def _append_many(path: str, worker: int, count: int) -> None:
    trail = AuditTrail(AuditLog(path))
    for i in range(count):
        trail("dek.unwrap", tenant=f"w{worker}", versions=[i], result="ok")


def test_concurrent_processes_keep_one_chain(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(log), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = verify_log(log)
    assert result.ok and result.entries == 160
    seqs = [json.loads(line)["seq"] for line in lines(log)]
    assert seqs == list(range(1, 161))


def test_an_unwritable_log_is_an_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(AuditError, match="cannot be opened"):
        AuditTrail(AuditLog(not_a_folder / "a.jsonl"))("x", result="ok")


# --- what an event may hold ----------------------------------------------------------------------


def test_events_never_hold_secrets_bytes_or_long_strings() -> None:
    cleaned = audit.clean_fields({
        "token": "s.secret", "plaintext": "hello", "pin": "1234", "key": b"k" * 32, "kek": b"\x00" * 32,
        "material": "x", "value": "v", "secret_id": "sid", "wrapped": "AAAA", "ciphertext": "keyops:v1:...",
        "versions": {"kek": 2, "dek": 3, "key": "x"}, "blob": b"raw", "name": "db/password", "note": "n" * 5000,
        "nested": {"a": {"b": {"c": {"d": 1}}}}, "items": [1, b"x", "y"], "obj": object()})
    assert cleaned["versions"] == {"kek": 2, "dek": 3}
    assert cleaned["name"] == "db/password" and cleaned["items"] == [1, "y"]
    assert len(cleaned["note"]) <= 210
    assert cleaned["nested"] == {"a": {"b": {}}}  # bounded depth
    for gone in ("token", "plaintext", "pin", "key", "kek", "material", "value", "secret_id", "wrapped",
                 "ciphertext", "blob", "obj"):
        assert gone not in cleaned


# --- filters -------------------------------------------------------------------------------------


def test_filter_by_tenant_operation_result_actor_and_time() -> None:
    events = [
        {"time": "2024-05-01T10:00:00.000000Z", "operation": "rotate", "tenant": "a", "result": "ok", "actor": "token:x"},
        {"time": "2024-05-02T10:00:00.000000Z", "operation": "reencrypt.start", "tenant": "a", "result": "ok",
         "actor": "approle:keyops-rotation"},
        {"time": "2024-05-03T10:00:00.000000Z", "operation": "reencrypt.finish", "tenant": "b",
         "result": "error:conflict", "actor": "token:y"},
        {"time": "2024-05-04T10:00:00.000000Z", "operation": "access.denied", "tenant": "b",
         "result": "error:not_permitted", "actor": "token:y"},
    ]
    f = audit.filter_events
    assert [e["operation"] for e in f(events, tenant="a")] == ["rotate", "reencrypt.start"]
    assert len(f(events, operation="reencrypt")) == 2  # a prefix matches its sub-events
    assert len(f(events, operation="reencrypt.start")) == 1
    assert len(f(events, operation="r*")) == 3
    assert len(f(events, result="error:*")) == 2
    assert len(f(events, actor="approle:*")) == 1
    since = audit.parse_time_filter("2024-05-02")
    until = audit.parse_time_filter("2024-05-03T12:00:00Z")
    assert [e["tenant"] for e in f(events, since=since, until=until)] == ["a", "b"]


def test_time_filters() -> None:
    now = dt.datetime(2024, 5, 10, tzinfo=dt.timezone.utc)
    assert audit.parse_time_filter("2h", now) == now - dt.timedelta(hours=2)
    assert audit.parse_time_filter("7d", now) == now - dt.timedelta(days=7)
    assert audit.parse_time_filter("2024-05-01T00:00:00Z").tzinfo is not None
    with pytest.raises(InvalidInput, match="ISO 8601"):
        audit.parse_time_filter("yesterday")


# --- sinks ---------------------------------------------------------------------------------------


def test_syslog_copy(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        port = server.getsockname()[1]
        sink = audit.SyslogSink(f"udp://127.0.0.1:{port}")
        trail = AuditTrail(AuditLog(tmp_path / "a.jsonl"), syslog=sink)
        entry = trail("rotate", tenant="acme", result="ok")
        message = server.recv(65536).decode()
        sink.close()
    assert "keyops-audit: " in message
    assert json.loads(message.split("keyops-audit: ", 1)[1].rstrip("\x00")) == entry
    assert message.startswith(f"<{10 * 8 + 6}>")  # authpriv.info


def test_syslog_failures_do_not_stop_operations(tmp_path: Path) -> None:
    sink = audit.SyslogSink(str(tmp_path / "no-such-socket"))
    AuditTrail(syslog=sink)("rotate", result="ok")
    assert sink.failures == 1


def test_sink_from_config(tmp_path: Path) -> None:
    from keyops.config import Config

    assert audit.sink_from_config(Config()) is None
    trail = audit.sink_from_config(Config(audit_log=str(tmp_path / "a.jsonl"), audit_kv_path="audit"))
    assert trail is not None and trail.log is not None and trail.kv is not None and trail.syslog is None
    with pytest.raises(InvalidInput, match="overlaps"):
        audit.sink_from_config(Config(audit_kv_path="tenants"))


# --- the CLI, on files only ------------------------------------------------------------------------


def test_cli_verify_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "a.jsonl"
    write_log(log, 5)
    assert main(["audit", "verify", "--log", str(log)]) == 0
    assert "5 entries, hash chain intact" in capsys.readouterr().out
    assert main(["audit", "show", "--log", str(log), "--tenant", "t1", "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in shown] == [2, 4]
    assert main(["audit", "show", "--log", str(log), "--operation", "op.0", "--limit", "1"]) == 0
    assert capsys.readouterr().out.count("op.0") == 1
    log.write_text("".join(edit_result(lines(log))))
    assert main(["audit", "verify", "--log", str(log)]) == AuditChainBroken.exit_code
    err = capsys.readouterr().err
    assert "line 3" in err and "edited" in err
    assert main(["audit", "verify", "--log", str(log), "--json"]) == AuditChainBroken.exit_code
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and answer["problem"]["line"] == 3 and answer["entries"] == 2
