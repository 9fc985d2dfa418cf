"""The plan: what the declaration asks for against what the store holds, as steps with counted effects.

Pure: ``diff`` takes a declaration and an ``Observed`` snapshot (read by
``keyops.ops.plan``) and returns the steps, each saying what it does to the
data ("DEK acme v5->v6: 12,034 secrets to re-encrypt; v4 becomes retirable
once done"). The counts come from the snapshot, which counted them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
from collections.abc import Mapping
from typing import Any

from keyops.declare.schema import Declaration, TenantSpec
from keyops.errors import InvalidInput
from keyops.model.keyring import (
    TENANT_LEVELS,
    Keyring,
    Policy,
    age_days,
    due_rotations,
)
from keyops.model.master import MasterRegistry

PLAN_FORMAT = 1
USABLE = ("active", "decrypt_only")
#: Steps that change nothing; they are shown, and with --detailed-exitcode do not count as changes.
INFO_ACTIONS = frozenset({"drift"})


@dataclasses.dataclass(frozen=True)
class TenantState:
    """One tenant as the store holds it, with the counts a plan needs (no key material)."""

    keyring: Keyring
    revision: int
    primary_dek_uses: int = 0
    #: Secret records per DEK version (from the ciphertexts' headers).
    references: Mapping[int, int] = dataclasses.field(default_factory=dict)
    #: Encryptions handed to callers outside the store, per DEK version (they cannot be counted).
    external: Mapping[int, int] = dataclasses.field(default_factory=dict)
    #: Declared seed name -> "missing", "present" (not compared), "same" or "differs" (enforced seeds).
    seeds: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Secret records by listing alone (undeclared tenants: drift needs the number, not the versions).
    listed: int | None = None

    @property
    def secrets(self) -> int:
        return self.listed if self.listed is not None else sum(self.references.values())


@dataclasses.dataclass(frozen=True)
class Observed:
    tenants: Mapping[str, TenantState]
    master: MasterRegistry | None
    master_revision: int
    #: Vault policy name -> (text on the server or None, text the declaration's roles generate).
    policies: Mapping[str, tuple[str | None, str]]
    now: dt.datetime
    #: Whether the caller may destroy (retention's destroy steps are left for the security-admin otherwise).
    may_destroy: bool = True

    def fingerprint(self, declared: list[str]) -> dict[str, Any]:
        """The KV versions the plan was made from: a saved plan applies only while they are unchanged."""
        names = sorted(set(declared) | set(self.tenants))
        return {"master": self.master_revision,
                "tenants": {n: self.tenants[n].revision if n in self.tenants else 0 for n in names}}


@dataclasses.dataclass(frozen=True)
class Step:
    action: str
    target: str
    summary: str
    tenant: str | None = None
    level: str | None = None
    version: int | None = None
    new_version: int | None = None
    reason: str = ""
    count: int | None = None
    #: update_policy: field -> [before, after]; policy: the HCL's unified diff lines.
    changes: Any = None

    @property
    def identity(self) -> tuple[Any, ...]:
        """What the step does, without its counts (which applications change between plan and apply)."""
        return (self.action, self.target, self.level, self.version, self.new_version)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclasses.dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    fingerprint: Mapping[str, Any]
    source: str
    digest: str
    prune: bool = False
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action not in INFO_ACTIONS)

    @property
    def drift(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == "drift")

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "declaration": {"source": self.source, "sha256": self.digest},
                "prune": self.prune, "fingerprint": dict(self.fingerprint),
                "changes": len(self.changes), "steps": [s.to_dict() for s in self.steps], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        try:
            if data["format"] != PLAN_FORMAT:
                raise InvalidInput(f"the saved plan has format {data['format']!r}; this keyops reads {PLAN_FORMAT}")
            return cls(tuple(Step.from_dict(s) for s in data["steps"]), data["fingerprint"],
                       data["declaration"]["source"], data["declaration"]["sha256"], bool(data.get("prune")),
                       tuple(data.get("notes", ())))
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"the saved plan is malformed (missing {exc}); make it again with keyops plan "
                               "--out") from None


def diff(declaration: Declaration, observed: Observed, *, prune: bool = False) -> Plan:
    """Every step that brings the store to the declaration, in the order apply carries them out."""
    steps: list[Step] = []
    notes: list[str] = []
    steps += _master_steps(declaration, observed)
    for name, (current, wanted) in sorted(observed.policies.items()):
        if current is None:
            steps.append(Step("policy", name, f"create Vault policy {name}", changes=wanted.splitlines()))
        elif current.strip() != wanted.strip():
            lines = list(difflib.unified_diff(current.strip().splitlines(), wanted.strip().splitlines(),
                                              "server", "declared", lineterm="", n=1))
            steps.append(Step("policy", name, f"update Vault policy {name}", changes=lines))
    for spec in declaration.tenants:
        state = observed.tenants.get(spec.name)
        steps += _tenant_steps(spec, state, observed, notes)
    for name in sorted(set(observed.tenants) - {t.name for t in declaration.tenants}):
        state = observed.tenants[name]
        kr = state.keyring
        what = (f"tenant {name} exists in Vault but is not declared ({state.secrets:,} secrets, "
                f"{len(kr.kek.versions)} KEK and {len(kr.dek.versions)} DEK versions)")
        steps.append(Step("drift", name, what + ("" if prune else "; apply --prune deletes it"), tenant=name,
                          count=state.secrets))
        if prune:
            steps.append(Step("delete_tenant", name, f"crypto-shred tenant {name}: destroys its "
                              f"{len(kr.kek.versions)} KEK and {len(kr.dek.versions)} DEK versions; its "
                              f"{state.secrets:,} secrets become unreadable for good", tenant=name,
                              count=state.secrets))
    fingerprint = observed.fingerprint([t.name for t in declaration.tenants])
    return Plan(tuple(steps), fingerprint, declaration.source, declaration.digest, prune, tuple(notes))


def _master_steps(declaration: Declaration, observed: Observed) -> list[Step]:
    registry = observed.master
    period = declaration.master.period_days
    if registry is None:
        if not declaration.tenants and period is None:
            return []
        return [Step("create_master", "master", "create the HSM master key and its registry (v1)",
                     new_version=1, changes={"period_days": period} if period else None)]
    out: list[Step] = []
    if period is not None and period != registry.period_days:
        out.append(Step("master_period", "master", f"master key period {registry.period_days} -> {period} days",
                        changes={"period_days": [registry.period_days, period]}))
    primary = registry.get(registry.primary)
    days = period or registry.period_days
    age = age_days(primary.created_at, observed.now)
    if age >= days:
        keks = sum(len(s.keyring.kek.versions) for s in observed.tenants.values())
        out.append(Step("rotate", "master", f"master v{registry.primary}->v{registry.primary + 1}: re-wraps "
                        f"{keks:,} KEK versions of {len(observed.tenants)} tenants, touches no DEK or secret",
                        level="master", version=registry.primary, new_version=registry.primary + 1,
                        reason=f"due by age: {age:.1f} days old, period {days} days", count=keks))
    return out


def _tenant_steps(spec: TenantSpec, state: TenantState | None, observed: Observed, notes: list[str]) -> list[Step]:
    name = spec.name
    if state is None or state.keyring.dek.empty:
        policy = spec.wanted_policy(state.keyring.policy if state else None)
        verb = "finish the half-made tenant" if state else "create tenant"
        created = Step("create_tenant", name, f"{verb} {name}: KEK v1 ({spec.residence}) and DEK v1; no secret yet",
                       tenant=name, changes=policy.to_dict())
        return [created] + [_seed_step("create_secret", name, seed.name) for seed in spec.seeds]
    keyring = state.keyring
    if keyring.policy.kek_residence != spec.residence:
        raise InvalidInput(f"{spec.where['residence']}: tenant {name} has KEK residence "
                           f"{keyring.policy.kek_residence!r} in Vault; a residence cannot change in place "
                           "(declare a new tenant and migrate its secrets)")
    out: list[Step] = []
    wanted = spec.wanted_policy(keyring.policy)
    if wanted != keyring.policy:
        before, after = keyring.policy.to_dict(), wanted.to_dict()
        changes = {f: [before.get(f), after.get(f)] for f in sorted(set(before) | set(after))
                   if before.get(f) != after.get(f)}
        shown = ", ".join(f"{f} {b} -> {a}" for f, (b, a) in changes.items())
        out.append(Step("update_policy", name, f"update policy of {name}: {shown}", tenant=name, changes=changes))
    out += _rotation_steps(keyring, wanted, state, observed.now)
    if not any(s.action == "rotate" and s.level == "dek" for s in out):
        out += _reencrypt_leftovers(keyring, state)
    out += _retention_steps(keyring, wanted, state, observed, notes)
    for seed in spec.seeds:
        found = state.seeds.get(seed.name, "missing")
        if found == "missing":
            out.append(_seed_step("create_secret", name, seed.name))
        elif found == "differs" and seed.enforce:
            out.append(_seed_step("update_secret", name, seed.name))
    return out


def _seed_step(action: str, tenant: str, name: str) -> Step:
    if action == "create_secret":
        text = f"create seed secret {tenant}/{name} (create-only: a value already there is never overwritten)"
    else:
        text = f"overwrite secret {tenant}/{name} with the declared seed (enforce: true)"
    return Step(action, f"{tenant}/{name}", text, tenant=tenant)


def _rotation_steps(keyring: Keyring, wanted: Policy, state: TenantState, now: dt.datetime) -> list[Step]:
    uses = state.primary_dek_uses
    before = {d.level: d for d in due_rotations(keyring, now, primary_dek_uses=uses)}
    after = {d.level: d for d in due_rotations(dataclasses.replace(keyring, policy=wanted), now,
                                               primary_dek_uses=uses)}
    out: list[Step] = []
    name = keyring.tenant
    for level in TENANT_LEVELS:
        due = after.get(level)
        if due is None:
            continue
        if level in before:
            reason = f"due by {due.reason}: {due.detail}"
        else:
            reason = f"policy changed: {due.detail} under the declared policy"
        chain = keyring.chain(level)
        old, new = chain.primary, chain.latest_version + 1
        if level == "kek":
            n = len(keyring.dek.versions)
            summary = f"KEK {name} v{old}->v{new}: rewraps {n:,} DEK versions, touches no secret"
        else:
            n = state.secrets
            summary = f"DEK {name} v{old}->v{new}: {n:,} secrets to re-encrypt; " + _after_dek_rotation(
                keyring, wanted, new)
        out.append(Step("rotate", name, summary, tenant=name, level=level, version=old, new_version=new,
                        reason=reason, count=n))
        if level == "dek" and n:
            out.append(Step("reencrypt", name, f"re-encrypt {n:,} secrets of {name} to DEK v{new}", tenant=name,
                            level="dek", new_version=new, count=n))
    return out


def _after_dek_rotation(keyring: Keyring, wanted: Policy, new: int) -> str:
    usable = sorted([v.version for v in keyring.dek.versions if v.state in USABLE] + [new], reverse=True)
    if wanted.keep_versions is None:
        return f"v{keyring.dek.primary} stays decrypt-only (the policy keeps every version)"
    beyond = usable[wanted.keep_versions:]
    if not beyond:
        return f"keeps {len(usable)} of {wanted.keep_versions} versions usable"
    return f"{', '.join(f'v{v}' for v in sorted(beyond))} becomes retirable once done"


def _reencrypt_leftovers(keyring: Keyring, state: TenantState) -> list[Step]:
    primary = keyring.dek.primary
    old = {v: n for v, n in sorted(state.references.items()) if v != primary and n}
    if not old:
        return []
    n = sum(old.values())
    where = ", ".join(f"v{v}: {c:,}" for v, c in old.items())
    return [Step("reencrypt", keyring.tenant, f"re-encrypt {n:,} of {state.secrets:,} secrets of {keyring.tenant} "
                 f"still under older DEK versions ({where}) to DEK v{primary}", tenant=keyring.tenant,
                 level="dek", new_version=primary, count=n, reason="records under older DEK versions")]


def _retention_steps(keyring: Keyring, wanted: Policy, state: TenantState, observed: Observed,
                     notes: list[str]) -> list[Step]:
    if wanted.keep_versions is None:
        return []
    return retention(keyring, wanted, state.references, state.external, observed.now, notes,
                     may_destroy=observed.may_destroy)


def retention(keyring: Keyring, policy: Policy, references: Mapping[int, int], external: Mapping[int, int],
              now: dt.datetime, notes: list[str], *, may_destroy: bool = True) -> list[Step]:
    """Retire what is beyond ``keep_versions`` and unreferenced; destroy what was retired long enough.

    Shared by the plan and the scheduled run (``keyops.ops.retention``); the
    lifecycle operations check every guard again when they run.
    """
    keep = policy.keep_versions
    if keep is None:
        return []
    name = keyring.tenant
    out: list[Step] = []
    kek_refs: dict[int, int] = {}
    for kv in keyring.dek.versions:
        kek_refs[kv.parent_version] = kek_refs.get(kv.parent_version, 0) + 1
    for level in TENANT_LEVELS:
        chain = keyring.chain(level)
        usable = sorted((v for v in chain.versions if v.state in USABLE and v.version != chain.primary),
                        key=lambda v: v.version, reverse=True)
        for kv in usable[keep - 1:]:
            label = f"{level.upper()} {name} v{kv.version}"
            refs = references.get(kv.version, 0) if level == "dek" else kek_refs.get(kv.version, 0)
            if refs:
                what = "secrets still refer to" if level == "dek" else "DEK versions are still wrapped by"
                notes.append(f"{label} is beyond keep_versions {keep} but stays: {refs:,} {what} it")
                continue
            if level == "dek" and external.get(kv.version, 0):
                notes.append(f"{label} is beyond keep_versions {keep} but stays: it encrypted for callers outside "
                             "the store; retire it by hand once they rewrapped (keyops retire "
                             "--acknowledge-external)")
                continue
            out.append(Step("retire", name, f"retire {label}: beyond keep_versions {keep}, nothing refers to it",
                            tenant=name, level=level, version=kv.version, reason="retention", count=0))
        after = policy.destroy_after_days
        if after is None:
            continue
        for kv in chain.versions:
            if kv.state != "retired" or kv.state_changed_at is None or age_days(kv.state_changed_at, now) < after:
                continue
            label = f"{level.upper()} {name} v{kv.version}"
            if not may_destroy:
                notes.append(f"{label} has been retired for {after}+ days and is due for destruction; that takes "
                             f"the security-admin role (keyops destroy --tenant {name} --level {level} "
                             f"--version {kv.version} --yes)")
                continue
            out.append(Step("destroy", name, f"destroy {label}: retired more than {after} days ago; its material "
                            "is gone for good", tenant=name, level=level, version=kv.version, reason="retention",
                            count=0))
    return out
