"""Backups of what keyops keeps in KV, as one JSON-lines file: wrapped keys and ciphertexts, nothing else.

File layout (UTF-8, one JSON object a line)::

    {"format": "keyops-backup", "schema": 1, "created_at": "...", "keyops_version": "...",
     "kv_mount": "keyops", "transit_mount": "transit", "namespace": null, "registry_id": "3f9c...",
     "audit_path": "audit", "contains": "..."}
    {"path": "master", "kind": "master", "kv_version": 4, "max_versions": 1000, "cas_required": true,
     "data": {...}}
    ...                                         one line per document
    {"end": true, "documents": 42, "sha256": "<hex digest of every line above, newlines included>"}

The documents: the master registry, each tenant's keyring and usage
document, its job checkpoints and secret records, and the audit chain's
heads, each with the KV history settings of its path. Key material appears
only wrapped (KEKs by the master key, DEKs by their KEK or Transit key) and
values only encrypted, so the file opens nothing without the HSM (or the
root). With it, it opens everything, residence ``transit`` included (through
the KEK escrow copies). The trailer
makes a cut or edited file fail to load instead of restoring half of it.

The documents are read one after another, not in one snapshot, so the
backup checks itself: a tenant's keyring is read before and after its
records (unchanged: no rotation, retirement or destruction happened while
its records were read, so every record's DEK version is in the keyring
saved), and the registry before and after every tenant. A change starts
that part again. Restoring is ``keyops.ops.restore``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyops import __version__, crypto
from keyops.access import Mounts
from keyops.errors import Conflict, InvalidInput, KeyopsError
from keyops.files import write_file_atomic
from keyops.model.keyring import Keyring, format_time
from keyops.model.master import MasterRegistry
from keyops.model.names import validate_secret_name, validate_tenant
from keyops.model.paths import MASTER_PATH, jobs_path, keyring_path, secrets_path, usage_path
from keyops.model.usage import Usage
from keyops.ops.cas import CAS_ATTEMPTS

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

FORMAT = "keyops-backup"
SCHEMA = 1
CONTAINS = ("wrapped keys and ciphertexts only: no plaintext value and no unwrapped key; nothing in it "
            "decrypts without the HSM master key")
#: The order documents are written in, and restored in: the audit heads first, so that a restore into
#: an emptied mount can record its own event; keyrings before the records they open.
KINDS = ("audit_head", "master", "keyring", "usage", "job", "secret")


@dataclasses.dataclass(frozen=True)
class Document:
    """One KV document as backed up: where, what, its content and the history settings of its path."""

    path: str
    kind: str
    tenant: str | None
    data: Mapping[str, Any]
    kv_version: int
    #: KV ``max_versions`` of the path; 0: the mount's default.
    max_versions: int = 0
    cas_required: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "kv_version": self.kv_version,
                "max_versions": self.max_versions, "cas_required": self.cas_required, "data": dict(self.data)}


@dataclasses.dataclass(frozen=True)
class Backup:
    header: Mapping[str, Any]
    documents: tuple[Document, ...]

    @property
    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for d in self.documents if d.kind == kind) for kind in KINDS}

    @property
    def tenants(self) -> tuple[str, ...]:
        return tuple(sorted({d.tenant for d in self.documents if d.tenant is not None}))


@dataclasses.dataclass(frozen=True)
class BackupResult:
    output: str
    documents: int
    counts: Mapping[str, int]
    tenants: tuple[str, ...]
    registry_id: str | None
    contains: str = CONTAINS

    @property
    def detail(self) -> str:
        parts = ", ".join(f"{n} {kind.replace('_', ' ')}{'' if n == 1 else 's'}"
                          for kind, n in self.counts.items() if n)
        return (f"backed up {self.documents} documents of {len(self.tenants)} tenants to {self.output} "
                f"(mode 0600): {parts or 'nothing'}; {self.contains}")


# --- which paths keyops backs up ----------------------------------------------------------------------


def kind_of(path: str, audit_path: str) -> tuple[str, str | None]:
    """The kind of document at ``path`` and its tenant; anything else is refused, naming the path."""
    from keyops.ops.jobs import validate_job_id

    parts = path.split("/")
    try:
        if path == MASTER_PATH:
            return "master", None
        if parts[0] == "tenants" and len(parts) == 3 and parts[2] in ("keyring", "usage"):
            return parts[2], validate_tenant(parts[1])
        if parts[0] == "tenants" and len(parts) == 4 and parts[2] == "jobs":
            validate_job_id(parts[3])
            return "job", validate_tenant(parts[1])
        if parts[0] == "secrets" and len(parts) >= 3:
            validate_secret_name("/".join(parts[2:]))
            return "secret", validate_tenant(parts[1])
        head = audit_path.rstrip("/") + "/head/"
        if path.startswith(head) and path[len(head):] and "/" not in path[len(head):]:
            return "audit_head", None
    except InvalidInput as exc:
        raise InvalidInput(f"{path!r} is not a document keyops backs up: {exc}") from exc
    raise InvalidInput(f"{path!r} is not a document keyops backs up (master, tenants/<t>/keyring, "
                       f"tenants/<t>/usage, tenants/<t>/jobs/<id>, secrets/<t>/<name>, {audit_path}/head/<anchor>)")


def check_document(doc: Document) -> None:
    """Refuse a document whose content is not what its path holds (``InvalidInput`` naming the path)."""
    from keyops.audit import Head
    from keyops.ops.jobs import Checkpoint

    data, tenant = doc.data, doc.tenant
    try:
        if doc.kind == "master":
            MasterRegistry.from_dict(data)
        elif doc.kind == "keyring":
            if Keyring.from_dict(data).tenant != tenant:
                raise InvalidInput(f"it names tenant {data.get('tenant')!r}")
        elif doc.kind == "usage":
            Usage.from_dict(data, str(tenant))
        elif doc.kind == "job":
            checkpoint = Checkpoint.from_dict(data)
            if (checkpoint.tenant, checkpoint.job_id) != (tenant, doc.path.rsplit("/", 1)[1]):
                raise InvalidInput("it is the checkpoint of another tenant or job")
        elif doc.kind == "secret":
            ct = crypto.Ciphertext.from_text(str(data.get("ciphertext")))
            if data.get("schema") != 1 or ct.tenant != tenant or data.get("dek_version") != ct.dek_version:
                raise InvalidInput("it is not a keyops record of this tenant (schema, tenant or DEK version)")
        else:
            Head.from_dict(data, doc.path.rsplit("/", 1)[1])
    except KeyopsError as exc:
        raise InvalidInput(f"document {doc.path!r} ({doc.kind}) is not valid: {exc}") from exc


# --- taking a backup ----------------------------------------------------------------------------------


def take_backup(k: Keyops) -> Backup:
    """Read every document keyops keeps, consistently (see the module's docstring); no key is unwrapped."""
    k.authorize("backup")
    audit_path = Mounts.from_config(k.config).audit
    for _ in range(CAS_ATTEMPTS):
        before = k.store.read(MASTER_PATH)
        documents = [*_documents(k, [MASTER_PATH], audit_path)]
        tenants = sorted(set(k.list_tenants()) | {t.rstrip("/") for t in k.store.list("secrets") if t.endswith("/")})
        for tenant in tenants:
            documents.extend(_tenant_documents(k, validate_tenant(tenant), audit_path))
        heads = [f"{audit_path}/head/{a}" for a in k.store.list(f"{audit_path}/head") if not a.endswith("/")]
        documents.extend(_documents(k, heads, audit_path))
        if _version(k.store.read(MASTER_PATH)) == _version(before):
            break
    else:
        raise Conflict(f"the master key registry changed {CAS_ATTEMPTS} times while it was backed up (a master "
                       "rotation is running); nothing was written; run the backup again when it is done")
    registry = next((d.data.get("registry_id") for d in documents if d.kind == "master"), None)
    header = {"format": FORMAT, "schema": SCHEMA, "created_at": format_time(k.clock()),
              "keyops_version": __version__, "kv_mount": k.store.kv_mount, "transit_mount": k.store.transit_mount,
              "namespace": k.config.vault_namespace, "registry_id": registry, "audit_path": audit_path,
              "contains": CONTAINS}
    return Backup(header, tuple(documents))


def _version(found: tuple[dict[str, Any], int] | None) -> int:
    return 0 if found is None else found[1]


def _tenant_documents(k: Keyops, tenant: str, audit_path: str) -> list[Document]:
    for _ in range(CAS_ATTEMPTS):
        before = _version(k.store.read(keyring_path(tenant)))
        names = [f"{secrets_path(tenant)}/{name}" for name in _walk(k, secrets_path(tenant))]
        jobs = [f"{jobs_path(tenant)}/{j}" for j in k.store.list(jobs_path(tenant)) if not j.endswith("/")]
        documents = list(_documents(k, [usage_path(tenant), *jobs, *names], audit_path))
        keyring = list(_documents(k, [keyring_path(tenant)], audit_path))
        if (keyring[0].kv_version if keyring else 0) == before:
            return keyring + documents
    raise Conflict(f"the keyring of tenant {tenant!r} changed {CAS_ATTEMPTS} times while its records were "
                   "backed up (a rotation is running); nothing was written; run the backup again")


def _walk(k: Keyops, base: str) -> Iterator[str]:
    pending = [""]
    while pending:
        folder = pending.pop()
        for key in k.store.list(f"{base}/{folder}".rstrip("/")):
            full = f"{folder}{key}"
            if key.endswith("/"):
                pending.append(full)
            else:
                yield full


def _documents(k: Keyops, paths: Sequence[str], audit_path: str) -> Iterator[Document]:
    for path in paths:
        found = k.store.read(path)
        if found is None:  # not made yet, or deleted since it was listed: nothing to keep
            continue
        meta = k.store.read_metadata(path) or {}
        kind, tenant = kind_of(path, audit_path)
        yield Document(path, kind, tenant, found[0], found[1], int(meta.get("max_versions") or 0),
                       bool(meta.get("cas_required")))


# --- the file -----------------------------------------------------------------------------------------


def dumps(backup: Backup) -> str:
    lines = [_line(backup.header)] + [_line(d.to_dict()) for d in backup.documents]
    body = "".join(lines)
    trailer = {"end": True, "documents": len(backup.documents),
               "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}
    return body + _line(trailer)


def _line(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def write_backup(k: Keyops, output: str | Path) -> BackupResult:
    """Take a backup and write it to ``output`` atomically, mode 0600 from the start (an audited operation)."""
    path = Path(output)
    if path.is_dir():
        raise InvalidInput(f"backup output {str(path)!r} is a folder; name a file")
    with k.audited("backup", level="backup", output=str(path)) as event:
        backup = take_backup(k)
        write_file_atomic(path, dumps(backup))
        event.update(documents=len(backup.documents), tenants=len(backup.tenants))
    return BackupResult(str(path), len(backup.documents), backup.counts, backup.tenants,
                        backup.header.get("registry_id"))


def load_backup(path: str | Path) -> Backup:
    """Read and check a backup file: any damage is an ``InvalidInput`` naming the file and line."""
    where = f"backup {str(path)!r}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{where} cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    lines = text.splitlines(keepends=True)
    if len(lines) < 2 or not text.endswith("\n"):
        raise InvalidInput(f"{where} is empty or cut off: it has no header and end line")
    parsed = [_parse_line(line, where, n) for n, line in enumerate(lines, 1)]
    header, trailer = parsed[0], parsed[-1]
    if header.get("format") != FORMAT or header.get("schema") != SCHEMA:
        raise InvalidInput(f"{where}: line 1 is not a keyops backup header (format {FORMAT!r}, schema {SCHEMA})")
    digest = hashlib.sha256("".join(lines[:-1]).encode("utf-8")).hexdigest()
    if trailer.get("end") is not True or trailer.get("documents") != len(lines) - 2 or trailer.get("sha256") != digest:
        raise InvalidInput(f"{where}: line {len(lines)}: the end line does not match the file (cut off, "
                           "edited or joined): nothing of it is restored")
    audit_path = str(header.get("audit_path") or "audit")
    documents = []
    for n, raw in enumerate(parsed[1:-1], 2):
        try:
            doc = _document(raw, audit_path)
            check_document(doc)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: line {n}: {exc}") from exc
        documents.append(doc)
    paths = [d.path for d in documents]
    if len(set(paths)) != len(paths):
        raise InvalidInput(f"{where}: a document appears twice")
    return Backup(header, tuple(documents))


def _parse_line(line: str, where: str, n: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"{where}: line {n} is not JSON ({exc.args[0].split(':')[0]})") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: line {n} is not a JSON object")
    return value


def _document(raw: Mapping[str, Any], audit_path: str) -> Document:
    path, data = raw.get("path"), raw.get("data")
    if not isinstance(path, str) or not isinstance(data, dict):
        raise InvalidInput("a document needs a 'path' string and a 'data' object")
    kind, tenant = kind_of(path, audit_path)
    if raw.get("kind") != kind:
        raise InvalidInput(f"document {path!r} says it is a {raw.get('kind')!r}, but its path holds a {kind}")
    max_versions, cas = raw.get("max_versions", 0), raw.get("cas_required", False)
    if isinstance(max_versions, bool) or not isinstance(max_versions, int) or not 0 <= max_versions <= 1_000_000 \
            or not isinstance(cas, bool):
        raise InvalidInput(f"document {path!r}: max_versions must be a whole number >= 0, cas_required a boolean")
    return Document(path, kind, tenant, data, int(raw.get("kv_version") or 0), max_versions, cas)
