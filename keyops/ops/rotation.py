"""Rotation at every level of the hierarchy: on demand, and when due by policy.

Each rotation is a short sequence of check-and-set writes, ordered so that a
process killed between any two of them leaves every key usable and every
secret decryptable; a re-run finds the interrupted work and finishes it
instead of starting another rotation (``resumed=True``).

DEK
    A new DEK, wrapped by the primary KEK, becomes primary; older versions
    turn ``decrypt_only``. One write.

KEK, residence ``kv``
    A new KEK (wrapped by the master key) and every DEK version of the tenant
    re-wrapped under it, in memory, in one write. No secret is read or written.

KEK, residence ``transit``
    1. The new KEK, wrapped by the master key (its escrow copy), is written to
       the keyring as primary *before* Transit sees it, so Transit never holds
       a version keyops could not recover.
    2. It is imported into the tenant's Transit key (``import_version``) and
       checked with a probe.
    3. Every DEK version is unwrapped by its old Transit version and wrapped
       by the new one (decrypt, then encrypt: Transit's ``rewrap`` takes no
       associated data), in memory; one write.
    4. ``min_decryption_version`` is raised once no DEK refers to an older
       version.
    Interrupted work shows as DEK versions whose ``parent_version`` is not the
    primary KEK, a Transit key behind the keyring, or a
    ``min_decryption_version`` below what the keyring needs.

Master key
    0. The primary key is probed (wrap, unwrap) by its own root, and the root
       of the next version is checked (HSM login, passphrase present, KMS
       probe), before anything is written: a wrong PIN or passphrase, or an
       unreachable KMS, changes nothing.
    1. Version N+1 is claimed in the registry (state ``pending``, one write),
       so that two rotations never both create a key. It is made under the
       configured root (``keyops.roots``), which it records. Its name carries
       the registry's id (label ``<prefix>-<registry id>-v<N+1>``, CKA_ID
       registry id ‖ N+1); a key already on the token under that name is
       refused before the claim, never adopted. A passphrase version's key
       is made with the claim (wrapped in the entry); a KMS version's key is
       the KMS's.
    2. An HSM key is created (idempotent by label and CKA_ID), permanent for
       PIN holders where the token allows (see ``keyops.backends.hsm``);
       another root's version is probed.
    3. It becomes primary; version N turns ``decrypt_only`` (one write).
    4. Every KEK version (the escrow copies of residence ``transit`` included)
       of every tenant is re-wrapped under it, one write per keyring: under
       another root, this moves the whole hierarchy onto it.
    Interrupted work shows as a ``pending`` version or KEKs wrapped by a
    non-primary master version.

Concurrency: a rotation reads a document at version v and writes it with
``cas=v``. When the write loses, the document is read again: if the primary
moved, another rotation won, and this one raises ``Conflict`` (or, with
``expect_version``, reports ``changed=False``); a write that did not rotate
(a usage reservation, a policy change) is simply retried on the fresh copy.
Because an unfinished rotation looks the same as one still running, each
rotation also holds a lease in KV (``locks/tenants/<tenant>``,
``locks/master``): a second rotation that finds a live lease raises
``Conflict`` instead of "finishing" work that is still under way. A lease
whose holder died (same host, process gone) or expired is taken over, so a
re-run after a crash resumes at once.

``expect_version=N`` rotates only while the primary is still version N, so
CI jobs and Ansible can re-run a rotation without rotating twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from keyops import crypto
from keyops.crypto import b64d, b64e
from keyops.errors import Conflict, InvalidInput, JobFailed, KeyopsError, KeyStateError, NotFound, TenantNotFound
from keyops.model.keyring import TENANT_LEVELS, Escrow, Keyring, age_days, due_rotations, format_time
from keyops.model.master import MASTER_PENDING, MasterRegistry, MasterVersion
from keyops.model.names import validate_count, validate_tenant, validate_version
from keyops.model.paths import LOCKS_PATH, MASTER_PATH, transit_key_name
from keyops.ops import escrow as escrow_ops
from keyops.ops.cas import retry_on_conflict
from keyops.ops.fanout import DEFAULT_TENANT_WORKERS, fan_out
from keyops.ops.front import Keyops
from keyops.ops.jobs import MAX_WORKERS
from keyops.ops.outcomes import TenantFailure, TenantOutcome
from keyops.roots import NAMES as ROOT_NAMES
from keyops.roots import PROBE_CONTEXT
from keyops.wrappers import AeadWrapper, KeyWrapper

PENDING = MASTER_PENDING
_log = logging.getLogger("keyops.ops.rotation")
_DECRYPTING = ("active", "decrypt_only")
#: How long a rotation's lease lasts unless renewed; a crashed holder on another host blocks this long.
LEASE_SECONDS = 120.0
#: Tenants handled at once by ``rotate_due``: each costs a few Vault round
#: trips, and the hvac session's pool keeps 32 connections.
DUE_TENANT_WORKERS = 8


# --- results (no key material in any of them) -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class RotationResult:
    """One tenant-level rotation. ``rewrapped``: DEK versions re-wrapped (KEK rotation)."""

    tenant: str
    level: str
    changed: bool
    old_version: int
    new_version: int
    reason: str
    dry_run: bool
    resumed: bool = False
    rewrapped: int = 0
    detail: str = ""


# The fields from ``changed`` to ``resumed`` repeat RotationResult's on purpose: a base class
# would put them first, and both results are built positionally (MasterRotationResult has no
# tenant, so its ``level`` and ``tenant`` come last, with defaults).
@dataclasses.dataclass(frozen=True)
class MasterRotationResult:
    """A master key rotation. ``tenants``: keyrings whose KEKs were (or would be) re-wrapped."""

    changed: bool
    old_version: int
    new_version: int
    reason: str
    dry_run: bool
    resumed: bool = False
    tenants: tuple[str, ...] = ()
    rewrapped: int = 0
    detail: str = ""
    level: str = "master"
    tenant: str | None = None


#: A tenant (or the master key) whose rotation failed; the others still ran.
DueFailure = TenantFailure


class _Rotations:
    """What a report of rotations says; a result's ``changed`` is already what check mode reports."""

    dry_run: bool
    rotations: tuple[RotationResult | MasterRotationResult, ...]
    failures: tuple[TenantFailure, ...]

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.rotations)

    @property
    def rotated(self) -> tuple[RotationResult | MasterRotationResult, ...]:
        return tuple(r for r in self.rotations if r.changed)

    @property
    def unchanged(self) -> tuple[RotationResult | MasterRotationResult, ...]:
        return tuple(r for r in self.rotations if not r.changed)

    def _done(self, scope: str = "") -> str:
        verb = "would rotate" if self.dry_run else "rotated"
        done = len(self.rotated)
        text = f"{verb} {done} key{'s' if done != 1 else ''}{scope}"
        if self.failures:
            text += f"; {len(self.failures)} failed"
        return text


@dataclasses.dataclass(frozen=True)
class RotationReport(_Rotations):
    """Rotations on demand (``rotate_tenants``): each tenant's result or failure, in the order given."""

    dry_run: bool
    rotations: tuple[RotationResult | MasterRotationResult, ...]
    failures: tuple[TenantFailure, ...]

    def summary(self) -> str:
        return self._done()


@dataclasses.dataclass(frozen=True)
class DueRotationReport(_Rotations):
    """What ``rotate_due`` found due, and what it rotated (or would, in a dry run)."""

    dry_run: bool
    tenants_checked: int
    master_checked: bool
    rotations: tuple[RotationResult | MasterRotationResult, ...]
    failures: tuple[TenantFailure, ...]

    @property
    def nothing_due(self) -> bool:
        return not self.changed and not self.failures

    def summary(self) -> str:
        scope = f"{self.tenants_checked} tenant{'s' if self.tenants_checked != 1 else ''}"
        if self.master_checked:
            scope += " and the master key"
        if self.nothing_due:
            return f"nothing due ({scope} checked)"
        return self._done(f" ({scope} checked)")


# --- pure helpers (no I/O) --------------------------------------------------------------------


def stale_dek_versions(keyring: Keyring) -> list[int]:
    """DEK versions not (yet) wrapped by the primary KEK: work left by an interrupted KEK rotation."""
    return [kv.version for kv in keyring.dek.versions if kv.parent_version != keyring.kek.primary]


def stale_kek_versions(keyring: Keyring, master_primary: int) -> list[int]:
    """KEK versions not (yet) wrapped by the primary master key."""
    return [kv.version for kv in keyring.kek.versions if kv.parent_version != master_primary]


def transit_version_of(keyring: Keyring, kek_version: int) -> int:
    kv = keyring.kek.get(kek_version)
    return kv.transit_version or kv.version


def transit_targets(keyring: Keyring) -> tuple[int, int]:
    """``(min_decryption_version, min_available_version)`` the tenant's Transit key should have.

    Decryption is needed for the Transit versions of the KEKs that wrap a DEK,
    and of the primary; every version below the lowest KEK still in the
    keyring (destroyed ones leave only a tombstone) may be trimmed.
    """
    by_version = {kv.version: kv.transit_version or kv.version for kv in keyring.kek.versions}
    needed = {by_version[keyring.kek.primary]}
    needed.update(by_version[d.parent_version] for d in keyring.dek.versions if d.parent_version in by_version)
    return min(needed), min(by_version.values())


def pending_master_version(registry: MasterRegistry) -> int | None:
    pending = [mv.version for mv in registry.versions if mv.state == PENDING]
    return max(pending) if pending else None


def claim_master_version(registry: MasterRegistry, prefix: str, now: dt.datetime,
                         make: Callable[[MasterRegistry, int], MasterVersion] | None = None) -> MasterRegistry:
    """The registry with version N+1 claimed (``pending``), not yet primary.

    The new version is named by the registry's id (``<prefix>-<id>-v<N+1>``,
    CKA_ID id ‖ N+1); a registry written before ids gets one here. ``make``
    builds the entry under a root (``Roots.new_version``); default: an HSM key.
    """
    registry = registry.with_id()
    version = max(mv.version for mv in registry.versions) + 1
    new = make(registry, version) if make is not None else registry.new_version(prefix, version, now)
    return dataclasses.replace(registry, versions=registry.versions + (new,))


def promote_master_version(registry: MasterRegistry, version: int) -> MasterRegistry:
    """``version`` becomes the primary; the previous primary turns ``decrypt_only``."""
    if registry.primary == version and registry.get(version).state == "active":
        return registry

    def state(mv: MasterVersion) -> MasterVersion:
        if mv.version == version:
            return dataclasses.replace(mv, state="active")
        if mv.state == "active":
            return dataclasses.replace(mv, state="decrypt_only")
        return mv

    return dataclasses.replace(registry, primary=version, versions=tuple(state(mv) for mv in registry.versions))


def master_due(registry: MasterRegistry, now: dt.datetime) -> str | None:
    """Why the master key is due (age against its period), or None."""
    primary = registry.get(registry.primary)
    age = age_days(primary.created_at, now)
    if age >= registry.period_days:
        return f"age: {age:.1f} days old, period {registry.period_days} days"
    return None


# --- leases --------------------------------------------------------------------------------------


class _Lease:
    """A lease in KV on one rotation scope, taken and renewed with check-and-set writes."""

    def __init__(self, k: Keyops, scope: str, what: str, seconds: float = LEASE_SECONDS) -> None:
        self.k = k
        self.path = f"{LOCKS_PATH}/{scope}"
        self.what = what
        self.seconds = seconds
        self.owner = uuid.uuid4().hex
        self.version = 0
        self.renew_at = 0.0

    def _doc(self) -> dict[str, Any]:
        now = time.time()
        return {"owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(), "what": self.what,
                "since": format_time(dt.datetime.now(dt.UTC)), "expires_at": now + self.seconds}

    def acquire(self) -> None:
        def attempt() -> int:
            found = self.k.store.read(self.path)
            cas = 0
            if found is not None:
                holder, cas = found
                if _holder_alive(holder):
                    raise Conflict(
                        f"another {self.what} is in progress (process {holder.get('pid')} on "
                        f"{holder.get('host')!r}, since {holder.get('since')}); this run changed nothing. Re-run "
                        f"when it has finished (the lease of a crashed run on another host expires "
                        f"{max(0, int(float(holder.get('expires_at', 0)) - time.time()))} s from now)")
            return self.k.store.write(self.path, self._doc(), cas=cas)

        self.version = retry_on_conflict(attempt, f"the lease of {self.path}")
        self.renew_at = time.time() + self.seconds / 3

    def renew(self) -> None:
        """Extend the lease when a third of it has passed (cheap to call often)."""
        if time.time() < self.renew_at:
            return
        try:
            self.version = self.k.store.write(self.path, self._doc(), cas=self.version)
        except Conflict as exc:
            raise Conflict(f"the lease of this {self.what} was taken over (it expired); stopped; re-run to "
                           "finish what is left") from exc
        self.renew_at = time.time() + self.seconds / 3

    def release(self) -> None:
        found = self.k.store.read(self.path)
        if found is not None and found[0].get("owner") == self.owner:
            self.k.store.delete_all_versions(self.path)


def _holder_alive(holder: dict[str, Any]) -> bool:
    try:
        if time.time() >= float(holder["expires_at"]):
            return False
        if holder.get("host") == socket.gethostname() and int(holder["pid"]) != os.getpid():
            os.kill(int(holder["pid"]), 0)  # same host: a dead holder is known at once
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    except (KeyError, TypeError, ValueError):
        return False  # not a lease we understand: take it over
    return True


@contextlib.contextmanager
def _leased(k: Keyops, scope: str, what: str) -> Iterator[_Lease]:
    """Hold the lease for the block; a failure to release it never hides what the block did.

    The step that failed is what the caller must hear about, with the release's
    failure after it; after a block that succeeded, a lease that cannot be
    released only runs out by itself (LEASE_SECONDS), so it is logged, not raised.
    """
    lease = _Lease(k, scope, what)
    lease.acquire()
    try:
        yield lease
    except BaseException as exc:
        try:
            lease.release()
        except KeyopsError as also:
            if isinstance(exc, KeyopsError):
                exc.args = (f"{exc}; then releasing the lease of the {what} failed too ({also}); it runs out "
                            f"by itself within {LEASE_SECONDS:.0f} s",)
        raise
    try:
        lease.release()
    except KeyopsError as exc:
        _log.warning("the %s finished, but its lease %s could not be released (%s); it runs out by itself "
                     "within %.0f s", what, lease.path, exc, LEASE_SECONDS)


# --- tenant levels -----------------------------------------------------------------------------


def rotate(k: Keyops, tenant: str, level: Literal["dek", "kek"], *, dry_run: bool = False,
           expect_version: int | None = None, reason: str = "on demand") -> RotationResult:
    """Rotate the tenant's DEK or KEK; finish an interrupted KEK rotation first.

    Raises ``Conflict`` when another rotation of the same level won the race
    (without ``expect_version``; with it, the result is ``changed=False``).
    """
    tenant = validate_tenant(tenant)
    if level not in TENANT_LEVELS:
        raise InvalidInput(f"level must be 'dek' or 'kek' for a tenant rotation, not {level!r} "
                           "(the master key rotates with rotate_master / --level master)")
    if expect_version is not None:
        expect_version = validate_version(expect_version, "expect_version")
    if dry_run:
        return _plan_tenant(k, tenant, level, expect_version, reason)
    with k.audited("rotate", tenant=tenant, level=level, reason=reason) as event, \
            _leased(k, f"tenants/{tenant}", f"rotation of tenant {tenant!r}"):
        result = _rotate_tenant(k, tenant, level, expect_version, reason)
        event.update(versions={"old": result.old_version, "new": result.new_version},
                     changed=result.changed, resumed=result.resumed)
    return result


def resume(k: Keyops, tenant: str, *, dry_run: bool = False,
           reason: str = "finish an interrupted rotation") -> RotationResult | None:
    """Finish an interrupted KEK rotation of ``tenant``; None when there is nothing to finish."""
    tenant = validate_tenant(tenant)
    keyring, _ = k.read_keyring(tenant)
    _require_complete(keyring)
    work = _kek_work(k, keyring)
    if not work:
        return None
    if dry_run:
        return _resumed_result(keyring, reason, True, len(stale_dek_versions(keyring)), work)
    with k.audited("rotate", tenant=tenant, level="kek", reason=reason) as event, \
            _leased(k, f"tenants/{tenant}", f"rotation of tenant {tenant!r}"):
        keyring, revision = k.read_keyring(tenant)
        work = _kek_work(k, keyring)
        stale = len(stale_dek_versions(keyring))
        if work:
            keyring, revision = _finish_kek(k, keyring, revision)
        result = _resumed_result(keyring, reason, False, stale, work)
        event.update(versions={"old": result.old_version, "new": result.new_version}, changed=bool(work),
                     resumed=True)
    return result if work else None


def _require_complete(keyring: Keyring) -> None:
    if keyring.kek.empty or keyring.dek.empty:
        raise KeyStateError(f"tenant {keyring.tenant!r} is half-made (no KEK or DEK yet); re-run "
                            f"'keyops tenant create {keyring.tenant}' with its policy first")


def _kek_work(k: Keyops, keyring: Keyring) -> list[str]:
    """What an interrupted KEK rotation left to do, in words (empty: nothing)."""
    work: list[str] = []
    primary = keyring.kek.primary
    transit = keyring.policy.kek_residence == "transit"
    name = transit_key_name(keyring.tenant)
    info = k.store.transit_read_key(name) if transit else None
    if transit:
        tv = transit_version_of(keyring, primary)
        latest = int(info["latest_version"]) if info else 0
        if latest < tv:
            work.append(f"import KEK v{primary} into Transit key {name!r} as version {tv}")
    stale = stale_dek_versions(keyring)
    if stale:
        work.append(f"re-wrap DEK version{'s' if len(stale) > 1 else ''} {_list(stale)} under KEK v{primary}")
    if transit:
        target = transit_targets(_as_rewrapped(keyring))[0]
        if info is not None and int(info.get("min_decryption_version", 1)) < target:
            work.append(f"raise min_decryption_version of Transit key {name!r} to {target}")
    return work


def _as_rewrapped(keyring: Keyring) -> Keyring:
    """The keyring as it will be once every DEK is under the primary KEK (for planning only)."""
    dek = keyring.dek
    for version in stale_dek_versions(keyring):
        dek = dek.replace(dataclasses.replace(dek.get(version), parent_version=keyring.kek.primary))
    return keyring.with_chain("dek", dek)


def _previous_version(keyring: Keyring, level: str) -> int:
    chain = keyring.chain(level)
    older = [kv.version for kv in chain.versions if kv.version < chain.primary]
    return max(older, default=chain.primary - 1)


def _resumed_result(keyring: Keyring, reason: str, dry_run: bool, rewrapped: int,
                    work: list[str]) -> RotationResult:
    verb = "would finish" if dry_run else "finished"
    return RotationResult(
        keyring.tenant, "kek", True, _previous_version(keyring, "kek"), keyring.kek.primary, reason, dry_run,
        resumed=True, rewrapped=rewrapped,
        detail=f"{verb} an interrupted KEK rotation of tenant {keyring.tenant}: {'; '.join(work)}")


def _nothing(tenant: str, level: str, current: int, reason: str, dry_run: bool, why: str) -> RotationResult:
    return RotationResult(tenant, level, False, current, current, reason, dry_run, detail=f"nothing to do: {why}")


def _plan_tenant(k: Keyops, tenant: str, level: str, expect: int | None, reason: str) -> RotationResult:
    keyring, _ = k.read_keyring(tenant)
    _require_complete(keyring)
    work = _kek_work(k, keyring)
    if work and level == "kek":
        return _resumed_result(keyring, reason, True, len(stale_dek_versions(keyring)), work)
    chain = keyring.chain(level)
    if expect is not None and chain.primary != expect:
        return _nothing(tenant, level, chain.primary, reason, True,
                        f"the primary {level.upper()} is v{chain.primary}, not v{expect}")
    new = chain.latest_version + 1
    if level == "dek":
        detail = f"would create DEK v{new} of tenant {tenant}, wrapped by KEK v{keyring.kek.primary}"
        rewrapped = 0
    else:
        rewrapped = len(keyring.dek.versions)
        detail = (f"would create KEK v{new} of tenant {tenant} ({keyring.policy.kek_residence}) and re-wrap "
                  f"{rewrapped} DEK version{'s' if rewrapped != 1 else ''} under it")
    if work:
        detail = f"would first finish: {'; '.join(work)}; then {detail}"
    return RotationResult(tenant, level, True, chain.primary, new, reason, True, rewrapped=rewrapped,
                          detail=detail)


def _rotate_tenant(k: Keyops, tenant: str, level: str, expect: int | None, reason: str) -> RotationResult:
    keyring, revision = k.read_keyring(tenant)
    _require_complete(keyring)
    work = _kek_work(k, keyring)
    if work:
        stale = len(stale_dek_versions(keyring))
        keyring, revision = _finish_kek(k, keyring, revision)
        if level == "kek":
            return _resumed_result(keyring, reason, False, stale, work)
    start = keyring.chain(level).primary
    if expect is not None and start != expect:
        return _nothing(tenant, level, start, reason, False, f"the primary {level.upper()} is v{start}, not v{expect}")
    current = [(keyring, revision)]

    def attempt() -> tuple[Keyring, Keyring, int, int] | RotationResult:
        """(keyring read, keyring written, its KV version, DEKs re-wrapped), or the outcome of a lost race."""
        if current:
            keyring, revision = current.pop()
        else:  # lost a race: what won?
            keyring, revision = k.read_keyring(tenant)
            now_primary = keyring.chain(level).primary
            if now_primary != start:
                return _lost_race(tenant, level, start, now_primary, expect, reason)
        if stale_dek_versions(keyring):
            raise Conflict(f"a KEK rotation of tenant {tenant!r} is in progress (started after this run read the "
                           f"keyring); nothing was rotated; re-run once it finished")
        rewrapped = 0
        if level == "dek":
            new = _with_new_dek(k, keyring)
        elif keyring.policy.kek_residence == "kv":
            new = _with_new_kv_kek(k, keyring)
            rewrapped = len(new.dek.versions)
        else:
            new = _with_new_transit_kek(k, keyring)
        return keyring, new, k.write_keyring(tenant, new, cas=revision), rewrapped

    outcome = retry_on_conflict(attempt, f"the keyring of tenant {tenant!r} (rotating its {level.upper()}; "
                                         "nothing was rotated)")
    if isinstance(outcome, RotationResult):
        return outcome
    keyring, new, revision, rewrapped = outcome
    if level == "kek" and keyring.policy.kek_residence == "transit":
        rewrapped = len(stale_dek_versions(new))
        new, revision = _finish_kek(k, new, revision)
    what = "DEK" if level == "dek" else "KEK"
    detail = f"rotated the {what} of tenant {tenant}: v{start} -> v{new.chain(level).primary}"
    if rewrapped:
        detail += f", {rewrapped} DEK version{'s' if rewrapped != 1 else ''} re-wrapped"
    if work:
        detail = f"finished an interrupted KEK rotation ({'; '.join(work)}); {detail}"
    return RotationResult(tenant, level, True, start, new.chain(level).primary, reason, False,
                          resumed=bool(work), rewrapped=rewrapped, detail=detail)


def _lost_race(tenant: str, level: str, start: int, now_primary: int, expect: int | None,
               reason: str) -> RotationResult:
    what = level.upper()
    if expect is not None:
        return _nothing(tenant, level, now_primary, reason, False,
                        f"another rotation won the race; the primary {what} is now v{now_primary}")
    raise Conflict(f"another rotation of the {what} of tenant {tenant!r} won the race: its primary {what} is now "
                   f"v{now_primary} (was v{start}). This run changed nothing; to rotate again only if still "
                   f"needed, re-run with --expect-version {now_primary}")


def _with_new_dek(k: Keyops, keyring: Keyring) -> Keyring:
    tenant, kek_version = keyring.tenant, keyring.kek.primary
    version = keyring.dek.latest_version + 1
    wrapper = k.hierarchy.kek_wrapper(keyring, kek_version)
    wrapped = wrapper.wrap(crypto.generate_key(), crypto.key_context(tenant, "dek", version))
    return keyring.add_version("dek", b64e(wrapped), kek_version, k.clock())


def _new_master_wrapped_kek(k: Keyops, keyring: Keyring) -> tuple[bytes, int, str, int, Escrow | None]:
    """A fresh KEK: (bytes, version, master-wrapped blob, master version, escrow copy when configured)."""
    escrow_key = escrow_ops.configured_key(k.config)  # a bad key file fails before the master key is used
    version = keyring.kek.latest_version + 1
    kek = crypto.generate_key()
    master_version, master = k.master_wrapper()
    wrapped = master.wrap(kek, crypto.key_context(keyring.tenant, "kek", version))
    return kek, version, b64e(wrapped), master_version, escrow_ops.new_copy(escrow_key, keyring.tenant, version, kek)


def _with_new_kv_kek(k: Keyops, keyring: Keyring) -> Keyring:
    kek, version, wrapped, master_version, escrow = _new_master_wrapped_kek(k, keyring)
    new = keyring.add_version("kek", wrapped, master_version, k.clock(), escrow=escrow)
    return _rewrap_deks(k, new, AeadWrapper(kek))


def _with_new_transit_kek(k: Keyops, keyring: Keyring) -> Keyring:
    # The Transit version is the one after the key's latest (not the KEK number), so a
    # version imported twice by two racing resumes only shifts later numbers.
    name = transit_key_name(keyring.tenant)
    info = k.store.transit_read_key(name)
    # Refuse before the keyring names a primary KEK that Transit could never take.
    if info is None:
        raise KeyStateError(f"the Transit key {name!r} of tenant {keyring.tenant!r} is missing; restore it "
                            "(or the Transit mount) before rotating")
    if not info.get("imported_key"):
        raise KeyStateError(f"the Transit key {name!r} was not imported by keyops (no BYOK versions can be "
                            "added to it); the KEK was not rotated")
    _, _, wrapped, master_version, escrow = _new_master_wrapped_kek(k, keyring)
    return keyring.add_version("kek", wrapped, master_version, k.clock(),
                               transit_version=int(info["latest_version"]) + 1, escrow=escrow)


def _rewrap_deks(k: Keyops, keyring: Keyring, new_wrapper: KeyWrapper | None = None) -> Keyring:
    """Every DEK version not under the primary KEK, unwrapped by its KEK and wrapped by the primary (in memory)."""
    tenant, primary = keyring.tenant, keyring.kek.primary
    new_wrapper = new_wrapper or k.hierarchy.kek_wrapper(keyring, primary)
    old_wrappers: dict[int, KeyWrapper] = {}
    for version in stale_dek_versions(keyring):
        kv = keyring.dek.get(version)
        context = crypto.key_context(tenant, "dek", version)
        if kv.parent_version not in old_wrappers:
            old_wrappers[kv.parent_version] = k.hierarchy.kek_wrapper(keyring, kv.parent_version)
        raw = old_wrappers[kv.parent_version].unwrap(b64d(kv.wrapped), context)
        wrapped = new_wrapper.wrap(raw, context)
        keyring = keyring.replace_version(
            "dek", dataclasses.replace(kv, wrapped=b64e(wrapped), parent_version=primary))
    return keyring


def _finish_kek(k: Keyops, keyring: Keyring, revision: int) -> tuple[Keyring, int]:
    """Finish a KEK rotation whose new primary is in the keyring: import, re-wrap, raise min_decryption."""
    tenant, primary = keyring.tenant, keyring.kek.primary
    transit = keyring.policy.kek_residence == "transit"
    in_transit = [False]
    current = [(keyring, revision)]

    def attempt() -> tuple[Keyring, int]:
        if current:
            keyring, revision = current.pop()
        else:  # lost a race: decide again on a fresh read
            keyring, revision = k.read_keyring(tenant)
            if keyring.kek.primary != primary:
                raise Conflict(f"another rotation of the KEK of tenant {tenant!r} took over (primary KEK is now "
                               f"v{keyring.kek.primary}); re-run to see what is left")
        if not stale_dek_versions(keyring):
            return keyring, revision
        if transit and not in_transit[0]:
            k.hierarchy.ensure_transit_kek(keyring, primary)  # idempotent: imports, or verifies with a probe
            in_transit[0] = True
        new = _rewrap_deks(k, keyring)
        return new, k.write_keyring(tenant, new, cas=revision)

    keyring, revision = retry_on_conflict(attempt, f"the keyring of tenant {tenant!r} (its DEKs being re-wrapped; "
                                                   "re-run to finish the KEK rotation)")
    if transit:
        if not in_transit[0]:
            k.hierarchy.ensure_transit_kek(keyring, primary)  # the DEKs were re-wrapped by an earlier run
        sync_transit_key(k, keyring)
    return keyring, revision


def sync_transit_key(k: Keyops, keyring: Keyring, *, trim: bool = False) -> list[str]:
    """Raise the Transit key's ``min_decryption_version`` (and, with ``trim``, trim it) to what the keyring needs.

    Only ever raises: versions a DEK still needs stay decryptable. Returns
    what changed, in words.
    """
    name = transit_key_name(keyring.tenant)
    info = k.store.transit_read_key(name)
    if info is None:
        raise KeyStateError(f"the Transit key {name!r} of tenant {keyring.tenant!r} is missing; restore it "
                            "(or the Transit mount) first")
    latest = int(info["latest_version"])
    min_decryption, min_available = transit_targets(keyring)
    min_decryption = min(min_decryption, latest)
    min_available = min(min_available, min_decryption)
    current_decryption = int(info.get("min_decryption_version") or 1)
    current_encryption = int(info.get("min_encryption_version") or 0)
    current_available = max(1, int(info.get("min_available_version") or 0))
    settings: dict[str, Any] = {}
    new_decryption = max(current_decryption, min_decryption)
    if current_decryption < min_decryption:
        settings["min_decryption_version"] = min_decryption
    do_trim = trim and min_available > current_available
    # Transit trims only below both minimums, and wants a set min_encryption_version (0: unset)
    # at or above min_decryption_version.
    wanted_encryption = current_encryption
    if do_trim and current_encryption < min_available:
        wanted_encryption = max(min_available, new_decryption)
    if wanted_encryption and wanted_encryption < new_decryption:
        wanted_encryption = new_decryption
    if wanted_encryption != current_encryption:
        settings["min_encryption_version"] = wanted_encryption
    changed: list[str] = []
    if settings:
        k.store.transit_configure_key(name, **settings)
        changed.extend(f"{key} of Transit key {name!r} raised to {value}" for key, value in settings.items())
    if do_trim:
        k.store.transit_trim_key(name, min_available)
        changed.append(f"Transit key {name!r} trimmed below version {min_available}")
    return changed


def rotate_tenants(k: Keyops, tenants: Iterable[str], level: Literal["dek", "kek", "master"], *,
                   dry_run: bool = False, expect_version: int | None = None,
                   reason: str = "on demand", tenant_workers: int = DEFAULT_TENANT_WORKERS) -> RotationReport:
    """Rotate ``level`` of each tenant now, up to ``tenant_workers`` at once; results in the order given.

    A tenant whose rotation fails is reported in ``failures`` and the others
    still run. ``level="master"`` takes no tenant: it rotates the master key
    (``rotate_master``), one operation whose failure raises.
    """
    if level == "master":
        if list(tenants):
            raise InvalidInput("the master key belongs to no tenant; give no tenant with level master")
        return RotationReport(dry_run, (rotate_master(k, dry_run=dry_run, expect_version=expect_version,
                                                      reason=reason),), ())
    rotations: list[RotationResult | MasterRotationResult] = []
    failures: list[TenantFailure] = []
    for outcome in iter_rotate_tenants(k, tenants, level, dry_run=dry_run, expect_version=expect_version,
                                       reason=reason, tenant_workers=tenant_workers):
        if outcome.result is not None:
            rotations.append(outcome.result)
        elif outcome.failure is not None:
            failures.append(outcome.failure)
    return RotationReport(dry_run, tuple(rotations), tuple(failures))


def iter_rotate_tenants(k: Keyops, tenants: Iterable[str], level: Literal["dek", "kek"], *,
                        dry_run: bool = False, expect_version: int | None = None, reason: str = "on demand",
                        tenant_workers: int = DEFAULT_TENANT_WORKERS) -> Iterator[TenantOutcome[RotationResult]]:
    """Each tenant's rotation as it finishes, in the order given, pulling tenants as workers free up.

    Each tenant has its own keyring and lease, so rotations of different
    tenants never contend; ``keyops.ops.fanout`` bounds what is held at once.
    """
    validate_count(tenant_workers, "tenant_workers", MAX_WORKERS)

    def one(tenant: str) -> TenantOutcome[RotationResult]:
        try:
            result = rotate(k, tenant, level, dry_run=dry_run, expect_version=expect_version, reason=reason)
        except KeyopsError as exc:
            return TenantOutcome(tenant, failure=TenantFailure.of(tenant, level, exc))
        return TenantOutcome(tenant, result.changed, result)

    for _, outcome in fan_out(tenants, one, workers=tenant_workers, stall=k.config.job_stall_timeout, k=k,
                              tenant_of=lambda tenant: tenant):
        yield outcome


# --- master key -------------------------------------------------------------------------------


def rotate_master(k: Keyops, *, dry_run: bool = False, expect_version: int | None = None,
                  reason: str = "on demand") -> MasterRotationResult:
    """Rotate the master key (onto the configured root) and re-wrap every KEK of every tenant.

    An interrupted rotation is finished first.
    """
    if expect_version is not None:
        expect_version = validate_version(expect_version, "expect_version")
    if dry_run:
        return _plan_master(k, expect_version, reason)
    with k.audited("rotate", level="master", reason=reason) as event:
        # Before the lease and any claim: a wrong PIN or passphrase, a missing
        # token, an unreachable KMS or an unusable primary key fails here and
        # leaves the registry as it was.
        _check_master_key(k)
        with _leased(k, "master", "master key rotation") as lease:
            result = _rotate_master(k, expect_version, reason, lease)
        seen = k.hierarchy.seen_master
        roots = {mv.version: mv.root for mv in seen.versions} if seen is not None else {}
        event.update(versions={"old": result.old_version, "new": result.new_version}, changed=result.changed,
                     resumed=result.resumed, tenants=len(result.tenants),
                     roots={"old": roots.get(result.old_version), "new": roots.get(result.new_version)})
    return result


MASTER_PROBE_CONTEXT = PROBE_CONTEXT


def _check_master_key(k: Keyops) -> None:
    """Probe the primary master key by its root, and check the root the next version needs."""
    registry, _ = _read_registry(k)
    roots = k.hierarchy.roots
    primary = registry.get(registry.primary)
    if primary.state == "active":  # else a first version still being made: the rotation finishes it
        roots.probe(registry, primary)
    pending = pending_master_version(registry)
    if pending is None:
        roots.check_configured()
    elif registry.get(pending).on_hsm:
        k.hsm.login()  # an interrupted rotation is finished under the root it claimed


def _read_registry(k: Keyops) -> tuple[MasterRegistry, int]:
    found = k.read_master()
    if found is None:
        raise NotFound("no master key is registered yet; it is created with the first tenant "
                       "('keyops tenant create') or by the master_key module")
    return found


def _plan_master(k: Keyops, expect: int | None, reason: str) -> MasterRotationResult:
    registry, _ = _read_registry(k)
    start = registry.primary
    pending = pending_master_version(registry)
    target = pending or start
    tenants, keks = _scan_keks(k, target)
    if pending is not None or tenants:
        what = f"make master v{pending} primary and " if pending is not None else ""
        return MasterRotationResult(
            True, start, target, reason, True, resumed=True, tenants=tuple(tenants), rewrapped=keks,
            detail=f"would finish an interrupted master rotation: {what}re-wrap {keks} KEK versions of "
                   f"{len(tenants)} tenants under master v{target}")
    if expect is not None and start != expect:
        return MasterRotationResult(False, start, start, reason, True,
                                    detail=f"nothing to do: the primary master key is v{start}, not v{expect}")
    tenants, keks = _scan_keks(k, None)
    new = max(mv.version for mv in registry.versions) + 1
    return MasterRotationResult(
        True, start, new, reason, True, tenants=tuple(tenants), rewrapped=keks,
        detail=f"would create master key {k.master_label(new)!r} under "
               f"{ROOT_NAMES[k.hierarchy.roots.configured]} and re-wrap {keks} KEK versions of {len(tenants)} "
               "tenants under it")


def _rotate_master(k: Keyops, expect: int | None, reason: str, lease: _Lease) -> MasterRotationResult:
    registry, revision = _read_registry(k)
    start = registry.primary
    pending = pending_master_version(registry)
    if pending is not None:
        registry, revision = _activate_master(k, registry, revision, pending)
        tenants, keks = _rewrap_all_keks(k, registry, lease)
        return MasterRotationResult(
            True, start, pending, reason, False, resumed=True, tenants=tuple(tenants), rewrapped=keks,
            detail=f"finished an interrupted master rotation: master v{pending} is primary; {keks} KEK versions "
                   f"of {len(tenants)} tenants re-wrapped")
    tenants, keks = _rewrap_all_keks(k, registry, lease)
    if tenants:
        return MasterRotationResult(
            True, _previous_master(registry), start, reason, False, resumed=True, tenants=tuple(tenants),
            rewrapped=keks, detail=f"finished an interrupted master rotation: {keks} KEK versions of "
                                   f"{len(tenants)} tenants re-wrapped under master v{start}")
    if expect is not None and start != expect:
        return MasterRotationResult(False, start, start, reason, False,
                                    detail=f"nothing to do: the primary master key is v{start}, not v{expect}")
    current = [(registry, revision)]
    roots = k.hierarchy.roots

    def attempt() -> tuple[MasterRegistry, int] | MasterRotationResult:
        """The claimed registry and its KV version, or the outcome of a lost race."""
        if current:
            registry, revision = current.pop()
        else:  # lost a race: what won?
            registry, revision = _read_registry(k)
            if registry.primary != start or pending_master_version(registry) is not None:
                now = pending_master_version(registry) or registry.primary
                if expect is not None:
                    return MasterRotationResult(
                        False, start, now, reason, False,
                        detail=f"nothing to do: another master rotation won the race (master v{now})")
                raise Conflict(f"another master key rotation won the race (master v{now}); this run changed "
                               f"nothing. Re-run with --expect-version {registry.primary} to finish or check it")
        claimed = claim_master_version(registry, k.config.master_key_label, k.clock(),
                                       lambda reg, version: roots.new_version(reg, version, k.clock()))
        # Nothing may sit on the token under the new name yet: such a key is not this registry's.
        roots.check_unused(claimed.get(claimed.versions[-1].version))
        return claimed, k.store.write(MASTER_PATH, claimed.to_dict(), cas=revision)

    outcome = retry_on_conflict(attempt, "the master key registry (nothing was rotated)")
    if isinstance(outcome, MasterRotationResult):
        return outcome
    claimed, revision = outcome
    new_version = claimed.versions[-1].version
    registry, revision = _activate_master(k, claimed, revision, new_version)
    tenants, keks = _rewrap_all_keks(k, registry, lease)
    return MasterRotationResult(
        True, start, new_version, reason, False, tenants=tuple(tenants), rewrapped=keks,
        detail=f"rotated the master key: v{start} -> v{new_version} ({registry.get(new_version).label}); {keks} "
               f"KEK versions of {len(tenants)} tenants re-wrapped")


def _previous_master(registry: MasterRegistry) -> int:
    older = [mv.version for mv in registry.versions if mv.version < registry.primary]
    return max(older, default=registry.primary)


def _activate_master(k: Keyops, registry: MasterRegistry, revision: int,
                     version: int) -> tuple[MasterRegistry, int]:
    """Make the claimed version's key under its root (an HSM key: idempotent by label and CKA_ID), make it primary."""
    registry, revision = _name_legacy_claim(k, registry, revision, version)
    k.hierarchy.roots.make(registry, registry.get(version))
    current = [(registry, revision)]

    def attempt() -> tuple[MasterRegistry, int]:
        registry, revision = current.pop() if current else _read_registry(k)  # fresh after a lost race
        if registry.get(version).state not in (PENDING, "active"):
            raise KeyStateError(f"master key version {version} turned {registry.get(version).state} while "
                                "it was being made primary; inspect the registry")
        promoted = promote_master_version(registry, version)
        written = revision if promoted == registry else k.store.write(MASTER_PATH, promoted.to_dict(), cas=revision)
        k.hierarchy.saw_master(promoted)
        return promoted, written

    return retry_on_conflict(attempt, "the master key registry (re-run to finish the master rotation)")


def _name_legacy_claim(k: Keyops, registry: MasterRegistry, revision: int,
                       version: int) -> tuple[MasterRegistry, int]:
    """A version claimed by keyops before registry ids (no key id): rename it as this registry's own.

    It is still pending, so nothing is wrapped by it; an HSM key that the old
    claim may have made under the old label is left alone, never adopted.
    """
    mv = registry.get(version)
    if mv.key_id is not None:
        return registry, revision
    registry = registry.with_id()
    named = registry.new_version(k.config.master_key_label, version, k.clock())
    k.hierarchy.roots.check_unused(named)
    renamed = registry.replace_version(named)
    try:
        return renamed, k.store.write(MASTER_PATH, renamed.to_dict(), cas=revision)
    except Conflict:
        raise Conflict("the master key registry changed while a pending version was renamed; re-run to finish "
                       "the master rotation") from None


def _scan_keks(k: Keyops, master_primary: int | None) -> tuple[list[str], int]:
    """Tenants with KEK versions not under ``master_primary`` (None: every KEK version), and their count."""
    tenants: list[str] = []
    count = 0
    for tenant in k.list_tenants():
        try:
            keyring, _ = k.read_keyring(tenant)
        except TenantNotFound:
            continue
        stale = (len(keyring.kek.versions) if master_primary is None
                 else len(stale_kek_versions(keyring, master_primary)))
        if stale:
            tenants.append(tenant)
            count += stale
    return tenants, count


def _rewrap_all_keks(k: Keyops, registry: MasterRegistry, lease: _Lease) -> tuple[list[str], int]:
    """Re-wrap, tenant by tenant, every KEK version not under the primary master key (one write per keyring)."""
    opened: dict[int, KeyWrapper] = {}

    def wrappers(version: int) -> KeyWrapper | None:
        """Opened when a KEK needs it: a root that wraps nothing any more (a passphrase moved off) is never asked."""
        if version not in opened:
            mv = next((v for v in registry.versions if v.version == version and v.state in _DECRYPTING), None)
            if mv is None:
                return None
            opened[version] = k.hierarchy.roots.wrapper(registry, mv)
        return opened[version]

    primary = registry.primary
    tenants: list[str] = []
    count = 0
    for tenant in k.list_tenants():
        lease.renew()
        try:
            keyring, revision = k.read_keyring(tenant)
        except TenantNotFound:
            continue  # removed meanwhile
        current = [(keyring, revision)]

        def attempt(tenant: str = tenant, current: list[tuple[Keyring, int]] = current) -> int:
            keyring, revision = current.pop() if current else k.read_keyring(tenant)  # fresh after a lost race
            stale = stale_kek_versions(keyring, primary)
            if stale:
                k.write_keyring(tenant, _rewrap_keks(keyring, stale, wrappers, primary), cas=revision)
            return len(stale)

        done = retry_on_conflict(attempt, f"the keyring of tenant {tenant!r} (its KEKs being re-wrapped; re-run "
                                          "the master rotation to finish it)")
        if done:
            tenants.append(tenant)
            count += done
    return tenants, count


def _rewrap_keks(keyring: Keyring, versions: Iterable[int], wrappers: Callable[[int], KeyWrapper | None],
                 primary: int) -> Keyring:
    new = wrappers(primary)
    if new is None:
        raise KeyStateError(f"master key v{primary} is the primary but does not decrypt; inspect the registry")
    for version in versions:
        kv = keyring.kek.get(version)
        old = wrappers(kv.parent_version)
        if old is None:
            raise KeyStateError(f"KEK v{version} of tenant {keyring.tenant!r} is wrapped by master key "
                                f"v{kv.parent_version}, which no longer decrypts; it cannot be re-wrapped")
        context = crypto.key_context(keyring.tenant, "kek", version)
        wrapped = new.wrap(old.unwrap(b64d(kv.wrapped), context), context)
        keyring = keyring.replace_version(
            "kek", dataclasses.replace(kv, wrapped=b64e(wrapped), parent_version=primary))
    return keyring


# --- due mode -----------------------------------------------------------------------------------


def rotate_due(k: Keyops, *, dry_run: bool = False, tenants: list[str] | None = None,
               include_master: bool = True, tenant_workers: int = DUE_TENANT_WORKERS) -> DueRotationReport:
    """Rotate only what is due, and finish interrupted rotations; the rest is left alone.

    Due: the master key by age against its period (365 days unless the
    registry says otherwise); each tenant's KEK and DEK by age against the
    policy's periods, and the DEK by reserved uses against its cap. A
    failure of one tenant is reported and the others still run. Tenants are
    independent (each has its own keyring and lease), so up to
    ``tenant_workers`` of them are handled at once: a scheduled run over many
    tenants costs their Vault round trips in parallel, not in sequence.
    """
    validate_count(tenant_workers, "tenant_workers", MAX_WORKERS)
    names = [validate_tenant(t) for t in tenants] if tenants is not None else k.list_tenants()
    now = k.clock()
    rotations: list[RotationResult | MasterRotationResult] = []
    failures: list[TenantFailure] = []

    def read(tenant: str) -> tuple[Keyring, int] | KeyopsError:
        try:
            keyring = k.read_keyring(tenant)[0]
            if keyring.dek.empty:
                return keyring, 0
            primary = keyring.dek.primary_key
            return keyring, k.read_usage(tenant)[0].uses(primary.version, primary.uses)
        except KeyopsError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=tenant_workers) as pool:
        # Read once: for the master's leftovers and for what is due (by age, and by the usage document).
        found: dict[str, tuple[Keyring, int] | KeyopsError] = dict(zip(names, pool.map(read, names), strict=True))
    keyrings: dict[str, Keyring | KeyopsError] = {
        t: v if isinstance(v, KeyopsError) else v[0] for t, v in found.items()}
    primary_uses = {t: v[1] for t, v in found.items() if not isinstance(v, KeyopsError)}
    master_checked = False
    if include_master:
        try:
            master = k.read_master()
            if master is not None:
                master_checked = True
                registry = master[0]
                why = master_due(registry, now)
                if pending_master_version(registry) is not None or any(
                        isinstance(kr, Keyring) and stale_kek_versions(kr, registry.primary)
                        for kr in keyrings.values()):
                    why = "finish an interrupted master rotation"
                if why is not None:
                    rotations.append(rotate_master(k, dry_run=dry_run, expect_version=registry.primary,
                                                   reason=f"due: {why}"))
        except KeyopsError as exc:
            failures.append(TenantFailure.of(None, "master", exc))

    def one(tenant: str) -> tuple[list[RotationResult], list[TenantFailure]]:
        done: list[RotationResult] = []
        level = "kek"
        try:
            keyring = keyrings[tenant]
            if isinstance(keyring, KeyopsError):
                raise keyring
            _require_complete(keyring)
            dues = {d.level: d for d in due_rotations(keyring, now, primary_dek_uses=primary_uses.get(tenant))}
            if "kek" not in dues and _kek_work(k, keyring):
                finished = resume(k, tenant, dry_run=dry_run, reason="due: finish an interrupted rotation")
                if finished is not None:
                    done.append(finished)
            for level in TENANT_LEVELS:
                due = dues.get(level)
                if due is not None:
                    done.append(rotate(k, tenant, level, dry_run=dry_run, expect_version=due.version,
                                       reason=f"due: {due.reason}: {due.detail}"))
        except KeyopsError as exc:
            return done, [TenantFailure.of(tenant, level, exc)]
        return done, []

    stall = k.config.job_stall_timeout
    pool = ThreadPoolExecutor(max_workers=tenant_workers)
    stalled = False
    try:
        futures = [pool.submit(one, tenant) for tenant in names]
        last = time.monotonic()
        for tenant, future in zip(names, futures, strict=True):  # results in the order of the tenants
            if stalled:
                future.cancel()
                failures.append(TenantFailure.of(tenant, "kek", JobFailed(
                    f"not rotated: the rotation of many tenants stalled before tenant {tenant!r}; run it again")))
                continue
            try:
                done, failed = future.result(timeout=max(0.0, last + stall - time.monotonic()))
            except concurrent.futures.TimeoutError:
                stalled = True
                failures.append(TenantFailure.of(tenant, "kek", JobFailed(
                    f"the rotation of tenant {tenant!r} did not finish within {stall:g} s of the last one "
                    "(KEYOPS_JOB_STALL_TIMEOUT); the others not yet done were stopped; run it again")))
                continue
            last = time.monotonic()
            rotations.extend(done)
            failures.extend(failed)
    finally:
        # A stalled tenant is not waited for: its worker ends with its requests' deadlines.
        pool.shutdown(wait=not stalled, cancel_futures=True)
    return DueRotationReport(dry_run, len(names), master_checked, tuple(rotations), tuple(failures))


def _list(versions: list[int]) -> str:
    return ", ".join(f"v{v}" for v in versions)
