"""Views of a plan for the faces that are not a terminal: the Ansible module's result, warnings and diffs.

Pure. Nothing here holds a seed value: steps name seeds, and the
declaration's digest is left out, since over data given inline (Ansible's
variables) it is a hash of the seed values too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from keyops.declare.steps import Plan, Step

SEED_ACTIONS = {"create_secret": "create", "update_secret": "overwrite"}
#: Drift warnings name this many tenants; the result lists them all.
DRIFT_SHOWN = 20


def plan_view(plan: Plan) -> dict[str, Any]:
    """The plan as the module returns it: steps, counts, drift and seeds by name; no digest, no fingerprint."""
    return {"changes": len(plan.changes), "steps": [s.to_dict() for s in plan.steps],
            "drift": [s.target for s in plan.drift], "seeds": seed_names(plan.changes),
            "notes": list(plan.notes), "prune": plan.prune}


def seed_names(steps: Iterable[Step]) -> dict[str, list[str]]:
    """``{"create": ["acme/db/password"], "overwrite": [...]}``: the seeds these steps write, by name."""
    out: dict[str, list[str]] = {"create": [], "overwrite": []}
    for step in steps:
        if step.action in SEED_ACTIONS:
            out[SEED_ACTIONS[step.action]].append(step.target)
    return out


def summary(plan: Plan, *, applied: bool | None = None) -> str:
    """One line: ``applied: 3 changes, 1 undeclared tenant (drift)``; ``applied=None``: a plan only."""
    n, d = len(plan.changes), len(plan.drift)
    what = f"{n} change{'s' if n != 1 else ''}" if n else "no changes"
    drift = f", {d} undeclared tenant{'s' if d != 1 else ''} (drift)" if d else ""
    head = "plan" if applied is None else ("applied" if applied else "nothing to apply")
    return f"{head}: {what}{drift}"


def drift_warning(plan: Plan) -> str | None:
    """The play's warning for undeclared tenants, or None. With prune they are in the plan, not drift only."""
    names = [s.target for s in plan.drift]
    if not names:
        return None
    shown = ", ".join(names[:DRIFT_SHOWN]) + (f" and {len(names) - DRIFT_SHOWN} more" if len(names) > DRIFT_SHOWN
                                               else "")
    tail = ("they are deleted (crypto-shredded) by this run's prune" if plan.prune
            else "left as they are; prune: true deletes (crypto-shreds) them")
    return f"{len(names)} tenant{'s' if len(names) != 1 else ''} in Vault not declared (drift): {shown}; {tail}"


def plan_diffs(plan: Plan) -> list[dict[str, str]]:
    """One Ansible diff per step that changes a setting, as lines (a readable diff, not one JSON line)."""
    out: list[dict[str, str]] = []
    for step in plan.changes:
        if step.action == "policy" and isinstance(step.changes, list):
            if step.summary.startswith("create"):
                out.append({"before_header": f"Vault policy {step.target} (absent)",
                            "after_header": f"Vault policy {step.target} (declared)",
                            "before": "", "after": _text(step.changes)})
            else:
                out.append({"prepared": _text(step.changes)})
        elif step.action == "update_policy" and isinstance(step.changes, Mapping):
            out.append({"before_header": f"tenant {step.target} policy (Vault)",
                        "after_header": f"tenant {step.target} policy (declared)",
                        "before": _fields({f: ba[0] for f, ba in step.changes.items()}),
                        "after": _fields({f: ba[1] for f, ba in step.changes.items()})})
        elif step.action == "create_tenant" and isinstance(step.changes, Mapping):
            out.append({"before_header": f"tenant {step.target} (absent)",
                        "after_header": f"tenant {step.target} policy (declared)",
                        "before": "", "after": _fields(step.changes)})
        elif step.action == "master_period" and isinstance(step.changes, Mapping):
            before, after = step.changes["period_days"]
            out.append({"before_header": "master key registry", "after_header": "master key registry (declared)",
                        "before": f"period_days: {before}\n", "after": f"period_days: {after}\n"})
    return out


def _fields(values: Mapping[str, Any]) -> str:
    return "".join(f"{name}: {'(unset)' if value is None else value}\n" for name, value in sorted(values.items()))


def _text(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)
