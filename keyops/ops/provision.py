"""Provisioning many tenants: each tenant's keyring, then its secrets; tenants side by side.

Each tenant is ``create_tenant`` (idempotent, check-and-set) followed by
``put_secret`` of each of its secrets, so a re-run after a crash finishes
what was left and changes nothing else. Tenants run through
``keyops.ops.fanout``: a bounded pool, the input pulled as it goes, results
reported as counts, so a run over 10,000 tenants holds a few dozen at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from keyops.errors import KeyopsError
from keyops.model.keyring import Policy
from keyops.model.names import validate_count
from keyops.ops.fanout import DEFAULT_TENANT_WORKERS, fan_out
from keyops.ops.front import Keyops
from keyops.ops.jobs import MAX_WORKERS
from keyops.ops.outcomes import TenantFailure, TenantOutcome
from keyops.ops.tenants import create_tenant

#: One tenant to provision: its name and its secrets as (name, value) pairs.
TenantSpec = tuple[str, Iterable[tuple[str, bytes | str]]]


@dataclasses.dataclass(frozen=True)
class Provisioned:
    """One tenant's provisioning: whether its keyring was made now, and how many secrets were written."""

    tenant: str
    created: bool
    secrets: int
    written: int


@dataclasses.dataclass(frozen=True)
class ProvisionReport:
    """Counts over every tenant, and the tenants that failed (each with its error)."""

    tenants: int
    created: int
    secrets: int
    written: int
    failures: tuple[TenantFailure, ...]

    @property
    def changed(self) -> bool:
        return self.created > 0 or self.written > 0


def provision_one(k: Keyops, tenant: str, secrets: Iterable[tuple[str, bytes | str]],
                  policy: Policy | None = None) -> Provisioned:
    made = create_tenant(k, tenant, policy)
    items = list(secrets)  # one tenant's secrets: bounded by the tenant, never by the run
    k.expect_uses(made.tenant, len(items))  # one reservation for all of them, not blocks of 16, 32, ...
    written = 0
    for name, value in items:
        # A keyring made just now had no records beside it (create_tenant checks): skip each first read.
        written += k.put_secret(made.tenant, name, value, expect_new=made.changed).changed
    return Provisioned(made.tenant, made.changed, len(items), written)


def iter_provision(k: Keyops, tenants: Iterable[TenantSpec], *, policy: Policy | None = None,
                   tenant_workers: int = DEFAULT_TENANT_WORKERS) -> Iterator[TenantOutcome[Provisioned]]:
    """Each tenant's outcome, in the order given, as it finishes; a failing tenant does not stop the others."""
    validate_count(tenant_workers, "tenant_workers", MAX_WORKERS)

    def one(spec: TenantSpec) -> TenantOutcome[Provisioned]:
        tenant, secrets = spec
        try:
            done = provision_one(k, tenant, secrets, policy)
        except KeyopsError as exc:
            return TenantOutcome(tenant, failure=TenantFailure.of(tenant, "kek+dek", exc))
        return TenantOutcome(tenant, done.created or done.written > 0, done)

    for _, outcome in fan_out(tenants, one, workers=tenant_workers, stall=k.config.job_stall_timeout, k=k,
                              tenant_of=lambda spec: spec[0]):
        yield outcome


def provision_tenants(k: Keyops, tenants: Iterable[TenantSpec], *, policy: Policy | None = None,
                      tenant_workers: int = DEFAULT_TENANT_WORKERS) -> ProvisionReport:
    """Provision every tenant given; counts, and the failures in the order given."""
    count = created = secrets = written = 0
    failures: list[TenantFailure] = []
    for outcome in iter_provision(k, tenants, policy=policy, tenant_workers=tenant_workers):
        count += 1
        if outcome.failure is not None:
            failures.append(outcome.failure)
        elif outcome.result is not None:
            created += outcome.result.created
            secrets += outcome.result.secrets
            written += outcome.result.written
    return ProvisionReport(count, created, secrets, written, tuple(failures))
