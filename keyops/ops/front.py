"""Operations: the one API that the CLI and the Ansible modules share.

``Keyops`` composes the hierarchy: the master key (PKCS#11 by default, or a
KMS or passphrase root, see ``keyops.roots``) wraps KEKs,
a KEK (an in-memory AES key, or a Transit key for residence ``transit``)
wraps DEKs, DEKs encrypt data. Keyrings are read and written with
check-and-set; unwrapped keys are cached per process with a bound, so a hot
path costs no HSM and no Vault call.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from keyops import access, crypto
from keyops.backends.hsm import Hsm
from keyops.backends.vault import CallCounter, VaultStore
from keyops.config import Config
from keyops.errors import (
    AuditError,
    DecryptionError,
    InvalidInput,
    KeyopsError,
    KeyringCorrupt,
    KeyStateError,
    MalformedCiphertext,
    NotFound,
    PermissionDenied,
    TenantNotFound,
    UsageCapReached,
    VaultSealed,
    VaultUnreachable,
)
from keyops.hierarchy import Hierarchy
from keyops.model.keyring import Keyring, Policy, utcnow
from keyops.model.master import MASTER_PERIOD_DAYS, MasterRegistry, MasterVersion
from keyops.model.names import validate_tenant
from keyops.model.paths import (
    MASTER_PATH,
    jobs_path,
    keyring_path,
    secret_context,
    secret_path,
    transit_key_name,
    usage_path,
)
from keyops.model.usage import Usage
from keyops.ops import master_keys
from keyops.ops import secrets as secret_ops
from keyops.ops import status as status_ops
from keyops.ops import tenants as tenant_ops
from keyops.ops.cas import retry_on_conflict, update_document
from keyops.ops.reservations import LOCK_FREE_USES, FastTenant, Reservation, next_block, wall
from keyops.ops.results import (
    LevelStatus,
    SecretRecord,
    SecretResult,
    StatusReport,
    TenantProblem,
    TenantResult,
    TenantStatus,
    VersionStatus,
)
from keyops.wrappers import KeyWrapper

#: Names other modules (and the tests) import from the front.
__all__ = [
    "MASTER_PATH", "MASTER_PERIOD_DAYS", "RESTORE_ADVICE", "Keyops", "LevelStatus", "MasterRegistry",
    "MasterVersion", "SecretRecord", "SecretResult", "StatusReport", "TenantProblem", "TenantResult",
    "TenantStatus", "VersionStatus", "b64e", "jobs_path", "keyring_path", "secret_context", "secret_path",
    "transit_key_name", "usage_path",
]
b64e = crypto.b64e

#: What to do about a keyring keyops refuses (KeyringCorrupt).
RESTORE_ADVICE = ("an administrator restores a good version from KV's history: see 'Restoring a keyring' "
                  "in docs/access.md")
_monotonic = time.monotonic
#: With ``stale_for``: how long a failed keyring refresh is not tried again.
STALE_RETRY_SECONDS = 2.0
_log = logging.getLogger("keyops.ops.front")


# --- the API ------------------------------------------------------------------------------


AuditSink = Callable[..., None]


class Keyops:
    def __init__(self, config: Config | None = None, *, store: VaultStore | None = None, hsm: Hsm | None = None,
                 cache_size: int = 1024, keyring_ttl: float = 30.0, clock: Callable[[], dt.datetime] = utcnow,
                 audit: AuditSink | None = None, pool_size: int = 32, max_reservation: int | None = None,
                 stale_for: float = 0.0) -> None:
        if max_reservation is not None and (isinstance(max_reservation, bool) or not isinstance(max_reservation, int)
                                            or max_reservation < 1):
            raise InvalidInput(f"max_reservation must be a whole number >= 1, not {max_reservation!r}")
        #: The largest block of DEK uses this process reserves at once (None: ``reservations.MAX_RESERVATION``).
        self.max_reservation = max_reservation
        self.config = config or Config.load()
        self.calls = store.calls if store else CallCounter()
        self.store = store or VaultStore(self.config, counter=self.calls, pool_size=pool_size)
        self._hsm = hsm
        self.clock = clock
        self.keyring_ttl = keyring_ttl
        #: How long past ``keyring_ttl`` a cached keyring still serves while Vault is unreachable or
        #: sealed (0: never). For long-lived servers only, which would otherwise stop decrypting in a
        #: brief outage; a version retired meanwhile stays usable here for at most this long.
        self.stale_for = stale_for
        self._refresh_after: dict[str, float] = {}
        self.audit = audit
        self._roles: access.Roles | None = None
        self._principal: access.Principal | None = None
        if audit is not None and hasattr(audit, "attach"):
            audit.attach(self.store)  # the audit trail's KV copies use this caller's token
        self.hierarchy = Hierarchy(self, cache_size)
        self._keyrings: dict[str, tuple[Keyring, int, float]] = {}
        self._reservations: dict[tuple[str, bool], Reservation] = {}
        self._demand: dict[str, int] = {}
        #: Per tenant: a usage document (with its KV version) and a keyring read or written after it, from
        #: which the next reservation may start instead of reading both again (``prime_reservation``).
        self._primed: dict[str, tuple[Usage, int, Keyring, float]] = {}
        #: Per tenant, after this process's last reservation write: the usage document it was based on,
        #: the document written and its version, when the base was read (monotonic) and the DEK version
        #: reserved. See ``reservation_base``.
        self._last_usage: dict[str, tuple[Usage, Usage, int, float, int]] = {}
        self._master_history_set = False
        #: Names this object's leases in usage documents (``keyops.model.usage``); no meaning beyond that.
        self.holder = uuid.uuid4().hex[:12]
        self._fast: dict[str, FastTenant] = {}
        self._tenant_locks: collections.defaultdict[str, threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()

    @property
    def hsm(self) -> Hsm:
        """Opened on first use: apps of residence ``transit`` never need the PIN."""
        if self._hsm is None:
            with self._lock:  # worker threads may get here at once; the PKCS#11 library loads once
                if self._hsm is None:
                    self._hsm = Hsm.from_config(self.config, counter=self.calls)
        return self._hsm

    def close(self) -> None:
        self.release_leases()
        self.hierarchy.roots.close()
        if self._hsm is not None:
            self._hsm.close()

    def release_leases(self) -> None:
        """Stop encrypting under this object's reservations and end their leases in the usage documents.

        A retire then need not wait for the leases of a process that is done.
        Best effort: a lease that cannot be released (Vault unreachable) just
        runs out; the next encryption reserves anew.
        """
        with self._lock:
            tenants = sorted({tenant for tenant, _ in self._reservations})
            self._reservations.clear()
            self._fast.clear()  # no encryption under the released reservations from here on
        for tenant in tenants:
            self._release(tenant)

    def _release(self, tenant: str) -> None:
        # The document this process wrote last is tried first: the check-and-set on its version fails if
        # anyone wrote it since, and the retry reads it. One request instead of two when nobody did.
        last = self._last_usage.pop(tenant, None)
        known = [] if last is None else [(last[1], last[2])]

        def read() -> tuple[Usage, int]:
            return known.pop() if known else self.read_usage(tenant)

        try:
            update_document(read, lambda new, version: self.store.write(usage_path(tenant), new.to_dict(),
                                                                        cas=version),
                            lambda u: u.release(self.holder, wall()), f"the usage document of tenant {tenant!r}")
        except KeyopsError as exc:
            _log.info("the leases of tenant %r run out by themselves: %s", tenant, exc.code)

    def forget_tenant(self, tenant: str) -> None:
        """Drop everything this process holds of ``tenant`` (after its deletion)."""
        self._keyrings.pop(tenant, None)
        self._fast.pop(tenant, None)
        self._reservations.pop((tenant, False), None)
        self._reservations.pop((tenant, True), None)
        self._demand.pop(tenant, None)
        self._primed.pop(tenant, None)
        self._last_usage.pop(tenant, None)
        self._refresh_after.pop(tenant, None)
        self._tenant_locks.pop(tenant, None)
        self.hierarchy.forget_tenant(tenant)

    def done_with(self, tenant: str) -> None:
        """This process is done with ``tenant`` for now: end its leases, drop its keyring and reservations.

        A run over many tenants calls it after each one, so that what the
        process holds does not grow with the tenants (``keyops.ops.fanout``).
        Unwrapped keys stay in the hierarchy's caches, which are bounded
        (``cache_size`` per level): a later phase over the same tenants then
        costs no HSM unwrap while they fit, and one per tenant beyond.
        """
        with self._lock:
            held = any((tenant, external) in self._reservations for external in (False, True))
            self._reservations.pop((tenant, False), None)
            self._reservations.pop((tenant, True), None)
            self._fast.pop(tenant, None)  # no encryption under the released reservations from here on
        if held:
            self._release(tenant)
        self._keyrings.pop(tenant, None)
        self._demand.pop(tenant, None)
        self._primed.pop(tenant, None)
        self._last_usage.pop(tenant, None)
        self._refresh_after.pop(tenant, None)
        self._tenant_locks.pop(tenant, None)

    def held(self) -> dict[str, int]:
        """How much per-tenant state this process holds, by kind (counts only, no key material).

        What ``done_with`` frees; a run over many tenants keeps these bounded by
        the tenants in flight, not by the tenants done (tests count them). The
        key caches (``keks``, ``deks``) are bounded by ``cache_size`` instead.
        """
        return {"keyrings": len(self._keyrings), "reservations": len(self._reservations), "fast": len(self._fast),
                "locks": len(self._tenant_locks), "demand": len(self._demand), "primed": len(self._primed),
                "usage": len(self._last_usage), **self.hierarchy.cached()}

    def __enter__(self) -> Keyops:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- audit ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def audited(self, operation: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Check the caller's role, then emit one audit event for the operation, with its result."""
        self.authorize(access.operation_for_event(operation, fields.get("level")), fields.get("tenant"))
        # An operation whose event could not be recorded must not run: a log that cannot be opened stops it here.
        check = getattr(self.audit, "check_writable", None)
        if check is not None:
            check()
        event: dict[str, Any] = dict(fields)
        try:
            yield event
        except KeyopsError as exc:
            # An audit failure is not recorded in the trail that just failed, and an operation inside
            # another one reports its trail's failure once, not once for each level.
            if not isinstance(exc, AuditError) and not getattr(exc, "_audit_failed", False):
                try:
                    self._emit(operation, result=f"error:{exc.code}", **event)
                except KeyopsError as also:
                    # What failed is the news (a Vault that stopped answering fails both): the audit's after it.
                    exc.args = (f"{exc}; its audit event could not be written either ({also.code}: {also})",)
                    exc._audit_failed = True  # type: ignore[attr-defined]
            raise
        else:
            self._emit(operation, result="ok", **event)

    def _emit(self, operation: str, **fields: Any) -> None:
        if self.audit is not None:
            try:
                principal = self.principal
            except KeyopsError:  # Vault unreachable or sealed: still record the event
                fields.setdefault("actor", "unknown")
            else:
                fields.setdefault("actor", principal.actor)
                fields.setdefault("accessor", principal.accessor)
            self.audit(operation, **fields)

    # --- access -----------------------------------------------------------------------------

    @property
    def roles(self) -> access.Roles:
        """The roles file (KEYOPS_ROLES_FILE, else the packaged roles.toml)."""
        if self._roles is None:
            self._roles = access.load_roles(getattr(self.config, "roles_file", None))
        return self._roles

    @property
    def principal(self) -> access.Principal:
        """Who the token is and which keyops roles it holds: one lookup per process and token."""
        if self._principal is None:
            self._principal = access.lookup_principal(self.store, self.roles)
        return self._principal

    def authorize(self, operation: str | None, tenant: str | None = None) -> None:
        """Refuse what the caller's role does not grant (``NotPermitted``, with an audit event).

        No I/O once the principal is known; the server enforces the same policies.
        """
        if operation is None:
            return
        denied = access.denial(self.principal, operation, tenant)
        if denied is not None:
            self._emit("access.denied", attempted=operation, tenant=tenant, result=f"error:{denied.code}")
            raise denied

    # --- master key -----------------------------------------------------------------------

    def read_master(self) -> tuple[MasterRegistry, int] | None:
        self.authorize("master.read")
        found = self.store.read(MASTER_PATH)
        if found is None:
            return None
        registry = MasterRegistry.from_dict(found[0])
        self.hierarchy.saw_master(registry)
        return registry, found[1]

    def master_label(self, version: int) -> str:
        return master_keys.master_label(self, version)

    def ensure_master(self, dry_run: bool = False) -> tuple[MasterRegistry, bool]:
        return master_keys.ensure_master(self, dry_run=dry_run)

    def master_wrapper(self, version: int | None = None) -> tuple[int, KeyWrapper]:
        return self.hierarchy.master_wrapper(version)

    # --- keyrings -------------------------------------------------------------------------

    def read_keyring(self, tenant: str) -> tuple[Keyring, int]:
        """The tenant's keyring and its KV version.

        Refused with ``KeyringCorrupt`` (and nothing cached) when the document
        is malformed or names another tenant than the path it was read from:
        keyops never acts on, or writes back, a keyring found at the wrong path.
        """
        tenant = validate_tenant(tenant)
        self.authorize("keyring.read", tenant)
        path = keyring_path(tenant)
        found = self.store.read(path)
        if found is None:
            raise TenantNotFound(tenant)
        where = f"version {found[1]} of {self.store.kv_mount}/{path}"
        try:
            keyring = Keyring.from_dict(found[0])
        except InvalidInput as exc:
            text = str(exc)
            detail = text.removeprefix("keyring ") if text.startswith("keyring ") else f"is not usable: {text}"
            raise KeyringCorrupt(f"keyring of tenant {tenant!r} {detail} ({where}); {RESTORE_ADVICE}") from exc
        if keyring.tenant != tenant:
            raise KeyringCorrupt(f"keyring of tenant {tenant!r} names tenant {keyring.tenant!r} ({where}): "
                                 f"refused, a keyring is only used at its own tenant's path; {RESTORE_ADVICE}")
        self._keyrings[tenant] = (keyring, found[1], time.monotonic())
        return keyring, found[1]

    def write_keyring(self, tenant: str, keyring: Keyring, cas: int) -> int:
        """Write ``keyring`` to ``tenant``'s path (the one it was read from) with check-and-set on ``cas``.

        ``cas=0`` creates the keyring; its KV history (and the master
        registry's, when the caller may set it) is then set at once
        (``access.ensure_history``), before anything else writes it.
        """
        tenant = validate_tenant(tenant)
        if keyring.tenant != tenant:
            raise InvalidInput(f"refusing to write a keyring of tenant {keyring.tenant!r} to the path of tenant "
                               f"{tenant!r}: a keyring is only written back where it was read")
        version = self.store.write(keyring_path(tenant), keyring.to_dict(), cas=cas)
        self._keyrings[tenant] = (keyring, version, time.monotonic())
        if cas == 0:
            try:
                # The registry's history is set when it is made; checking it once per process is enough.
                master = not self._master_history_set and self.principal.allows("history.config")
                access.ensure_history(self, [tenant], master=master, mount=False)
                self._master_history_set = self._master_history_set or master
            except PermissionDenied as exc:
                # The keyring is made and usable; only its history setting waits for an administrator.
                _log.warning("KV history of tenant %r not set (%s); run 'keyops policy apply' with a "
                             "security-admin token", tenant, exc.code)
        return version

    def update_keyring(self, tenant: str, change: Callable[[Keyring], Keyring]) -> tuple[Keyring, int]:
        """Read, change, write with check-and-set; retry on a lost race."""
        return update_document(lambda: self.read_keyring(tenant),
                               lambda new, version: self.write_keyring(tenant, new, cas=version), change,
                               f"the keyring of tenant {tenant!r}")

    def cached_keyring(self, tenant: str) -> Keyring:
        """The tenant's keyring as read in the last ``keyring_ttl`` seconds, else read now.

        With ``stale_for``, an older copy serves while Vault cannot be reached, and a failed
        refresh is tried again only after ``STALE_RETRY_SECONDS``, so that an outage costs one
        failed request a tenant that often, not one per call.
        """
        cached = self._keyrings.get(tenant)
        now = time.monotonic()
        if cached is None:
            return self.read_keyring(tenant)[0]
        keyring, _, read_at = cached
        if now - read_at < self.keyring_ttl:
            return keyring
        usable_stale = now - read_at < self.keyring_ttl + self.stale_for
        if usable_stale and now < self._refresh_after.get(tenant, 0.0):
            return keyring
        try:
            return self.read_keyring(tenant)[0]
        except (VaultUnreachable, VaultSealed):
            if not usable_stale:
                raise
            self._refresh_after[tenant] = now + STALE_RETRY_SECONDS
            _log.warning("serving tenant %r from a keyring read %.0f s ago: Vault cannot be reached",
                         tenant, now - read_at)
            return keyring

    def list_tenants(self) -> list[str]:
        self.authorize("tenants.list")
        return sorted(k.rstrip("/") for k in self.store.list("tenants") if k.endswith("/"))

    def get_tenant(self, tenant: str) -> Keyring:
        return self.read_keyring(tenant)[0]

    def create_tenant(self, tenant: str, policy: Policy | None = None, dry_run: bool = False) -> TenantResult:
        return tenant_ops.create_tenant(self, tenant, policy=policy, dry_run=dry_run)

    def update_policy(self, tenant: str, policy: Policy, dry_run: bool = False) -> TenantResult:
        return tenant_ops.update_policy(self, tenant, policy, dry_run=dry_run)

    def delete_tenant(self, tenant: str, dry_run: bool = False) -> bool:
        return tenant_ops.delete_tenant(self, tenant, dry_run=dry_run)

    # --- KEKs -----------------------------------------------------------------------------

    # --- DEKs -----------------------------------------------------------------------------

    def dek(self, tenant: str, version: int) -> crypto.AeadKey:
        """The unwrapped DEK ``version`` (see ``keyops.hierarchy``)."""
        return self.hierarchy.dek(tenant, version)

    def _take_use(self, tenant: str, external: bool) -> int:
        """One encryption of the primary DEK; reserves a block of uses when out, or when the lease ended.

        The hot path (``_encrypting_key``) draws from the same reservation
        counter without the lock; this is its locked slow path.
        """
        with self._tenant_locks[tenant]:
            r = self._reservations.get((tenant, external))
            previous = r
            cached = self._keyrings.get(tenant)
            if r is not None and cached is not None and cached[0].dek.primary != r.dek_version:
                r = None  # the DEK was rotated (seen in this process): stop spending the old one
            if r is not None and _monotonic() < r.deadline and next(r.counter) < r.end:
                return r.dek_version
            r = self._reserve(tenant, previous, external)
            next(r.counter)  # the first number of the new block is this use
            return r.dek_version

    def expect_uses(self, tenant: str, count: int) -> None:
        """Say that this process is about to encrypt about ``count`` times for ``tenant`` (a job's batch).

        Its next reservations are then at least that large (within the
        ceiling of ``reservations.next_block``), so a job does not climb from
        the small first block one write at a time.
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput(f"count must be a whole number >= 0, not {count!r}")
        self._demand[validate_tenant(tenant)] = count

    def _reserve(self, tenant: str, previous: Reservation | None, external: bool) -> Reservation:
        """Reserve a block of uses of the primary DEK under a lease, with one check-and-set write of the usage.

        The usage document is read before the keyring, and the write is a
        check-and-set on the usage read: a retire that fenced the version
        in between makes the write fail, and the retry sees the fence (or a
        newer primary). So no reservation of a fenced version is ever granted.
        """
        self.authorize("usage.reserve", tenant)
        # Unwrap the primary DEK first: a process that cannot use it (wrong PIN,
        # HSM or Transit refusing) must fail without spending a reservation.
        self.dek(tenant, self.cached_keyring(tenant).dek.primary)
        lease = self.keyring_ttl
        attempts = itertools.count()

        def attempt() -> Reservation:
            lost = next(attempts)  # every attempt but the first follows a check-and-set lost to another writer
            started = _monotonic()
            primed = self._primed.pop(tenant, None)
            read_at = started
            cached = self._keyrings.get(tenant)
            # Only while the primed keyring is still the newest this process has seen: a keyring read or
            # written since (this process's own rotation, say) makes the next reservation read afresh.
            if (lost == 0 and primed is not None and started - primed[3] < self.keyring_ttl
                    and cached is not None and cached[0] is primed[2]):
                usage, cas, keyring, read_at = primed
            else:
                usage, cas = self.read_usage(tenant)
                keyring = self.read_keyring(tenant)[0]
            primary = keyring.dek.primary_key
            if primary.state != "active":
                raise KeyStateError(f"the primary DEK of tenant {tenant!r} is {primary.state}")
            # The recorded lease outlasts this process's last encryption under it by the
            # request deadline, so the write of that ciphertext has landed (or failed) by then.
            lease_until = wall() + dt.timedelta(seconds=lease + self.config.vault_timeout)
            block = next_block(previous, keyring.policy.dek_usage_cap, self.max_reservation, lost=lost,
                               demand=self._demand.get(tenant, 0))
            new, start, end = usage.reserve(primary.version, block, keyring.policy.dek_usage_cap,
                                            external=external, holder=self.holder, now=wall(),
                                            lease_until=lease_until, legacy_uses=primary.uses)
            if end <= start:
                raise UsageCapReached(f"DEK version {primary.version} of tenant {tenant!r} reached its usage cap; "
                                      f"rotate the DEK: keyops rotate --tenant {tenant} --level dek")
            written = self.store.write(usage_path(tenant), new.to_dict(), cas=cas)
            self._last_usage[tenant] = (usage, new, written, read_at, primary.version)
            return Reservation(primary.version, start, end, block, started + lease, itertools.count(start), external)

        r = retry_on_conflict(attempt, f"the usage document of tenant {tenant!r}")
        self._reservations[(tenant, external)] = r
        return r

    def prime_reservation(self, tenant: str, usage: Usage, cas: int, keyring: Keyring) -> None:
        """The next reservation of ``tenant`` may start from these instead of reading them again.

        ``usage`` is the usage document at KV version ``cas``, and ``keyring``
        was read (or written) after it: the same two reads, in the same order,
        that a reservation makes, so its check-and-set write on ``cas`` is as
        safe as after its own reads (a fence or another reservation written
        since makes it fail, and the retry reads afresh). Used within
        ``keyring_ttl``, like a cached keyring.
        """
        self._primed[tenant] = (usage, cas, keyring, _monotonic())

    def read_for_reservation(self, tenant: str) -> Keyring:
        """A fresh keyring, read after the usage document, both kept for the next reservation."""
        usage, cas = self.read_usage(tenant)
        keyring = self.read_keyring(tenant)[0]
        self.prime_reservation(tenant, usage, cas, keyring)
        return keyring

    def reservation_base(self, tenant: str, since: float, version: int) -> Usage | None:
        """The usage document this process's last reservation of ``tenant`` was written over, or None.

        Only a reservation of DEK ``version`` or newer whose document was read
        after ``since`` (a ``time.monotonic()`` stamp) counts. Its check-and-set
        succeeded on this document, and it reserved the primary of a keyring
        read after the document; so any reservation of an older version written
        later lost its check-and-set and, reading the keyring again, got a newer
        version. The document thus holds every lease of the versions older than
        ``version`` that will ever be granted: a re-encryption need not read it
        again to know when the last of them ends.
        """
        last = self._last_usage.get(tenant)
        return last[0] if last is not None and last[3] >= since and last[4] >= version else None

    def read_usage(self, tenant: str) -> tuple[Usage, int]:
        """The tenant's usage document and its KV version (0: none yet)."""
        tenant = validate_tenant(tenant)
        self.authorize("keyring.read", tenant)
        found = self.store.read(usage_path(tenant))
        if found is None:
            return Usage(tenant), 0
        return Usage.from_dict(found[0], tenant), found[1]

    def update_usage(self, tenant: str, change: Callable[[Usage], Usage]) -> tuple[Usage, int]:
        """Read, change, write the usage document with check-and-set; retry on a lost race."""
        return update_document(lambda: self.read_usage(tenant),
                               lambda new, version: self.store.write(usage_path(tenant), new.to_dict(), cas=version),
                               change, f"the usage document of tenant {tenant!r}")

    def _bound_key(self, tenant: str, version: int, encrypting: bool | None = None) -> crypto.BoundKey:
        """DEK ``version`` bound to the tenant (``dek`` checks its state), entered in the fast path.

        It enters the tenant's fast path only when its state allows it in the
        keyring cached right now; for encryption (``encrypting``: False for
        records of the store, True for callers outside it), only as the
        primary DEK with this process's live reservation of it.
        """
        key = self.dek(tenant, version)
        src = self._keyrings.get(tenant)
        st = self._fast.get(tenant)
        if st is not None and st.src is src and version in st.by_version:
            bk = st.by_version[version]
        else:
            bk = crypto.BoundKey(key, tenant, version)
        if src is None:
            return bk
        keyring = src[0]
        try:
            kv = keyring.dek.get(version)
        except NotFound:
            return bk
        if not kv.usable_for_decrypt:
            return bk
        if st is None or st.src is not src:
            if len(self._fast) >= self.hierarchy.cache_size:
                self._fast.clear()
            st = FastTenant(tenant, src, self.keyring_ttl)
            self._fast[tenant] = st
        st.by_version[version] = bk
        st.by_header[bk.header] = bk
        st.by_text[bk.text_prefix] = bk
        if encrypting is not None:
            r = self._reservations.get((tenant, encrypting))
            if (r is not None and r.dek_version == version == keyring.dek.primary
                    and kv.state == "active"):
                st.enc[encrypting] = (bk, r, min(st.expires, r.deadline))
        return bk

    # --- data -----------------------------------------------------------------------------

    # The hot path: encrypt, encrypt_bytes and decrypt first try the tenant's
    # FastTenant (a few dict look-ups, one clock read and one atomic counter
    # step), and take the checked slow path (validation, keyring TTL, state
    # checks, reservations under the lock) whenever anything is missing or
    # stale. Any error or unusual input also goes the slow way, so errors are
    # those of the full parser.

    def _encrypting_key(self, tenant: str, context: bytes | str, external: bool) -> crypto.BoundKey:
        """The primary DEK of ``tenant`` with one use drawn from this process's reservation."""
        try:
            st = self._fast[tenant]
        except (KeyError, TypeError):
            pass
        else:
            slot = st.enc[external]
            if (slot is not None and self._keyrings.get(tenant) is st.src and _monotonic() < slot[2]
                    and LOCK_FREE_USES and next(slot[1].counter) < slot[1].end):
                return slot[0]
        tenant = validate_tenant(tenant)
        crypto._check_context(context)  # bad input must not spend a reservation
        version = self._take_use(tenant, external)
        return self._bound_key(tenant, version, encrypting=external)

    # ``encrypt``, ``encrypt_bytes`` and ``encrypt_ciphertext`` hand ciphertexts to the caller,
    # outside keyops' store: their uses are counted apart (``external`` in the usage
    # document), because no reference count can find them before a retire.

    def encrypt_bytes(self, tenant: str, plaintext: bytes, context: bytes | str = b"") -> bytes:
        """Encrypt for ``tenant``; the binary form (see ``keyops.crypto``)."""
        return self._encrypting_key(tenant, context, True).seal(plaintext, context)

    def encrypt(self, tenant: str, plaintext: bytes, context: bytes | str = b"") -> str:
        """Encrypt for ``tenant``; the text form ``keyops:v1:...``."""
        return self._encrypting_key(tenant, context, True).seal_text(plaintext, context)

    def encrypt_ciphertext(self, tenant: str, plaintext: bytes, context: bytes | str = b"") -> crypto.Ciphertext:
        return crypto.Ciphertext.from_bytes(self.encrypt_bytes(tenant, plaintext, context))

    def encrypt_record(self, tenant: str, plaintext: bytes, context: bytes | str = b"") -> crypto.Ciphertext:
        """Encrypt a record that keyops' store will hold (secrets, re-encryption, migration)."""
        return crypto.Ciphertext.from_bytes(self._encrypting_key(tenant, context, False).seal(plaintext, context))

    def rewrap(self, tenant: str, ciphertext: str | bytes | crypto.Ciphertext,
               context: bytes | str = b"") -> str | bytes | crypto.Ciphertext:
        """A ciphertext kept outside keyops' store, moved to the tenant's primary DEK (in the same form).

        Already under the primary (checked on a fresh keyring read), it is
        returned as it is. Applications run this over the ciphertexts they
        keep before an operator retires the older DEK version.
        """
        tenant = validate_tenant(tenant)
        ct = ciphertext if isinstance(ciphertext, crypto.Ciphertext) else crypto.Ciphertext.parse(ciphertext)
        plaintext = self.decrypt(tenant, ct, context)  # authentic for this tenant and context, whatever follows
        # The cached keyring may predate a rotation: "already primary" is decided on a fresh read.
        if (ct.dek_version >= self.cached_keyring(tenant).dek.primary
                and ct.dek_version >= self.read_keyring(tenant)[0].dek.primary):
            return ciphertext
        sealed = self.encrypt_ciphertext(tenant, plaintext, context)
        if isinstance(ciphertext, crypto.Ciphertext):
            return sealed
        return sealed.to_text() if isinstance(ciphertext, str) else sealed.to_bytes()

    def decrypt(self, tenant: str, ciphertext: str | bytes | crypto.Ciphertext, context: bytes | str = b"") -> bytes:
        """Decrypt a ciphertext of ``tenant`` in any form (text, binary or parsed)."""
        try:
            st = self._fast[tenant]
        except (KeyError, TypeError):
            st = None
        if st is not None and self._keyrings.get(tenant) is st.src and _monotonic() < st.expires:
            try:
                if ciphertext.__class__ is bytes:
                    bk = st.by_header.get(ciphertext[:st.header_len])
                    if bk is not None:
                        return bk.open(ciphertext, context)
                elif ciphertext.__class__ is str:
                    bk = st.by_text.get(ciphertext[:ciphertext.find(":", st.text_tenant_len) + 1])
                    if bk is not None:
                        return bk.open_text(ciphertext, context)
            except MalformedCiphertext:
                pass  # unusual but maybe valid (e.g. surrounding whitespace): the full parser decides
        tenant = validate_tenant(tenant)
        ct = ciphertext if isinstance(ciphertext, crypto.Ciphertext) else crypto.Ciphertext.parse(ciphertext)
        if ct.tenant != tenant:
            # Same opaque error as a wrong key: a ciphertext of another tenant is not authentic here.
            raise DecryptionError()
        return self._bound_key(tenant, ct.dek_version).open(ct.to_bytes(), context)

    decrypt_bytes = decrypt

    # --- secrets ----------------------------------------------------------------------------

    def read_record(self, tenant: str, name: str) -> SecretRecord | None:
        return secret_ops.read_record(self, tenant, name)

    def write_record(self, tenant: str, name: str, ct: crypto.Ciphertext, cas: int,
                     extra: Mapping[str, Any] | None = None) -> int:
        return secret_ops.write_record(self, tenant, name, ct, cas, extra=extra)

    def get_secret(self, tenant: str, name: str) -> bytes:
        return secret_ops.get_secret(self, tenant, name)

    def put_secret(self, tenant: str, name: str, value: bytes | str, dry_run: bool = False,
                   expect_new: bool = False) -> SecretResult:
        return secret_ops.put_secret(self, tenant, name, value, dry_run=dry_run, expect_new=expect_new)

    def list_secrets(self, tenant: str, prefix: str = "") -> list[str]:
        return secret_ops.list_secrets(self, tenant, prefix=prefix)

    def delete_secret(self, tenant: str, name: str, dry_run: bool = False) -> bool:
        return secret_ops.delete_secret(self, tenant, name, dry_run=dry_run)

    # --- status -----------------------------------------------------------------------------

    def tenant_status(self, tenant: str, keyring: Keyring | None = None) -> TenantStatus:
        return status_ops.tenant_status(self, tenant, keyring=keyring)

    def status(self, tenant: str | None = None) -> StatusReport:
        return status_ops.status(self, tenant=tenant)
