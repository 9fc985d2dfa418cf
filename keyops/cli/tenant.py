"""``keyops tenant create|list|show``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from keyops.cli._common import open_keyops, print_json, print_names, set_command
from keyops.model.keyring import DEFAULT_DEK_USAGE_CAP, Policy
from keyops.ops.front import Keyops, TenantStatus


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("tenant", help="create and inspect tenant keyrings")
    tsub = parser.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)

    create = tsub.add_parser("create", help="create a tenant keyring with its first KEK and DEK")
    create.add_argument("tenant")
    create.add_argument("--residence", choices=("kv", "transit"), default="kv",
                        help="where the KEK lives: wrapped in KV (default) or imported into Transit")
    create.add_argument("--kek-period-days", type=int, default=90)
    create.add_argument("--dek-period-days", type=int, default=30)
    create.add_argument("--dek-usage-cap", type=int, default=DEFAULT_DEK_USAGE_CAP,
                        help="encryptions per DEK before it must rotate")
    create.add_argument("--dry-run", action="store_true", help="say what would be created, create nothing")
    set_command(create, cmd_create)

    lst = tsub.add_parser("list", help="list tenants")
    set_command(lst, cmd_list)

    show = tsub.add_parser("show", help="show a tenant's policy and key versions (no key material)")
    show.add_argument("tenant")
    set_command(show, cmd_show)


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
    return 0


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
    print(header)
    for st in statuses:
        due = {d.level: f"{d.reason}: {d.detail}" for d in st.due}
        for level in (st.kek, st.dek):
            for v in level.versions:
                mark = "*" if v.version == level.primary else " "
                uses = "" if v.uses is None else (f"{v.uses}/{st.dek_usage_cap}" if mark == "*" else str(v.uses))
                due_text = due.get(level.level, f"next {level.next_due}") if mark == "*" else ""
                print(f"{st.tenant:<20} {level.level:<5} {v.version:>3}{mark} {v.state:<13} {v.age_days:>7.1f} "
                      f"{uses:>12}  {due_text}")
