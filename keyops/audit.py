"""The audit trail: one structured event per key operation, in a hash-chained log.

An event says who (``actor``: the token's accessor or AppRole role, never the
token), what (``operation``, ``tenant``, ``level``, ``versions``), the
``result`` (``ok``, ``error:<code>``) and when, with a ``request_id`` of its
own. It never holds key material, plaintext, tokens or PINs: only names,
numbers and short strings pass ``clean_fields``.

Sinks:

* the local JSON-lines log (``KEYOPS_AUDIT_LOG``), hash-chained: every entry
  carries ``seq`` (its position), ``prev`` (the hash of the entry before it,
  64 zeros for the first) and ``hash`` (SHA-256 of its own canonical JSON
  without ``hash``). Editing, deleting, inserting or reordering entries
  breaks the chain at the first entry concerned, which ``verify_log`` names.
  Appends are safe between processes: each takes an exclusive ``flock`` on
  the file, reads the last entry's hash, appends one line and syncs;
* optionally a KV path (``KEYOPS_AUDIT_KV_PATH``): one document per event,
  written create-only, so a role with ``audit.write`` adds events but cannot
  change or delete them;
* optionally syslog (``KEYOPS_AUDIT_SYSLOG``).

The local log is required once configured: an event that cannot be written
raises ``AuditError``. Copies to KV and syslog are best effort and logged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import fnmatch
import hashlib
import json
import logging
import logging.handlers
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyops.errors import AuditChainBroken, AuditError, InvalidInput, KeyopsError

if TYPE_CHECKING:  # pragma: no cover
    from keyops.config import Config
    from keyops.vault import VaultStore

__all__ = [
    "GENESIS",
    "AuditLog",
    "AuditTrail",
    "ChainProblem",
    "VerifyResult",
    "clean_fields",
    "entry_hash",
    "filter_events",
    "parse_time_filter",
    "read_events",
    "sink_from_config",
    "verify_log",
]

EVENT_SCHEMA = 1
GENESIS = "0" * 64
_log = logging.getLogger("keyops.audit")

#: Field names that could carry a secret; an event never has them, at any depth. (Key
#: material is bytes, which are dropped anyway; ``versions`` may name "kek" and "dek".)
FORBIDDEN_FIELDS = frozenset({"token", "client_token", "secret_id", "pin", "password", "plaintext", "value",
                              "key", "material", "wrapped", "ciphertext", "secret"})
_MAX_STRING = 200
_MAX_ITEMS = 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 of the entry's canonical JSON without its own ``hash`` (``prev`` and ``seq`` included)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def clean_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Only plain, short values; names that could carry secrets and any bytes are dropped."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name.lower() in FORBIDDEN_FIELDS:
            continue
        cleaned = _clean_value(value, depth=0)
        if cleaned is not _DROP:
            out[str(name)[:64]] = cleaned
    return out


_DROP = object()


def _clean_value(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= _MAX_STRING else value[:_MAX_STRING] + "..."
    if depth >= 3 or isinstance(value, (bytes, bytearray, memoryview)):
        return _DROP
    if isinstance(value, Mapping):
        items = [(str(k)[:64], _clean_value(v, depth + 1)) for k, v in list(value.items())[:_MAX_ITEMS]
                 if str(k).lower() not in FORBIDDEN_FIELDS]
        return {k: v for k, v in items if v is not _DROP}
    if isinstance(value, (list, tuple, set, frozenset)):
        seq = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
        return [v for v in (_clean_value(x, depth + 1) for x in seq[:_MAX_ITEMS]) if v is not _DROP]
    return _DROP


# --- the local hash-chained log ------------------------------------------------------------


class AuditLog:
    """An append-only JSON-lines file whose entries are hash-chained."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Add ``event`` as the next entry of the chain; returns the entry written."""
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise AuditError(f"the audit log {str(self.path)!r} cannot be opened ({exc.strerror}); "
                                 "fix KEYOPS_AUDIT_LOG or the folder's permissions") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                prev, seq = _chain_tail(fd)
                entry = {**event, "seq": seq + 1, "prev": prev}
                entry["hash"] = entry_hash(entry)
                data = (canonical_json(entry) + "\n").encode("ascii")
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(0, "short write")
                os.fsync(fd)
                return entry
            except OSError as exc:
                raise AuditError(f"writing the audit log {str(self.path)!r} failed ({exc.strerror}); "
                                 "the operation itself completed") from exc
            finally:
                os.close(fd)  # releases the lock


def _chain_tail(fd: int) -> tuple[str, int]:
    """``(hash, seq)`` of the last entry, from the end of the file; the genesis for an empty one.

    A damaged last line (not JSON, no hash) still chains: its raw bytes are
    hashed, so ``verify`` reports the damage at that line and the chain after
    it stays checkable.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return GENESIS, 0
    block = 4096
    end = size
    tail = b""
    while True:
        start = max(0, end - block)
        tail = os.pread(fd, end - start, start) + tail
        end = start
        stripped = tail.rstrip(b"\n")
        if b"\n" in stripped or start == 0:
            break
        block *= 2
    if not tail.endswith(b"\n"):
        os.write(fd, b"\n")  # a torn last write: keep it a line of its own
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last)
        return str(entry["hash"]), int(entry["seq"])
    except (ValueError, KeyError, TypeError):
        return hashlib.sha256(last).hexdigest(), 0


@dataclasses.dataclass(frozen=True)
class ChainProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    path: str
    entries: int
    problem: ChainProblem | None
    last_hash: str

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_log(path: str | os.PathLike[str], *, raise_on_error: bool = False) -> VerifyResult:
    """Check the whole chain; the first broken entry is named with its line number and what is wrong."""
    p = Path(path)
    problem: ChainProblem | None = None
    prev, seq, count = GENESIS, 0, 0
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise AuditError(f"the audit log {str(p)!r} cannot be read ({exc.strerror})") from exc
    with fh:
        for number, raw in enumerate(fh, start=1):
            problem = _check_line(number, raw, prev, seq)
            if problem is not None:
                break
            entry = json.loads(raw)
            prev, seq, count = entry["hash"], entry["seq"], count + 1
    result = VerifyResult(str(p), count, problem, prev)
    if raise_on_error and problem is not None:
        raise AuditChainBroken(f"audit log {str(p)!r} is not intact: {problem}")
    return result


def _check_line(number: int, raw: bytes, prev: str, seq: int) -> ChainProblem | None:
    if not raw.endswith(b"\n"):
        return ChainProblem(number, "the last line is incomplete (a torn write, or the file was truncated)")
    try:
        entry = json.loads(raw)
    except ValueError:
        return ChainProblem(number, "not valid JSON: the entry was edited or damaged")
    if not isinstance(entry, dict) or not {"hash", "prev", "seq"} <= set(entry):
        return ChainProblem(number, "not a keyops audit entry (hash, prev or seq missing)")
    if not isinstance(entry["seq"], int) or isinstance(entry["seq"], bool):
        return ChainProblem(number, "its seq is not a number: the entry was edited")
    if entry_hash(entry) != entry["hash"]:
        return ChainProblem(number, f"entry seq {entry['seq']} does not match its hash: it was edited")
    if entry["prev"] != prev or entry["seq"] != seq + 1:
        if entry["seq"] > seq + 1:
            missing = entry["seq"] - seq - 1
            what = (f"entry seq {seq + 1} is missing" if missing == 1
                    else f"entries seq {seq + 1}-{entry['seq'] - 1} are missing")
            return ChainProblem(number, f"{what} before entry seq {entry['seq']}: deleted, or moved later")
        if entry["seq"] <= seq:
            return ChainProblem(number, f"entry seq {entry['seq']} comes after seq {seq}: entries were "
                                        "reordered, duplicated or inserted")
        return ChainProblem(number, f"entry seq {entry['seq']} does not chain to the entry before it (prev "
                                    "differs): an entry was replaced or the log was spliced")
    return None


# --- reading and filtering -------------------------------------------------------------------


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every parseable entry, in file order (use ``verify_log`` to know they are authentic)."""
    try:
        fh = Path(path).open("rb")
    except OSError as exc:
        raise AuditError(f"the audit log {str(path)!r} cannot be read ({exc.strerror})") from exc
    with fh:
        for raw in fh:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time_filter(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``2024-05-01``, ``2024-05-01T12:00:00Z`` or a duration back from now such as ``90m``, ``2h``, ``7d``."""
    now = now or dt.datetime.now(dt.timezone.utc)
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"time {text[:40]!r} must be ISO 8601 (2024-05-01T12:00:00Z) or a duration "
                           "back from now (30m, 2h, 7d)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _event_time(entry: Mapping[str, Any]) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(entry.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def filter_events(events: Iterable[Mapping[str, Any]], *, tenant: str | None = None,
                  operation: str | None = None, since: dt.datetime | None = None,
                  until: dt.datetime | None = None, result: str | None = None,
                  actor: str | None = None) -> list[dict[str, Any]]:
    """Events matching every filter given; ``operation``, ``result`` and ``actor`` may use ``*`` globs."""
    out: list[dict[str, Any]] = []
    for entry in events:
        if tenant is not None and entry.get("tenant") != tenant:
            continue
        if operation is not None and not _glob(entry.get("operation"), operation):
            continue
        if result is not None and not _glob(entry.get("result"), result):
            continue
        if actor is not None and not _glob(entry.get("actor"), actor):
            continue
        if since is not None or until is not None:
            when = _event_time(entry)
            if when is None or (since is not None and when < since) or (until is not None and when > until):
                continue
        out.append(dict(entry))
    return out


def _glob(value: Any, pattern: str) -> bool:
    text = "" if value is None else str(value)
    return fnmatch.fnmatchcase(text, pattern) or ("*" not in pattern and text.startswith(pattern + "."))


# --- copies to KV and syslog -----------------------------------------------------------------


class KvSink:
    """One KV document per event at ``<path>/<date>/<time>-<request id>``, written create-only."""

    def __init__(self, path: str) -> None:
        self.path = path.strip("/")
        self.store: VaultStore | None = None
        self.failures = 0

    def send(self, entry: Mapping[str, Any]) -> None:
        if self.store is None:
            return
        stamp = str(entry.get("time", now_text()))
        name = f"{self.path}/{stamp[:10]}/{stamp[11:].replace(':', '').replace('.', '')}-{entry['request_id']}"
        try:
            self.store.write(name, dict(entry), cas=0)
        except KeyopsError as exc:
            self.failures += 1
            _log.warning("audit event %s was not copied to KV %s: %s", entry.get("request_id"), self.path, exc)


class _RaisingSysLogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        raise  # noqa: PLE0704 - re-raise the send error to SyslogSink, which counts and logs it


class SyslogSink:
    """Each event as one ``keyops-audit: {json}`` message (facility authpriv)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.failures = 0
        self._handler: logging.handlers.SysLogHandler | None = None

    def _open(self) -> logging.handlers.SysLogHandler:
        if self._handler is None:
            address: Any
            socktype = None
            if self.target.startswith(("udp://", "tcp://")):
                host, _, port = self.target[6:].rpartition(":")
                if not host or not port.isdigit():
                    raise InvalidInput(f"KEYOPS_AUDIT_SYSLOG {self.target!r} must be udp://host:port, "
                                       "tcp://host:port or a socket path")
                address = (host, int(port))
                socktype = socket.SOCK_STREAM if self.target.startswith("tcp://") else socket.SOCK_DGRAM
            else:
                address = self.target if self.target not in ("1", "true", "yes", "on") else "/dev/log"
            self._handler = _RaisingSysLogHandler(
                address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV, socktype=socktype)
        return self._handler

    def send(self, entry: Mapping[str, Any]) -> None:
        try:
            handler = self._open()
            record = logging.LogRecord("keyops.audit", logging.INFO, __file__, 0,
                                       "keyops-audit: %s", (canonical_json(entry),), None)
            handler.emit(record)
        except (OSError, InvalidInput) as exc:
            self.failures += 1
            _log.warning("audit event %s was not sent to syslog %s: %s", entry.get("request_id"), self.target,
                         exc)

    def close(self) -> None:
        if self._handler is not None:
            self._handler.close()
            self._handler = None


# --- the sink Keyops calls -----------------------------------------------------------------


class AuditTrail:
    """``Keyops(audit=AuditTrail(...))``: called once per key operation with its fields."""

    def __init__(self, log: AuditLog | None = None, kv: KvSink | None = None, syslog: SyslogSink | None = None,
                 clock: Callable[[], str] = now_text) -> None:
        self.log = log
        self.kv = kv
        self.syslog = syslog
        self.clock = clock

    def attach(self, store: VaultStore) -> None:
        """Keyops hands over its store, so that KV copies use the caller's own token."""
        if self.kv is not None and self.kv.store is None:
            self.kv.store = store

    def event(self, operation: str, **fields: Any) -> dict[str, Any]:
        fields = clean_fields(fields)
        return {"schema": EVENT_SCHEMA, "time": self.clock(), "request_id": fields.pop("request_id", None)
                or uuid.uuid4().hex, "operation": operation, "actor": fields.pop("actor", None),
                "tenant": fields.pop("tenant", None), "level": fields.pop("level", None),
                "versions": fields.pop("versions", None), "result": fields.pop("result", None), **fields}

    def __call__(self, operation: str, **fields: Any) -> dict[str, Any]:
        entry = self.event(operation, **fields)
        if self.log is not None:
            entry = self.log.append(entry)
        if self.kv is not None:
            self.kv.send(entry)
        if self.syslog is not None:
            self.syslog.send(entry)
        return entry


def sink_from_config(config: Config) -> AuditTrail | None:
    """The audit trail the configuration asks for (KEYOPS_AUDIT_LOG, _KV_PATH, _SYSLOG), or None."""
    log_path = getattr(config, "audit_log", None)
    kv_path = getattr(config, "audit_kv_path", None)
    syslog = getattr(config, "audit_syslog", None)
    if not (log_path or kv_path or syslog):
        return None
    if kv_path:
        from keyops.access import Mounts

        Mounts(audit=kv_path.strip("/"))  # validates the path (no overlap with keyops' own paths)
    return AuditTrail(AuditLog(log_path) if log_path else None, KvSink(kv_path) if kv_path else None,
                      SyslogSink(syslog) if syslog else None)
