"""Migration: bring secrets that live elsewhere in Vault under keyops, losing nothing.

Sources are the secrets below a KV v2 path that the operator names (any KV
v2 mount; the keyops mount by default). Each source secret becomes the
keyops record ``secrets/<tenant>/<name>``, ``name`` being its path relative
to the source prefix. Its value is, from the secret's data:

* ``field`` when one is given (the other keys stay in the source);
* else the only key's value, when the secret has one key;
* else the whole data, JSON-encoded with sorted keys and no spaces, so that
  nothing is lost.

A string value is taken as UTF-8; any other value as its JSON encoding. A
value of the form ``vault:vN:<base64>`` (with ``kind`` "auto" or "transit")
is a Vault Transit ciphertext: it is decrypted through Transit ``decrypt``
with ``transit_key`` (and ``transit_context`` as associated data), or, when
the key is the tenant's own Transit KEK (residence ``transit``), directly by
keyops from the KEK's escrow copy (AES-256-GCM, the nonce being the first 12
bytes), without a Transit call.

Three modes, so that applications still reading the sources keep working
until the operator moves them:

* ``copy`` (the default): steps 1-3 below; every source stays as it was.
  Run it again to bring the records up to date with sources that changed.
* ``cutover``: step 4 alone, for sources whose record is current: the
  record must decrypt to the source's value as read now, and the marker is
  written with check-and-set on that read, so a source changed since its
  copy (or while the cut-over runs) is skipped (``stale``) and left as it
  was, never replaced by a marker of an older value. A source never copied
  is skipped (``not_copied``).
* ``move``: copy and cut over in one pass (the behaviour before the modes).

Per source secret, in this order, so that a crash anywhere loses nothing:

1. read the source (KV version N) and compute the plaintext;
2. write the keyops record (check-and-set; the record notes its source);
3. read the record back from KV and check that it decrypts to the plaintext;
4. only then replace the source, with check-and-set on N, by a new version
   holding a marker (``keyops_migrated``: tenant, record, job). The original
   value stays in the source's KV version history (version N and earlier)
   until the operator purges it: ``purge_sources`` (``keyops migrate
   --purge-source``) destroys exactly those older versions once the record
   is in place, and keeps the marker.

The history keeps what the source mount's ``max_versions`` allows (OpenBao's
default: 10 versions): purge or copy the originals before a source gains
that many newer versions, or raise ``max_versions`` on the mount first.

If an application changes the source between 1 and 4, the marker write
loses, and the secret is migrated again from its new value. A source that
already holds a marker is done, so a second run changes nothing; a killed
run resumes from its checkpoint (``keyops.ops.jobs``) and finds the secrets it
had finished marked. A keyops record of the same name that holds another
value and did not come from this source is never overwritten: the secret is
reported as skipped (``exists``) and its source is left as it was.
"""

# Its imports repeat those as keyops.ops.reencrypt: both are resumable jobs over secret records (keyops.ops.jobs).
from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from keyops import crypto
from keyops.errors import (
    Conflict,
    DecryptionError,
    InvalidInput,
    KeyopsError,
    KeyStateError,
    MalformedCiphertext,
    NotFound,
    TransitNotAuthentic,
)
from keyops.model.keyring import Keyring, format_time
from keyops.model.names import validate_mount, validate_secret_name, validate_tenant
from keyops.ops.cas import CAS_ATTEMPTS
from keyops.ops.front import Keyops, secret_context, secret_path, transit_key_name
from keyops.ops.jobs import (
    Checkpoint,
    JobRun,
    count_names,
    find_unfinished,
    iter_names,
    new_job_id,
    prune_finished,
    read_job,
    run_batches,
    validate_job_id,
    validate_pool,
)
from keyops.ops.progress import PhaseClock, ProgressCallback

KIND = "migrate"
Kind = Literal["auto", "plaintext", "transit"]
SOURCE_KINDS = ("auto", "plaintext", "transit")
Mode = Literal["copy", "cutover", "move"]
MODES = ("copy", "cutover", "move")
#: Readers of the sources keep working unless the operator asks for the cut-over.
DEFAULT_MODE: Mode = "copy"
#: Field of the marker that replaces a migrated source (and of nothing else).
MARKER_FIELD = "keyops_migrated"
#: Field of a keyops record naming the source it was migrated from.
ORIGIN_FIELD = "migrated_from"
DEFAULT_WORKERS = 4
DEFAULT_BATCH_SIZE = 100
#: Skipped items kept in a job's checkpoint (the count is always exact): bounds the document.
MAX_STORED_SKIPPED = 1000
#: Top-level paths of the keyops mount that hold keyops' own documents.
RESERVED_PREFIXES = ("secrets", "tenants", "master")

_TRANSIT_RE = re.compile(r"\Avault:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]+={0,2})\Z")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A source secret left as it was, and why (a code and a sentence; never a value)."""

    name: str
    reason: str  # "exists", "no_field", "invalid_name", "not_transit"; cut-over: "stale", "not_copied"
    detail: str


@dataclasses.dataclass(frozen=True)
class MigrationResult:
    """What a migration job did (counts over all its runs). No secret value.

    ``total`` = ``migrated`` + ``already_migrated`` + skipped + ``vanished``
    (``skipped`` lists them; after a resume, at most ``MAX_STORED_SKIPPED``
    of those skipped by earlier runs). ``from_plaintext`` + ``from_transit`` = ``migrated``.
    ``changed``: this run wrote something. In a dry run, ``migrated`` counts
    what would be migrated. ``purged``: sources whose original versions were
    destroyed (``purge_source``). ``mode``: ``copy`` (``migrated``: records
    written, the sources untouched), ``cutover`` (``migrated``: sources
    replaced by their marker) or ``move`` (both).
    """

    tenant: str
    job_id: str
    source: str
    mount: str
    total: int
    migrated: int
    already_migrated: int
    from_plaintext: int
    from_transit: int
    skipped: tuple[Skipped, ...]
    dry_run: bool
    resumed: bool
    vanished: int = 0
    changed: bool = False
    purged: int = 0
    mode: str = DEFAULT_MODE

    @property
    def would_change(self) -> bool:
        """``changed``; in a dry run, whether the run would change anything (what check mode reports)."""
        return (self.migrated > 0 or self.purged > 0) if self.dry_run else self.changed

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Item:
    status: str  # "migrated" (or would be), "already", "skipped", "vanished"
    origin: str | None = None  # "plaintext" or "transit"
    skipped: Skipped | None = None


@dataclasses.dataclass(frozen=True)
class _Value:
    raw: Any
    how: str  # "field:<name>", "single:<key>", "json"


@dataclasses.dataclass(frozen=True)
class _Options:
    tenant: str
    source: str
    mount: str
    field: str | None
    kind: str
    transit_key: str | None
    transit_mount: str
    transit_context: bytes
    mode: str = DEFAULT_MODE

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"source": self.source, "mount": self.mount, "field": self.field,
                                  "kind": self.kind, "transit_key": self.transit_key,
                                  "transit_mount": self.transit_mount}
        if self.mode != "move":  # checkpoints written before the modes were moves, and still resume as such
            params["mode"] = self.mode
        return params


def migrate(k: Keyops, tenant: str, source: str, *, source_mount: str | None = None, field: str | None = None,
            kind: Kind = "auto", transit_key: str | None = None, transit_mount: str | None = None,
            transit_context: bytes | str | None = None, workers: int = DEFAULT_WORKERS,
            batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False, job_id: str | None = None,
            progress: ProgressCallback | None = None, purge_source: bool = False,
            mode: Mode = DEFAULT_MODE) -> MigrationResult:
    """Migrate the secrets below ``source`` into keyops records of ``tenant``; see the module's docstring.

    ``mode``: ``copy`` (the sources stay as they were), ``cutover`` (replace
    sources whose copy is current by their marker) or ``move`` (both).
    Resumes the tenant's unfinished migration of the same source and options
    (or the job ``job_id``). With ``purge_source`` (not with ``copy``), the
    original versions of every cut-over source are destroyed afterwards
    (the markers stay).
    """
    tenant = validate_tenant(tenant)
    k.authorize("migrate", tenant)  # before the job listing and reads below, not only at the audited step
    workers, batch_size = validate_pool(workers, batch_size)
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if purge_source and mode == "copy":
        raise InvalidInput("purge_source destroys the originals of sources that were cut over, but a copy leaves "
                           "every source in use: cut over first (mode 'cutover', keyops migrate --cut-over)")
    if job_id is not None:
        validate_job_id(job_id)
    keyring = k.read_keyring(tenant)[0]
    options = dataclasses.replace(
        _options(k, keyring, source, source_mount, field, kind, transit_key, transit_mount, transit_context),
        mode=mode)
    k.dek(tenant, keyring.dek.primary)  # unwrapped once here, not by every worker at once
    if dry_run:
        return _Migration(k, keyring, options, JobRun(k, Checkpoint.start(
            job_id or new_job_id(KIND, k.clock()), KIND, tenant, options.params(), k.clock())),
            workers, batch_size, progress, dry_run=True).run(purge_source)
    run = _open_job(k, options, job_id)
    if options.mode != "cutover":  # a cut-over encrypts nothing
        k.expect_uses(tenant, batch_size)  # each batch copies up to that many records: reserve for one at once
    if run is None:
        assert job_id is not None
        found = read_job(k, tenant, job_id)
        assert found is not None
        result = dataclasses.replace(_result_from_job(found[0]), mode=options.mode)
        if purge_source:
            purged = purge_sources(k, tenant, options.source, source_mount=options.mount, workers=workers)
            result = dataclasses.replace(result, purged=purged, changed=purged > 0)
        return result
    with k.audited("migrate", tenant=tenant, level="dek", source=f"{options.mount}/{options.source}",
                   job_id=run.checkpoint.job_id, resumed=run.resumed, mode=options.mode) as event:
        result = _Migration(k, keyring, options, run, workers, batch_size, progress).run(purge_source)
        event.update(migrated=result.migrated, total=result.total, skipped=len(result.skipped),
                     purged=result.purged)
    return result


def _options(k: Keyops, keyring: Keyring, source: str, source_mount: str | None, field: str | None, kind: str,
             transit_key: str | None, transit_mount: str | None,
             transit_context: bytes | str | None) -> _Options:
    if kind not in SOURCE_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    if not isinstance(source, str) or not source.strip("/"):
        raise InvalidInput("the source must be a non-empty KV path prefix, e.g. 'legacy/app1'")
    prefix = source.strip("/")
    try:
        validate_secret_name(prefix)
    except InvalidInput as exc:
        raise InvalidInput(f"invalid source path {prefix!r}: use '/'-separated segments of ASCII letters, "
                           "digits and '_.@+=,-'") from exc
    mount = validate_mount(source_mount or k.store.kv_mount, "source mount")
    if mount == k.store.kv_mount and prefix.split("/", 1)[0] in RESERVED_PREFIXES:
        raise InvalidInput(f"{mount}/{prefix} is keyops' own storage, not a migration source")
    if field is not None and (not isinstance(field, str) or not field):
        raise InvalidInput("field must be a non-empty key of the source secrets' data")
    if transit_key is None and keyring.policy.kek_residence == "transit":
        transit_key = transit_key_name(keyring.tenant)
    if transit_key is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", transit_key):
        raise InvalidInput(f"invalid Transit key name {transit_key!r}")
    if kind == "transit" and transit_key is None:
        raise InvalidInput("kind 'transit' needs the Transit key that encrypted the values: give transit_key "
                           "(--transit-key)")
    context = transit_context.encode("utf-8") if isinstance(transit_context, str) else bytes(transit_context or b"")
    return _Options(keyring.tenant, prefix, mount, field, kind, transit_key,
                    (transit_mount or k.store.transit_mount).strip("/"), context)


def _open_job(k: Keyops, options: _Options, job_id: str | None) -> JobRun | None:
    tenant = options.tenant
    params = options.params()
    if job_id is not None:
        found = read_job(k, tenant, job_id)
        if found is not None:
            if found[0].kind != KIND:
                raise InvalidInput(f"job {job_id!r} of tenant {tenant!r} is a {found[0].kind} job, not a migration")
            if dict(found[0].params) != params:
                raise InvalidInput(f"job {job_id!r} of tenant {tenant!r} migrates another source or with other "
                                   "options; run it with its own options, or start a new job")
            if found[0].state != "running":
                return None
    else:
        found = find_unfinished(k, tenant, KIND, lambda cp: dict(cp.params) == params)
    if found is None:
        return JobRun(k, Checkpoint.start(job_id or new_job_id(KIND, k.clock()), KIND, tenant, params, k.clock()))
    run = JobRun(k, found[0].resumed(k.clock()), found[1], resumed=True)
    run.save()  # claims the job: a second runner of the same job loses its next check-and-set
    return run


def _result_from_job(checkpoint: Checkpoint) -> MigrationResult:
    data = dict(checkpoint.result or {})
    return MigrationResult(
        tenant=checkpoint.tenant, job_id=checkpoint.job_id, source=str(data.get("source", "")),
        mount=str(data.get("mount", "")), total=int(data.get("total", 0)), migrated=int(data.get("migrated", 0)),
        already_migrated=int(data.get("already_migrated", 0)), from_plaintext=int(data.get("from_plaintext", 0)),
        from_transit=int(data.get("from_transit", 0)),
        skipped=tuple(Skipped(**s) for s in data.get("skipped", ())), dry_run=False, resumed=True,
        vanished=int(data.get("vanished", 0)), changed=False, mode=str(data.get("mode", "move")))


class _Migration:
    def __init__(self, k: Keyops, keyring: Keyring, options: _Options, run: JobRun, workers: int,
                 batch_size: int, progress: ProgressCallback | None, dry_run: bool = False) -> None:
        self.k = k
        self.keyring = keyring
        self.o = options
        self.run_ = run
        self.workers = workers
        self.batch_size = batch_size
        self.progress = progress
        self.dry_run = dry_run
        self.job_id = run.checkpoint.job_id

    def source_path(self, name: str) -> str:
        return f"{self.o.source}/{name}"

    def describe(self, name: str, exc: KeyopsError) -> str:
        what = "dry run of the migration" if self.dry_run else f"migration job {self.job_id!r}"
        return (f"{what} of {self.o.mount}/{self.o.source} into tenant {self.o.tenant!r} stopped at {name!r}: "
                f"{exc} (finished batches are kept; fix the cause and re-run the same command to resume)")

    def run(self, purge_source: bool) -> MigrationResult:
        run = self.run_
        cursor = run.checkpoint.cursor
        before, total = count_names(self.k.store, self.o.source, cursor, mount=self.o.mount) \
            if self.progress else (0, 0)
        clock = PhaseClock(self.progress, self.job_id, self.o.tenant, "migrate", total, before)
        pending: collections.Counter[str] = collections.Counter()
        skipped = _stored_skipped(run.checkpoint)
        done = before

        def on_item(name: str, item: _Item) -> None:
            nonlocal done
            done += 1
            pending[item.status] += 1
            if item.status == "migrated":
                pending[f"from_{item.origin}"] += 1
                if not self.dry_run:
                    run.touch()
            if item.skipped is not None:
                skipped.append(item.skipped)
            clock.report(done)

        def on_batch(last: str) -> None:
            if self.dry_run:
                return
            checkpoint = run.checkpoint.advance(last, pending, self.k.clock())
            if skipped:
                checkpoint = dataclasses.replace(checkpoint, result={
                    "skipped": [dataclasses.asdict(s) for s in skipped[:MAX_STORED_SKIPPED]]})
            run.update(checkpoint)
            pending.clear()

        run_batches(iter_names(self.k.store, self.o.source, cursor, page=self.batch_size, mount=self.o.mount),
                    self.migrate_one, workers=self.workers, batch_size=self.batch_size, on_item=on_item,
                    on_batch=on_batch, describe=self.describe, stall=self.k.config.job_stall_timeout)
        counts = collections.Counter(dict(run.checkpoint.counts)) if not self.dry_run else pending
        purged = 0
        if purge_source:
            purged = purge_sources(self.k, self.o.tenant, self.o.source, source_mount=self.o.mount,
                                   workers=self.workers, dry_run=self.dry_run, progress=self.progress)
        result = MigrationResult(
            tenant=self.o.tenant, job_id=self.job_id, source=self.o.source, mount=self.o.mount,
            total=counts["migrated"] + counts["already"] + counts["skipped"] + counts["vanished"],
            migrated=counts["migrated"], already_migrated=counts["already"],
            from_plaintext=counts["from_plaintext"], from_transit=counts["from_transit"],
            skipped=tuple(skipped), dry_run=self.dry_run, resumed=run.resumed, vanished=counts["vanished"],
            changed=(run.touched or purged > 0) and not self.dry_run, purged=purged, mode=self.o.mode)
        if not self.dry_run:
            stored = result.to_dict()
            stored["skipped"] = stored["skipped"][:MAX_STORED_SKIPPED]
            run.update(run.checkpoint.finish(stored, self.k.clock()))
            prune_finished(self.k, self.o.tenant)
        return result

    # --- one source secret ------------------------------------------------------------------

    def migrate_one(self, name: str) -> _Item:
        k, o = self.k, self.o
        path = self.source_path(name)
        origin_ref = f"{o.mount}/{path}"
        for _ in range(CAS_ATTEMPTS):
            found = k.store.read(path, mount=o.mount)
            if found is None:
                return _Item("vanished")
            data, source_version = found
            marker = data.get(MARKER_FIELD)
            if isinstance(marker, Mapping):
                # Done earlier; by this very job when a killed run got that far before its checkpoint.
                ours = not self.dry_run and marker.get("job_id") == self.job_id
                return _Item("migrated" if ours else "already", str(marker.get("origin", "plaintext")))
            try:
                validate_secret_name(name)
            except InvalidInput:
                return self._skip(name, "invalid_name", "the path is not a valid keyops secret name; move it to "
                                  "a name of ASCII letters, digits and '_.@+=,-' segments")
            value = _extract(data, o.field)
            if value is None:
                return self._skip(name, "no_field", f"the secret has no field {o.field!r}")
            decoded = self._decode(name, value.raw)
            if isinstance(decoded, _Item):
                return decoded
            plaintext, origin = decoded
            record: tuple[Mapping[str, Any], int] | _Item | None
            if o.mode == "cutover":
                record = self._current_copy(name, plaintext)
            else:
                record = self._copy(name, plaintext, origin, source_version)
            if record is None:
                continue  # someone wrote the record meanwhile: look at both again
            if isinstance(record, _Item):
                return record
            if o.mode == "copy" or self.dry_run:
                return _Item("migrated", origin)
            marker_doc = _marker_document(data, value, {
                "tenant": o.tenant, "secret": name, "mount": k.store.kv_mount, "path": secret_path(o.tenant, name),
                "record_version": record[1], "source_version": source_version, "origin": origin,
                "value": value.how, "job_id": self.job_id, "migrated_at": format_time(k.clock())})
            try:
                # Check-and-set on the version read above: a source changed since then keeps its new value.
                k.store.write(path, marker_doc, cas=source_version, mount=o.mount)
            except Conflict:
                continue  # the source changed since we read it: look at its new value
            return _Item("migrated", origin)
        raise Conflict(f"{origin_ref!r} kept changing during its migration; re-run when its writers are quieter")

    def _copy(self, name: str, plaintext: bytes, origin: str,
              source_version: int) -> tuple[Mapping[str, Any], int] | _Item | None:
        """Steps 2 and 3: the record holding ``plaintext``, checked as stored (None: a writer raced us).

        In ``copy`` mode a record that already holds the value is reported as
        ``already`` (nothing written); a dry run writes nothing.
        """
        k, o = self.k, self.o
        origin_ref = f"{o.mount}/{self.source_path(name)}"
        record_path = secret_path(o.tenant, name)
        existing = k.store.read(record_path)
        write_cas: int | None = 0
        if existing is not None:
            if self._holds(name, existing[0], plaintext):
                write_cas = None  # already in place (a killed run wrote it, or it was there)
            elif existing[0].get(ORIGIN_FIELD) == origin_ref:
                write_cas = existing[1]  # ours, from an older value of the source: the source wins
            else:
                return self._skip(name, "exists", f"tenant {o.tenant!r} already has a secret of this name with "
                                  "another value; rename one of them, then re-run")
        if write_cas is None and o.mode == "copy":
            return _Item("already", origin)
        if self.dry_run:
            return _Item("migrated", origin)
        if write_cas is not None:
            ct = k.encrypt_record(o.tenant, plaintext, secret_context(name))
            try:
                k.write_record(o.tenant, name, ct, cas=write_cas,
                               extra={ORIGIN_FIELD: origin_ref, "migrated_from_version": source_version})
            except Conflict:
                return None
        # Read back what is stored and check it before the source is touched.
        back = k.store.read(record_path)
        if back is None or not self._holds(name, back[0], plaintext):
            if back is not None and back[0].get(ORIGIN_FIELD) == origin_ref and back[0].get(
                    "migrated_from_version") == source_version:
                raise KeyStateError(f"the keyops record of {origin_ref!r} did not decrypt back to the source's "
                                    "value; the source was left as it was")
            return None  # changed by someone else between our write and the read-back
        return back

    def _current_copy(self, name: str, plaintext: bytes) -> tuple[Mapping[str, Any], int] | _Item:
        """The cut-over's check: the record exists and holds the source's value as read just now."""
        o = self.o
        record = self.k.store.read(secret_path(o.tenant, name))
        if record is None:
            return self._skip(name, "not_copied", "no keyops record of this secret yet; copy it first (keyops "
                              "migrate without --cut-over), then cut over")
        if not self._holds(name, record[0], plaintext):
            return self._skip(name, "stale", "the keyops record does not hold the source's current value (the "
                              "source changed since it was copied, or the record did); the source was left as "
                              "it was: copy again, then cut over")
        return record

    def _skip(self, name: str, reason: str, detail: str) -> _Item:
        return _Item("skipped", skipped=Skipped(name, reason, detail))

    def _holds(self, name: str, record: Mapping[str, Any], plaintext: bytes) -> bool:
        """Whether a keyops record decrypts to ``plaintext`` (False for one that does not decrypt at all)."""
        text = record.get("ciphertext")
        if not isinstance(text, str):
            return False
        try:
            return self.k.decrypt(self.o.tenant, text, secret_context(name)) == plaintext
        except (DecryptionError, MalformedCiphertext, NotFound, KeyStateError):
            return False

    def _decode(self, name: str, raw: Any) -> tuple[bytes, str] | _Item:
        o = self.o
        if isinstance(raw, str):
            match = _TRANSIT_RE.match(raw) if o.kind != "plaintext" else None
            if match is not None:
                return self._transit_decrypt(raw, int(match.group(1)), match.group(2)), "transit"
            if o.kind == "transit":
                return self._skip(name, "not_transit", "the value is not a Vault Transit ciphertext (vault:vN:...)")
            return raw.encode("utf-8"), "plaintext"
        if o.kind == "transit":
            return self._skip(name, "not_transit", "the value is not a Vault Transit ciphertext (vault:vN:...)")
        return _canonical_json(raw), "plaintext"

    def _transit_decrypt(self, ciphertext: str, version: int, payload: str) -> bytes:
        o = self.o
        if o.transit_key is None:
            raise InvalidInput("found a Vault Transit ciphertext but no Transit key was given: pass transit_key "
                               "(--transit-key), or kind 'plaintext' to keep such values as they are")
        local = self._local_kek(version)
        if local is not None:
            try:
                sealed = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DecryptionError() from exc
            return local.open(sealed, o.transit_context)
        return _transit_decrypt(self.k, o.transit_mount, o.transit_key, ciphertext, o.transit_context)

    def _local_kek(self, transit_version: int) -> crypto.AeadKey | None:
        """The tenant's own Transit KEK version, from its escrow copy: no Transit call needed."""
        o, keyring = self.o, self.keyring
        if (keyring.policy.kek_residence != "transit" or o.transit_key != transit_key_name(o.tenant)
                or o.transit_mount != self.k.store.transit_mount):
            return None
        for kv in keyring.kek.versions:
            if (kv.transit_version or kv.version) == transit_version and kv.usable_for_decrypt:
                return self.k.hierarchy.kek_aead(keyring, kv.version)
        return None


def _stored_skipped(checkpoint: Checkpoint) -> list[Skipped]:
    """Items a killed run skipped before its last checkpoint (kept in the checkpoint's result)."""
    return [Skipped(**s) for s in dict(checkpoint.result or {}).get("skipped", ())]


def _extract(data: Mapping[str, Any], field: str | None) -> _Value | None:
    if field is not None:
        return _Value(data[field], f"field:{field}") if field in data else None
    if len(data) == 1:
        key = next(iter(data))
        return _Value(data[key], f"single:{key}")
    return _Value(dict(data), "json")


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _marker_document(data: Mapping[str, Any], value: _Value, meta: dict[str, Any]) -> dict[str, Any]:
    """The source's new version: the marker, plus the keys that were not migrated (``field`` mode)."""
    if value.how.startswith("field:"):
        kept = {key: v for key, v in data.items() if key != value.how[len("field:"):]}
    else:
        kept = {}
    kept[MARKER_FIELD] = meta
    return kept


def _transit_decrypt(k: Keyops, mount: str, key: str, ciphertext: str, context: bytes) -> bytes:
    try:
        return k.store.transit_decrypt(key, ciphertext, context, mount=mount)
    except TransitNotAuthentic as exc:
        raise DecryptionError() from exc  # wrong key, context or a damaged ciphertext: one opaque error


# --- purge ---------------------------------------------------------------------------------


def purge_sources(k: Keyops, tenant: str, source: str, *, source_mount: str | None = None,
                  workers: int = DEFAULT_WORKERS, dry_run: bool = False,
                  progress: ProgressCallback | None = None) -> int:
    """Destroy the original versions of migrated sources below ``source``; keep each marker.

    Only a source whose latest version is a keyops marker of ``tenant``, and
    whose keyops record exists and decrypts, is purged; and only its versions
    up to the one that was migrated. Returns how many sources were purged (or
    would be, in a dry run). Idempotent: destroyed versions stay destroyed.
    """
    tenant = validate_tenant(tenant)
    workers = validate_pool(workers, 1)[0]
    mount = (source_mount or k.store.kv_mount).strip("/")
    prefix = source.strip("/")
    if not prefix:
        raise InvalidInput("the source must be a non-empty KV path prefix")

    def purge_one(name: str) -> bool:
        path = f"{prefix}/{name}"
        found = k.store.read(path, mount=mount)
        marker = found[0].get(MARKER_FIELD) if found else None
        if not isinstance(marker, Mapping) or marker.get("tenant") != tenant:
            return False
        record = k.read_record(tenant, str(marker.get("secret")))
        if record is None:
            return False
        k.decrypt(tenant, record.ciphertext, secret_context(record.name))  # raises unless it decrypts
        migrated_version = int(marker.get("source_version", 0))
        meta = k.store.read_metadata(path, mount=mount) or {}  # None: deleted since it was read
        versions = sorted(int(v) for v, info in (meta.get("versions") or {}).items()
                          if int(v) <= migrated_version and not info.get("destroyed"))
        if not versions:
            return False
        if not dry_run:
            k.store.destroy_versions(path, versions, mount=mount)
        return True

    purged = 0
    clock = PhaseClock(progress, "purge", tenant, "purge", 0)

    def on_item(name: str, done: bool) -> None:
        nonlocal purged
        purged += done
        clock.report(purged)

    with k.audited("migrate.purge", tenant=tenant, source=f"{mount}/{prefix}", dry_run=dry_run) as event:
        run_batches(iter_names(k.store, prefix, mount=mount), purge_one, workers=workers,
                    batch_size=DEFAULT_BATCH_SIZE, on_item=on_item, on_batch=lambda last: None,
                    describe=lambda name, exc: f"purging the migrated source {mount}/{prefix}/{name} stopped: {exc}",
                    stall=k.config.job_stall_timeout)
        event["purged"] = purged
    return purged
