"""The hash-chained audit log, its verification and filters: files only, no server."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from keyops import audit
from keyops.audit import GENESIS, AuditLog, AuditTrail, verify_log
from keyops.cli.main import main
from keyops.errors import AuditChainBroken, AuditError, ConfigError, InvalidInput


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
        {"time": "2024-05-01T10:00:00.000000Z", "operation": "rotate", "tenant": "a", "result": "ok",
         "actor": "token:x"},
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
    now = dt.datetime(2024, 5, 10, tzinfo=dt.UTC)
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


# --- the keyed, anchored chain (a plain HMAC key and heads in memory) -------------------------------

KEY = audit.HmacKey(b"k" * 32, "test")
ATTACKER = audit.HmacKey(b"a" * 32, "attacker")  # what someone without the audit key can compute with
ANCHOR = "unit"


def keyed_log(path: Path, heads: audit.MemoryHeads, anchor: str = ANCHOR) -> AuditLog:
    return AuditLog(path, KEY, heads, anchor)


def write_keyed(path: Path, n: int, heads: audit.MemoryHeads, anchor: str = ANCHOR) -> list[dict[str, Any]]:
    trail = AuditTrail(keyed_log(path, heads, anchor))
    return [trail(f"op.{i % 3}", tenant=f"t{i % 2}", level="dek", versions=[i], result="ok") for i in range(n)]


def verify_keyed(path: Path, heads: audit.MemoryHeads, anchor: str = ANCHOR) -> audit.VerifyResult:
    return verify_log(path, key=KEY, heads=heads, anchor=anchor)


def dumps(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"


def rechain(entries: list[dict[str, Any]], start: int = 0) -> list[str]:
    """Re-link and re-MAC every entry from ``start`` on, as an attacker without the audit key would."""
    for i in range(start, len(entries)):
        if i:
            entries[i]["prev"] = entries[i - 1]["mac"]
        entries[i]["mac"] = ATTACKER.sign(audit.mac_input(entries[i]))
    return [dumps(e) for e in entries]


def test_keyed_entries_chain_mac_and_advance_their_head(tmp_path: Path) -> None:
    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    entries = write_keyed(log, 4, heads)
    assert entries[0]["prev"] == GENESIS and entries[0]["seq"] == 1 and "hash" not in entries[0]
    assert len({e["chain"] for e in entries}) == 1 and {e["anchor"] for e in entries} == {ANCHOR}
    for before, after in zip(entries, entries[1:], strict=False):
        assert after["prev"] == before["mac"] and after["seq"] == before["seq"] + 1
    assert KEY.verify_many([(audit.mac_input(e), e["mac"]) for e in entries]) == [True] * 4
    head = heads.read(ANCHOR)
    assert head is not None
    assert (head[0].seq, head[0].mac, head[0].chain) == (4, entries[-1]["mac"], entries[0]["chain"])
    assert head[1] == 4  # one check-and-set write per entry
    result = verify_keyed(log, heads)
    assert result.ok and result.entries == result.keyed_entries == 4 and result.head_seq == 4
    assert "keyed chain intact" in result.summary() and "anchored" in result.summary()


def _edit(entries: list[dict[str, Any]]) -> list[str]:
    entries[2]["result"] = "error:forged"
    return [dumps(e) for e in entries]


def _rechained_edit(entries: list[dict[str, Any]]) -> list[str]:
    entries[2]["tenant"] = "someone-else"
    return rechain(entries, 2)


def _rechained_delete(entries: list[dict[str, Any]]) -> list[str]:
    del entries[2]
    for entry in entries[2:]:
        entry["seq"] -= 1
    return rechain(entries, 2)


def _new_keyed_chain(entries: list[dict[str, Any]]) -> list[str]:
    for entry in entries:
        entry["chain"] = "f" * 32
    entries[0]["prev"] = GENESIS
    return rechain(entries, 0)


def _new_unkeyed_chain(entries: list[dict[str, Any]]) -> list[str]:
    prev, out = GENESIS, []
    for entry in entries:
        for name in ("mac", "chain", "anchor"):
            entry.pop(name)
        entry["prev"] = prev
        entry["hash"] = prev = audit.entry_hash(entry)
        out.append(dumps(entry))
    return out


def _forged_append(entries: list[dict[str, Any]]) -> list[str]:
    forged = {**entries[-1], "operation": "destroy", "seq": entries[-1]["seq"] + 1, "prev": entries[-1]["mac"]}
    forged["mac"] = ATTACKER.sign(audit.mac_input(forged))
    return [dumps(e) for e in entries] + [dumps(forged)]


def _unkeyed_append(entries: list[dict[str, Any]]) -> list[str]:
    forged = {"operation": "destroy", "seq": entries[-1]["seq"] + 1, "prev": entries[-1]["mac"]}
    forged["hash"] = audit.entry_hash(forged)
    return [dumps(e) for e in entries] + [dumps(forged)]


@pytest.mark.parametrize(("change", "line", "words"), [
    (_edit, 3, "does not match its MAC"),
    (_rechained_edit, 3, "does not match its MAC"),
    (_rechained_delete, 3, "does not match its MAC"),
    (_new_keyed_chain, 1, "does not match its MAC"),
    (_new_unkeyed_chain, 7, "only unkeyed entries"),
    (_forged_append, 7, "does not match its MAC"),
    (_unkeyed_append, 7, "unkeyed after the keyed chain began"),
    (lambda e: [dumps(x) for x in e[:4]], 5, "entries seq 5-6 were cut off"),
    (lambda e: [dumps(x) for x in e[:5]], 6, "entry seq 6 was cut off"),
    (lambda e: [], 1, "the log is empty but its head"),
], ids=["edited", "rechained-edit", "rechained-delete", "new-keyed-chain", "new-unkeyed-chain", "forged-append",
        "unkeyed-append", "cut-tail", "cut-last", "emptied"])
def test_keyed_chain_catches_tampering(tmp_path: Path, change: Any, line: int, words: str) -> None:
    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    write_keyed(log, 6, heads)
    log.write_text("".join(change([json.loads(x) for x in lines(log)])))
    result = verify_keyed(log, heads)
    assert result.problem is not None, result
    assert result.problem.line == line and words in result.problem.message, result.problem
    with pytest.raises(AuditChainBroken, match=f"line {line}"):
        verify_log(log, key=KEY, heads=heads, anchor=ANCHOR, raise_on_error=True)


def test_the_writer_refuses_a_log_behind_its_head(tmp_path: Path) -> None:
    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    write_keyed(log, 5, heads)
    log.write_text("".join(lines(log)[:3]))
    with pytest.raises(AuditChainBroken, match="entries seq 4-5 were cut off.*nothing was appended"):
        write_keyed(log, 1, heads)
    log.write_text("")
    with pytest.raises(AuditChainBroken, match="the log is empty but its head is at entry seq 5"):
        write_keyed(log, 1, heads)
    assert log.read_text() == "" and heads.read(ANCHOR)[0].seq == 5  # type: ignore[index]


def test_another_log_with_the_same_anchor_is_refused(tmp_path: Path) -> None:
    heads = audit.MemoryHeads()
    write_keyed(tmp_path / "a.jsonl", 2, heads)
    with pytest.raises(AuditChainBroken, match="empty but its head"):
        write_keyed(tmp_path / "b.jsonl", 1, heads)
    write_keyed(tmp_path / "b.jsonl", 1, heads, anchor="other")  # its own anchor: its own chain
    assert verify_keyed(tmp_path / "b.jsonl", heads, "other").ok
    # verifying a log against the anchor of another one is a replacement
    result = verify_keyed(tmp_path / "b.jsonl", heads, ANCHOR)
    assert result.problem is not None and "belong to the chain anchored at 'other'" in result.problem.message


def test_a_keyed_chain_after_unkeyed_entries_authenticates_them(tmp_path: Path) -> None:
    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    legacy = write_log(log, 3)
    keyed = write_keyed(log, 2, heads)
    assert keyed[0]["prev"] == legacy[-1]["hash"] and keyed[0]["seq"] == 4
    result = verify_keyed(log, heads)
    assert result.ok and (result.unkeyed_entries, result.keyed_entries) == (3, 2)
    assert "first 3 entries are unkeyed (legacy)" in result.summary()
    entries = [json.loads(x) for x in lines(log)]
    entries[1]["tenant"] = "someone-else"
    for i in (1, 2):  # re-chain the unkeyed part, as anyone could
        entries[i]["prev"] = entries[i - 1]["hash"]
        entries[i]["hash"] = audit.entry_hash(entries[i])
    log.write_text("".join(dumps(e) for e in entries))
    problem = verify_keyed(log, heads).problem
    assert problem is not None and problem.line == 4 and "does not chain" in problem.message


def test_an_unkeyed_log_says_so(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    write_log(log, 2)
    result = verify_log(log, key=KEY, heads=audit.MemoryHeads(), anchor=ANCHOR)
    assert result.ok and result.keyed_entries == 0 and "unkeyed SHA-256, legacy" in result.summary()
    assert "keyed chain starts with the next entry" in result.notes[0]
    with pytest.raises(AuditError, match="needs the audit key"):
        heads = audit.MemoryHeads()
        write_keyed(tmp_path / "k.jsonl", 1, heads)
        verify_log(tmp_path / "k.jsonl")


class FailingHeads(audit.MemoryHeads):
    fail = False

    def write(self, anchor: str, head: audit.Head, cas: int) -> int:
        if self.fail:
            raise audit.KeyopsError("Vault is away")
        return super().write(anchor, head, cas)


def test_a_failed_head_update_is_an_error_and_the_next_entry_anchors(tmp_path: Path) -> None:
    log, heads = tmp_path / "k.jsonl", FailingHeads()
    write_keyed(log, 2, heads)
    heads.fail = True
    with pytest.raises(AuditError, match="seq 3 was written .* but advancing the head"):
        write_keyed(log, 1, heads)
    result = verify_keyed(log, heads)
    assert result.ok and result.entries == 3 and "entry seq 3 is not anchored yet" in result.notes[0]
    heads.fail = False
    write_keyed(log, 1, heads)
    assert heads.read(ANCHOR)[0].seq == 4 and verify_keyed(log, heads).notes == ()  # type: ignore[index]


def test_rotation_archives_the_log_and_the_chain_goes_on(tmp_path: Path) -> None:
    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    write_keyed(log, 3, heads)
    trail = AuditTrail(keyed_log(log, heads))
    result = trail.rotate(actor="token:x")
    archive = Path(result.archived)
    assert result.seq == 4 and result.intact and archive.exists()
    first = json.loads(lines(log)[0])
    assert first["operation"] == "audit.rotate" and first["archived_as"] == archive.name and first["seq"] == 4
    write_keyed(log, 2, heads)
    for path in (archive, log):
        checked = verify_keyed(path, heads)
        assert checked.ok, checked.problem
    assert "archived by a rotation at seq 3" in verify_keyed(archive, heads).notes[0]
    assert "continues" in verify_keyed(log, heads).notes[0]
    archive.write_text("".join(lines(archive)[:2]))  # cutting the archive is caught too
    assert "entry seq 3 was cut off" in str(verify_keyed(archive, heads).problem)
    log.write_text("".join(lines(log)[1:]))  # and so is dropping the rotation entry
    assert "entries seq 1-4 are missing" in str(verify_keyed(log, heads).problem)


def test_rotating_a_damaged_log_needs_force_and_keeps_the_damage_visible(tmp_path: Path) -> None:
    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    write_keyed(log, 4, heads)
    log.write_text("".join(lines(log)[:2]))
    trail = AuditTrail(keyed_log(log, heads))
    with pytest.raises(AuditChainBroken, match="not rotated.*cut off"):
        trail.rotate()
    result = trail.rotate(force=True)
    assert not result.intact and result.seq == 5
    assert "cut off" in str(verify_keyed(Path(result.archived), heads).problem)
    write_keyed(log, 1, heads)
    assert verify_keyed(log, heads).ok


def test_threads_with_their_own_log_objects_keep_one_keyed_chain(tmp_path: Path) -> None:
    import threading

    log, heads = tmp_path / "k.jsonl", audit.MemoryHeads()
    workers = [threading.Thread(target=write_keyed, args=(log, 15, heads)) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    result = verify_keyed(log, heads)
    assert result.ok and result.entries == 45 and heads.read(ANCHOR)[0].seq == 45  # type: ignore[index]


def test_anchor_names() -> None:
    assert audit.anchor_name(None, "/a") is None and audit.anchor_name("off", "/a") is None
    assert audit.anchor_name("prod-rotation", "/a") == "prod-rotation"
    auto = audit.anchor_name("auto", "/var/log/a.jsonl")
    assert auto == audit.anchor_name("auto", "/var/log/../log/a.jsonl") != audit.anchor_name("auto", "/b.jsonl")
    assert auto is not None and re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{16}", auto)
    with pytest.raises(ConfigError, match="KEYOPS_AUDIT_ANCHOR"):
        audit.anchor_name("../x", "/a")


def test_keys_do_not_leak() -> None:
    import pickle

    assert "k" * 8 not in repr(KEY)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(KEY)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        audit.HmacKey(b"short")


def test_sink_from_config_with_an_anchor(tmp_path: Path) -> None:
    from keyops.config import Config

    trail = audit.sink_from_config(Config(audit_log=str(tmp_path / "a.jsonl"), audit_anchor="auto"))
    assert trail is not None and trail.log is not None and trail.log.keyed
    assert isinstance(trail.log.key, audit.TransitHmacKey) and trail.log.key.key_name == "keyops_audit"
    assert isinstance(trail.log.heads, audit.KvHeads) and trail.log.heads.path("x") == "audit/head/x"
    with pytest.raises(ConfigError, match="set KEYOPS_AUDIT_LOG too"):
        audit.sink_from_config(Config(audit_anchor="auto"))
    with pytest.raises(InvalidInput, match="audit key name"):
        audit.sink_from_config(Config(audit_log=str(tmp_path / "a.jsonl"), audit_anchor="on",
                                      audit_key="keyops-acme"))
