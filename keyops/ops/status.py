"""Status: versions, states, ages, usage and what is due, per tenant."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from keyops.errors import (
    AuthenticationFailed,
    KeyopsError,
    KeyStateError,
    TenantNotFound,
    VaultSealed,
    VaultUnreachable,
)
from keyops.model.keyring import (
    Keyring,
    age_days,
    due_rotations,
    format_time,
    next_due,
)
from keyops.model.names import validate_tenant
from keyops.ops.results import (
    LevelStatus,
    StatusReport,
    TenantProblem,
    TenantStatus,
    VersionStatus,
)

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops


def tenant_status(k: Keyops, tenant: str, keyring: Keyring | None = None) -> TenantStatus:
    keyring = keyring or k.read_keyring(tenant)[0]
    usage = k.read_usage(keyring.tenant)[0]
    now = k.clock()

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


def status(k: Keyops, tenant: str | None = None) -> StatusReport:
    """The status of ``tenant``, or of every tenant: each tenant's failure on its own.

    With a tenant named, its error is raised. Across every tenant, one
    tenant that cannot be read (a corrupted keyring, a half-made tenant,
    a refused path) becomes a ``TenantProblem`` of the report and the
    others are still reported; a tenant listed without a keyring (removed
    meanwhile) is left out. Failures of Vault itself (unreachable, sealed,
    bad credentials) concern every tenant and are raised.
    """
    if tenant:
        return StatusReport((k.tenant_status(validate_tenant(tenant)),))
    statuses: list[TenantStatus] = []
    problems: list[TenantProblem] = []
    for name in k.list_tenants():
        try:
            statuses.append(k.tenant_status(name))
        except TenantNotFound:
            continue
        except (VaultUnreachable, VaultSealed, AuthenticationFailed):
            raise
        except KeyopsError as exc:
            problems.append(TenantProblem(name, exc.code, exc.exit_code, str(exc)))
    return StatusReport(tuple(statuses), tuple(problems))
