"""Plan and apply a declaration: read what the store holds, count, compare, and carry out the steps.

``make_plan`` reads every tenant's keyring (declared or not), counts the
secret records per DEK version and the DEK versions per KEK version, and
asks ``keyops.declare.diff`` for the steps. ``apply`` carries out exactly
those steps with the operations that the CLI's own commands use (tenant
creation, rotation, re-encryption, retirement, seeds); each is idempotent
and check-and-set, so a run that stops half-way is finished by running it
again. A plan saved with ``save_plan`` is applied only to the same
declaration and only while the keyrings and the master registry are at the
KV versions it was made from.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from keyops import access
from keyops.declare import Declaration, Observed, Plan, SeedSpec, Step, TenantState, diff
from keyops.errors import Conflict, InvalidInput, KeyopsError, TenantNotFound
from keyops.files import write_file_atomic
from keyops.model.keyring import Policy
from keyops.model.paths import secret_context
from keyops.ops.cas import retry_on_conflict
from keyops.ops.front import MASTER_PATH, Keyops
from keyops.ops.references import count_dek_references

READ_WORKERS = 4
StepCallback = Callable[[int, int, Step], None]


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    step: Step
    changed: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    plan: Plan
    outcomes: tuple[StepOutcome, ...]

    @property
    def changed(self) -> bool:
        return any(o.changed for o in self.outcomes)


# --- reading ---------------------------------------------------------------------------------------------


def observe(k: Keyops, declaration: Declaration, *, workers: int = READ_WORKERS) -> Observed:
    """What the store holds for the declaration, counted (reads every secret record once)."""
    names = sorted(set(k.list_tenants()) | {t.name for t in declaration.tenants})

    def one(name: str) -> tuple[str, TenantState | None]:
        try:
            keyring, revision = k.read_keyring(name)
        except TenantNotFound:
            return name, None
        spec = declaration.tenant(name)
        if keyring.dek.empty:
            return name, TenantState(keyring, revision)
        if spec is None:
            return name, TenantState(keyring, revision, listed=len(k.list_secrets(name)))
        usage = k.read_usage(name)[0]
        primary = keyring.dek.primary_key
        references = count_dek_references(k, name)
        external = {v.version: usage.get(v.version).external for v in keyring.dek.versions}
        seeds = {s.name: _seed_state(k, name, s) for s in spec.seeds}
        return name, TenantState(keyring, revision, usage.uses(primary.version, primary.uses), references,
                                 external, seeds)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        tenants = {name: state for name, state in pool.map(one, names) if state is not None}
    master = k.read_master()
    return Observed(tenants, master[0] if master else None, master[1] if master else 0,
                    _policies(k, declaration), k.clock(), may_destroy=k.principal.allows("destroy"))


def _seed_state(k: Keyops, tenant: str, seed: SeedSpec) -> str:
    record = k.read_record(tenant, seed.name)
    if record is None:
        return "missing"
    if not seed.enforce:
        return "present"
    same = k.decrypt(tenant, record.ciphertext, secret_context(seed.name)) == seed_value(seed)
    return "same" if same else "differs"


def _policies(k: Keyops, declaration: Declaration) -> dict[str, tuple[str | None, str]]:
    roles = declaration.access.roles
    if roles is None:
        return {}
    wanted = access.render_policies(k.roles, [t.name for t in declaration.tenants],
                                    access.Mounts.from_config(k.config), only=roles)
    return {name: (k.store.read_policy(name), text) for name, text in wanted.items()}


def seed_value(seed: SeedSpec) -> bytes:
    """The seed's plaintext, from the declaration, the environment or a file (never logged)."""
    if seed.value is not None:
        return seed.value.encode("utf-8")
    if seed.value_env is not None:
        found = os.environ.get(seed.value_env)
        if not found:
            raise InvalidInput(f"{seed.where}.value_env: the environment variable {seed.value_env} is not set "
                               "or empty")
        return found.encode("utf-8")
    assert seed.value_file is not None
    try:
        data = Path(seed.value_file).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{seed.where}.value_file: cannot read {seed.value_file}: "
                           f"{exc.strerror or exc}") from None
    data = data[:-1] if data.endswith(b"\n") else data  # a file written by echo or an editor
    if not data:
        raise InvalidInput(f"{seed.where}.value_file: {seed.value_file} is empty")
    return data


def make_plan(k: Keyops, declaration: Declaration, *, prune: bool = False) -> Plan:
    plan = diff(declaration, observe(k, declaration), prune=prune)
    for step in plan.steps:  # a seed that cannot be read fails the plan, before anything is applied
        if step.action in ("create_secret", "update_secret"):
            seed_value(_seed(declaration, step))
    return plan


# --- saved plans ---------------------------------------------------------------------------------------


def save_plan(plan: Plan, path: Path) -> None:
    """The plan as JSON: steps, counts, fingerprint, the declaration's digest; no secret (seeds by name)."""
    write_file_atomic(path, json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n", mode=0o644)


def load_plan(path: Path) -> Plan:
    try:
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise InvalidInput(f"cannot read the saved plan {path}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path} is not a saved plan (keyops plan --out): {exc}") from None


def check_saved(saved: Plan, current: Plan) -> None:
    """Refuse a saved plan whose declaration or state has changed since it was made (``Conflict``)."""
    if saved.digest != current.digest:
        raise Conflict(f"the declaration {current.source} changed since the plan was made (its SHA-256 was "
                       f"{saved.digest[:12]}..., now {current.digest[:12]}...); make the plan again")
    if saved.prune != current.prune:
        raise Conflict("the saved plan was made " + ("with" if saved.prune else "without") + " --prune; apply "
                       "it the same way, or make the plan again")
    moved = _moved(saved.fingerprint, current.fingerprint)
    if moved:
        raise Conflict(f"the state changed since the plan was made ({'; '.join(moved)}); nothing was applied: "
                       "make the plan again")
    if [s.identity for s in saved.changes] != [s.identity for s in current.changes]:
        raise Conflict("the steps differ from the saved plan's (the clock made something due, or a seed "
                       "secret appeared); nothing was applied: make the plan again")


def _moved(before: Any, after: Any) -> list[str]:
    out = []
    if before.get("master") != after.get("master"):
        out.append(f"master key registry KV version {before.get('master')} -> {after.get('master')}")
    old, new = before.get("tenants", {}), after.get("tenants", {})
    for name in sorted(set(old) | set(new)):
        if old.get(name, 0) != new.get(name, 0):
            out.append(f"keyring of {name} KV version {old.get(name, 0)} -> {new.get(name, 0)}")
    return out


# --- applying ------------------------------------------------------------------------------------------


def apply(k: Keyops, declaration: Declaration, *, prune: bool = False, saved: Plan | None = None,
          on_step: StepCallback | None = None) -> ApplyResult:
    """Plan, then carry out the plan's steps in order; with ``saved``, only if it is still the plan."""
    plan = make_plan(k, declaration, prune=prune if saved is None else saved.prune)
    if saved is not None:
        check_saved(saved, plan)
    steps = plan.changes
    outcomes: list[StepOutcome] = []
    for i, step in enumerate(steps, 1):
        if on_step is not None:
            on_step(i, len(steps), step)
        try:
            outcomes.append(_run(k, declaration, step))
        except KeyopsError as exc:
            done = f"{i - 1} of {len(steps)} steps done" if i > 1 else "no step done"
            raise type(exc)(f"step {i} of {len(steps)} ({step.summary}) failed: {exc} ({done}; every step is "
                            "check-and-set: run apply again to finish)") from exc
    return ApplyResult(plan, tuple(outcomes))


def _seed(declaration: Declaration, step: Step) -> SeedSpec:
    spec = declaration.tenant(step.tenant or "")
    name = step.target.split("/", 1)[1]
    assert spec is not None
    return next(s for s in spec.seeds if s.name == name)


def _run(k: Keyops, declaration: Declaration, step: Step) -> StepOutcome:
    from keyops.ops import lifecycle, reencrypt, rotation, tenant_delete, tenants

    a, t = step.action, step.tenant or ""
    if a == "create_master":
        _registry, changed = k.ensure_master()
        if declaration.master.period_days is not None:
            changed = set_master_period(k, declaration.master.period_days) or changed
        return StepOutcome(step, changed)
    if a == "master_period":
        assert declaration.master.period_days is not None
        return StepOutcome(step, set_master_period(k, declaration.master.period_days))
    if a == "policy":
        wanted = access.render_policies(k.roles, [x.name for x in declaration.tenants],
                                        access.Mounts.from_config(k.config), only=declaration.access.roles)
        return StepOutcome(step, access.apply_policies(k, {step.target: wanted[step.target]}).changed)
    if a == "create_tenant":
        result = tenants.create_tenant(k, t, Policy.from_dict(step.changes))
        return StepOutcome(step, result.changed)
    if a == "update_policy":
        spec = declaration.tenant(t)
        assert spec is not None
        current = k.read_keyring(t)[0].policy
        return StepOutcome(step, tenants.update_policy(k, t, spec.wanted_policy(current)).changed)
    if a == "rotate" and step.level == "master":
        done = rotation.rotate_master(k, expect_version=step.version, reason=f"declared: {step.reason}")
        return StepOutcome(step, done.changed, done.detail)
    if a == "rotate":
        level: Literal["dek", "kek"] = "kek" if step.level == "kek" else "dek"
        done_t = rotation.rotate(k, t, level, expect_version=step.version, reason=f"declared: {step.reason}")
        return StepOutcome(step, done_t.changed, done_t.detail)
    if a == "reencrypt":
        moved = reencrypt.reencrypt(k, t)
        return StepOutcome(step, moved.changed, f"{moved.rewritten} of {moved.total} secrets re-encrypted")
    if a in ("retire", "destroy"):
        assert step.level is not None and step.version is not None
        if a == "retire":
            life = lifecycle.retire(k, t, step.level, step.version)
        else:
            life = lifecycle.destroy(k, t, step.level, step.version, confirm=True)
        return StepOutcome(step, life.changed, life.detail)
    if a in ("create_secret", "update_secret"):
        seed = _seed(declaration, step)
        put = k_put(k, t, seed, create_only=a == "create_secret")
        return StepOutcome(step, put)
    if a == "delete_tenant":
        gone = tenant_delete.delete_tenant(k, t, confirm=True)
        return StepOutcome(step, gone.changed, gone.detail)
    raise InvalidInput(f"the plan has a step keyops does not know: {a!r}")


def k_put(k: Keyops, tenant: str, seed: SeedSpec, *, create_only: bool) -> bool:
    from keyops.ops.secrets import put_secret

    return put_secret(k, tenant, seed.name, seed_value(seed), create_only=create_only).changed


def set_master_period(k: Keyops, days: int) -> bool:
    """The master key registry's rotation period (check-and-set on the registry)."""

    def attempt() -> bool:
        found = k.read_master()
        if found is None:
            raise InvalidInput("no master key is registered; create it first (keyops master create)")
        registry, revision = found
        if registry.period_days == days:
            return False
        with k.audited("master.update", level="master", period_days=days):
            k.store.write(MASTER_PATH, dataclasses.replace(registry, period_days=days).to_dict(), cas=revision)
        return True

    return retry_on_conflict(attempt, "the master key registry (its period was not changed)")
