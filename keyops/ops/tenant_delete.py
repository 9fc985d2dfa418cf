"""Deleting a whole tenant by crypto-shredding: its keys go first, then everything they protected.

Order, each step idempotent, so a re-run after a crash finishes the job:

1. fence every DEK version in the usage document (no new reservation is
   granted) and wait out the leases already granted, exactly as ``destroy``
   does for one version; a lease too long to wait for refuses before the
   keys go;
2. residence ``transit``: the tenant's Transit key is made deletable and
   deleted, every version of it;
3. the keyring is deleted with its whole KV history (metadata delete): the
   wrapped KEKs and DEKs, escrow copies included, are gone, and from here on
   nothing the tenant ever encrypted can be decrypted;
4. what is left is removed: secret records, job checkpoints, the usage
   document.

After step 3 the tenant has no keyring, but its remains are still found
(``remains``), so a re-run finishes steps 4, and ``create_tenant`` refuses
the name until they are gone. A later tenant of the same name starts from
KEK and DEK version 1 with new keys: nothing of the old one carries over.

Deletion needs ``confirm=True`` (``--yes``); without it, and with
``dry_run``, the plan is returned and nothing changes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

from keyops.errors import ConfirmationRequired, KeyInUse, TenantNotFound
from keyops.model.keyring import Keyring, format_time
from keyops.model.names import validate_tenant
from keyops.model.paths import jobs_path, keyring_path, secrets_path, transit_key_name, usage_path
from keyops.model.usage import Usage
from keyops.ops.lifecycle import MAX_LEASE_WAIT_SECONDS, WaitCallback, lease_wait

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

#: The rights a shred takes: it removes keyrings and secrets and destroys key material.
OPERATIONS = ("tenant.delete", "secrets.delete", "destroy")
_log = logging.getLogger("keyops.ops.tenant_delete")


@dataclasses.dataclass(frozen=True)
class TenantDeletion:
    """What deleting the tenant destroys (or destroyed). No key material, only counts and names."""

    tenant: str
    changed: bool
    dry_run: bool
    residence: str | None  # None: the keyring was already gone (an unfinished deletion)
    kek_versions: tuple[int, ...]
    dek_versions: tuple[int, ...]
    secrets: int
    jobs: int
    transit_key: str | None
    external_uses: int  # encryptions handed to callers outside the store: their ciphertexts die too

    @property
    def detail(self) -> str:
        if not self.changed:
            return f"nothing to do: tenant {self.tenant} does not exist"
        verb = "would destroy" if self.dry_run else "destroyed"
        keys = (f"KEK versions {_versions(self.kek_versions)} and DEK versions {_versions(self.dek_versions)}"
                if self.residence is not None else "no keyring (left by an unfinished deletion)")
        parts = [f"{verb} tenant {self.tenant}: {keys}"]
        if self.transit_key:
            parts.append(f"Transit key {self.transit_key} with every version")
        parts.append(f"{self.secrets} secret record(s), {self.jobs} job checkpoint(s) and its usage document")
        text = "; ".join(parts)
        if self.external_uses:
            text += (f"; up to {self.external_uses} ciphertexts kept by applications outside keyops' store stop "
                     "decrypting too")
        return text


def _versions(versions: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in versions) or "none"


def delete_tenant(k: Keyops, tenant: str, *, confirm: bool, dry_run: bool = False,
                  on_wait: WaitCallback | None = None) -> TenantDeletion:
    """Crypto-shred ``tenant``: destroy its keys, then remove its keyring, usage, jobs and secrets.

    Without ``confirm`` (and not a dry run) raises ``ConfirmationRequired``
    whose message is the plan. Nothing left of the tenant: ``changed=False``.
    """
    tenant = validate_tenant(tenant)
    for operation in OPERATIONS:
        k.authorize(operation, tenant)
    plan = _plan(k, tenant)
    if not plan.changed or dry_run:
        return dataclasses.replace(plan, dry_run=dry_run)
    if not confirm:
        raise ConfirmationRequired(f"deleting tenant {tenant!r} cannot be undone: {plan.detail}; confirm with "
                                   "--yes, or look first with --dry-run")
    with k.audited("tenant.delete", tenant=tenant, level="kek+dek",
                   versions={"kek": list(plan.kek_versions), "dek": list(plan.dek_versions)},
                   shred=True) as event:
        _stop_encryptions(k, tenant, plan.dek_versions, on_wait)
        if plan.transit_key:
            k.store.transit_configure_key(plan.transit_key, deletion_allowed=True)
            k.store.transit_delete_key(plan.transit_key)
        k.store.delete_all_versions(keyring_path(tenant))  # the shred: every wrapped key, all KV history
        k.forget_tenant(tenant)
        for name in _secret_names(k, tenant):
            k.store.delete_all_versions(f"{secrets_path(tenant)}/{name}")
        for job in k.store.list(jobs_path(tenant)):
            k.store.delete_all_versions(f"{jobs_path(tenant)}/{job}")
        k.store.delete_all_versions(usage_path(tenant))
        event["secrets"] = plan.secrets
    return dataclasses.replace(plan, dry_run=False)


def remains(k: Keyops, tenant: str) -> int:
    """How many secret records a tenant without keyring still has (an unfinished deletion)."""
    return len(_secret_names(k, tenant))


def _plan(k: Keyops, tenant: str) -> TenantDeletion:
    keyring: Keyring | None
    try:
        keyring, _ = k.read_keyring(tenant)
    except TenantNotFound:
        keyring = None
    names = _secret_names(k, tenant)
    jobs = k.store.list(jobs_path(tenant))
    usage = k.store.read(usage_path(tenant))
    transit = transit_key_name(tenant)
    # A Transit key is the tenant's only while its keyring names residence transit, or when a deletion
    # stopped after the keyring went: a same-named key of no keyops tenant is not ours to delete.
    has_transit = ((keyring is None or keyring.policy.kek_residence == "transit")
                   and k.store.transit_read_key(transit) is not None)
    if keyring is None and not (names or jobs or usage or has_transit):
        return TenantDeletion(tenant, False, False, None, (), (), 0, 0, None, 0)
    kek = tuple(v.version for v in keyring.kek.versions) if keyring else ()
    dek = tuple(v.version for v in keyring.dek.versions) if keyring else ()
    external = sum(k.read_usage(tenant)[0].get(v).external for v in dek) if keyring and usage else 0
    return TenantDeletion(tenant, True, True, keyring.policy.kek_residence if keyring else None, kek, dek,
                          len(names), len(jobs), transit if has_transit else None, external)


def _stop_encryptions(k: Keyops, tenant: str, versions: tuple[int, ...], on_wait: WaitCallback | None) -> None:
    """No process may still encrypt under a DEK of the tenant once its keys go (see ``lifecycle``)."""
    if not versions or k.store.read(usage_path(tenant)) is None:
        return
    end = k.read_usage(tenant)[0].leases_end(versions)
    if end is not None and lease_wait(end) > MAX_LEASE_WAIT_SECONDS:
        raise _lease_too_long(tenant, end, "")

    def fence(usage: Usage) -> Usage:
        for version in versions:
            usage = usage.close(version, k.clock())
        return usage

    fenced = k.update_usage(tenant, fence)[0]
    end = fenced.leases_end(versions)
    wait = lease_wait(end)
    if end is None or not wait:
        return
    if wait > MAX_LEASE_WAIT_SECONDS:
        raise _lease_too_long(tenant, end, " (no new one is granted)")
    why = f"a process may still encrypt under a DEK of tenant {tenant!r} until {format_time(end)}"
    _log.info("waiting %.0fs: %s", wait, why)
    if on_wait is not None:
        on_wait(wait, why)
    time.sleep(wait)


def _lease_too_long(tenant: str, end: dt.datetime, note: str) -> KeyInUse:
    return KeyInUse(f"cannot delete tenant {tenant!r} yet: a process holds a reservation of one of its DEKs until "
                    f"{format_time(end)}; retry after that{note}")


def _secret_names(k: Keyops, tenant: str) -> list[str]:
    """Every record name below the tenant's secrets, read from the store (the keyring may be gone)."""
    out: list[str] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        base = f"{secrets_path(tenant)}/{folder}".rstrip("/")
        for key in k.store.list(base):
            full = f"{folder}{key}"
            if key.endswith("/"):
                pending.append(full)
            else:
                out.append(full)
    return sorted(out)
