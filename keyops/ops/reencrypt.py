"""Re-encryption: move every secret of a tenant to its primary DEK, losing nothing.

Per record: read it (KV version N), decrypt, encrypt under the primary DEK,
write with check-and-set on N. When an application writes the secret
meanwhile, our write loses (``Conflict``); the record is read again and
redone, so the application's value is the one that stays (Invariant 3). A
record already under the target DEK (or a newer one) is left alone.

The walk goes through the tenant's names in sorted order, a listing page per
batch, with a bounded pool of workers; a checkpoint in
``tenants/<tenant>/jobs/<id>`` (see ``keyops.ops.jobs``) records the last name of
the last finished batch. A killed run resumes after it: records of the
batches that were in flight are found under the target DEK and skipped, and
the ``reencrypted_by`` field this job writes into each record lets the
resumed run count them as its own, so counts stay exact and nothing is
rewritten twice.

After the pass, a verification pass reads every record again and counts
references per DEK version (``keyops.ops.references``). Records that an
application wrote meanwhile with an older DEK (a process still spending a
reservation made before the rotation) are moved then. The result names the
old DEK versions that nothing refers to any more: candidates for
``keyops retire``; retiring is not done here.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from keyops import crypto
from keyops.errors import Conflict, InvalidInput, KeyopsError, KeyStateError
from keyops.model.keyring import Keyring
from keyops.model.names import validate_count, validate_tenant
from keyops.model.usage import CLOCK_SKEW_SECONDS, Usage
from keyops.ops.cas import CAS_ATTEMPTS
from keyops.ops.fanout import DEFAULT_TENANT_WORKERS, fan_out
from keyops.ops.front import Keyops, secret_context, secret_path
from keyops.ops.jobs import (
    MAX_WORKERS,
    Checkpoint,
    JobRun,
    count_names,
    find_unfinished,
    iter_names,
    list_jobs,
    new_job_id,
    prune_finished,
    read_job,
    run_batches,
    validate_job_id,
    validate_pool,
)
from keyops.ops.outcomes import TenantFailure, TenantOutcome
from keyops.ops.progress import PhaseClock, ProgressCallback
from keyops.ops.references import dek_reference_names

KIND = "reencrypt"
#: Record field naming the re-encryption job that wrote the record.
JOB_FIELD = "reencrypted_by"
DEFAULT_WORKERS = 4
DEFAULT_BATCH_SIZE = 100


@dataclasses.dataclass(frozen=True)
class ReencryptResult:
    """What a re-encryption job did (counts over all its runs). No secret value, no key.

    ``total`` = ``rewritten`` + ``already_current`` + ``vanished`` (records
    deleted between listing and reading). ``redone_after_conflict`` counts
    records that an application changed while they were being moved (they
    keep the application's value). ``rewritten_late``: records found behind
    the target DEK by the verification pass and moved then. ``references``:
    records per DEK version after the job; ``unreferenced``: older DEK versions
    in ``decrypt_only`` that no record refers to (candidates for retirement);
    ``external``: of those, the ones that encrypted for callers outside the
    store, with their count of such uses (their retirement needs an
    acknowledgement, once applications have rewrapped). ``changed``: this run wrote something (records or the
    checkpoint). In a dry run, ``rewritten`` counts the records that would be rewritten.
    """

    tenant: str
    job_id: str
    dek_version: int
    total: int
    rewritten: int
    already_current: int
    redone_after_conflict: int
    references: dict[int, int]
    dry_run: bool
    resumed: bool
    vanished: int = 0
    rewritten_late: int = 0
    unreferenced: tuple[int, ...] = ()
    changed: bool = False
    external: dict[int, int] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["references"] = {str(v): n for v, n in sorted(self.references.items())}
        out["unreferenced"] = list(self.unreferenced)
        out["external"] = {str(v): n for v, n in sorted(self.external.items())}
        return out

    @classmethod
    def from_job(cls, checkpoint: Checkpoint) -> ReencryptResult:
        """The stored result of a finished job (as reported when it finished)."""
        data = dict(checkpoint.result or {})
        return cls(
            tenant=checkpoint.tenant, job_id=checkpoint.job_id, dek_version=int(data.get("dek_version", 0)),
            total=int(data.get("total", 0)), rewritten=int(data.get("rewritten", 0)),
            already_current=int(data.get("already_current", 0)),
            redone_after_conflict=int(data.get("redone_after_conflict", 0)),
            references={int(v): int(n) for v, n in dict(data.get("references", {})).items()},
            dry_run=False, resumed=True, vanished=int(data.get("vanished", 0)),
            rewritten_late=int(data.get("rewritten_late", 0)),
            unreferenced=tuple(int(v) for v in data.get("unreferenced", ())), changed=False,
            external={int(v): int(n) for v, n in dict(data.get("external", {})).items()})


@dataclasses.dataclass(frozen=True)
class _Moved:
    status: str  # "rewritten" (or would be, in a dry run), "current", "vanished"
    from_version: int | None
    dek_version: int | None  # the record's DEK version afterwards
    conflicts: int




@dataclasses.dataclass(frozen=True)
class ReencryptReport:
    """Re-encryptions of several tenants (``reencrypt_tenants``): each tenant's outcome, in the order given.

    An outcome's ``changed`` is what check mode reports: whether the job
    wrote something, or in a dry run whether it would rewrite a record (the
    dry run's own ``ReencryptResult.changed`` stays False: it wrote nothing).
    """

    dry_run: bool
    outcomes: tuple[TenantOutcome[ReencryptResult], ...]

    @property
    def results(self) -> tuple[ReencryptResult, ...]:
        return tuple(o.result for o in self.outcomes if o.result is not None)

    @property
    def failures(self) -> tuple[TenantFailure, ...]:
        return tuple(o.failure for o in self.outcomes if o.failure is not None)

    @property
    def changed(self) -> bool:
        return any(o.changed for o in self.outcomes)

    @property
    def rewritten(self) -> int:
        """Records re-encrypted across the tenants (in a dry run, that would be)."""
        return sum(r.rewritten for r in self.results)

    def summary(self) -> str:
        tenants = len(self.outcomes)
        if self.failures:
            return f"re-encryption failed for {len(self.failures)} of {tenants} tenants"
        verb = "would re-encrypt" if self.dry_run else "re-encrypted"
        return f"{verb} {self.rewritten} records of {tenants} tenant{'s' if tenants != 1 else ''}"


def reencrypt_tenants(k: Keyops, tenants: Iterable[str], *, tenant_workers: int = DEFAULT_TENANT_WORKERS,
                      workers: int = DEFAULT_WORKERS, batch_size: int = DEFAULT_BATCH_SIZE,
                      job_id: str | None = None, dry_run: bool = False) -> ReencryptReport:
    """Re-encrypt several tenants, up to ``tenant_workers`` at once; outcomes in the order given.

    Tenants are independent jobs, so one failing is reported in its place
    and the others still run. A scheduled rotation over many tenants then
    costs their Vault round trips in parallel, not in sequence. ``job_id``
    names the job to resume (or start) and goes with exactly one tenant.
    """
    if job_id is not None:
        tenants = list(tenants)
        if len(tenants) != 1:
            raise InvalidInput(f"a job id names the job of one tenant, not of {len(tenants)}")
    return ReencryptReport(dry_run, tuple(iter_reencrypt_tenants(
        k, tenants, tenant_workers=tenant_workers, workers=workers, batch_size=batch_size, job_id=job_id,
        dry_run=dry_run)))


def iter_reencrypt_tenants(k: Keyops, tenants: Iterable[str], *, tenant_workers: int = DEFAULT_TENANT_WORKERS,
                           workers: int = DEFAULT_WORKERS, batch_size: int = DEFAULT_BATCH_SIZE,
                           job_id: str | None = None,
                           dry_run: bool = False) -> Iterator[TenantOutcome[ReencryptResult]]:
    """Each tenant's outcome as it finishes, in the order given; tenants pulled as workers free up.

    What the process holds does not grow with the tenants (``keyops.ops.fanout``):
    a run over 10,000 tenants keeps a few dozen jobs' state at once.
    """
    validate_count(tenant_workers, "tenant_workers", MAX_WORKERS)

    def one(tenant: str) -> TenantOutcome[ReencryptResult]:
        try:
            result = reencrypt(k, tenant, workers=workers, batch_size=batch_size, job_id=job_id, dry_run=dry_run)
        except KeyopsError as exc:
            return TenantOutcome(tenant, failure=TenantFailure.of(tenant, "dek", exc))
        return TenantOutcome(tenant, result.rewritten > 0 if dry_run else result.changed, result)

    for _, outcome in fan_out(tenants, one, workers=tenant_workers, stall=k.config.job_stall_timeout, k=k,
                              tenant_of=lambda tenant: tenant):
        yield outcome


def reencrypt(k: Keyops, tenant: str, *, workers: int = DEFAULT_WORKERS, batch_size: int = DEFAULT_BATCH_SIZE,
              job_id: str | None = None, dry_run: bool = False,
              progress: ProgressCallback | None = None) -> ReencryptResult:
    """Move every secret of ``tenant`` to the primary DEK; resume the tenant's unfinished job if any.

    With ``job_id``, that job is resumed (or started under that id); a
    finished job is reported as it finished, with ``changed=False``. A dry
    run reads every record, writes nothing and counts what would move.
    """
    tenant = validate_tenant(tenant)
    k.authorize("reencrypt", tenant)  # before the job listing and reads below, not only at the audited step
    workers, batch_size = validate_pool(workers, batch_size)
    if job_id is not None:
        validate_job_id(job_id)
    # A fresh read: this process then encrypts with the current primary at once. A job that will write
    # reads the usage document first, so that its reservation starts from both without reading them again.
    since = time.monotonic()
    keyring = k.read_keyring(tenant)[0] if dry_run else k.read_for_reservation(tenant)
    target = keyring.dek.primary
    if keyring.dek.primary_key.state != "active":
        raise KeyStateError(f"the primary DEK (version {target}) of tenant {tenant!r} is "
                            f"{keyring.dek.primary_key.state}; rotate the DEK before re-encrypting")
    _warm_keys(k, keyring)
    if dry_run:
        return _dry_run(k, tenant, target, job_id or new_job_id(KIND, k.clock()), workers, batch_size, progress)

    run, job_ids = _open_job(k, tenant, job_id, target)
    if run is None:
        assert job_id is not None
        found = read_job(k, tenant, job_id)
        assert found is not None
        return ReencryptResult.from_job(found[0])
    job = _Job(k, tenant, target, run, workers, batch_size, progress, keyring, since, job_ids)
    k.expect_uses(tenant, batch_size)  # each batch re-encrypts up to that many records: reserve for one at once
    with k.audited("reencrypt.start", tenant=tenant, level="dek", versions=[target],
                   job_id=run.checkpoint.job_id, resumed=run.resumed):
        pass
    with k.audited("reencrypt.finish", tenant=tenant, level="dek", versions=[target],
                   job_id=run.checkpoint.job_id) as event:
        result = job.run()
        event.update(rewritten=result.rewritten, total=result.total, unreferenced=list(result.unreferenced))
    return result


def _warm_keys(k: Keyops, keyring: Keyring) -> None:
    """Unwrap the usable DEKs once, here, rather than in every worker at once on its first record."""
    for kv in keyring.dek.versions:
        if kv.usable_for_decrypt:
            k.dek(keyring.tenant, kv.version)


def _open_job(k: Keyops, tenant: str, job_id: str | None, target: int) -> tuple[JobRun | None, list[str] | None]:
    """The job to run: the named one, else the tenant's unfinished one, else a new one. None: named and done.

    With it, the tenant's job ids as listed now, the job's own included (None: not listed).
    """
    found = None
    job_ids = None
    if job_id is not None:
        found = read_job(k, tenant, job_id)
        if found is not None and found[0].kind != KIND:
            raise InvalidInput(f"job {job_id!r} of tenant {tenant!r} is a {found[0].kind} job, not a re-encryption")
        if found is not None and found[0].state != "running":
            return None, None
    else:
        job_ids = list_jobs(k, tenant)
        found = find_unfinished(k, tenant, KIND, job_ids=job_ids)
    if found is None:
        checkpoint = Checkpoint.start(job_id or new_job_id(KIND, k.clock()), KIND, tenant,
                                      {"dek_version": target}, k.clock())
        return JobRun(k, checkpoint), None if job_ids is None else [*job_ids, checkpoint.job_id]
    checkpoint, version = found
    checkpoint = checkpoint.resumed(k.clock())
    if int(checkpoint.params.get("dek_version", 0)) != target:
        # The DEK was rotated again since the job started: walk again, towards the new primary.
        checkpoint = checkpoint.with_params({"dek_version": target}, k.clock())
    run = JobRun(k, checkpoint, version, resumed=True)
    run.save()  # claims the job: a second runner of the same job loses its next check-and-set
    return run, job_ids


class _Job:
    def __init__(self, k: Keyops, tenant: str, target: int, run: JobRun, workers: int, batch_size: int,
                 progress: ProgressCallback | None, keyring: Keyring, since: float,
                 job_ids: list[str] | None) -> None:
        self.keyring = keyring  # as read when the job started, after the usage document
        self.since = since
        self.job_ids = job_ids
        self.k = k
        self.tenant = tenant
        self.target = target
        self.run_ = run
        self.workers = workers
        self.batch_size = batch_size
        self.progress = progress
        self.job_id = run.checkpoint.job_id
        self.base = secret_path(tenant, "").rstrip("/")

    def move(self, name: str) -> _Moved:
        return _move_one(self.k, self.tenant, name, self.target, self.job_id, dry_run=False)

    def describe(self, name: str, exc: KeyopsError) -> str:
        return (f"re-encryption job {self.job_id!r} of tenant {self.tenant!r} stopped at secret {name!r}: {exc} "
                f"(the checkpoint keeps the finished batches; fix the cause and re-run "
                f"'keyops reencrypt --tenant {self.tenant}' to resume)")

    def run(self) -> ReencryptResult:
        run = self.run_
        whole_pass = run.checkpoint.phase == "pass" and not run.checkpoint.cursor
        started = dt.datetime.now(dt.UTC)
        seen: collections.Counter[int] = collections.Counter()
        if run.checkpoint.phase == "pass":
            seen = self._pass()  # its last batch is staged, not written: the next write carries it
        base = self.k.reservation_base(self.tenant, self.since, self.target) if whole_pass else None
        if whole_pass and self._no_late_writes(started, base):
            # Every record was read after any write under an older DEK had landed: the pass saw them
            # all, so reading them again would find nothing to move (and a retire counts for itself).
            # The job goes from its pass to its end in one write: a crash before it resumes the pass,
            # which finds every record it had moved marked as its own.
            references, late = {v: n for v, n in sorted(seen.items()) if n > 0}, 0
            keyring, usage = (self.keyring, base) if base is not None else (None, None)
        else:
            if run.checkpoint.phase == "pass":
                run.update(run.checkpoint.with_phase("verify", self.k.clock(), reset_cursor=False))
            references, late = self._verify()
            keyring, usage = None, None
        # The keyring and usage document the decision above rested on also name the candidates for
        # retirement (a report: retire checks every state and count again itself).
        unreferenced = _unreferenced(self.k, self.tenant, references, keyring)
        counts = collections.Counter(dict(run.checkpoint.counts))
        result = ReencryptResult(
            tenant=self.tenant, job_id=self.job_id, dek_version=self.target,
            total=counts["rewritten"] + counts["current"] + counts["vanished"],
            rewritten=counts["rewritten"], already_current=counts["current"],
            redone_after_conflict=counts["conflicted"], references=references, dry_run=False,
            resumed=run.resumed, vanished=counts["vanished"], rewritten_late=late,
            unreferenced=unreferenced, changed=run.touched,
            external=_external_uses(self.k, self.tenant, unreferenced, keyring, usage))
        run.update(run.checkpoint.finish(result.to_dict(), self.k.clock()))
        prune_finished(self.k, self.tenant, known=self.job_ids)
        return result

    def _pass(self) -> collections.Counter[int]:
        run = self.run_
        cursor = run.checkpoint.cursor
        before, total = count_names(self.k.store, self.base, cursor) if self.progress else (0, 0)
        clock = PhaseClock(self.progress, self.job_id, self.tenant, "reencrypt", total, before)
        pending: collections.Counter[str] = collections.Counter()
        done = before

        seen: collections.Counter[int] = collections.Counter()  # records per DEK version, as the pass left them

        def on_item(name: str, moved: _Moved) -> None:
            nonlocal done
            done += 1
            pending[moved.status] += 1
            pending["conflicted"] += moved.conflicts > 0
            if moved.status == "rewritten":
                run.touch()
            if moved.dek_version is not None:
                seen[moved.dek_version] += 1
            clock.report(done)

        def on_batch(last: str) -> None:
            run.update(run.checkpoint.advance(last, pending, self.k.clock()))
            pending.clear()

        def on_last_batch(last: str) -> None:
            run.stage(run.checkpoint.advance(last, pending, self.k.clock()))
            pending.clear()

        run_batches(iter_names(self.k.store, self.base, cursor, page=self.batch_size), self.move,
                    workers=self.workers, batch_size=self.batch_size, on_item=on_item, on_batch=on_batch,
                    describe=self.describe, stall=self.k.config.job_stall_timeout, on_last_batch=on_last_batch)
        return seen

    def _no_late_writes(self, started: dt.datetime, base: Usage | None) -> bool:
        """No process can have written a record under a DEK older than the target since the pass started.

        The usage document's leases bound every write under a version (a
        process writes no ciphertext of it after its lease, and a closed
        process ends its lease at once); counts kept in the keyring before
        the usage document carry no lease, so they answer no. ``base``: the
        usage document this job's own reservation was written over, which
        holds every lease of an older version there will ever be
        (``Keyops.reservation_base``); without it, the document is read now.
        """
        keyring = self.keyring if base is not None else self.k.read_keyring(self.tenant)[0]
        older = [kv for kv in keyring.dek.versions if kv.version < self.target]
        if any(kv.uses for kv in older):
            return False
        usage = base if base is not None else self.k.read_usage(self.tenant)[0]
        end = usage.leases_end(kv.version for kv in older)
        return end is None or end + dt.timedelta(seconds=CLOCK_SKEW_SECONDS) < started

    def _verify(self) -> tuple[dict[int, int], int]:
        """Count references per DEK version; move records found behind the target (written late)."""
        clock = PhaseClock(self.progress, self.job_id, self.tenant, "verify", 0)

        def report(done: int, total: int) -> None:
            clock.total = total
            clock.report(done)

        by_version = dek_reference_names(self.k, self.tenant, workers=self.workers, progress=report)
        references = {version: len(names) for version, names in by_version.items()}
        lagging = sorted(name for version, names in by_version.items() if version < self.target for name in names)
        late = 0
        if lagging:
            def on_item(name: str, moved: _Moved) -> None:
                nonlocal late
                if moved.from_version is not None:
                    references[moved.from_version] -= 1
                if moved.dek_version is not None:
                    references[moved.dek_version] = references.get(moved.dek_version, 0) + 1
                if moved.status == "rewritten":
                    late += 1
                    self.run_.touch()

            run_batches(lagging, self.move, workers=self.workers, batch_size=self.batch_size, on_item=on_item,
                        on_batch=lambda last: None, describe=self.describe,
                        stall=self.k.config.job_stall_timeout)
        return {v: n for v, n in sorted(references.items()) if n > 0}, late


def _move_one(k: Keyops, tenant: str, name: str, target: int, job_id: str, dry_run: bool) -> _Moved:
    """Move one record to DEK ``target`` (or newer) with check-and-set; redo after a lost race."""
    path = secret_path(tenant, name)
    context = secret_context(name)
    conflicts = 0
    for _ in range(CAS_ATTEMPTS):
        found = k.store.read(path)
        if found is None:
            return _Moved("vanished", None, None, conflicts)
        data, kv_version = found
        text = data.get("ciphertext")
        if not isinstance(text, str):
            raise InvalidInput(f"secret {name!r} of tenant {tenant!r} is not a keyops record (no ciphertext); "
                               "move it out of the tenant's secrets or delete it")
        version = crypto.Ciphertext.parse(text).dek_version
        if version >= target:
            ours = not dry_run and data.get(JOB_FIELD) == job_id  # written by an earlier, killed run of this job
            return _Moved("rewritten" if ours else "current", version, version, conflicts)
        plaintext = k.decrypt(tenant, text, context)
        if dry_run:
            return _Moved("rewritten", version, version, conflicts)
        ct = _encrypt_at_least(k, tenant, plaintext, context, target)
        try:
            k.write_record(tenant, name, ct, cas=kv_version, extra={JOB_FIELD: job_id})
        except Conflict:
            conflicts += 1  # an application wrote it meanwhile: its value wins; read it again
            continue
        return _Moved("rewritten", version, ct.dek_version, conflicts)
    raise Conflict(f"secret {name!r} of tenant {tenant!r} changed {CAS_ATTEMPTS} times while it was being "
                   "re-encrypted; re-run when its writers are quieter")


def _encrypt_at_least(k: Keyops, tenant: str, plaintext: bytes, context: bytes, target: int) -> crypto.Ciphertext:
    ct = k.encrypt_record(tenant, plaintext, context)
    if ct.dek_version < target:
        # This process still held a reservation of an older DEK: a fresh keyring read retires it.
        k.read_keyring(tenant)
        ct = k.encrypt_record(tenant, plaintext, context)
        if ct.dek_version < target:
            raise KeyStateError(f"tenant {tenant!r} encrypts with DEK version {ct.dek_version}, older than the "
                                f"target {target}; check the keyring with 'keyops tenant show {tenant}'")
    return ct


def _external_uses(k: Keyops, tenant: str, versions: tuple[int, ...], keyring: Keyring | None = None,
                   usage: Usage | None = None) -> dict[int, int]:
    """Uses handed to callers outside the store per version (a count kept before the usage document counts too).

    ``keyring`` and ``usage`` (else read now) may be older than the job's end: no use of a version
    older than the primary is reserved after the reservation a ``usage`` came from was written.
    """
    if not versions:
        return {}
    usage = usage if usage is not None else k.read_usage(tenant)[0]
    keyring = keyring if keyring is not None else k.read_keyring(tenant)[0]
    out = {v: usage.get(v).external or keyring.dek.get(v).uses for v in versions}
    return {v: n for v, n in out.items() if n}


def _unreferenced(k: Keyops, tenant: str, references: Mapping[int, int],
                  keyring: Keyring | None = None) -> tuple[int, ...]:
    keyring = keyring if keyring is not None else k.read_keyring(tenant)[0]
    return tuple(kv.version for kv in keyring.dek.versions
                 if kv.version != keyring.dek.primary and kv.state == "decrypt_only"
                 and references.get(kv.version, 0) == 0)


def _dry_run(k: Keyops, tenant: str, target: int, job_id: str, workers: int, batch_size: int,
             progress: ProgressCallback | None) -> ReencryptResult:
    base = secret_path(tenant, "").rstrip("/")
    total = count_names(k.store, base)[1] if progress else 0
    clock = PhaseClock(progress, job_id, tenant, "reencrypt", total)
    counts: collections.Counter[str] = collections.Counter()
    references: collections.Counter[int] = collections.Counter()

    def on_item(name: str, moved: _Moved) -> None:
        counts[moved.status] += 1
        if moved.from_version is not None:
            references[moved.from_version] += 1
        clock.report(sum(counts.values()))

    run_batches(iter_names(k.store, base, page=batch_size),
                lambda name: _move_one(k, tenant, name, target, job_id, dry_run=True),
                workers=workers, batch_size=batch_size, on_item=on_item, on_batch=lambda last: None,
                describe=lambda name, exc: f"dry run of the re-encryption of tenant {tenant!r} stopped at "
                                           f"secret {name!r}: {exc}", stall=k.config.job_stall_timeout)
    # Before the move, old versions are still referenced; none would be once the records moved.
    unreferenced = _unreferenced(k, tenant, {target: 1})
    return ReencryptResult(
        tenant=tenant, job_id=job_id, dek_version=target,
        total=counts["rewritten"] + counts["current"] + counts["vanished"], rewritten=counts["rewritten"],
        already_current=counts["current"], redone_after_conflict=0, references=dict(sorted(references.items())),
        dry_run=True, resumed=False, vanished=counts["vanished"],
        unreferenced=unreferenced, changed=False, external=_external_uses(k, tenant, unreferenced))
