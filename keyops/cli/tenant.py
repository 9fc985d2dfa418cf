"""``keyops tenant create|update|delete|list|show``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, print_names, set_command
from keyops.cli._output import note, paint
from keyops.model.keyring import DEFAULT_DEK_USAGE_CAP, Policy
from keyops.ops.front import Keyops, TenantStatus


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tenant", help="create, change, delete and inspect tenant keyrings")
    tsub = parser.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)

    create = tsub.add_parser("create", help="create a tenant keyring with its first KEK and DEK",
                             description="Create a tenant. Exit codes: 0 created (or, with --dry-run, would be), "
                                         "0 (3 with --detailed-exitcode) it exists with this policy, 6 it exists "
                                         "with another policy (use 'keyops tenant update').")
    create.add_argument("tenant")
    create.add_argument("--residence", choices=("kv", "transit"), default="kv",
                        help="where the KEK lives: wrapped in KV (default) or imported into Transit")
    create.add_argument("--kek-period-days", type=int, default=90)
    create.add_argument("--dek-period-days", type=int, default=30)
    create.add_argument("--dek-usage-cap", type=int, default=DEFAULT_DEK_USAGE_CAP,
                        help="encryptions per DEK before it must rotate")
    create.add_argument("--dry-run", action="store_true", help="say what would be created, create nothing")
    set_command(create, cmd_create)

    update = tsub.add_parser("update", help="change a tenant's rotation periods and DEK usage cap",
                             description="Change a tenant's policy; options left out keep their value. The KEK "
                                         "residence cannot change in place. Exit codes: 0 changed (or would be), "
                                         "0 (3 with --detailed-exitcode) already so, 5 no such tenant.")
    update.add_argument("tenant")
    update.add_argument("--kek-period-days", type=int)
    update.add_argument("--dek-period-days", type=int)
    update.add_argument("--dek-usage-cap", type=int, help="encryptions per DEK before it must rotate")
    update.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    set_command(update, cmd_update)

    delete = tsub.add_parser(
        "delete", help="crypto-shred a whole tenant: destroy its keys, then remove its secrets (needs --yes)",
        description="Delete a tenant for good: wait out live DEK reservations, destroy its KEK and DEK versions "
                    "(and its Transit key), so that nothing it ever encrypted can be decrypted, then remove its "
                    "keyring history, usage, job checkpoints and secret records. Without --yes: print the plan "
                    "and exit 2. A re-run finishes an interrupted deletion. Exit codes: 0 deleted, 0 (3 with "
                    "--detailed-exitcode) nothing left to delete, 2 no --yes, 8 a reservation too long to wait.")
    delete.add_argument("tenant")
    delete.add_argument("--yes", action="store_true", help="confirm: irreversible")
    delete.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    set_command(delete, cmd_delete)

    lst = tsub.add_parser("list", help="list tenants")
    set_command(lst, cmd_list, data_output=True)

    show = tsub.add_parser("show", help="show a tenant's policy and key versions (no key material)")
    show.add_argument("tenant")
    set_command(show, cmd_show, data_output=True)


def cmd_create(args: argparse.Namespace) -> int:
    policy = Policy(kek_residence=args.residence, kek_period_days=args.kek_period_days,
                    dek_period_days=args.dek_period_days, dek_usage_cap=args.dek_usage_cap)
    with open_keyops() as k:
        result = k.create_tenant(args.tenant, policy, dry_run=args.dry_run)
    if args.json:
        print_json({"tenant": result.tenant, "changed": result.changed, "dry_run": args.dry_run,
                    "kek_version": result.kek_version, "dek_version": result.dek_version})
    elif not result.changed:
        print(f"tenant {result.tenant} already exists with this policy; nothing to do")
    elif args.dry_run:
        print(f"would create tenant {result.tenant} (KEK residence {args.residence})")
    else:
        print(f"created tenant {result.tenant}: KEK v{result.kek_version} ({args.residence}), "
              f"DEK v{result.dek_version}")
    return 0 if result.changed else EXIT_NOTHING_TO_DO


def cmd_update(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        current = k.get_tenant(args.tenant).policy
        given = {"kek_period_days": args.kek_period_days, "dek_period_days": args.dek_period_days,
                 "dek_usage_cap": args.dek_usage_cap}
        policy = dataclasses.replace(current, **{name: value for name, value in given.items() if value is not None})
        result = k.update_policy(args.tenant, policy, dry_run=args.dry_run)
    if args.json:
        print_json({"tenant": result.tenant, "changed": result.changed, "dry_run": args.dry_run,
                    "before": current, "after": policy})
    elif not result.changed:
        print(f"tenant {result.tenant} already has this policy; nothing to do")
    else:
        changes = ", ".join(f"{name} {getattr(current, name)} -> {getattr(policy, name)}" for name in given
                            if getattr(current, name) != getattr(policy, name))
        print(f"{'would update' if args.dry_run else 'updated'} tenant {result.tenant}: {changes}")
    return 0 if result.changed else EXIT_NOTHING_TO_DO


def cmd_delete(args: argparse.Namespace) -> int:
    from keyops.ops.tenant_delete import delete_tenant

    def say_wait(seconds: float, why: str) -> None:
        note(f"waiting {seconds:.0f}s: {why}")

    with open_keyops() as k:
        result = delete_tenant(k, args.tenant, confirm=args.yes, dry_run=args.dry_run,
                               on_wait=None if args.json else say_wait)
    if args.json:
        print_json({"command": "tenant delete", "changed": result.changed, "dry_run": result.dry_run,
                    "result": result, "detail": result.detail})
    else:
        print(result.detail)
    return 0 if result.changed else EXIT_NOTHING_TO_DO


def cmd_list(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        tenants = k.list_tenants()
    print_names(tenants, args.json)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        status = k.tenant_status(args.tenant)
    if args.json:
        print_json(status)
        return 0
    print_status_table([status])
    return 0


def print_status_table(statuses: Sequence[TenantStatus], k: Keyops | None = None) -> None:
    header = f"{'TENANT':<20} {'LEVEL':<5} {'VER':>4} {'STATE':<13} {'AGE(d)':>7} {'USES':>12}  DUE"
    print(paint(header, "bold", sys.stdout))
    for st in statuses:
        due = {d.level: f"{d.reason}: {d.detail}" for d in st.due}
        for level in (st.kek, st.dek):
            for v in level.versions:
                mark = "*" if v.version == level.primary else " "
                uses = "" if v.uses is None else (f"{v.uses}/{st.dek_usage_cap}" if mark == "*" else str(v.uses))
                due_text = ""
                if mark == "*":
                    due_text = (paint(due[level.level], "yellow", sys.stdout) if level.level in due
                                else f"next {level.next_due}")
                print(f"{st.tenant:<20} {level.level:<5} {v.version:>3}{mark} {v.state:<13} {v.age_days:>7.1f} "
                      f"{uses:>12}  {due_text}")
