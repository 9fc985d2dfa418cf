"""Per-tenant outcomes of an operation over many tenants: each tenant's result, or why it failed.

Pure (no I/O). The operations that run over many tenants (``rotate_due``,
``rotate_tenants``, ``reencrypt_tenants``) run each tenant as its own job, so
one failing is reported in its place and the others still run. Their
reports say, per tenant, whether it changed, or in a dry run whether it
would: the faces (CLI, Ansible modules) report that as it is, and decide
nothing themselves. No outcome carries key material: results are key-free,
and an error's message never names a secret (``keyops.errors``).
"""

from __future__ import annotations

import dataclasses
from typing import Generic, TypeVar

from keyops.errors import KeyopsError, is_retryable

R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class TenantFailure:
    """One tenant (``tenant=None``: the master key) whose part failed: the error's code and message."""

    tenant: str | None
    level: str
    error: str  # the KeyopsError code
    message: str

    @classmethod
    def of(cls, tenant: str | None, level: str, exc: KeyopsError) -> TenantFailure:
        return cls(tenant, level, exc.code, str(exc))

    @property
    def retryable(self) -> bool:
        """Whether a re-run may pass unchanged (the error table's ``retryable`` of this code)."""
        return is_retryable(self.error)


@dataclasses.dataclass(frozen=True)
class TenantOutcome(Generic[R]):
    """One tenant's part: its result, or its failure.

    ``changed``: whether the tenant changed, or in a dry run whether it would
    (what check mode and a plan report).
    """

    tenant: str
    changed: bool = False
    result: R | None = None
    failure: TenantFailure | None = None

    @property
    def failed(self) -> bool:
        return self.failure is not None
