"""Operations: the one API that the CLI and the Ansible modules share.

``Keyops`` composes the hierarchy: the HSM master key (PKCS#11) wraps KEKs,
a KEK (an in-memory AES key, or a Transit key for residence ``transit``)
wraps DEKs, DEKs encrypt data. Keyrings are read and written with
check-and-set; unwrapped keys are cached per process with a bound, so a hot
path costs no HSM and no Vault call.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from keyops import access, crypto
from keyops.config import Config
from keyops.errors import (
    AuthenticationFailed,
    Conflict,
    DecryptionError,
    InvalidInput,
    KeyopsError,
    KeyringCorrupt,
    KeyStateError,
    MalformedCiphertext,
    NotFound,
    PermissionDenied,
    SecretNotFound,
    TenantExists,
    TenantNotFound,
    UsageCapReached,
    VaultSealed,
    VaultUnreachable,
)
from keyops.backends.hsm import Hsm
from keyops.model.master import (  # noqa: F401 - MasterVersion and MASTER_PERIOD_DAYS are part of this module's API
    FIRST_MASTER_WAIT,
    MASTER_PENDING,
    MASTER_PERIOD_DAYS,
    MasterRegistry,
    MasterVersion,
)
from keyops.model.keyring import (
    DUE_USAGE_FRACTION,
    Due,
    KeyChain,
    Keyring,
    Policy,
    age_days,
    due_rotations,
    format_time,
    next_due,
    utcnow,
)
from keyops.model.names import validate_secret_name, validate_tenant
from keyops.model.usage import Usage
from keyops.backends.vault import CallCounter, VaultStore
from keyops.wrappers import AeadWrapper, KeyWrapper, Pkcs11Wrapper, TransitWrapper

MASTER_PATH = "master"
#: What to do about a keyring keyops refuses (KeyringCorrupt).
RESTORE_ADVICE = ("an administrator restores a good version from KV's history: see 'Restoring a keyring' "
                  "in docs/access.md")
RECORD_SCHEMA = 1
CAS_RETRIES = 8
#: First block of DEK uses a process reserves; it doubles up to the maximum,
#: so a busy process writes the keyring rarely and an idle one wastes little.
FIRST_RESERVATION = 4096
MAX_RESERVATION = 1 << 20
#: ``next()`` on an ``itertools.count`` is atomic while the GIL serialises
#: bytecode, so the hot path draws DEK uses without a lock; a free-threaded
#: interpreter takes the locked path for every encryption instead.
_LOCK_FREE_USES = getattr(sys, "_is_gil_enabled", lambda: True)()
_monotonic = time.monotonic
_log = logging.getLogger("keyops.ops.front")


def _wall() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def keyring_path(tenant: str) -> str:
    return f"tenants/{tenant}/keyring"


def usage_path(tenant: str) -> str:
    return f"tenants/{tenant}/usage"


def jobs_path(tenant: str) -> str:
    return f"tenants/{tenant}/jobs"


def secret_path(tenant: str, name: str) -> str:
    return f"secrets/{tenant}/{name}"


def transit_key_name(tenant: str) -> str:
    return f"keyops-{tenant}"


def secret_context(name: str) -> bytes:
    return b"secret:" + name.encode("utf-8")


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str) -> bytes:
    """A stored wrapped key: anything but canonical base64 is tampered with, so not authentic."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except ValueError:  # binascii.Error, UnicodeEncodeError
        raise DecryptionError() from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise DecryptionError()  # non-zero unused bits: a flipped bit must not go unnoticed
    return raw


# --- results (no key material in any of them) ------------------------------------------


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    created_at: str
    age_days: float
    parent_version: int
    uses: int | None = None  # DEK: encryptions reserved (an upper bound of those done)
    external_uses: int | None = None  # DEK: the part of them handed to callers outside keyops' store


@dataclasses.dataclass(frozen=True)
class LevelStatus:
    level: str
    primary: int
    period_days: int
    next_due: str
    versions: tuple[VersionStatus, ...]
    # For monitoring: alert on these without parsing dates.
    primary_age_days: float = 0.0
    seconds_until_due: int = 0  # negative once the primary is older than its period
    state_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TenantStatus:
    tenant: str
    residence: str
    policy: Mapping[str, Any]
    created_at: str
    kek: LevelStatus
    dek: LevelStatus
    dek_usage: int
    dek_usage_cap: int
    due: tuple[Due, ...]
    # For monitoring: usage against cap, and the soonest rotation (0 when one is due now).
    dek_usage_ratio: float = 0.0
    dek_usage_due_ratio: float = DUE_USAGE_FRACTION
    seconds_until_due: int = 0
    is_due: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TenantResult:
    tenant: str
    changed: bool
    keyring: Keyring | None

    @property
    def kek_version(self) -> int | None:
        return self.keyring.kek.primary if self.keyring else None

    @property
    def dek_version(self) -> int | None:
        return self.keyring.dek.primary if self.keyring else None


@dataclasses.dataclass(frozen=True)
class SecretResult:
    tenant: str
    name: str
    changed: bool
    version: int | None  # KV version of the record
    dek_version: int | None


@dataclasses.dataclass(frozen=True)
class SecretRecord:
    """A stored record as read, with the KV version needed for check-and-set."""

    tenant: str
    name: str
    ciphertext: str
    dek_version: int
    kv_version: int


# --- caches -----------------------------------------------------------------------------


class _LruCache:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def discard_tenant(self, tenant: str) -> None:
        with self._lock:
            for key in [k for k in self._data if k[0] == tenant]:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


@dataclasses.dataclass
class _Reservation:
    """Uses ``[start, end)`` of DEK ``dek_version``, reserved in the usage document by this process.

    ``counter`` hands out each number once (``next`` is atomic under the GIL);
    a number at or past ``end`` is never used for an encryption, so the
    recorded count is always an upper bound of the encryptions done. No
    encryption under it starts at or after ``deadline`` (monotonic): the
    lease recorded in the usage document ends later than that by this
    process's request deadline, which is what retire and destroy wait out.
    """

    dek_version: int
    start: int
    end: int
    block: int
    deadline: float
    counter: Iterator[int]
    external: bool


def _next_block(previous: _Reservation | None) -> int:
    """Blocks double while a process spends them before its lease ends, and shrink to its demand otherwise."""
    if previous is None:
        return FIRST_RESERVATION
    spent = next(previous.counter) - previous.start
    if spent >= previous.end - previous.start:
        return min(previous.block * 2, MAX_RESERVATION)
    return max(FIRST_RESERVATION, min(MAX_RESERVATION, spent * 2))


class _FastTenant:
    """The hot path of one tenant, valid while ``src`` is the tenant's cached keyring entry.

    ``src`` is the ``(keyring, kv_version, loaded_at)`` tuple of
    ``Keyops._keyrings``; any re-read or write of the keyring replaces that
    tuple and so retires this object, and it expires with the keyring TTL.
    Bound DEKs enter only after their state was checked against ``src``.
    """

    __slots__ = ("src", "expires", "header_len", "text_tenant_len", "by_version", "by_header", "by_text", "enc")

    def __init__(self, tenant: str, src: tuple[Keyring, int, float], ttl: float) -> None:
        self.src = src
        self.expires = src[2] + ttl
        self.header_len = len(crypto.binary_tenant_prefix(tenant)) + 4
        self.text_tenant_len = len(crypto.text_tenant_prefix(tenant))
        self.by_version: dict[int, crypto.BoundKey] = {}
        self.by_header: dict[bytes, crypto.BoundKey] = {}  # binary header up to the DEK version
        self.by_text: dict[str, crypto.BoundKey] = {}  # "keyops:v1:<tenant>:<version>:"
        # Per purpose (index 0: records of keyops' store, 1: callers outside it): the primary
        # DEK, this process's live reservation of it and when encrypting with it must stop.
        self.enc: list[tuple[crypto.BoundKey, _Reservation, float] | None] = [None, None]


# --- the API ------------------------------------------------------------------------------


AuditSink = Callable[..., None]


class Keyops:
    def __init__(self, config: Config | None = None, *, store: VaultStore | None = None, hsm: Hsm | None = None,
                 cache_size: int = 1024, keyring_ttl: float = 30.0, clock: Callable[[], dt.datetime] = utcnow,
                 audit: AuditSink | None = None, pool_size: int = 32) -> None:
        self.config = config or Config.load()
        self.calls = store.calls if store else CallCounter()
        self.store = store or VaultStore(self.config, counter=self.calls, pool_size=pool_size)
        self._hsm = hsm
        self.clock = clock
        self.keyring_ttl = keyring_ttl
        self.audit = audit
        self._roles: access.Roles | None = None
        self._principal: access.Principal | None = None
        if audit is not None and hasattr(audit, "attach"):
            audit.attach(self.store)  # the audit trail's KV copies use this caller's token
        self._keys = _LruCache(cache_size)
        self._keyrings: dict[str, tuple[Keyring, int, float]] = {}
        self._reservations: dict[tuple[str, bool], _Reservation] = {}
        #: Names this object's leases in usage documents (``keyops.model.usage``); no meaning beyond that.
        self.holder = uuid.uuid4().hex[:12]
        self._fast: dict[str, _FastTenant] = {}
        self._master_seen: tuple[MasterRegistry, float] | None = None
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
            try:
                self.update_usage(tenant, lambda u: u.release(self.holder))
            except KeyopsError as exc:
                _log.info("the leases of tenant %r run out by themselves: %s", tenant, exc.code)

    def __enter__(self) -> Keyops:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- audit ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def audited(self, operation: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Check the caller's role, then emit one audit event for the operation, with its result."""
        self.authorize(access.operation_for_event(operation, fields.get("level")), fields.get("tenant"))
        event: dict[str, Any] = dict(fields)
        try:
            yield event
        except KeyopsError as exc:
            self._emit(operation, result=f"error:{exc.code}", **event)
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
        self._master_seen = (registry, time.monotonic())
        return registry, found[1]

    def master_label(self, version: int) -> str:
        """The HSM label of master ``version``: as registered, else as this registry would name it."""
        seen = self._master_seen[0] if self._master_seen is not None else None
        if seen is None or all(mv.version != version for mv in seen.versions):
            found = self.read_master()
            seen = found[0] if found else None
        for mv in seen.versions if seen is not None else ():
            if mv.version == version:
                return mv.label
        registry_id = seen.registry_id if seen is not None and seen.registry_id else "<new registry id>"
        return f"{self.config.master_key_label}-{registry_id}-v{version}"

    def ensure_master(self, dry_run: bool = False) -> tuple[MasterRegistry, bool]:
        """The master key exists on the token and is registered in KV. Returns (registry, changed).

        A new registry gets a random id, and its first version is claimed
        (``pending``) before its HSM key is made, then turned active: a crash in
        between leaves a claim that the next call finishes, never an HSM key
        that no registry knows. A key already on the token under the new name
        is refused, never adopted (``HsmKeyNotOwned``).
        """
        found = self.read_master()
        if found is None:
            registry = MasterRegistry.first(self.config.master_key_label, self.clock())
            if dry_run:
                return registry.replace_version(dataclasses.replace(registry.get(1), state="active")), True
            with self.audited("master.create", level="master", versions=[1]) as event:
                first = registry.get(1)
                # Logs in first: a wrong PIN or a look-alike key fails before anything is written.
                self.hsm.check_unused(first.label, bytes.fromhex(first.key_id or ""))
                try:
                    revision = self.store.write(MASTER_PATH, registry.to_dict(), cas=0)
                except Conflict:
                    # Registered by a concurrent process (first tenants created in parallel): use theirs.
                    event["changed"] = False
                    found = self.read_master()
                    if found is None:
                        raise
                else:
                    return self._activate_first_master(registry, revision), True
        registry, revision = found
        if registry.get(registry.primary).state == MASTER_PENDING:
            if dry_run:
                return registry, True
            registry, created = self._await_first_master(registry, revision)
            if created:
                return registry, True
        primary = registry.get(registry.primary)
        if self.hsm.has_key(primary.label, primary.key_id_bytes):
            return registry, False
        raise KeyStateError(f"master key {primary.label!r} is registered in Vault but missing from HSM token "
                            f"{self.config.pkcs11_token_label!r}; point keyops at the right token")

    def _await_first_master(self, registry: MasterRegistry, revision: int) -> tuple[MasterRegistry, bool]:
        """The first master version, claimed by another process: wait for it; finish a claim left by a crash."""
        claimed_at = registry.get(registry.primary).created_at
        wait = min(FIRST_MASTER_WAIT, max(0.0, FIRST_MASTER_WAIT - age_days(claimed_at, self.clock()) * 86400))
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(0.1)
            found = self.read_master()
            if found is None:
                raise Conflict("the master key registry vanished while its first key was being made; re-run")
            registry, revision = found
            if registry.get(registry.primary).state != MASTER_PENDING:
                return registry, False
        with self.audited("master.create", level="master", versions=[registry.primary], resumed=True):
            return self._activate_first_master(registry, revision), True

    def _activate_first_master(self, registry: MasterRegistry, revision: int) -> MasterRegistry:
        mv = registry.get(registry.primary)
        if mv.key_id is None:
            raise KeyStateError(f"the pending first master version {mv.version} has no key id; inspect the registry")
        # Still pending: nothing is wrapped by it, so a key half-made by a killed creation may be replaced.
        self.hsm.ensure_key(mv.label, key_id=bytes.fromhex(mv.key_id), replace_unusable=True)
        active = registry.replace_version(dataclasses.replace(mv, state="active"))
        try:
            self.store.write(MASTER_PATH, active.to_dict(), cas=revision)
        except Conflict:
            found = self.read_master()
            if found is not None and found[0].get(found[0].primary).state == "active":
                return found[0]
            raise Conflict("the master key registry changed while its first key was being made; re-run") from None
        self._master_seen = (active, time.monotonic())
        return active

    def master_wrapper(self, version: int | None = None) -> tuple[int, Pkcs11Wrapper]:
        """The master key ``version`` (default: the primary, always read fresh) as a wrapper.

        A named version's label and key id never change, so unwrapping may use
        the registry read in the last ``keyring_ttl`` seconds: a process
        unwrapping the KEKs of many tenants reads it once, not once per tenant.
        """
        seen = self._master_seen
        if version is not None and seen is not None and time.monotonic() - seen[1] < self.keyring_ttl:
            for mv in seen[0].versions:
                if mv.version == version and mv.state in ("active", "decrypt_only"):
                    self.authorize("master.read")
                    return version, Pkcs11Wrapper(self.hsm, mv.label, mv.key_id_bytes)
        found = self.read_master()
        if found is None:
            raise NotFound("no master key is registered; run 'keyops dev up' or the master_key module first")
        registry = found[0]
        version = registry.primary if version is None else version
        mv = registry.get(version)
        if mv.state not in ("active", "decrypt_only"):
            raise KeyStateError(f"master key version {version} is {mv.state}")
        return version, Pkcs11Wrapper(self.hsm, mv.label, mv.key_id_bytes)

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
                access.ensure_history(self, [tenant], master=self.principal.allows("history.config"), mount=False)
            except PermissionDenied as exc:
                # The keyring is made and usable; only its history setting waits for an administrator.
                _log.warning("KV history of tenant %r not set (%s); run 'keyops policy apply' with a "
                             "security-admin token", tenant, exc.code)
        return version

    def update_keyring(self, tenant: str, change: Callable[[Keyring], Keyring]) -> tuple[Keyring, int]:
        """Read, change, write with check-and-set; retry on a lost race."""
        for _ in range(CAS_RETRIES):
            keyring, version = self.read_keyring(tenant)
            new = change(keyring)
            if new == keyring:
                return keyring, version
            try:
                return new, self.write_keyring(tenant, new, cas=version)
            except Conflict:
                continue
        raise Conflict(f"keyring of tenant {tenant!r} kept changing under {CAS_RETRIES} attempts; retry later")

    def _cached_keyring(self, tenant: str) -> Keyring:
        cached = self._keyrings.get(tenant)
        if cached is not None and time.monotonic() - cached[2] < self.keyring_ttl:
            return cached[0]
        return self.read_keyring(tenant)[0]

    def list_tenants(self) -> list[str]:
        self.authorize("tenants.list")
        return sorted(k.rstrip("/") for k in self.store.list("tenants") if k.endswith("/"))

    def get_tenant(self, tenant: str) -> Keyring:
        return self.read_keyring(tenant)[0]

    def create_tenant(self, tenant: str, policy: Policy | None = None, dry_run: bool = False) -> TenantResult:
        """Create the tenant's keyring with its first KEK and DEK.

        Idempotent: an existing complete keyring with the same policy is
        ``changed=False``; one with another policy raises ``TenantExists``
        (use ``update_policy``). A keyring left half-made by a crash is
        completed.
        """
        tenant = validate_tenant(tenant)
        self.authorize("tenant.create", tenant)
        policy = policy or Policy()
        try:
            keyring, version = self.read_keyring(tenant)
        except TenantNotFound:
            keyring, version = None, 0
        if keyring is not None and not keyring.dek.empty:
            if keyring.policy != policy:
                raise TenantExists(f"tenant {tenant!r} exists with another policy; update it with "
                                   "'keyops tenant update' (or the tenant module) instead")
            return TenantResult(tenant, False, keyring)
        if dry_run:
            return TenantResult(tenant, True, keyring)
        with self.audited("tenant.create", tenant=tenant, level="kek+dek") as event:
            if keyring is None:
                keyring, version = self._create_kek_first(tenant, policy)
            elif keyring.policy != policy:
                raise TenantExists(f"tenant {tenant!r} is half-made with another policy; re-run with its policy")
            keyring = self._finish_tenant(keyring, version)
            event["versions"] = {"kek": keyring.kek.primary, "dek": keyring.dek.primary}
        return TenantResult(tenant, True, keyring)

    def update_policy(self, tenant: str, policy: Policy, dry_run: bool = False) -> TenantResult:
        """Change periods and usage cap. The residence is fixed once a tenant exists."""
        self.authorize("tenant.update", validate_tenant(tenant))
        keyring, version = self.read_keyring(tenant)
        if policy.kek_residence != keyring.policy.kek_residence:
            raise InvalidInput(f"tenant {tenant!r} has KEK residence {keyring.policy.kek_residence!r}; the "
                               "residence cannot change in place (create a new tenant and migrate)")
        if policy == keyring.policy:
            return TenantResult(tenant, False, keyring)
        new = dataclasses.replace(keyring, policy=policy)
        if dry_run:
            return TenantResult(tenant, True, new)
        with self.audited("tenant.update_policy", tenant=tenant, level="policy"):
            self.write_keyring(tenant, new, cas=version)
        return TenantResult(tenant, True, new)

    def delete_tenant(self, tenant: str, dry_run: bool = False) -> bool:
        """Remove an empty tenant's keyring. Refuses while the tenant has secrets.

        The Transit key (residence transit) is left in place: deleting it is an
        explicit Transit operation, since it cannot be undone.
        """
        self.authorize("tenant.delete", validate_tenant(tenant))
        try:
            self.read_keyring(tenant)
        except TenantNotFound:
            return False
        remaining = self.list_secrets(tenant)
        if remaining:
            raise KeyStateError(f"tenant {tenant!r} still has {len(remaining)} secrets; delete or migrate them "
                                "before removing its keyring")
        if not dry_run:
            with self.audited("tenant.delete", tenant=tenant, level="kek+dek"):
                for job in self.store.list(jobs_path(tenant)):
                    self.store.delete_all_versions(f"{jobs_path(tenant)}/{job}")
                self.store.delete_all_versions(usage_path(tenant))
                self.store.delete_all_versions(keyring_path(tenant))
                self._keyrings.pop(tenant, None)
                self._reservations.pop((tenant, False), None)
                self._reservations.pop((tenant, True), None)
                self._keys.discard_tenant(tenant)
        return True

    def _create_kek_first(self, tenant: str, policy: Policy) -> tuple[Keyring, int]:
        # Step 1: the KEK, wrapped by the master key, is stored before anything
        # else, so that a crash later never leaves a key we cannot recover.
        self.ensure_master()
        master_version, master = self.master_wrapper()
        kek = crypto.generate_key()
        now = self.clock()
        wrapped = master.wrap(kek, crypto.key_context(tenant, "kek", 1))
        keyring = Keyring(tenant=tenant, policy=policy, created_at=format_time(now),
                          kek=KeyChain(0, ()), dek=KeyChain(0, ()))
        keyring = keyring.add_version("kek", b64e(wrapped), master_version, now,
                                      transit_version=1 if policy.kek_residence == "transit" else None)
        self._fresh_usage(tenant)
        try:
            version = self.write_keyring(tenant, keyring, cas=0)
        except Conflict as exc:
            raise Conflict(f"tenant {tenant!r} is being created by another process; re-run to see its state") from exc
        return keyring, version

    def _fresh_usage(self, tenant: str) -> None:
        """An empty usage document, written before the keyring so that the keyring's creation sets its history too.

        One left by an earlier tenant of the same name (deleted by an older
        keyops) counts another tenant's keys: it is replaced, with check-and-set.
        """
        found = self.store.read(usage_path(tenant))
        if found is not None and found[0] == Usage(tenant).to_dict():
            return
        try:
            self.store.write(usage_path(tenant), Usage(tenant).to_dict(), cas=found[1] if found else 0)
        except Conflict:
            pass  # another process creating this tenant wrote it first; only one keyring write can win

    def _finish_tenant(self, keyring: Keyring, version: int) -> Keyring:
        tenant = keyring.tenant
        kek_version = keyring.kek.primary
        if keyring.policy.kek_residence == "transit":
            self._ensure_transit_kek(keyring, kek_version)
        dek = crypto.generate_key()
        wrapper = self._kek_wrapper(keyring, kek_version)
        wrapped = wrapper.wrap(dek, crypto.key_context(tenant, "dek", 1))
        new = keyring.add_version("dek", b64e(wrapped), kek_version, self.clock())
        try:
            self.write_keyring(tenant, new, cas=version)
        except Conflict as exc:
            raise Conflict(f"tenant {tenant!r} is being created by another process; re-run to see its state") from exc
        return new

    # --- KEKs -----------------------------------------------------------------------------

    def unwrap_kek(self, keyring: Keyring, kek_version: int) -> bytes:
        """The KEK's bytes, unwrapped by the master key (an HSM call unless cached)."""
        kv = keyring.kek.get(kek_version)
        cache_key = (keyring.tenant, "kek", kek_version, kv.wrapped)
        cached = self._keys.get(cache_key)
        if cached is not None:
            return cached
        with self.audited("kek.unwrap", tenant=keyring.tenant, level="kek", versions=[kek_version]):
            _, master = self.master_wrapper(kv.parent_version)
            kek = master.unwrap(b64d(kv.wrapped), crypto.key_context(keyring.tenant, "kek", kek_version))
        self._keys.put(cache_key, kek)
        return kek

    def _kek_wrapper(self, keyring: Keyring, kek_version: int) -> KeyWrapper:
        kv = keyring.kek.get(kek_version)
        if keyring.policy.kek_residence == "transit":
            return TransitWrapper(self.store, transit_key_name(keyring.tenant), kv.transit_version or kek_version)
        return AeadWrapper(self.unwrap_kek(keyring, kek_version))

    def _ensure_transit_kek(self, keyring: Keyring, kek_version: int) -> None:
        """Import the KEK into the tenant's Transit key unless it is there already.

        An existing version is checked to hold our KEK (Transit encrypts a
        probe, we decrypt it locally), so a crash between import and keyring
        write is recovered and a foreign key of the same name is refused.
        """
        tenant = keyring.tenant
        name = transit_key_name(tenant)
        kv = keyring.kek.get(kek_version)
        tv = kv.transit_version or kek_version
        kek = self.unwrap_kek(keyring, kek_version)
        info = self.store.transit_read_key(name)
        latest = int(info["latest_version"]) if info else 0
        if latest >= tv:
            self._check_transit_version(name, tv, kek)
            return
        if latest != tv - 1:
            raise KeyStateError(f"Transit key {name!r} is at version {latest}, but KEK version {kek_version} "
                                f"expects Transit version {tv}; inspect the key before continuing")
        if info is not None and not info.get("imported_key", True):
            raise KeyStateError(f"Transit key {name!r} exists but was not imported by keyops; remove it or "
                                "rename the tenant's Transit key")
        self.store.transit_import(name, _byok_ciphertext(self.store.transit_wrapping_key(), kek),
                                  new_version=latest > 0)
        self._check_transit_version(name, tv, kek)

    def _check_transit_version(self, name: str, transit_version: int, kek: bytes) -> None:
        probe_ctx = b"keyops-transit-probe"
        ct = self.store.transit_encrypt(name, b"keyops probe", probe_ctx, key_version=transit_version)
        try:
            body = base64.b64decode(ct.split(":", 2)[2])
            crypto.AeadKey(kek).open(body, probe_ctx)
        except (DecryptionError, ValueError, IndexError) as exc:
            raise KeyStateError(f"Transit key {name!r} version {transit_version} does not hold this tenant's "
                                "KEK; it was made by something else") from exc

    # --- DEKs -----------------------------------------------------------------------------

    def dek(self, tenant: str, version: int) -> crypto.AeadKey:
        """The unwrapped DEK ``version``: from the cache, else unwrapped through its KEK."""
        keyring = self._cached_keyring(tenant)
        try:
            kv = keyring.dek.get(version)
        except NotFound:
            keyring = self.read_keyring(tenant)[0]
            kv = keyring.dek.get(version)
        if not kv.usable_for_decrypt:
            raise KeyStateError(f"DEK version {version} of tenant {tenant!r} is {kv.state}; "
                                "it no longer decrypts")
        key = self._keys.get((tenant, "dek", version, kv.wrapped))
        if key is None:  # a cache miss only: never one event per encryption
            try:
                key = self._unwrap_dek(keyring, version)
            except KeyopsError:
                # The cached keyring may be older than a KEK rotation of another
                # process, which re-wrapped every DEK (and may have raised Transit's
                # min_decryption_version): re-read once before failing.
                fresh = self.read_keyring(tenant)[0]
                if fresh.dek.get(version).wrapped == kv.wrapped:
                    raise
                return self.dek(tenant, version)
        return key

    def _unwrap_dek(self, keyring: Keyring, version: int) -> crypto.AeadKey:
        kv = keyring.dek.get(version)
        with self.audited("dek.unwrap", tenant=keyring.tenant, level="dek", versions=[version]):
            wrapper = self._kek_wrapper(keyring, kv.parent_version)
            raw = wrapper.unwrap(b64d(kv.wrapped), crypto.key_context(keyring.tenant, "dek", version))
        key = crypto.AeadKey(raw)
        self._keys.put((keyring.tenant, "dek", version, kv.wrapped), key)
        return key

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

    def _reserve(self, tenant: str, previous: _Reservation | None, external: bool) -> _Reservation:
        """Reserve a block of uses of the primary DEK under a lease, with one check-and-set write of the usage.

        The usage document is read before the keyring, and the write is a
        check-and-set on the usage read: a retire that fenced the version
        in between makes the write fail, and the retry sees the fence (or a
        newer primary). So no reservation of a fenced version is ever granted.
        """
        self.authorize("usage.reserve", tenant)
        # Unwrap the primary DEK first: a process that cannot use it (wrong PIN,
        # HSM or Transit refusing) must fail without spending a reservation.
        self.dek(tenant, self._cached_keyring(tenant).dek.primary)
        block = _next_block(previous)
        lease = self.keyring_ttl
        for _ in range(CAS_RETRIES):
            started = _monotonic()
            usage, cas = self.read_usage(tenant)
            keyring = self.read_keyring(tenant)[0]
            primary = keyring.dek.primary_key
            if primary.state != "active":
                raise KeyStateError(f"the primary DEK of tenant {tenant!r} is {primary.state}")
            # The recorded lease outlasts this process's last encryption under it by the
            # request deadline, so the write of that ciphertext has landed (or failed) by then.
            lease_until = _wall() + dt.timedelta(seconds=lease + self.config.vault_timeout)
            new, start, end = usage.reserve(primary.version, block, keyring.policy.dek_usage_cap,
                                            external=external, holder=self.holder, now=_wall(),
                                            lease_until=lease_until, legacy_uses=primary.uses)
            if end <= start:
                raise UsageCapReached(f"DEK version {primary.version} of tenant {tenant!r} reached its usage cap; "
                                      f"rotate the DEK: keyops rotate --tenant {tenant} --level dek")
            try:
                self.store.write(usage_path(tenant), new.to_dict(), cas=cas)
            except Conflict:
                continue
            r = _Reservation(primary.version, start, end, block, started + lease, itertools.count(start), external)
            self._reservations[(tenant, external)] = r
            return r
        raise Conflict(f"the usage document of tenant {tenant!r} kept changing under {CAS_RETRIES} attempts; "
                       "retry later")

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
        for _ in range(CAS_RETRIES):
            usage, version = self.read_usage(tenant)
            new = change(usage)
            if new == usage:
                return usage, version
            try:
                return new, self.store.write(usage_path(tenant), new.to_dict(), cas=version)
            except Conflict:
                continue
        raise Conflict(f"the usage document of tenant {tenant!r} kept changing under {CAS_RETRIES} attempts; "
                       "retry later")

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
            if len(self._fast) >= self._keys.maxsize:
                self._fast.clear()
            st = _FastTenant(tenant, src, self.keyring_ttl)
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
    # _FastTenant (a few dict look-ups, one clock read and one atomic counter
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
                    and _LOCK_FREE_USES and next(slot[1].counter) < slot[1].end):
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
        if ct.dek_version >= self._cached_keyring(tenant).dek.primary:
            # The cached keyring may predate a rotation: decide on a fresh one.
            if ct.dek_version >= self.read_keyring(tenant)[0].dek.primary:
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
                    bk = st.by_header.get(ciphertext[:st.header_len])  # type: ignore[index]
                    if bk is not None:
                        return bk.open(ciphertext, context)  # type: ignore[arg-type]
                elif ciphertext.__class__ is str:
                    bk = st.by_text.get(ciphertext[:ciphertext.find(":", st.text_tenant_len) + 1])  # type: ignore
                    if bk is not None:
                        return bk.open_text(ciphertext, context)  # type: ignore[arg-type]
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
        tenant, name = validate_tenant(tenant), validate_secret_name(name)
        self.authorize("secrets.read", tenant)
        found = self.store.read(secret_path(tenant, name))
        if found is None:
            return None
        data, version = found
        try:
            return SecretRecord(tenant, name, str(data["ciphertext"]), int(data["dek_version"]), version)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"secret {name!r} of tenant {tenant!r} is not a keyops record") from exc

    def write_record(self, tenant: str, name: str, ct: crypto.Ciphertext, cas: int,
                     extra: Mapping[str, Any] | None = None) -> int:
        """Write a record with check-and-set. ``extra``: provenance fields (which job wrote it, from where)."""
        self.authorize("secrets.write", tenant)
        record: dict[str, Any] = dict(extra or {})
        record.update({"schema": RECORD_SCHEMA, "ciphertext": ct.to_text(), "dek_version": ct.dek_version,
                       "updated_at": format_time(self.clock())})
        return self.store.write(secret_path(tenant, name), record, cas=cas)

    def get_secret(self, tenant: str, name: str) -> bytes:
        record = self.read_record(tenant, name)
        if record is None:
            self._cached_keyring(tenant)  # TenantNotFound when it is the tenant that is missing
            raise SecretNotFound(f"tenant {tenant!r} has no secret {name!r}")
        return self.decrypt(tenant, record.ciphertext, secret_context(name))

    def put_secret(self, tenant: str, name: str, value: bytes | str, dry_run: bool = False) -> SecretResult:
        """Store ``value`` encrypted; no write (``changed=False``) when it is already stored."""
        tenant, name = validate_tenant(tenant), validate_secret_name(name)
        value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        self.authorize("secrets.write", tenant)
        self._cached_keyring(tenant)  # a clear TenantNotFound before anything else
        for _ in range(CAS_RETRIES):
            record = self.read_record(tenant, name)
            if record is not None and self.decrypt(tenant, record.ciphertext, secret_context(name)) == value:
                return SecretResult(tenant, name, False, record.kv_version, record.dek_version)
            if dry_run:
                return SecretResult(tenant, name, True, record.kv_version if record else None, None)
            ct = self.encrypt_record(tenant, value, secret_context(name))
            try:
                with self.audited("secret.write", tenant=tenant, name=name, level="dek", versions=[ct.dek_version]):
                    version = self.write_record(tenant, name, ct, cas=record.kv_version if record else 0)
            except Conflict:
                continue
            return SecretResult(tenant, name, True, version, ct.dek_version)
        raise Conflict(f"secret {name!r} of tenant {tenant!r} kept changing; retry later")

    def list_secrets(self, tenant: str, prefix: str = "") -> list[str]:
        tenant = validate_tenant(tenant)
        self.authorize("secrets.read", tenant)
        self._cached_keyring(tenant)
        out: list[str] = []
        pending = [prefix.strip("/")]
        while pending:
            folder = pending.pop()
            path = f"secrets/{tenant}/{folder}".rstrip("/")
            for key in self.store.list(path):
                full = f"{folder}/{key}".lstrip("/") if folder else key
                if key.endswith("/"):
                    pending.append(full.rstrip("/"))
                else:
                    out.append(full)
        return sorted(out)

    def delete_secret(self, tenant: str, name: str, dry_run: bool = False) -> bool:
        """Remove the record and its history. False when there was nothing to delete."""
        tenant, name = validate_tenant(tenant), validate_secret_name(name)
        self.authorize("secrets.delete", tenant)
        if self.read_record(tenant, name) is None:
            return False
        if not dry_run:
            with self.audited("secret.delete", tenant=tenant, name=name, level="dek"):
                self.store.delete_all_versions(secret_path(tenant, name))
        return True

    # --- status -----------------------------------------------------------------------------

    def tenant_status(self, tenant: str, keyring: Keyring | None = None) -> TenantStatus:
        keyring = keyring or self.read_keyring(tenant)[0]
        usage = self.read_usage(keyring.tenant)[0]
        now = self.clock()

        def level(name: str) -> LevelStatus:
            chain = keyring.chain(name)
            versions = tuple(
                VersionStatus(kv.version, kv.state, kv.created_at, round(age_days(kv.created_at, now), 2),
                              kv.parent_version, usage.uses(kv.version, kv.uses) if name == "dek" else None,
                              usage.get(kv.version).external if name == "dek" else None)
                for kv in chain.versions)
            until = int((next_due(keyring, name) - now).total_seconds()) if not chain.empty else 0
            return LevelStatus(name, chain.primary, keyring.policy.period_days(name),
                               format_time(next_due(keyring, name)) if not chain.empty else "", versions,
                               primary_age_days=round(age_days(chain.primary_key.created_at, now), 4)
                               if not chain.empty else 0.0,
                               seconds_until_due=until,
                               state_counts=dict(collections.Counter(kv.state for kv in chain.versions)))

        if keyring.dek.empty:
            raise KeyStateError(f"tenant {tenant!r} is half-made (no DEK yet); re-run 'keyops tenant create'")
        primary = keyring.dek.primary_key
        uses, cap = usage.uses(primary.version, primary.uses), keyring.policy.dek_usage_cap
        kek, dek, due = level("kek"), level("dek"), tuple(due_rotations(keyring, now, primary_dek_uses=uses))
        return TenantStatus(
            tenant=keyring.tenant, residence=keyring.policy.kek_residence, policy=keyring.policy.to_dict(),
            created_at=keyring.created_at, kek=kek, dek=dek, dek_usage=uses, dek_usage_cap=cap, due=due,
            dek_usage_ratio=round(uses / cap, 6),
            seconds_until_due=0 if due else max(0, min(kek.seconds_until_due, dek.seconds_until_due)),
            is_due=bool(due))

    def status(self, tenant: str | None = None) -> StatusReport:
        """The status of ``tenant``, or of every tenant: each tenant's failure on its own.

        With a tenant named, its error is raised. Across every tenant, one
        tenant that cannot be read (a corrupted keyring, a half-made tenant,
        a refused path) becomes a ``TenantProblem`` of the report and the
        others are still reported; a tenant listed without a keyring (removed
        meanwhile) is left out. Failures of Vault itself (unreachable, sealed,
        bad credentials) concern every tenant and are raised.
        """
        if tenant:
            return StatusReport((self.tenant_status(validate_tenant(tenant)),))
        statuses: list[TenantStatus] = []
        problems: list[TenantProblem] = []
        for name in self.list_tenants():
            try:
                statuses.append(self.tenant_status(name))
            except TenantNotFound:
                continue
            except (VaultUnreachable, VaultSealed, AuthenticationFailed):
                raise
            except KeyopsError as exc:
                problems.append(TenantProblem(name, exc.code, exc.exit_code, str(exc)))
        return StatusReport(tuple(statuses), tuple(problems))


@dataclasses.dataclass(frozen=True)
class TenantProblem:
    """Why one tenant's status could not be read (the message names the tenant and what to do)."""

    tenant: str
    error: str  # the KeyopsError code
    exit_code: int
    message: str


@dataclasses.dataclass(frozen=True)
class StatusReport(Sequence[TenantStatus]):
    """The tenants' statuses (a sequence of ``TenantStatus``) and the tenants that could not be read."""

    tenants: tuple[TenantStatus, ...]
    problems: tuple[TenantProblem, ...] = ()

    def __getitem__(self, index: Any) -> Any:
        return self.tenants[index]

    def __len__(self) -> int:
        return len(self.tenants)


def _byok_ciphertext(wrapping_key_pem: str, key: bytes) -> str:
    """Transit's BYOK format: RSA-OAEP(SHA-256) of an ephemeral AES-256 key, then AES-KWP of ``key``."""
    public = serialization.load_pem_public_key(wrapping_key_pem.encode("ascii"))
    if not isinstance(public, rsa.RSAPublicKey):
        raise KeyStateError("Transit's wrapping key is not an RSA key")
    ephemeral = crypto.generate_key()
    wrapped_ephemeral = public.encrypt(
        ephemeral, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    return b64e(wrapped_ephemeral + aes_key_wrap_with_padding(ephemeral, key))
