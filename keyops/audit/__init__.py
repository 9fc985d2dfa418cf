"""The audit trail: one structured event per key operation, in a keyed, anchored chain.

An event says who (``actor``: the token's accessor or AppRole role, never the
token), what (``operation``, ``tenant``, ``level``, ``versions``), the
``result`` (``ok``, ``error:<code>``) and when, with a ``request_id`` of its
own. It never holds key material, plaintext, tokens or PINs: only names,
numbers and short strings pass ``clean_fields``.

The local JSON-lines log (``KEYOPS_AUDIT_LOG``) is a chain: every entry
carries ``seq`` (its position) and ``prev`` (the link to the entry before it).

* **Keyed and anchored** (``KEYOPS_AUDIT_ANCHOR`` set; ``keyops dev up`` sets
  it): each entry also names its ``chain`` (a random id) and ``anchor``, and
  carries ``mac``, an HMAC-SHA256 of its canonical JSON (``prev`` and ``seq``
  included) computed by Transit with a non-exportable key
  (``KEYOPS_AUDIT_KEY``, default ``keyops_audit``) that only the audit
  writer's roles (rotation, security-admin) may use; the auditor may only
  verify. After each append the writer advances the chain's **head**, a KV
  document ``<kv>/<audit path>/head/<anchor>`` holding the last ``seq`` and
  ``mac``, with check-and-set. So an edit, a deletion, a re-chained file, a
  whole new chain or a forged entry fails its MAC, and a cut-off tail, an
  emptied or a replaced file no longer matches the head.
* **Unkeyed (legacy)**, without an anchor: ``hash`` is the SHA-256 of the
  entry's canonical JSON. It shows accidental damage; anyone who can write
  the file can re-chain it. Such entries stay readable and verifiable, and a
  keyed chain may start after them: its first entry links to the last
  unkeyed hash, which authenticates what came before from then on.

Appends are serialised between threads and processes by an exclusive
``flock`` on ``<log>.lock``: a writer reads the last entry, checks it against
the head, appends one line, syncs it and advances the head.
``AuditLog.rotate`` archives the file and continues the chain in a new one,
recording the rotation in the head.

Copies: optionally a KV path (``KEYOPS_AUDIT_KV_PATH``), one document per
event written create-only; optionally syslog (``KEYOPS_AUDIT_SYSLOG``).

The local log is required once configured: an event that cannot be written
(or whose head cannot be advanced) raises ``AuditError``. Copies to KV and
syslog are best effort and logged. A process whose token may not write the
keyed chain (the ``app`` role) writes neither the keyed log nor KV copies: the
server's audit device records its requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import fnmatch
import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from keyops.config import DEFAULT_AUDIT_KEY
from keyops.errors import (
    AuditChainBroken,
    AuditError,
    ConfigError,
    Conflict,
    InvalidInput,
    KeyNotFound,
    KeyopsError,
    PermissionDenied,
)

if TYPE_CHECKING:  # pragma: no cover
    from keyops.backends.vault import VaultStore
    from keyops.config import Config

__all__ = [
    "ANCHOR_AUTO",
    "GENESIS",
    "AuditLog",
    "AuditTrail",
    "ChainKey",
    "ChainProblem",
    "HmacKey",
    "Head",
    "KvHeads",
    "MemoryHeads",
    "RotateResult",
    "TransitHmacKey",
    "VerifyResult",
    "anchor_name",
    "clean_fields",
    "ensure_audit_key",
    "entry_hash",
    "filter_events",
    "mac_input",
    "parse_time_filter",
    "read_events",
    "sink_from_config",
    "verify_log",
]

EVENT_SCHEMA = 1
HEAD_SCHEMA = 1
GENESIS = "0" * 64
#: Domain separation: an audit MAC is never valid for any other use of the key.
MAC_DOMAIN = b"keyops-audit-chain-v2\n"
#: ``KEYOPS_AUDIT_ANCHOR=auto``: the anchor is named after the host and the log's absolute path.
ANCHOR_AUTO = "auto"
ROTATE_OPERATION = "audit.rotate"
#: Rotations remembered in the head (each names the archived file and where it ended).
MAX_ROTATIONS = 100
#: Entries per Transit verify request.
VERIFY_BATCH = 256
_ANCHOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_TRANSIT_MAC_RE = re.compile(r"vault:v[0-9]+:[A-Za-z0-9+/]+={0,2}")
_OFF = frozenset({"", "0", "off", "false", "no", "none"})
_ON = frozenset({ANCHOR_AUTO, "1", "on", "true", "yes"})
_log = logging.getLogger("keyops.audit")

#: Field names that could carry a secret; an event never has them, at any depth. (Key
#: material is bytes, which are dropped anyway; ``versions`` may name "kek" and "dek".)
FORBIDDEN_FIELDS = frozenset({"token", "client_token", "secret_id", "pin", "password", "plaintext", "value",
                              "key", "material", "wrapped", "ciphertext", "secret"})
_MAX_STRING = 200
_MAX_ITEMS = 64

_T = TypeVar("_T")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 of the entry's canonical JSON without its own ``hash`` (``prev`` and ``seq`` included)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body).encode("ascii")).hexdigest()


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


# --- keys and heads of the keyed chain -------------------------------------------------------


def mac_input(entry: Mapping[str, Any]) -> bytes:
    """What an entry's ``mac`` covers: the domain, then its canonical JSON without ``mac``."""
    body = {k: v for k, v in entry.items() if k != "mac"}
    return MAC_DOMAIN + canonical_json(body).encode("ascii")


def is_keyed(entry: Mapping[str, Any]) -> bool:
    return "mac" in entry


def anchor_name(setting: str | None, log_path: str | os.PathLike[str]) -> str | None:
    """The anchor ``KEYOPS_AUDIT_ANCHOR`` names for ``log_path``: None (off), derived (``auto``) or its own."""
    if setting is None or setting.strip().lower() in _OFF:
        return None
    text = setting.strip()
    if text.lower() in _ON:
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:40] or "host"
        where = hashlib.sha256(os.path.realpath(os.fspath(log_path)).encode()).hexdigest()[:16]
        return f"{host}-{where}"
    if not _ANCHOR_RE.fullmatch(text):
        raise ConfigError(f"KEYOPS_AUDIT_ANCHOR {text[:40]!r} must be 'auto', 'off' or a name of 1-100 ASCII "
                          "letters, digits, '_', '.' or '-'")
    return text


class ChainKey(Protocol):
    """What keys the chain: ``sign`` makes a MAC, ``verify_many`` checks many (True per valid one)."""

    @property
    def name(self) -> str: ...  # pragma: no cover - protocol

    def sign(self, data: bytes) -> str: ...  # pragma: no cover - protocol

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]: ...  # pragma: no cover - protocol


class HmacKey:
    """HMAC-SHA256 with a key held in memory: for the chain logic's tests and for tools that hold a key.

    keyops itself keys its chain with ``TransitHmacKey``, whose key never leaves Vault.
    """

    def __init__(self, key: bytes, name: str = "local") -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
            raise ValueError("an audit HMAC key must be at least 16 bytes")
        self._key = bytes(key)
        self._name = f"hmac:{name}"

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"<HmacKey {self._name}>"

    def __reduce__(self) -> Any:
        raise TypeError("an audit key cannot be pickled")

    def sign(self, data: bytes) -> str:
        return "hmac-sha256:" + hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        return [isinstance(mac, str) and hmac.compare_digest(self.sign(data).encode(), mac.encode("utf-8", "replace"))
                for data, mac in items]


class _VaultPart:
    """A part of the trail that talks to Vault: with the caller's store (``attach``), or one made on demand."""

    def __init__(self, store: VaultStore | None = None, connect: Callable[[], VaultStore] | None = None) -> None:
        self.store = store
        self._connect = connect

    def _vault(self) -> VaultStore:
        if self.store is None:
            if self._connect is None:
                raise AuditError("the keyed audit chain needs a Vault connection, and this process has none")
            try:
                self.store = self._connect()
            except KeyopsError as exc:
                raise AuditError(f"the keyed audit chain needs Vault: {exc}") from exc
        return self.store


class TransitHmacKey(_VaultPart):
    """HMAC-SHA256 by a Transit key (type ``hmac``, not exportable): ``<transit>/hmac/<key>`` to sign,
    ``<transit>/verify/<key>`` to check. The policies give ``hmac`` to the writer roles only."""

    def __init__(self, key_name: str = DEFAULT_AUDIT_KEY, store: VaultStore | None = None,
                 connect: Callable[[], VaultStore] | None = None) -> None:
        super().__init__(store, connect)
        from keyops.ops.transit_keys import validate_key_name

        self.key_name = validate_key_name(key_name)

    @property
    def name(self) -> str:
        return f"transit:{self.key_name}"

    def __repr__(self) -> str:
        return f"<TransitHmacKey {self.key_name}>"

    def _missing(self, store: VaultStore) -> AuditError:
        return AuditError(f"the Transit key {store.transit_mount}/{self.key_name} that keys the audit chain does not "
                          "exist on this Vault (or namespace): create it with 'keyops audit init' (security-admin; "
                          "'keyops dev up' does it for the dev stack), or name yours with KEYOPS_AUDIT_KEY")

    def sign(self, data: bytes) -> str:
        store = self._vault()
        try:
            return store.transit_generate_hmac(self.key_name, data, "sha2-256")
        except KeyNotFound as exc:
            raise self._missing(store) from exc

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        out = [False] * len(items)
        asked = [i for i, (_, mac) in enumerate(items) if isinstance(mac, str) and _TRANSIT_MAC_RE.fullmatch(mac)]
        if not asked:
            return out
        store = self._vault()
        for start in range(0, len(asked), VERIFY_BATCH):
            chunk = asked[start:start + VERIFY_BATCH]
            try:
                results = store.transit_verify_hmacs(self.key_name, [items[i] for i in chunk], "sha2-256")
            except KeyNotFound as exc:
                raise self._missing(store) from exc
            if len(results) != len(chunk):
                raise AuditError(f"Vault answered {len(results)} results for {len(chunk)} audit MACs")
            for i, result in zip(chunk, results, strict=True):
                out[i] = isinstance(result, Mapping) and result.get("valid") is True
        return out


@dataclasses.dataclass(frozen=True)
class Rotation:
    """A file archived by ``AuditLog.rotate``: where it ended (``seq``, ``mac``) and its name."""

    seq: int
    mac: str
    file: str
    time: str


@dataclasses.dataclass(frozen=True)
class Head:
    """The anchor of a chain: its id, last ``seq`` and ``mac``, the key's name, past rotations."""

    anchor: str
    chain: str
    seq: int
    mac: str
    key: str
    time: str
    rotations: tuple[Rotation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"schema": HEAD_SCHEMA, "anchor": self.anchor, "chain": self.chain, "seq": self.seq,
                "mac": self.mac, "key": self.key, "time": self.time,
                "rotations": [dataclasses.asdict(r) for r in self.rotations]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], anchor: str) -> Head:
        try:
            if doc.get("schema") != HEAD_SCHEMA:
                raise ValueError(f"schema {str(doc.get('schema'))[:20]!r} is not {HEAD_SCHEMA}")
            if doc["anchor"] != anchor:
                raise ValueError(f"it names anchor {str(doc['anchor'])[:100]!r}")
            seq = doc["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
                raise ValueError("its seq is not a positive number")
            rotations = tuple(Rotation(int(r["seq"]), str(r["mac"]), str(r["file"]), str(r["time"]))
                              for r in doc.get("rotations") or [])
            return cls(anchor, str(doc["chain"]), seq, str(doc["mac"]), str(doc["key"]), str(doc["time"]),
                       rotations)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AuditChainBroken(f"the head of audit anchor {anchor!r} is not a keyops audit head "
                                   f"({exc if isinstance(exc, ValueError) else type(exc).__name__}): "
                                   "it was overwritten") from None

    def rotation_at(self, seq: int) -> Rotation | None:
        return next((r for r in self.rotations if r.seq == seq), None)


class HeadStore(Protocol):
    def read(self, anchor: str) -> tuple[Head, int] | None: ...  # pragma: no cover - protocol

    def write(self, anchor: str, head: Head, cas: int) -> int: ...  # pragma: no cover - protocol


class KvHeads(_VaultPart):
    """Heads as KV documents ``<audit path>/head/<anchor>``, written with check-and-set."""

    def __init__(self, audit_path: str = "audit", store: VaultStore | None = None,
                 connect: Callable[[], VaultStore] | None = None) -> None:
        super().__init__(store, connect)
        self.audit_path = audit_path.strip("/")

    def path(self, anchor: str) -> str:
        return f"{self.audit_path}/head/{anchor}"

    def read(self, anchor: str) -> tuple[Head, int] | None:
        found = self._vault().read(self.path(anchor))
        return None if found is None else (Head.from_dict(found[0], anchor), found[1])

    def write(self, anchor: str, head: Head, cas: int) -> int:
        return self._vault().write(self.path(anchor), head.to_dict(), cas=cas)


class MemoryHeads:
    """Heads in memory, with KV's check-and-set rules: for the chain logic's tests."""

    def __init__(self) -> None:
        self.docs: dict[str, tuple[dict[str, Any], int]] = {}

    def read(self, anchor: str) -> tuple[Head, int] | None:
        found = self.docs.get(anchor)
        return None if found is None else (Head.from_dict(found[0], anchor), found[1])

    def write(self, anchor: str, head: Head, cas: int) -> int:
        current = self.docs.get(anchor, ({}, 0))[1]
        if cas != current:
            raise Conflict(f"writing the head {anchor!r}: another writer changed it first (check-and-set)")
        self.docs[anchor] = (head.to_dict(), current + 1)
        return current + 1


class _WriteDenied(AuditError):
    """The token may not write the keyed chain (Vault answered 403)."""


def _seq_range(first: int, last: int) -> str:
    return f"entry seq {first} was" if first == last else f"entries seq {first}-{last} were"


def _tail_problem(last: Mapping[str, Any] | None, head: Head) -> str | None:
    """What is wrong with a log whose last entry is ``last`` against its ``head``; None when it matches.

    A log ahead of its head (a head update failed after the append) is not a problem here: those
    entries carry MACs, which ``verify_log`` checks.
    """
    if last is None:
        return f"the log is empty but its head is at entry seq {head.seq}: the log was emptied or replaced"
    if not is_keyed(last):
        return (f"its last entry (seq {last.get('seq')}) is unkeyed but its head is at keyed entry seq "
                f"{head.seq}: the log was replaced")
    if last.get("chain") != head.chain:
        return "its entries belong to another chain than its head names: the log was replaced"
    seq = int(last["seq"])
    if seq < head.seq:
        return (f"it ends at entry seq {seq} but its head is at seq {head.seq}: {_seq_range(seq + 1, head.seq)} "
                "cut off (truncated, or replaced by an older copy)")
    if seq == head.seq and last.get("mac") != head.mac:
        return f"its entry seq {seq} is not the one its head names: the log was replaced"
    return None


# --- the local log -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RotateResult:
    archived: str
    #: seq of the ``audit.rotate`` entry that starts the new file (None: unkeyed log, nothing anchored).
    seq: int | None
    #: False when the archived file did not match its head (``force``): its damage stays visible.
    intact: bool


class AuditLog:
    """An append-only JSON-lines file whose entries are chained: keyed and anchored, or unkeyed (legacy)."""

    def __init__(self, path: str | os.PathLike[str], key: ChainKey | None = None, heads: HeadStore | None = None,
                 anchor: str | None = None) -> None:
        self.path = Path(path)
        if (key is None) != (heads is None):
            raise ValueError("a keyed audit log needs both a key and a head store")
        self.key = key
        self.heads = heads
        self.anchor = anchor_name(anchor or ANCHOR_AUTO, self.path) if key is not None else None
        self._lock = threading.Lock()
        self._head: tuple[Head, int] | None = None  # the head this object wrote last, with its KV version
        self._key_checked = False

    @property
    def keyed(self) -> bool:
        return self.key is not None

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _opening_error(self, exc: OSError) -> AuditError:
        return AuditError(f"the audit log {str(self.path)!r} cannot be opened ({exc.strerror}); "
                          "fix KEYOPS_AUDIT_LOG or the folder's permissions")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive between threads (a lock) and processes (``flock`` on the lock file beside the log)."""
        with self._lock:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise self._opening_error(exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

    def check_writable(self) -> None:
        """Raise ``AuditError`` now when the file cannot be opened for appending (its folder made if missing),
        or, once per process for a keyed log, when its key cannot sign (a Transit key or mount missing, as
        in a fresh namespace): an operation whose event could not be written must not start."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise self._opening_error(exc) from exc
        os.close(self._open())
        if self.key is not None and not self._key_checked:
            key = self.key
            self._vault_step("checking that the audit key signs, before the operation (nothing was done)",
                             lambda: key.sign(b"keyops-audit-probe"))
            self._key_checked = True

    def _open(self, flags: int = 0) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | flags, 0o600)
        except OSError as exc:
            raise self._opening_error(exc) from exc

    def _write_line(self, fd: int, entry: Mapping[str, Any]) -> None:
        data = (canonical_json(entry) + "\n").encode("ascii")
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(0, "short write")
            os.fsync(fd)
        except OSError as exc:
            raise AuditError(f"writing the audit log {str(self.path)!r} failed ({exc.strerror}); "
                             "the operation itself completed") from exc

    def append(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Add ``event`` as the next entry of the chain; returns the entry written."""
        with self._locked():
            fd = self._open()
            try:
                if self.key is None:
                    try:
                        prev, seq = _chain_tail(fd)
                    except OSError as exc:
                        raise AuditError(f"reading the audit log {str(self.path)!r} failed ({exc.strerror})") from exc
                    entry = {**event, "seq": seq + 1, "prev": prev}
                    entry["hash"] = entry_hash(entry)
                    self._write_line(fd, entry)
                    return entry
                return self._append_keyed(fd, event)
            finally:
                os.close(fd)

    def _append_keyed(self, fd: int, event: Mapping[str, Any]) -> dict[str, Any]:
        last = self._last_entry(fd)
        cached = self._head
        head: Head | None
        rotations: tuple[Rotation, ...]
        base: tuple[int, str] | None
        if (cached is not None and last is not None and is_keyed(last) and last.get("seq") == cached[0].seq
                and last.get("mac") == cached[0].mac):
            head, version = cached
        else:
            found = self._read_head()
            head, version = found if found is not None else (None, 0)
        if head is None:
            if last is not None and is_keyed(last):
                raise self._no_head()
            prev = GENESIS if last is None else str(last["hash"])  # a keyed chain may follow unkeyed entries
            seq = 0 if last is None else int(last["seq"])
            chain, rotations, base = uuid.uuid4().hex, (), None
        else:
            problem = _tail_problem(last, head)
            if problem is not None:
                raise AuditChainBroken(f"the audit log {str(self.path)!r} does not match its head (anchor "
                                       f"{self.anchor!r}): {problem}; nothing was appended (the operation itself "
                                       "completed). 'keyops audit verify' shows the damage; 'keyops audit rotate "
                                       "--force' archives the file and continues the chain in a new one")
            assert last is not None
            prev, seq, chain, rotations = str(last["mac"]), int(last["seq"]), head.chain, head.rotations
            base = (head.seq, head.mac)
        entry = {**event, "seq": seq + 1, "prev": prev, "chain": chain, "anchor": self.anchor}
        entry["mac"] = self._sign(entry)
        self._write_line(fd, entry)
        self._advance(Head(str(self.anchor), chain, seq + 1, entry["mac"], self.key.name if self.key else "",
                           now_text(), rotations), version, base)
        return entry

    def _last_entry(self, fd: int) -> dict[str, Any] | None:
        try:
            last, complete = _last_line(fd)
        except OSError as exc:
            raise AuditError(f"reading the audit log {str(self.path)!r} failed ({exc.strerror})") from exc
        if last is None:
            return None
        damaged = AuditChainBroken(f"the last line of the audit log {str(self.path)!r} is damaged (a torn write, "
                                   "or an edit); nothing was appended. 'keyops audit verify' names the line; "
                                   "'keyops audit rotate --force' archives the file and continues in a new one")
        if not complete:
            raise damaged
        try:
            entry = json.loads(last)
        except ValueError:
            raise damaged from None
        if (not isinstance(entry, dict) or not isinstance(entry.get("seq"), int) or isinstance(entry["seq"], bool)
                or not isinstance(entry.get("mac" if "mac" in entry else "hash"), str)):
            raise damaged
        return entry

    def _no_head(self) -> AuditChainBroken:
        return AuditChainBroken(f"the audit log {str(self.path)!r} holds keyed entries but the head of its anchor "
                                f"{self.anchor!r} does not exist: the head was deleted, or this log is shared with "
                                "another Vault, namespace or KV mount (each needs its own KEYOPS_AUDIT_LOG); nothing "
                                "was appended")

    def _vault_step(self, what: str, call: Callable[[], _T]) -> _T:
        try:
            return call()
        except AuditError:
            raise
        except PermissionDenied as exc:
            raise _WriteDenied(f"{what}: this token may not write the keyed audit chain (it needs audit.write: "
                               f"the rotation or security-admin role): {exc}") from exc
        except KeyopsError as exc:
            raise AuditError(f"{what} failed: {exc}") from exc

    def _read_head(self) -> tuple[Head, int] | None:
        assert self.heads is not None and self.anchor is not None
        heads, anchor = self.heads, self.anchor
        return self._vault_step(f"reading the head of audit anchor {anchor!r} (nothing was appended)",
                                lambda: heads.read(anchor))

    def _sign(self, entry: Mapping[str, Any]) -> str:
        assert self.key is not None
        key, data = self.key, mac_input(entry)
        return str(self._vault_step("computing the audit entry's HMAC (nothing was appended; the operation "
                                    "itself completed)", lambda: key.sign(data)))

    def _advance(self, head: Head, cas: int, base: tuple[int, str] | None) -> None:
        """Write the new head with check-and-set on ``cas``; ``base`` is the (seq, mac) it follows."""
        assert self.heads is not None
        heads = self.heads
        what = (f"audit entry seq {head.seq} was written to {str(self.path)!r}, but advancing the head of anchor "
                f"{head.anchor!r}")
        try:
            version = self._vault_step(what, lambda: heads.write(head.anchor, head, cas))
        except AuditError as exc:
            if not isinstance(exc.__cause__, Conflict):
                raise
            found = self._read_head()
            if found is None or base is None or (found[0].seq, found[0].mac) != base:
                raise AuditChainBroken(f"{what} lost a race: another writer advanced it meanwhile, so two logs "
                                       "share one anchor; give each log its own KEYOPS_AUDIT_ANCHOR") from exc
            version = self._vault_step(what, lambda: heads.write(head.anchor, head, found[1]))
        self._head = (head, int(version))

    def rotate(self, event: Mapping[str, Any], *, force: bool = False) -> RotateResult:
        """Archive the file as ``<stem>.<time><suffix>`` and continue the chain in a new one.

        The new file starts with ``event`` (an ``audit.rotate`` entry linked to the archived file's
        end) and the head records where the archived file ended, so it still verifies. Refused when
        the file does not match its head, unless ``force``: then the archive keeps its damage and the
        chain continues from the head.
        """
        with self._locked():
            if not self.path.exists():
                raise AuditError(f"the audit log {str(self.path)!r} does not exist: nothing to rotate")
            archive = self._archive_path()
            if self.key is None:
                self._rename(archive)
                return RotateResult(str(archive), None, True)
            fd = self._open()
            try:
                try:
                    last: dict[str, Any] | None = self._last_entry(fd)
                    damaged = None
                except AuditChainBroken as exc:
                    if not force:
                        raise
                    last, damaged = None, str(exc)
            finally:
                os.close(fd)
            found = self._read_head()
            if found is None:
                if last is not None and is_keyed(last):
                    raise self._no_head()
                self._rename(archive)  # nothing anchored yet: the next entry starts a keyed chain
                return RotateResult(str(archive), None, True)
            head, version = found
            problem = "its last line is damaged" if damaged else _tail_problem(last, head)
            if problem is not None and not force:
                raise AuditChainBroken(f"the audit log {str(self.path)!r} was not rotated: {problem}. Rotate with "
                                       "--force to archive it as it is (its damage stays visible) and continue the "
                                       "chain from its head")
            if problem is None and last is not None and int(last["seq"]) > head.seq:
                end_seq, end_mac = int(last["seq"]), str(last["mac"])  # anchors the entries after the head
            else:
                end_seq, end_mac = head.seq, head.mac
            entry = {**event, "operation": ROTATE_OPERATION, "archived_as": archive.name,
                     "archived_intact": problem is None, "seq": end_seq + 1, "prev": end_mac, "chain": head.chain,
                     "anchor": self.anchor}
            if problem is not None:
                entry["archived_problem"] = problem[:_MAX_STRING]
            entry["mac"] = self._sign(entry)
            self._rename(archive)
            fd = self._open(os.O_EXCL)
            try:
                self._write_line(fd, entry)
            finally:
                os.close(fd)
            rotations = (*head.rotations, Rotation(end_seq, end_mac, archive.name, now_text()))[-MAX_ROTATIONS:]
            self._advance(dataclasses.replace(head, seq=end_seq + 1, mac=entry["mac"], time=now_text(),
                                              rotations=rotations), version, (head.seq, head.mac))
            return RotateResult(str(archive), end_seq + 1, problem is None)

    def _archive_path(self) -> Path:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        suffix = self.path.suffix or ".jsonl"
        stem = self.path.name[:-len(self.path.suffix)] if self.path.suffix else self.path.name
        for n in range(1, 1000):
            candidate = self.path.with_name(f"{stem}.{stamp}{'' if n == 1 else f'-{n}'}{suffix}")
            if not candidate.exists():
                return candidate
        raise AuditError(f"no free name to archive the audit log {str(self.path)!r}")

    def _rename(self, archive: Path) -> None:
        try:
            os.rename(self.path, archive)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise AuditError(f"archiving the audit log {str(self.path)!r} failed ({exc.strerror})") from exc


def _last_line(fd: int) -> tuple[bytes | None, bool]:
    """The last non-empty line (without its newline) and whether the file ends with a newline."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None, True
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
    stripped = tail.rstrip(b"\n")
    if not stripped:
        return None, True
    return stripped.rsplit(b"\n", 1)[-1], tail.endswith(b"\n")


def _chain_tail(fd: int) -> tuple[str, int]:
    """``(hash, seq)`` of the last entry of an unkeyed log; the genesis for an empty one.

    A damaged last line (not JSON, no hash) still chains: its raw bytes are
    hashed, so ``verify`` reports the damage at that line and the chain after
    it stays checkable.
    """
    last, complete = _last_line(fd)
    if last is None:
        return GENESIS, 0
    if not complete:
        os.write(fd, b"\n")  # a torn last write: keep it a line of its own
    try:
        entry = json.loads(last)
        return str(entry["hash"]), int(entry["seq"])
    except (ValueError, KeyError, TypeError):
        return hashlib.sha256(last).hexdigest(), 0


# --- verification --------------------------------------------------------------------------------


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
    #: The last entry's link value: its ``mac`` (keyed) or ``hash`` (unkeyed).
    last_hash: str
    keyed_entries: int = 0
    #: The anchor whose head was compared (None: none was).
    anchor: str | None = None
    head_seq: int | None = None
    key: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def unkeyed_entries(self) -> int:
        return self.entries - self.keyed_entries

    def summary(self) -> str:
        """One line for people: how many entries, what protects them, what the head says."""
        if self.keyed_entries == 0:
            what = ("hash chain intact (unkeyed SHA-256, legacy: it shows damage, not tampering; anyone who can "
                    "write the file can re-chain it)") if self.entries else "empty"
        else:
            what = f"keyed chain intact (HMAC-SHA256 by {self.key or 'the audit key'})"
            if self.unkeyed_entries:
                what += (f"; its first {self.unkeyed_entries} entries are unkeyed (legacy), authenticated by the "
                         "first keyed entry")
        if self.head_seq is not None:
            anchored = f"anchored: head {self.anchor} at seq {self.head_seq}"
        elif self.anchor is not None:
            anchored = f"anchor {self.anchor} has no head yet"
        else:
            anchored = "not anchored: a cut-off tail or a replaced file cannot be detected"
        return f"{self.path}: {self.entries} entries, {what}; {anchored}"


class _Walk:
    """One pass over the lines: links, seq, chain names, and MACs checked in batches."""

    def __init__(self, key: ChainKey | None, heads: HeadStore | None, expected: str | None) -> None:
        self.key, self.heads, self.expected = key, heads, expected
        self.prev, self.seq, self.count, self.lines, self.keyed = GENESIS, 0, 0, 0, 0
        self.chain: str | None = None
        self.anchor: str | None = None
        self.first_keyed: dict[str, Any] | None = None
        self.continues = False  # the file starts with an audit.rotate entry: it continues an archived one
        self.last: dict[str, Any] | None = None
        self.head: Head | None = None
        self.head_read = False
        self.mac_at_head: str | None = None
        self.pending: list[tuple[int, bytes, str, int]] = []
        self.mac_problem: ChainProblem | None = None

    def read_head(self, anchor: str | None) -> None:
        if self.head_read or anchor is None or self.heads is None:
            return
        self.head_read = True
        heads = self.heads
        try:
            found = heads.read(anchor)
        except AuditError:
            raise
        except KeyopsError as exc:
            raise AuditError(f"reading the head of audit anchor {anchor!r} failed: {exc}; verifying the anchor "
                             "needs a Vault token of the auditor role") from exc
        self.head = None if found is None else found[0]

    def feed(self, number: int, raw: bytes) -> ChainProblem | None:
        self.lines = number
        if not raw.endswith(b"\n"):
            return ChainProblem(number, "the last line is incomplete (a torn write, or the file was truncated)")
        try:
            entry = json.loads(raw)
        except ValueError:
            return ChainProblem(number, "not valid JSON: the entry was edited or damaged")
        if not isinstance(entry, dict) or not {"prev", "seq"} <= set(entry) or not ({"hash", "mac"} & set(entry)):
            return ChainProblem(number, "not a keyops audit entry (hash or mac, prev or seq missing)")
        if not isinstance(entry["seq"], int) or isinstance(entry["seq"], bool):
            return ChainProblem(number, "its seq is not a number: the entry was edited")
        problem = self._keyed(number, entry) if is_keyed(entry) else self._unkeyed(number, entry)
        if problem is None:
            self.count += 1
            self.last = entry
        return problem

    def _unkeyed(self, number: int, entry: dict[str, Any]) -> ChainProblem | None:
        if self.keyed:
            return ChainProblem(number, f"entry seq {entry['seq']} is unkeyed after the keyed chain began: it was "
                                        "forged or re-chained by someone without the audit key")
        if entry_hash(entry) != entry["hash"]:
            return ChainProblem(number, f"entry seq {entry['seq']} does not match its hash: it was edited")
        problem = _link_problem(number, entry, self.prev, self.seq)
        if problem is None:
            self.prev, self.seq = str(entry["hash"]), int(entry["seq"])
        return problem

    def _keyed(self, number: int, entry: dict[str, Any]) -> ChainProblem | None:
        mac, chain, anchor = entry.get("mac"), entry.get("chain"), entry.get("anchor")
        if not all(isinstance(v, str) for v in (mac, chain, anchor, entry["prev"])):
            return ChainProblem(number, f"entry seq {entry['seq']}: its mac, prev, chain or anchor is not a string: "
                                        "the entry was edited")
        assert isinstance(mac, str)
        if self.first_keyed is None:
            self.first_keyed, self.chain, self.anchor = entry, chain, anchor
            if number == 1 and entry.get("operation") == ROTATE_OPERATION and entry["seq"] > 1:
                self.continues = True
                self.prev, self.seq = str(entry["prev"]), int(entry["seq"]) - 1
            self.read_head(anchor)
        elif chain != self.chain or anchor != self.anchor:
            return ChainProblem(number, f"entry seq {entry['seq']} belongs to another chain than the entries "
                                        "before it: logs were spliced")
        problem = _link_problem(number, entry, self.prev, self.seq)
        if problem is not None:
            return problem
        self.pending.append((number, mac_input(entry), mac, int(entry["seq"])))
        if self.head is not None and entry["seq"] == self.head.seq:
            self.mac_at_head = mac
        self.prev, self.seq = mac, int(entry["seq"])
        self.keyed += 1
        if len(self.pending) >= VERIFY_BATCH:
            self.flush()
            return self.mac_problem
        return None

    def flush(self) -> None:
        if not self.pending or self.mac_problem is not None:
            return
        if self.key is None:
            raise AuditError("the log holds keyed entries: verifying them needs the audit key (a Vault token of "
                             "the auditor role; KEYOPS_AUDIT_KEY names the key)")
        key, pending = self.key, self.pending
        self.pending = []
        try:
            results = key.verify_many([(data, mac) for _, data, mac, _ in pending])
        except AuditError:
            raise
        except KeyopsError as exc:
            raise AuditError(f"verifying the audit MACs failed: {exc}; it needs a Vault token of the auditor "
                             "role") from exc
        for (number, _, _, seq), valid in zip(pending, results, strict=True):
            if not valid:
                self.mac_problem = ChainProblem(number, f"entry seq {seq} does not match its MAC: it was edited, "
                                                        "re-chained or forged (a valid MAC needs the audit key, "
                                                        "which only the audit writer's roles may use)")
                return

    def head_problem(self, file_name: str) -> tuple[ChainProblem | None, list[str]]:
        """The log against its head (when there is an anchor and a head store), and notes for people."""
        notes: list[str] = []
        anchor = self.anchor or self.expected
        if anchor is None or self.heads is None:
            if self.keyed:
                notes.append("not compared with a head: a cut-off tail or a replaced file cannot be detected")
            return None, notes
        self.read_head(anchor)
        head, end = self.head, self.lines + 1
        if self.first_keyed is None:  # empty, or unkeyed entries only
            if head is None:
                if self.count:
                    notes.append("unkeyed (legacy) entries only: the keyed chain starts with the next entry")
                return None, notes
            if self.count == 0:
                return ChainProblem(1, f"the log is empty but its head (anchor {anchor!r}) is at entry seq "
                                       f"{head.seq}: the log was emptied or replaced"), notes
            return ChainProblem(end, f"the log holds only unkeyed entries but its head (anchor {anchor!r}) is at "
                                     f"keyed entry seq {head.seq}: the log was replaced by an unkeyed chain"), notes
        if head is None:
            return ChainProblem(end, f"the head of anchor {anchor!r} does not exist, yet the log holds entries of "
                                     "its chain: the head was deleted, or the log comes from another Vault, "
                                     "namespace or KV mount"), notes
        if head.chain != self.chain:
            return ChainProblem(1, f"the log's chain is not the one its head (anchor {anchor!r}) names: the log was "
                                   "replaced by another chain"), notes
        assert self.last is not None and self.first_keyed is not None
        tail_seq, tail_mac = int(self.last["seq"]), str(self.last["mac"])
        archived = False
        if tail_seq < head.seq:
            rotation = head.rotation_at(tail_seq)
            if rotation is None or rotation.mac != tail_mac:
                mine = next((r for r in head.rotations if r.file == file_name and r.seq > tail_seq), None)
                if mine is not None:  # an archived log that lost its end
                    return ChainProblem(end, f"the log ends at entry seq {tail_seq} but it was archived at seq "
                                             f"{mine.seq} (head of anchor {anchor!r}): "
                                             f"{_seq_range(tail_seq + 1, mine.seq)} cut off"), notes
                return ChainProblem(end, f"the log ends at entry seq {tail_seq} but its head (anchor {anchor!r}) is "
                                         f"at seq {head.seq}: {_seq_range(tail_seq + 1, head.seq)} cut off "
                                         "(truncated, or replaced by an older copy)"), notes
            archived = True
            notes.append(f"archived by a rotation at seq {tail_seq} (as {rotation.file}); the chain continues in "
                         f"the current log, whose head is at seq {head.seq}")
        elif tail_seq == head.seq:
            if tail_mac != head.mac:
                return ChainProblem(self.lines, f"entry seq {tail_seq} is not the one its head (anchor {anchor!r}) "
                                                "names: the log was replaced"), notes
        elif self.mac_at_head != head.mac:
            return ChainProblem(self.lines, f"the log's entry seq {head.seq} is not the one its head (anchor "
                                            f"{anchor!r}) names: the log was replaced or forked"), notes
        else:
            notes.append(f"{_seq_range(head.seq + 1, tail_seq).replace(' was', ' is').replace(' were', ' are')} "
                         f"not anchored yet (the head is at seq {head.seq}): an update of the head failed, or a "
                         "writer is appending now")
        if self.expected is not None and self.anchor != self.expected and not archived:
            return ChainProblem(1, f"the log's entries belong to the chain anchored at {self.anchor!r}, not to this "
                                   f"log's anchor {self.expected!r}: the log was replaced by another one"), notes
        if self.continues:
            first = self.first_keyed
            rotation = head.rotation_at(int(first["seq"]) - 1)
            if rotation is None or rotation.mac != first["prev"]:
                return ChainProblem(1, f"the log starts at entry seq {first['seq']} as the continuation of a rotated "
                                       "log, but its head records no such rotation"), notes
            notes.append(f"continues {rotation.file} (entries up to seq {rotation.seq})")
        return None, notes


def _link_problem(number: int, entry: Mapping[str, Any], prev: str, seq: int) -> ChainProblem | None:
    if entry["prev"] == prev and entry["seq"] == seq + 1:
        return None
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


def verify_log(path: str | os.PathLike[str], *, key: ChainKey | None = None, heads: HeadStore | None = None,
               anchor: str | None = None, raise_on_error: bool = False) -> VerifyResult:
    """Check the whole chain; the first broken entry is named with its line number and what is wrong.

    ``key`` checks the MACs of keyed entries (needed when there are any). With ``heads`` the log is
    compared with the head of its anchor: ``anchor`` (this log's, e.g. from ``anchor_name``), else
    the one its entries name. Unkeyed (legacy) logs verify without either, and say so.
    """
    p = Path(path)
    walk = _Walk(key, heads, anchor)
    problem: ChainProblem | None = None
    try:
        fh = p.open("rb")
    except OSError as exc:
        raise AuditError(f"the audit log {str(p)!r} cannot be read ({exc.strerror})") from exc
    with fh:
        for number, raw in enumerate(fh, start=1):
            problem = walk.feed(number, raw)
            if problem is not None:
                break
    walk.flush()
    if walk.mac_problem is not None:
        problem = walk.mac_problem  # always on an earlier line than a structural problem
    notes: list[str] = []
    if problem is None:
        problem, notes = walk.head_problem(p.name)
    entries = walk.count if problem is None else min(walk.count, problem.line - 1)
    result = VerifyResult(str(p), entries, problem, walk.prev, walk.keyed, walk.anchor or anchor,
                          walk.head.seq if walk.head is not None else None,
                          key.name if key is not None and walk.keyed else None, tuple(notes))
    if raise_on_error and problem is not None:
        raise AuditChainBroken(f"audit log {str(p)!r} is not intact: {problem}")
    return result


# --- reading and filtering -------------------------------------------------------------------


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every parseable entry, in file order (use ``verify_log`` to know they are authentic)."""
    try:
        fh = Path(path).open("rb")  # noqa: SIM115 - opened alone, so that only open's OSError gets this message
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
    now = now or dt.datetime.now(dt.UTC)
    text = text.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        return now - dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"time {text[:40]!r} must be ISO 8601 (2024-05-01T12:00:00Z) or a duration "
                           "back from now (30m, 2h, 7d)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


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
    """``Keyops(audit=AuditTrail(...))``: called once per key operation with its fields.

    With a keyed log, a process whose token may not write the chain (keyops knows its role, and the
    role lacks ``audit.write``: the ``app`` role) writes neither the log nor KV copies; the server's
    audit device records its requests. A token keyops cannot classify is tried, and skipped after
    Vault's first refusal.
    """

    def __init__(self, log: AuditLog | None = None, kv: KvSink | None = None, syslog: SyslogSink | None = None,
                 clock: Callable[[], str] = now_text) -> None:
        self.log = log
        self.kv = kv
        self.syslog = syslog
        self.clock = clock
        self._store: VaultStore | None = None
        self._writer: bool | None = None
        self._writer_known = False  # True: keyops knows the token's roles, so a refusal is a misconfiguration
        self.skipped = 0

    def attach(self, store: VaultStore) -> None:
        """Keyops hands over its store, so that the chain, its head and KV copies use the caller's own token."""
        if self.kv is not None and self.kv.store is None:
            self.kv.store = store
        if self.log is not None:
            parts: tuple[object, ...] = (self.log.key, self.log.heads)  # what kind each is: known only here
            for part in parts:
                if isinstance(part, _VaultPart) and part.store is None:
                    part.store = store
        if self._store is None:
            self._store = store

    def may_write(self) -> bool:
        """Whether the caller's token may write the keyed chain and KV copies (``audit.write``)."""
        if self._writer is None:
            if self._store is None:
                return True
            from keyops import access
            try:
                principal = access.lookup_principal(
                    self._store, access.load_roles(getattr(self._store.config, "roles_file", None)))
            except KeyopsError:  # Vault unreachable, a bad roles file: try, and let the write say what is wrong
                return True
            self._writer = principal.allows("audit.write")
            self._writer_known = principal.complete and not principal.root
        return self._writer

    def check_writable(self) -> None:
        """Before an operation: raise ``AuditError`` when the local log this caller writes cannot be opened.

        An operation whose event could not be recorded must not run; a token
        that writes no keyed event (no ``audit.write``) is not held back.
        """
        if self.log is not None and not (self.log.keyed and not self.may_write()):
            self.log.check_writable()

    def event(self, operation: str, **fields: Any) -> dict[str, Any]:
        fields = clean_fields(fields)
        return {"schema": EVENT_SCHEMA, "time": self.clock(), "request_id": fields.pop("request_id", None)
                or uuid.uuid4().hex, "operation": operation, "actor": fields.pop("actor", None),
                "tenant": fields.pop("tenant", None), "level": fields.pop("level", None),
                "versions": fields.pop("versions", None), "result": fields.pop("result", None), **fields}

    def __call__(self, operation: str, **fields: Any) -> dict[str, Any]:
        entry = self.event(operation, **fields)
        keyed = self.log is not None and self.log.keyed
        writer = self.may_write() if keyed or self.kv is not None else True
        if self.log is not None:
            if keyed and not writer:
                self._skip()
            else:
                try:
                    entry = self.log.append(entry)
                except _WriteDenied as exc:
                    if self._writer_known:
                        raise AuditError(f"{exc}; the token's role grants audit.write, so its policy is out of "
                                         "date: re-apply the policies ('keyops policy apply')") from exc
                    self._writer = writer = False
                    self._skip()
        if self.kv is not None and writer:
            self.kv.send(entry)
        if self.syslog is not None:
            self.syslog.send(entry)
        return entry

    def _skip(self) -> None:
        if not self.skipped and self.log is not None:
            _log.info("this token may not write the keyed audit chain (no audit.write); its events are not "
                      "written to %s: the server's audit device records its requests", self.log.path)
        self.skipped += 1

    def rotate(self, *, force: bool = False, **fields: Any) -> RotateResult:
        """Archive the local log and continue the chain in a new file (``AuditLog.rotate``)."""
        if self.log is None:
            raise ConfigError("no audit log to rotate: set KEYOPS_AUDIT_LOG")
        return self.log.rotate(self.event(ROTATE_OPERATION, result="ok", **fields), force=force)


def sink_from_config(config: Config) -> AuditTrail | None:
    """The audit trail the configuration asks for (KEYOPS_AUDIT_LOG, _ANCHOR, _KEY, _KV_PATH, _SYSLOG), or None."""
    log_path = getattr(config, "audit_log", None)
    kv_path = getattr(config, "audit_kv_path", None)
    syslog = getattr(config, "audit_syslog", None)
    setting = getattr(config, "audit_anchor", None)
    if not (log_path or kv_path or syslog):
        if anchor_name(setting, ".") is not None:
            raise ConfigError("KEYOPS_AUDIT_ANCHOR anchors the local audit log: set KEYOPS_AUDIT_LOG too")
        return None
    from keyops.access import Mounts

    # Validates the paths (they go into policies; no overlap with keyops' own paths) and the key's name.
    mounts = Mounts(audit=(kv_path or "audit").strip("/"),
                    audit_key=getattr(config, "audit_key", None) or DEFAULT_AUDIT_KEY)
    log = None
    if log_path:
        anchor = anchor_name(setting, log_path)
        if anchor is None:
            log = AuditLog(log_path)
        else:
            log = AuditLog(log_path, TransitHmacKey(mounts.audit_key), KvHeads(mounts.audit), anchor)
    elif anchor_name(setting, ".") is not None:
        raise ConfigError("KEYOPS_AUDIT_ANCHOR anchors the local audit log: set KEYOPS_AUDIT_LOG too")
    return AuditTrail(log, KvSink(kv_path) if kv_path else None, SyslogSink(syslog) if syslog else None)


def ensure_audit_key(store: VaultStore, key_name: str = DEFAULT_AUDIT_KEY) -> bool:
    """Create the Transit key that keys the chain (type hmac, 256 bits, not exportable); True when created.

    An existing key must be of type ``hmac``, not exportable and without plaintext backup: whoever
    could export it could forge entries.
    """
    from keyops.ops.transit_keys import validate_key_name

    validate_key_name(key_name)
    info = store.transit_read_key(key_name)
    if info is None:
        store.transit_create_key(key_name, "hmac", key_size=32)  # never exportable, no plaintext backup
        return True
    if info.get("type") != "hmac" or info.get("exportable") or info.get("allow_plaintext_backup"):
        raise AuditError(f"the Transit key {key_name!r} exists but is not a non-exportable hmac key (type "
                         f"{str(info.get('type'))[:20]!r}, exportable {bool(info.get('exportable'))}); it cannot key "
                         "the audit chain: name another one with KEYOPS_AUDIT_KEY")
    return False
