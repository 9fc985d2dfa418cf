"""Retention: keep ``keep_versions`` usable versions per level, retire the rest once nothing refers to them.

The scheduled run calls this after its rotations and re-encryptions
(``keyops retention``, the ``keyops.kms.retention`` module, ``rotate.yml``).
Which versions qualify is ``keyops.declare.steps.retention`` (the same rule
the plan shows); the retirement itself is ``keyops.ops.lifecycle.retire``,
which fences the DEK version, waits out live reservations and counts the
records again before it writes, so a version that a record, a DEK version
or a caller outside the store still needs is never retired. Destruction
follows ``destroy_after_days`` after retirement, through the same guards,
and only for a caller with the destroy right (security-admin); for others
it is reported as due.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from keyops.declare.steps import retention
from keyops.errors import KeyInUse, KeyopsError
from keyops.model.names import validate_tenant
from keyops.ops.front import Keyops
from keyops.ops.lifecycle import LifecycleResult, destroy, retire
from keyops.ops.references import count_dek_references


@dataclasses.dataclass(frozen=True)
class RetentionFailure:
    tenant: str
    code: str
    message: str


@dataclasses.dataclass(frozen=True)
class RetentionReport:
    results: tuple[LifecycleResult, ...]
    notes: tuple[str, ...]
    failures: tuple[RetentionFailure, ...]
    checked: int
    dry_run: bool

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.results)

    def summary(self) -> str:
        if not self.results:
            return f"nothing to retire or destroy ({self.checked} tenants checked)"
        verb = "would change" if self.dry_run else "changed"
        return f"retention {verb} {len(self.results)} key versions ({self.checked} tenants checked)"


def apply_retention(k: Keyops, tenants: Sequence[str] | None = None, *, dry_run: bool = False) -> RetentionReport:
    """Retire (and, when due and permitted, destroy) versions beyond each tenant's ``keep_versions``."""
    names = [validate_tenant(t) for t in tenants] if tenants is not None else k.list_tenants()
    results: list[LifecycleResult] = []
    notes: list[str] = []
    failures: list[RetentionFailure] = []
    for tenant in names:
        try:
            keyring = k.read_keyring(tenant)[0]
            if keyring.policy.keep_versions is None or keyring.dek.empty:
                continue
            usage = k.read_usage(tenant)[0]
            external = {v.version: usage.get(v.version).external for v in keyring.dek.versions}
            steps = retention(keyring, keyring.policy, count_dek_references(k, tenant), external, k.clock(),
                              notes, may_destroy=k.principal.allows("destroy", tenant))
            for step in steps:
                assert step.level is not None and step.version is not None
                try:
                    if step.action == "retire":
                        results.append(retire(k, tenant, step.level, step.version, dry_run=dry_run))
                    else:
                        results.append(destroy(k, tenant, step.level, step.version, confirm=True,
                                               dry_run=dry_run))
                except KeyInUse as exc:  # something began to refer to it since the count: it stays
                    notes.append(f"{step.level.upper()} {tenant} v{step.version} stays: {exc}")
        except KeyopsError as exc:
            failures.append(RetentionFailure(tenant, exc.code, str(exc)))
    return RetentionReport(tuple(results), tuple(notes), tuple(failures), len(names), dry_run)
