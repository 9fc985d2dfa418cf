"""Recovery from a lost HSM: the master wrapping of every KEK rebuilt from its break-glass escrow copy.

``recover(k, recovery_key)`` (``keyops recover``, the ``recover`` right of
security-admin), under the master rotation's lease:

1. When the primary master version no longer works (its token is gone, not
   configured, or no longer holds the key), version N+1 is claimed under the
   configured root (``pending``, one check-and-set write of the registry),
   made (a key on the new token) and made primary, exactly as a master
   rotation does (``keyops.ops.rotation``). A primary that works, or a
   version claimed by an interrupted run, is used as it is.
2. Every KEK version not yet under that primary is opened from its escrow
   copy with the private key, checked against what it protects (a DEK it
   wraps, or a probe through its Transit key), wrapped by the primary and
   written back: one check-and-set write per keyring. A KEK without a copy
   is re-wrapped through its old master version when that still works, and
   otherwise reported; the other tenants go on.

Each step is idempotent, so a crash anywhere and a re-run lose nothing: the
re-run finds the claimed version, or the primary and the KEKs still to do.
Lost master versions stay in the registry (``decrypt_only``, nothing refers
to them any more) until an operator retires them.

For residence ``transit`` the KEK also lives in the tenant's Transit key,
which the HSM never touched: applications keep decrypting through Transit
while the HSM is gone. What the HSM held was the master-wrapped copy that
lets keyops rotate the KEK, import it again and survive the loss of the
Transit mount; recovery rebuilds that copy, checked against Transit.

The private key is the caller's (a file or stdin, read by the CLI); it is
used in memory for this run, and never stored, logged or sent anywhere.
"""

from __future__ import annotations

import dataclasses

from keyops.errors import (
    HsmKeyNotFound,
    HsmTokenNotConfigured,
    HsmUnavailable,
    InvalidInput,
    KeyopsError,
    KeyStateError,
    TenantNotFound,
)
from keyops.model.keyring import Keyring
from keyops.model.master import MasterRegistry
from keyops.ops.cas import retry_on_conflict
from keyops.ops.front import MASTER_PATH, Keyops
from keyops.ops.outcomes import TenantFailure
from keyops.ops.rotation import (
    _activate_master,
    _Lease,
    _leased,
    _read_registry,
    _rewrap_keks,
    claim_master_version,
    pending_master_version,
    stale_kek_versions,
)
from keyops.wrappers import KeyWrapper
from keyops.wrappers.escrow import RecoveryKey

#: What says a master version's key is gone, rather than misconfigured (a wrong PIN stays an error).
_LOST = (HsmUnavailable, HsmKeyNotFound, HsmTokenNotConfigured)


@dataclasses.dataclass(frozen=True)
class RecoveryResult:
    changed: bool
    dry_run: bool
    lost: tuple[int, ...]  # master versions that did not work
    master_version: int  # the primary every KEK is under afterwards
    new_master: bool  # whether this run claimed (or would claim) it
    tenants: tuple[str, ...]  # tenants whose KEKs were (or would be) re-wrapped
    rewrapped: int
    failures: tuple[TenantFailure, ...] = ()
    detail: str = ""


def recover(k: Keyops, recovery: RecoveryKey, *, dry_run: bool = False) -> RecoveryResult:
    if dry_run:
        k.authorize("recover")
        check_key_matches(k, recovery)
        return _plan(k, recovery)
    with k.audited("recover", level="master", key=recovery.fingerprint) as event:
        # Before anything is written: the new token's PIN, and a private key that is the escrow's.
        k.hierarchy.roots.check_configured()
        check_key_matches(k, recovery)
        with _leased(k, "master", "master key recovery") as lease:
            result = _recover(k, recovery, lease)
        event.update(changed=result.changed, versions={"lost": list(result.lost), "new": result.master_version},
                     tenants=len(result.tenants), rewrapped=result.rewrapped, failed=len(result.failures))
    return result


def _lost_versions(k: Keyops, registry: MasterRegistry) -> list[int]:
    lost = []
    for mv in registry.versions:
        if mv.state in ("active", "decrypt_only") and not _works(k, registry, mv.version):
            lost.append(mv.version)
    return lost


def _works(k: Keyops, registry: MasterRegistry, version: int) -> bool:
    try:
        k.hierarchy.roots.probe(registry, registry.get(version))
    except _LOST:
        return False
    return True


def _plan(k: Keyops, recovery: RecoveryKey) -> RecoveryResult:
    registry, _ = _read_registry(k)
    lost = _lost_versions(k, registry)
    pending = pending_master_version(registry)
    new = pending is None and registry.primary in lost
    target = pending or (max(mv.version for mv in registry.versions) + 1 if new else registry.primary)
    tenants, count, failures = [], 0, []
    for tenant in k.list_tenants():
        try:
            keyring, _ = k.read_keyring(tenant)
        except TenantNotFound:
            continue
        except KeyopsError as exc:
            failures.append(TenantFailure.of(tenant, "kek", exc))
            continue
        stale = stale_kek_versions(keyring, target)
        unopenable = [v for v in stale if not _has_copy(keyring, v, recovery) and keyring.kek.get(v).parent_version
                      in lost]
        if unopenable:
            failures.append(TenantFailure(tenant, "kek", "key_state", _no_copy(tenant, unopenable, recovery)))
        if stale:
            tenants.append(tenant)
            count += len(stale)
    what = f"claim master v{target} under {k.hierarchy.roots.configured} and " if new else ""
    return RecoveryResult(bool(tenants) or new or pending is not None, True, tuple(lost), target, new,
                          tuple(tenants), count, tuple(failures),
                          detail=f"would {what}re-wrap {count} KEK versions of {len(tenants)} tenants under master "
                                 f"v{target}" + (f"; lost master versions: {_list(lost)}" if lost else ""))


def _recover(k: Keyops, recovery: RecoveryKey, lease: _Lease) -> RecoveryResult:
    registry, revision = _read_registry(k)
    lost = _lost_versions(k, registry)
    pending = pending_master_version(registry)
    new = False
    if pending is None and registry.primary in lost:
        registry, revision, pending = _claim(k, registry, revision)
        new = True
    if pending is not None:
        registry, _ = _activate_master(k, registry, revision, pending)
    primary = registry.primary
    master = k.hierarchy.roots.wrapper(registry, registry.get(primary))
    tenants: list[str] = []
    failures: list[TenantFailure] = []
    count = 0
    for tenant in k.list_tenants():
        lease.renew()
        try:
            done = _recover_tenant(k, tenant, registry, recovery, master, set(lost))
        except TenantNotFound:
            continue
        except KeyopsError as exc:
            failures.append(TenantFailure.of(tenant, "kek", exc))
            continue
        if done:
            tenants.append(tenant)
            count += done
    changed = new or pending is not None or bool(tenants)
    head = (f"master v{primary} made on {_where(registry, primary)} and made primary; " if pending is not None
            else f"master v{primary} works; ")
    detail = head + f"{count} KEK versions of {len(tenants)} tenants re-wrapped under it from the escrow"
    if lost:
        detail += f"; lost master versions {_list(lost)} wrap nothing any more: retire them"
    if failures:
        detail += f"; {len(failures)} tenants could not be recovered (see failures)"
    elif not changed:
        detail = f"nothing to do: every KEK is under master v{primary}, which works"
    return RecoveryResult(changed, False, tuple(lost), primary, new, tuple(tenants), count, tuple(failures), detail)


def _claim(k: Keyops, registry: MasterRegistry, revision: int) -> tuple[MasterRegistry, int, int]:
    roots = k.hierarchy.roots
    claimed = claim_master_version(registry, k.config.master_key_label, k.clock(),
                                   lambda reg, version: roots.new_version(reg, version, k.clock()))
    version = claimed.versions[-1].version
    roots.check_unused(claimed.get(version))
    # No retry: a registry changed meanwhile may hold another run's claim; the re-run decides again.
    return claimed, k.store.write(MASTER_PATH, claimed.to_dict(), cas=revision), version


def _recover_tenant(k: Keyops, tenant: str, registry: MasterRegistry, recovery: RecoveryKey, master: KeyWrapper,
                    lost: set[int]) -> int:
    primary = registry.primary
    current: list[tuple[Keyring, int]] = []

    def through_master(version: int) -> KeyWrapper | None:
        mv = next((v for v in registry.versions if v.version == version), None)
        if mv is None or version in lost or mv.state not in ("active", "decrypt_only"):
            return None
        return master if version == primary else k.hierarchy.roots.wrapper(registry, mv)

    def attempt() -> int:
        keyring, revision = current.pop() if current else k.read_keyring(tenant)
        stale = stale_kek_versions(keyring, primary)
        missing = [v for v in stale if not _has_copy(keyring, v, recovery) and through_master(
            keyring.kek.get(v).parent_version) is None]
        if missing:
            raise KeyStateError(_no_copy(tenant, missing, recovery))
        for version in stale:
            kv = keyring.kek.get(version)
            if _has_copy(keyring, version, recovery):
                wrapped = k.hierarchy.recover_kek(keyring, version, recovery, master)
                keyring = keyring.replace_version("kek", dataclasses.replace(kv, wrapped=wrapped,
                                                                             parent_version=primary))
            else:
                keyring = _rewrap_keks(keyring, [version], through_master, primary)
        if stale:
            k.write_keyring(tenant, keyring, cas=revision)
        return len(stale)

    return retry_on_conflict(attempt, f"the keyring of tenant {tenant!r} (re-run keyops recover to finish it)")


def _has_copy(keyring: Keyring, version: int, recovery: RecoveryKey) -> bool:
    escrow = keyring.kek.get(version).escrow
    return escrow is not None and escrow.key == recovery.fingerprint


def _no_copy(tenant: str, versions: list[int], recovery: RecoveryKey) -> str:
    return (f"KEK versions {_list(versions)} of tenant {tenant!r} have no escrow copy under {recovery.fingerprint} "
            "and their master key is lost: they cannot be recovered with this key (another recovery key, or "
            "escrowed too late); the keyring was left as it was")


def _where(registry: MasterRegistry, version: int) -> str:
    mv = registry.get(version)
    token = mv.params.get("token")
    return f"HSM token {token!r}" if mv.on_hsm and token else mv.root


def _list(versions: list[int] | tuple[int, ...]) -> str:
    return ", ".join(f"v{v}" for v in versions)


def check_key_matches(k: Keyops, recovery: RecoveryKey) -> None:
    """Refuse a private key that opens no escrow copy at all (the wrong key file), before anything is written."""
    keys: set[str] = set()
    for tenant in k.list_tenants():
        try:
            keyring, _ = k.read_keyring(tenant)
        except TenantNotFound:
            continue
        keys.update(kv.escrow.key for kv in keyring.kek.versions if kv.escrow is not None)
        if recovery.fingerprint in keys:
            return
    if keys:
        raise InvalidInput(f"the private key ({recovery.fingerprint}) is not the recovery key of any escrow copy "
                           f"(they are under {', '.join(sorted(keys))}); nothing was changed")
