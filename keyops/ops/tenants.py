"""Tenants: creation (KEK first, then DEK), policy updates and deletion."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING

from keyops import crypto
from keyops.errors import (
    Conflict,
    InvalidInput,
    KeyStateError,
    TenantExists,
    TenantNotFound,
)
from keyops.model.keyring import (
    KeyChain,
    Keyring,
    Policy,
    format_time,
)
from keyops.model.names import validate_tenant
from keyops.model.paths import (
    jobs_path,
    keyring_path,
    secrets_path,
    usage_path,
)
from keyops.model.usage import Usage
from keyops.ops import escrow as escrow_ops
from keyops.ops.results import (
    TenantResult,
)

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops


def create_tenant(k: Keyops, tenant: str, policy: Policy | None = None, dry_run: bool = False) -> TenantResult:
    """Create the tenant's keyring with its first KEK and DEK.

    Idempotent: an existing complete keyring with the same policy is
    ``changed=False``; one with another policy raises ``TenantExists``
    (use ``update_policy``). A keyring left half-made by a crash is
    completed.
    """
    tenant = validate_tenant(tenant)
    k.authorize("tenant.create", tenant)
    policy = policy or Policy()
    try:
        keyring, version = k.read_keyring(tenant)
    except TenantNotFound:
        keyring, version = None, 0
        if k.store.list(secrets_path(tenant)):
            # Records of an earlier tenant of this name whose deletion stopped after its keys were shredded:
            # a new keyring must not start beside them.
            raise KeyStateError(f"tenant {tenant!r} has secret records left by an unfinished deletion; finish it "
                                f"with 'keyops tenant delete {tenant} --yes' first") from None
    if keyring is not None and not keyring.dek.empty:
        if keyring.policy != policy:
            raise TenantExists(f"tenant {tenant!r} exists with another policy; update it with "
                               "'keyops tenant update' (or the tenant module) instead")
        return TenantResult(tenant, False, keyring)
    if dry_run:
        return TenantResult(tenant, True, keyring)
    with k.audited("tenant.create", tenant=tenant, level="kek+dek") as event:
        if keyring is None:
            keyring, version = _create_kek_first(k, tenant, policy)
        elif keyring.policy != policy:
            raise TenantExists(f"tenant {tenant!r} is half-made with another policy; re-run with its policy")
        if keyring.dek.empty:
            keyring = _finish_tenant(k, keyring, version)
        event["versions"] = {"kek": keyring.kek.primary, "dek": keyring.dek.primary}
    return TenantResult(tenant, True, keyring)


def update_policy(k: Keyops, tenant: str, policy: Policy, dry_run: bool = False) -> TenantResult:
    """Change periods and usage cap. The residence is fixed once a tenant exists."""
    k.authorize("tenant.update", validate_tenant(tenant))
    keyring, version = k.read_keyring(tenant)
    if policy.kek_residence != keyring.policy.kek_residence:
        raise InvalidInput(f"tenant {tenant!r} has KEK residence {keyring.policy.kek_residence!r}; the "
                           "residence cannot change in place (create a new tenant and migrate)")
    if policy == keyring.policy:
        return TenantResult(tenant, False, keyring)
    new = dataclasses.replace(keyring, policy=policy)
    if dry_run:
        return TenantResult(tenant, True, new)
    with k.audited("tenant.update_policy", tenant=tenant, level="policy"):
        k.write_keyring(tenant, new, cas=version)
    return TenantResult(tenant, True, new)


def delete_tenant(k: Keyops, tenant: str, dry_run: bool = False) -> bool:
    """Remove an empty tenant's keyring. Refuses while the tenant has secrets.

    The Transit key (residence transit) is left in place: deleting it is an
    explicit Transit operation, since it cannot be undone.
    """
    k.authorize("tenant.delete", validate_tenant(tenant))
    try:
        k.read_keyring(tenant)
    except TenantNotFound:
        return False
    remaining = k.list_secrets(tenant)
    if remaining:
        raise KeyStateError(f"tenant {tenant!r} still has {len(remaining)} secrets; delete or migrate them "
                            "before removing its keyring")
    if not dry_run:
        with k.audited("tenant.delete", tenant=tenant, level="kek+dek"):
            for job in k.store.list(jobs_path(tenant)):
                k.store.delete_all_versions(f"{jobs_path(tenant)}/{job}")
            k.store.delete_all_versions(usage_path(tenant))
            k.store.delete_all_versions(keyring_path(tenant))
            k.forget_tenant(tenant)
    return True


def _create_kek_first(k: Keyops, tenant: str, policy: Policy) -> tuple[Keyring, int]:
    # Step 1: the KEK, wrapped by the master key, is stored before anything
    # else, so that a crash later never leaves a key we cannot recover.
    # Residence kv stores its first DEK in the same write: the DEK is wrapped
    # in memory by a KEK unwrapped back from its stored form (so the blob is
    # proven first), and one write leaves either nothing or both. Residence
    # transit imports the KEK into Transit between the two writes.
    escrow_key = escrow_ops.configured_key(k.config)  # a bad key file fails before anything is made
    registry, _ = k.ensure_master()  # a fresh read of the registry: its primary is the one to wrap under
    master_version, master = k.hierarchy.master_wrapper(registry.primary)
    kek = crypto.generate_key()
    now = k.clock()
    wrapped = master.wrap(kek, crypto.key_context(tenant, "kek", 1))
    keyring = Keyring(tenant=tenant, policy=policy, created_at=format_time(now),
                      kek=KeyChain(0, ()), dek=KeyChain(0, ()))
    keyring = keyring.add_version("kek", crypto.b64e(wrapped), master_version, now,
                                  transit_version=1 if policy.kek_residence == "transit" else None,
                                  escrow=escrow_ops.new_copy(escrow_key, tenant, 1, kek))
    if policy.kek_residence == "kv":
        keyring = _with_first_dek(k, keyring)
    usage = _fresh_usage(k, tenant)
    try:
        version = k.write_keyring(tenant, keyring, cas=0)
    except Conflict as exc:
        raise Conflict(f"tenant {tenant!r} is being created by another process; re-run to see its state") from exc
    if usage is not None and not keyring.dek.empty:
        # Both documents as written, usage first: what a reservation would read, without reading it.
        k.prime_reservation(tenant, usage[0], usage[1], keyring)
    return keyring, version


def _fresh_usage(k: Keyops, tenant: str) -> tuple[Usage, int] | None:
    """An empty usage document, written before the keyring so that the keyring's creation sets its history too.

    One left by an earlier tenant of the same name (deleted by an older
    keyops) counts another tenant's keys: it is replaced, with check-and-set.
    The first attempt writes without reading: check-and-set 0 only creates,
    so a document already there makes it fail and is read then. Returns the
    document and its version as written (None: another process wrote it).
    """
    empty = Usage(tenant)
    with contextlib.suppress(Conflict):
        return empty, k.store.write(usage_path(tenant), empty.to_dict(), cas=0)
    found = k.store.read(usage_path(tenant))
    if found is not None and found[0] == empty.to_dict():
        return empty, found[1]
    # Conflict: another process creating this tenant wrote it first; only one keyring write can win.
    with contextlib.suppress(Conflict):
        return empty, k.store.write(usage_path(tenant), empty.to_dict(), cas=found[1] if found else 0)
    return None


def _with_first_dek(k: Keyops, keyring: Keyring) -> Keyring:
    kek_version = keyring.kek.primary
    dek = crypto.generate_key()
    wrapper = k.hierarchy.kek_wrapper(keyring, kek_version)
    wrapped = wrapper.wrap(dek, crypto.key_context(keyring.tenant, "dek", 1))
    return keyring.add_version("dek", crypto.b64e(wrapped), kek_version, k.clock())


def _finish_tenant(k: Keyops, keyring: Keyring, version: int) -> Keyring:
    tenant = keyring.tenant
    if keyring.policy.kek_residence == "transit":
        k.hierarchy.ensure_transit_kek(keyring, keyring.kek.primary)
    new = _with_first_dek(k, keyring)
    try:
        k.write_keyring(tenant, new, cas=version)
    except Conflict as exc:
        raise Conflict(f"tenant {tenant!r} is being created by another process; re-run to see its state") from exc
    return new
