"""``keyops plan`` and ``keyops apply``: declared state, as Terraform's plan and apply.

    keyops plan -f keys.yml [--prune] [--out plan.json] [--json] [--detailed-exitcode]
    keyops apply -f keys.yml [--prune] [--json]
    keyops apply plan.json [-f keys.yml] [--json]

``plan --detailed-exitcode`` follows Terraform: 0 no changes, 2 changes, 1 an
error (whatever its kind). ``apply``: 0 done, 0 (3 with --detailed-exitcode)
nothing to do, 7 a saved plan whose state changed since, others the error's code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.cli._output import note, paint
from keyops.declare import Plan, Step, load_file
from keyops.errors import InvalidInput

EXIT_CHANGES = 2
#: plan --detailed-exitcode: every error is 1, since 2 means "changes" (``keyops.cli.main`` reads this).
EXIT_PLAN_ERROR = 1
_MARKS = {"create_master": "+", "create_tenant": "+", "create_secret": "+", "policy": "~", "update_policy": "~",
          "master_period": "~", "update_secret": "~", "rotate": "*", "reencrypt": "*", "retire": "-",
          "destroy": "-", "delete_tenant": "-", "drift": "!"}
_COLOURS = {"+": "green", "~": "yellow", "*": "cyan", "-": "red", "!": "yellow"}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser(
        "plan", help="compare a declaration (keys.yml) with what Vault and the HSM hold, and list the steps",
        description="Show what 'keyops apply' would do, step by step, with what each does to the data (counted "
                    "secrets and key versions). Exit codes: 0, or with --detailed-exitcode 0 no changes, "
                    "2 changes, 1 an error.")
    plan.add_argument("-f", "--file", required=True, metavar="FILE", help="the declaration (YAML)")
    plan.add_argument("--prune", action="store_true",
                      help="plan to delete (crypto-shred) tenants present in Vault but not declared")
    plan.add_argument("--out", metavar="PLAN", help="save the plan as JSON, to apply later with 'keyops apply PLAN'")
    set_command(plan, cmd_plan, data_output=True, error_exit=EXIT_PLAN_ERROR)

    apply = sub.add_parser(
        "apply", help="carry out the plan of a declaration, or a saved plan",
        description="Make the store match the declaration: exactly the steps 'keyops plan' shows. A saved plan "
                    "is refused (exit 7) when the declaration or the keyrings changed since it was made. "
                    "Exit codes: 0 done, 0 (3 with --detailed-exitcode) nothing to do, 7 the state changed.")
    apply.add_argument("saved", nargs="?", metavar="PLAN", help="a plan saved by 'keyops plan --out'")
    apply.add_argument("-f", "--file", metavar="FILE",
                       help="the declaration (with a saved plan: default, the file the plan was made from)")
    apply.add_argument("--prune", action="store_true",
                       help="delete (crypto-shred) tenants present in Vault but not declared")
    set_command(apply, cmd_apply)


def cmd_plan(args: argparse.Namespace) -> int:
    from keyops.ops.plan import make_plan, save_plan

    declaration = load_file(args.file)
    with open_keyops() as k:
        plan = make_plan(k, declaration, prune=args.prune)
    if args.out:
        save_plan(plan, Path(args.out))
    if args.json:
        print_json(plan.to_dict())
    else:
        print_plan(plan)
        if args.out:
            note(f"saved the plan to {args.out}; apply it with: keyops apply {args.out}")
    if plan.changes and args.detailed_exitcode:
        return EXIT_CHANGES
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from keyops.ops.plan import apply, load_plan

    saved = load_plan(Path(args.saved)) if args.saved else None
    path = args.file or (saved.source if saved is not None else None)
    if path is None:
        raise InvalidInput("name the declaration (-f keys.yml) or a saved plan (keyops apply plan.json)")
    if saved is not None and args.prune and not saved.prune:
        raise InvalidInput("--prune cannot be added to a saved plan; make the plan with --prune")
    declaration = load_file(path)

    def say(i: int, n: int, step: Step) -> None:
        note(f"[{i}/{n}] {step.summary}")

    with open_keyops() as k:
        result = apply(k, declaration, prune=args.prune, saved=saved, on_step=None if args.json else say)
    if args.json:
        print_json({"changed": result.changed, "plan": result.plan.to_dict(),
                    "outcomes": [{"action": o.step.action, "target": o.step.target, "changed": o.changed,
                                  "detail": o.detail} for o in result.outcomes]})
    elif not result.plan.changes:
        print_plan(result.plan)
    else:
        done = sum(1 for o in result.outcomes if o.changed)
        print(f"applied {len(result.outcomes)} steps ({done} changed something) from {declaration.source}")
        for line in result.plan.notes:
            print(f"note: {line}")
    return 0 if result.changed else EXIT_NOTHING_TO_DO


def print_plan(plan: Plan, out: Any = None) -> None:
    """The plan as a table: one row a step, its reason below it; drift and notes after."""
    out = out or sys.stdout
    steps = plan.steps
    if not steps:
        print(f"No changes: the store matches {plan.source}.", file=out)
    else:
        width = max(len(s.target) for s in steps)
        print(f"{'':2}{'ACTION':<14} {'TARGET':<{width}}  WHAT IT DOES TO THE DATA", file=out)
        for step in steps:
            mark = _MARKS.get(step.action, "?")
            head = paint(mark, _COLOURS.get(mark, ""), out)
            print(f"{head} {step.action:<14} {step.target:<{width}}  {step.summary}", file=out)
            if step.reason and step.reason != "retention":
                print(f"  {'':<14} {'':<{width}}  why: {step.reason}", file=out)
            if step.action in ("policy", "update_policy") and isinstance(step.changes, list):
                for line in step.changes:
                    print(f"  {'':<14} {'':<{width}}    {line}", file=out)
    for line in plan.notes:
        print(f"note: {line}", file=out)
    n, d = len(plan.changes), len(plan.drift)
    if steps:
        drift = f", {d} undeclared tenant{'s' if d != 1 else ''} (drift)" if d else ""
        print(f"Plan: {n} change{'s' if n != 1 else ''}{drift}.", file=out)
