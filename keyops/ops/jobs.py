"""Job checkpoints, cursor-ordered listing and the batch pipeline of long jobs.

A re-encryption or a migration walks names in sorted order, a batch at a
time, with a bounded pool of workers. After every batch whose items are all
finished, the job's checkpoint at ``tenants/<tenant>/jobs/<id>`` moves its
cursor to the batch's last name (check-and-set on the version it wrote
last). A killed run therefore loses at most the batches in flight; the next
run resumes after the cursor, and finds the items it had already done in
those batches done (each item's step is itself idempotent and
check-and-set), so nothing is done twice.

Checkpoint document (no secret value, no key material)::

    {"schema": 1, "job_id": "reencrypt-20250101T000000Z-1a2b3c", "kind": "reencrypt",
     "tenant": "acme", "state": "running" | "done", "phase": "pass" | "verify" | ...,
     "params": {...}, "cursor": "<last finished name, sorted order>",
     "counts": {"rewritten": 10, ...}, "runs": 2, "created_at": "...", "updated_at": "...",
     "result": {...}}

A checkpoint is written only once a job has changed something, so a run
with nothing to do leaves no trace in KV.

Listing uses OpenBao's paginated ``LIST`` (``after``/``limit``), a page per
batch; a server that ignores those parameters (HashiCorp Vault) returns all
keys at once, and the page is cut here instead.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from keyops.backends.vault import VaultStore
from keyops.errors import Conflict, InvalidInput, JobFailed, KeyopsError, PermissionDenied
from keyops.model.keyring import format_time, utcnow
from keyops.model.names import validate_count
from keyops.ops.front import Keyops, jobs_path

JOB_SCHEMA = 1
KINDS = ("reencrypt", "migrate")
RUNNING, DONE = "running", "done"
STATES = (RUNNING, DONE)
MAX_JOB_ID_LEN = 80
DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 1000
MAX_WORKERS = 64

_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not 1 <= len(job_id) <= MAX_JOB_ID_LEN or not _JOB_ID_RE.fullmatch(job_id):
        raise InvalidInput(f"invalid job id: use 1-{MAX_JOB_ID_LEN} ASCII letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return job_id


def new_job_id(kind: str, now: Any = None) -> str:
    """Sortable by start time, unique across processes: ``<kind>-<UTC stamp>-<random>``."""
    stamp = (now or utcnow()).strftime("%Y%m%dT%H%M%SZ")
    return f"{kind}-{stamp}-{secrets.token_hex(3)}"


def validate_pool(workers: object, batch_size: object) -> tuple[int, int]:
    return validate_count(workers, "workers", MAX_WORKERS), validate_count(batch_size, "batch_size", MAX_BATCH_SIZE)


# --- the checkpoint ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One job's state. Immutable: every step returns a new checkpoint."""

    job_id: str
    kind: str
    tenant: str
    params: Mapping[str, Any]
    created_at: str
    updated_at: str
    state: str = RUNNING
    phase: str = "pass"
    cursor: str = ""  # every name <= cursor (sorted order) is finished; "" = none yet
    counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
    runs: int = 1
    #: When done: the job's result. While running: partial results that are not counts (skipped items).
    result: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_job_id(self.job_id)
        if self.kind not in KINDS:
            raise InvalidInput(f"job kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.state not in STATES:
            raise InvalidInput(f"job state must be one of {', '.join(STATES)}, not {self.state!r}")

    @classmethod
    def start(cls, job_id: str, kind: str, tenant: str, params: Mapping[str, Any], now: Any = None,
              phase: str = "pass") -> Checkpoint:
        stamp = format_time(now or utcnow())
        return cls(validate_job_id(job_id), kind, tenant, dict(params), stamp, stamp, phase=phase)

    @property
    def finished(self) -> int:
        """Items finished in the current phase's count (``counts['finished']``)."""
        return int(self.counts.get("finished", 0))

    def advance(self, cursor: str, counts: Mapping[str, int], now: Any = None) -> Checkpoint:
        """Move the cursor forward (never back) and add ``counts`` to the job's counts."""
        if self.state != RUNNING:
            raise InvalidInput(f"job {self.job_id!r} is {self.state}; it does not advance")
        if cursor < self.cursor:
            raise InvalidInput(f"job {self.job_id!r}: the cursor cannot move back")
        merged = collections.Counter(dict(self.counts))
        merged.update(dict(counts))
        return dataclasses.replace(self, cursor=cursor, counts=dict(merged), updated_at=format_time(now or utcnow()))

    def with_phase(self, phase: str, now: Any = None, reset_cursor: bool = True) -> Checkpoint:
        return dataclasses.replace(self, phase=phase, cursor="" if reset_cursor else self.cursor,
                                   updated_at=format_time(now or utcnow()))

    def with_params(self, params: Mapping[str, Any], now: Any = None) -> Checkpoint:
        """New parameters restart the walk (e.g. the primary DEK moved on while the job slept)."""
        return dataclasses.replace(self, params=dict(params), cursor="", phase="pass",
                                   updated_at=format_time(now or utcnow()))

    def resumed(self, now: Any = None) -> Checkpoint:
        return dataclasses.replace(self, runs=self.runs + 1, updated_at=format_time(now or utcnow()))

    def finish(self, result: Mapping[str, Any], now: Any = None) -> Checkpoint:
        return dataclasses.replace(self, state=DONE, phase="done", result=dict(result),
                                   updated_at=format_time(now or utcnow()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": JOB_SCHEMA}
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        out["params"], out["counts"] = dict(self.params), dict(self.counts)
        if self.result is None:
            del out["result"]
        else:
            out["result"] = dict(self.result)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Checkpoint:
        if data.get("schema") != JOB_SCHEMA:
            raise InvalidInput(f"job checkpoint schema {data.get('schema')!r} is not supported "
                               f"(expected {JOB_SCHEMA})")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            fields = {key: value for key, value in data.items() if key in known}
            fields["counts"] = {str(key): int(value) for key, value in dict(fields.get("counts", {})).items()}
            return cls(**fields)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"job checkpoint is malformed: {exc}") from exc


# --- checkpoints in KV ---------------------------------------------------------------------


def job_path(tenant: str, job_id: str) -> str:
    return f"{jobs_path(tenant)}/{validate_job_id(job_id)}"


def read_job(k: Keyops, tenant: str, job_id: str) -> tuple[Checkpoint, int] | None:
    found = k.store.read(job_path(tenant, job_id))
    if found is None:
        return None
    return Checkpoint.from_dict(found[0]), found[1]


def list_jobs(k: Keyops, tenant: str) -> list[str]:
    return sorted(key for key in k.store.list(jobs_path(tenant)) if not key.endswith("/"))


#: Finished job documents kept per tenant (the newest ones), so that the jobs
#: folder, and the search for an unfinished job, stay bounded over years.
KEEP_FINISHED_JOBS = 10


def prune_finished(k: Keyops, tenant: str, keep: int = KEEP_FINISHED_JOBS, known: list[str] | None = None) -> int:
    """Delete finished job documents older than the newest ``keep``; running ones stay. Returns the count.

    Housekeeping after a job finished: a token that may not delete job
    documents leaves them in place, which costs reads later, never data.
    ``known``: the tenant's job ids as listed when the job started, plus its
    own; when they are within ``keep``, no listing is made (a job another
    process started meanwhile is pruned by a later run, if ever needed).
    """
    if known is not None and len(known) <= keep:
        return 0
    deleted = 0
    for job_id in list_jobs(k, tenant)[:-keep or None]:
        try:
            found = read_job(k, tenant, job_id)
            if found is not None and found[0].state == DONE:
                k.store.delete_all_versions(job_path(tenant, job_id))
                deleted += 1
        except (InvalidInput, PermissionDenied):
            continue  # a foreign document, or a role without delete rights: leave it
    return deleted


def find_unfinished(k: Keyops, tenant: str, kind: str, match: Callable[[Checkpoint], bool] = lambda _: True,
                    job_ids: list[str] | None = None) -> tuple[Checkpoint, int] | None:
    """The newest running job of ``kind`` for ``tenant`` that ``match`` accepts (among ``job_ids`` if given)."""
    for job_id in reversed(list_jobs(k, tenant) if job_ids is None else job_ids):
        try:
            found = read_job(k, tenant, job_id)
        except InvalidInput:
            continue  # a foreign or damaged document under jobs/ is not ours to resume
        if found is not None and found[0].kind == kind and found[0].state == RUNNING and match(found[0]):
            return found
    return None


class JobRun:
    """The checkpoint of one run of a job, saved with check-and-set.

    ``version`` is the KV version last read or written (0: not stored yet).
    Saving is deferred until the job has changed something (``touch``), so a
    run that finds nothing to do writes nothing.
    """

    def __init__(self, k: Keyops, checkpoint: Checkpoint, version: int = 0, resumed: bool = False) -> None:
        self.k = k
        self.checkpoint = checkpoint
        self.version = version
        self.resumed = resumed
        self.touched = version > 0

    def touch(self) -> None:
        self.touched = True

    def update(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.save()

    def stage(self, checkpoint: Checkpoint) -> None:
        """Take ``checkpoint`` as the job's state without writing it: the next ``update`` writes both."""
        self.checkpoint = checkpoint

    def save(self) -> None:
        if not self.touched:
            return
        cp = self.checkpoint
        try:
            self.version = self.k.store.write(job_path(cp.tenant, cp.job_id), cp.to_dict(), cas=self.version)
        except Conflict as exc:
            raise Conflict(f"job {cp.job_id!r} of tenant {cp.tenant!r} was changed by another process (is the "
                           "same job running twice?); let that run finish, then re-run to check") from exc


# --- listing in sorted order, a page at a time -----------------------------------------------


def list_page(store: VaultStore, path: str, after: str, limit: int, mount: str | None = None) -> tuple[list[str], bool]:
    """Keys under ``path`` strictly after ``after``, at most ``limit``; and whether that was the last page."""
    keys = store.list(path, mount, after=after, limit=limit)
    if len(keys) > limit or (after and keys and keys[0] <= after):
        # The server ignored after/limit (HashiCorp Vault): it sent everything, in order.
        return sorted(key for key in keys if key > after), True
    return keys, len(keys) < limit


def iter_names(store: VaultStore, base: str, after: str = "", page: int = DEFAULT_BATCH_SIZE,
               mount: str | None = None) -> Iterator[str]:
    """Every secret below ``base``, as a name relative to it, in sorted order, strictly after ``after``.

    A depth-first walk over sorted keys yields full names in sorted order,
    because a folder key ``a/`` sorts exactly where the names inside it do.
    """
    base = base.strip("/")

    def walk(folder: str, after: str) -> Iterator[str]:
        start = ""
        if after.startswith(folder):
            segment, slash, _ = after[len(folder):].partition("/")
            if slash:
                yield from walk(f"{folder}{segment}/", after)
                start = segment + "/"
            else:
                start = segment
        while True:
            path = f"{base}/{folder}".strip("/")
            keys, last = list_page(store, path, start, page, mount)
            for key in keys:
                if key.endswith("/"):
                    yield from walk(folder + key, "")
                else:
                    yield folder + key
            if last or not keys:
                return
            start = keys[-1]

    yield from walk("", after)


def count_names(store: VaultStore, base: str, cursor: str = "", page: int = MAX_BATCH_SIZE,
                mount: str | None = None) -> tuple[int, int]:
    """(names <= cursor, all names): listing only, for a progress total without holding every name."""
    before = total = 0
    for name in iter_names(store, base, "", page, mount):
        total += 1
        if cursor and name <= cursor:
            before += 1
    return before, total


def batched(names: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for name in names:
        batch.append(name)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- the pipeline ------------------------------------------------------------------------------

T = TypeVar("T")


@dataclasses.dataclass
class _Batch(Generic[T]):
    names: list[str]
    futures: list[Future[T]]


def run_batches(names: Iterable[str], work: Callable[[str], T], *, workers: int, batch_size: int,
                on_item: Callable[[str, T], None], on_batch: Callable[[str], None],
                describe: Callable[[str, KeyopsError], str], stall: float | None = None,
                on_last_batch: Callable[[str], None] | None = None) -> None:
    """Run ``work`` on every name with a bounded pool, a few batches ahead.

    ``on_item`` and ``on_batch`` (with the batch's last name, once all of the
    batch is finished, in order) run in the calling thread only. The first
    failing item stops the pipeline: items not started are cancelled, those
    running finish, and a ``JobFailed`` naming the item (``describe``) is
    raised. The checkpoint thus never passes an unfinished item. The last
    batch goes to ``on_last_batch`` instead, when given: a job that writes
    its end next saves that write rather than a checkpoint just before it.

    ``stall`` (``KEYOPS_JOB_STALL_TIMEOUT``): when the item the checkpoint
    waits for has not finished this many seconds after the last one did, the
    job stops the same way, with a ``JobFailed`` that says it stalled; items
    still running are left to their own deadlines (every Vault request has
    one), not waited for.
    """
    # Enough queued work to keep every worker busy while the oldest batch drains.
    ahead = max(2, -(-2 * workers // batch_size))
    inflight: collections.deque[_Batch[T]] = collections.deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyops-job")

    progress = [time.monotonic()]  # when an item last finished
    stalled = [False]

    def drain_oldest(last: bool = False) -> None:
        batch = inflight.popleft()
        for name, future in zip(batch.names, batch.futures, strict=True):
            left = None if stall is None else max(0.0, progress[0] + stall - time.monotonic())
            try:
                outcome = future.result(timeout=left)
            except KeyopsError as exc:
                raise JobFailed(describe(name, exc), exc) from exc
            except concurrent.futures.TimeoutError:
                stalled[0] = True
                raise JobFailed(f"the job stalled: item {name!r} did not finish within {stall:g} s "
                                "(KEYOPS_JOB_STALL_TIMEOUT); it stopped at its last checkpoint, run it again to "
                                "resume") from None
            progress[0] = time.monotonic()
            on_item(name, outcome)
        (on_last_batch if last and on_last_batch is not None else on_batch)(batch.names[-1])

    try:
        for names_batch in batched(names, batch_size):
            inflight.append(_Batch(names_batch, [pool.submit(work, name) for name in names_batch]))
            while len(inflight) > ahead:
                drain_oldest()
        while inflight:
            drain_oldest(last=len(inflight) == 1)
    finally:
        # A stalled item is not waited for: its worker ends with its request's deadline.
        pool.shutdown(wait=not stalled[0], cancel_futures=True)
