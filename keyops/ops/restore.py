"""Restoring a backup (``keyops.ops.backup``): create what is missing, leave what is identical, refuse the rest.

Every document of the backup is compared with what its path holds now
before anything is written:

* missing: ``create`` (check-and-set on the path's current version, 0 in an
  empty mount), then its KV history (``max_versions``, ``cas_required``);
* identical: ``unchanged`` (or ``history``, when only the path's history
  settings are below the backup's: raised, never lowered);
* a usage document that differs: ``merge``, the larger count of each DEK
  version and the fence when either has one, so that a restore never lowers
  a count (which would let a DEK encrypt past its cap);
* an audit chain's head that differs: ``kept``, always: the live head is the
  newer one, and moving it back would hide a cut log;
* anything else that differs: ``conflict``. One conflict refuses the whole
  restore, naming the paths, before anything is written; with
  ``overwrite=True`` it is ``overwrite``: a new KV version, the older ones
  stay in the history. A registry with another registry id is never
  overwritten (its keyrings are wrapped by other HSM keys).

The audit heads are written first, so that a restore into an emptied mount
can record its own event in the chain they anchor. Writes are
check-and-set on the version read when planning: a document changed during
the restore stops it with a ``Conflict``, and the same restore run again
finishes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from keyops.errors import CheckAndSetFailed, Conflict, InvalidInput, KeyopsError
from keyops.model.keyring import Keyring
from keyops.model.names import validate_tenant
from keyops.model.paths import transit_key_name
from keyops.model.usage import Usage, VersionUsage
from keyops.ops.backup import KINDS, Backup, Document

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

WRITES = ("create", "history", "merge", "overwrite")


@dataclasses.dataclass(frozen=True)
class RestoreStep:
    path: str
    kind: str
    action: str  # create, unchanged, history, merge, overwrite, kept, conflict
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class RestoreResult:
    source: str
    steps: tuple[RestoreStep, ...]
    dry_run: bool
    overwrite: bool
    #: What the restore cannot bring back and the tenants it leaves unusable (Transit keys missing).
    warnings: tuple[str, ...] = ()

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for step in self.steps:
            out[step.action] = out.get(step.action, 0) + 1
        return out

    @property
    def changed(self) -> bool:
        return any(s.action in WRITES for s in self.steps)

    @property
    def conflicts(self) -> tuple[RestoreStep, ...]:
        return tuple(s for s in self.steps if s.action == "conflict")

    @property
    def detail(self) -> str:
        counts = ", ".join(f"{n} {action}" for action, n in sorted(self.counts.items()))
        verb = "would restore" if self.dry_run else "restored"
        if not self.changed and not self.conflicts:
            return f"nothing to do: every document of {self.source} is in place ({counts or 'none'})"
        return f"{verb} {self.source}: {counts}"


@dataclasses.dataclass(frozen=True)
class _Planned:
    doc: Document
    step: RestoreStep
    cas: int
    data: Mapping[str, Any] | None = None  # what to write; None: the data stays
    history: tuple[int, bool] | None = None  # (max_versions, cas_required) to set; None: unchanged


def restore(k: Keyops, backup: Backup, source: str, *, dry_run: bool = False, overwrite: bool = False,
            tenants: Iterable[str] = ()) -> RestoreResult:
    """Bring the documents of ``backup`` back into the KV mount (see the module's docstring)."""
    chosen = {validate_tenant(t) for t in tenants}
    documents = [d for d in backup.documents if not chosen or d.tenant in chosen]
    missing = chosen - {d.tenant for d in documents}
    if missing:
        raise InvalidInput(f"{source} holds no documents of tenant(s) {', '.join(sorted(missing))}")
    documents.sort(key=lambda d: KINDS.index(d.kind))
    k.authorize("restore")
    if dry_run:  # reads only, and records nothing: in an emptied mount the audit chain has no head yet
        steps = tuple(_plan(k, doc, overwrite).step for doc in documents)
        return RestoreResult(source, steps, True, overwrite, tuple(_transit_warnings(k, documents)))
    with k.audited("restore", level="backup", source=source, overwrite=overwrite) as event:
        plan = [_plan(k, doc, overwrite) for doc in documents]
        conflicts = [p.step for p in plan if p.step.action == "conflict"]
        if conflicts:
            shown = ", ".join(s.path for s in conflicts[:10]) + (" ..." if len(conflicts) > 10 else "")
            raise Conflict(f"{len(conflicts)} document(s) in Vault differ from {source}: {shown}; nothing was "
                           "restored (look with --dry-run; --overwrite replaces them with the backup's version, "
                           "keeping the current one in KV's history)")
        for planned in plan:  # audit heads first (KINDS): this event is then recorded in their chain
            _apply(k, planned)
        result = RestoreResult(source, tuple(p.step for p in plan), False, overwrite,
                               tuple(_transit_warnings(k, documents)))
        event.update(result.counts, documents=len(plan))
    return result


def _plan(k: Keyops, doc: Document, overwrite: bool) -> _Planned:
    store = k.store
    found = store.read(doc.path)
    meta = store.read_metadata(doc.path) or {}
    current = int(meta.get("current_version") or 0)
    history = _history(doc, meta)
    if found is None:
        return _Planned(doc, RestoreStep(doc.path, doc.kind, "create"), current, doc.data,
                        (doc.max_versions, doc.cas_required) if doc.max_versions or doc.cas_required else None)
    data, version = found
    if data == doc.data:
        return _Planned(doc, RestoreStep(doc.path, doc.kind, "history" if history else "unchanged"), version,
                        None, history)
    if doc.kind == "usage":
        merged = merge_usage(data, doc.data, str(doc.tenant))
        if merged == data:
            return _Planned(doc, RestoreStep(doc.path, doc.kind, "history" if history else "unchanged",
                                             "its counts are at least the backup's"), version, None, history)
        return _Planned(doc, RestoreStep(doc.path, doc.kind, "merge", "the larger count of each DEK version"),
                        version, merged, history)
    if doc.kind == "audit_head":
        return _Planned(doc, RestoreStep(doc.path, doc.kind, "kept", "an audit head is never moved back"),
                        version, None, history)
    if doc.kind == "master" and data.get("registry_id") != doc.data.get("registry_id"):
        raise Conflict(f"the master key registry in Vault has id {data.get('registry_id')!r}, the backup's "
                       f"{doc.data.get('registry_id')!r}: they name different HSM keys; nothing was restored "
                       "(restore into the Vault or namespace the backup was taken from, or an empty one)")
    if overwrite:
        return _Planned(doc, RestoreStep(doc.path, doc.kind, "overwrite", f"over KV version {version}"),
                        version, doc.data, history)
    return _Planned(doc, RestoreStep(doc.path, doc.kind, "conflict", f"KV version {version} differs"), version)


def _history(doc: Document, meta: Mapping[str, Any]) -> tuple[int, bool] | None:
    """The history settings to raise the path to, or None when they already reach the backup's."""
    max_now, cas_now = int(meta.get("max_versions") or 0), bool(meta.get("cas_required"))
    wanted = (max(max_now, doc.max_versions), cas_now or doc.cas_required)
    return None if wanted == (max_now, cas_now) else wanted


def merge_usage(current: Mapping[str, Any], backed_up: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """The usage document that undercounts neither: per DEK version the larger counts, every fence and lease."""
    now, old = Usage.from_dict(current, tenant), Usage.from_dict(backed_up, tenant)
    versions: dict[int, VersionUsage] = {}
    for version in sorted(set(now.versions) | set(old.versions)):
        a, b = now.versions.get(version, VersionUsage()), old.versions.get(version, VersionUsage())
        leases = {holder: max(a.leases.get(holder, ""), b.leases.get(holder, ""))
                  for holder in set(a.leases) | set(b.leases)}
        versions[version] = VersionUsage(max(a.reserved, b.reserved), max(a.external, b.external), leases,
                                         a.closed_at or b.closed_at)
    merged = Usage(tenant, versions).to_dict()
    return merged if Usage.from_dict(merged, tenant) != now else dict(current)


def _apply(k: Keyops, planned: _Planned) -> None:
    doc, store = planned.doc, k.store
    try:
        if planned.data is not None:
            store.write(doc.path, planned.data, cas=planned.cas)
    except CheckAndSetFailed as exc:
        raise Conflict(f"{doc.path!r} changed while the backup was being restored; the documents before it are "
                       "restored; run the same restore again to finish") from exc
    if planned.history is not None:
        store.write_metadata(doc.path, max_versions=planned.history[0], cas_required=planned.history[1])


def _transit_warnings(k: Keyops, documents: Iterable[Document]) -> list[str]:
    """Tenants of residence transit whose Transit key lacks a KEK version their keyring uses."""
    warnings = []
    for doc in documents:
        if doc.kind != "keyring" or doc.data.get("policy", {}).get("kek_residence") != "transit":
            continue
        keyring = Keyring.from_dict(doc.data)
        needed = max((kv.transit_version or kv.version for kv in keyring.kek.versions if kv.usable_for_decrypt),
                     default=0)
        name = transit_key_name(keyring.tenant)
        try:
            info = k.store.transit_read_key(name)
        except KeyopsError as exc:
            warnings.append(f"tenant {keyring.tenant!r}: its Transit key {name!r} could not be checked ({exc.code})")
            continue
        latest = int(info["latest_version"]) if info else 0
        if latest < needed:
            have = f"is at version {latest}" if info else "is missing"
            warnings.append(f"tenant {keyring.tenant!r} (residence transit): its Transit key {name!r} {have}, but "
                            f"its keyring needs version {needed}: its DEKs do not unwrap until the Transit mount "
                            "is restored from a snapshot (docs/runbooks/backup-restore.md)")
    return warnings
