"""``keyops master status|create``: the HSM master key and its registry (rotation: ``keyops rotate --level master``).

The same operations as the Ansible ``master_key`` module (``keyops.ops.master_keys``).
"""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.cli._output import paint
from keyops.ops.master_keys import create_master, master_status


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("master", help="the HSM master key: its registry, versions and states; create it")
    msub = parser.add_subparsers(dest="master_command", metavar="ACTION", required=True)

    status = msub.add_parser("status", help="registered master key versions, their states, and whether the HSM "
                                            "token holds each (no key material)",
                             description="Exit codes: 0 shown, 5 no master key registered, 8 a version in use "
                                         "is missing from the token.")
    status.add_argument("--no-token", action="store_true",
                        help="do not log in to the HSM to check its keys (no PIN needed)")
    set_command(status, cmd_status, data_output=True)

    create = msub.add_parser("create", help="create the master key on the HSM and register it (idempotent)",
                             description="Exit codes: 0 created (or, with --dry-run, would be), 0 (3 with "
                                         "--detailed-exitcode) it exists already, 22 wrong PIN, 24 a key on the "
                                         "token under its name was not made by this registry.")
    create.add_argument("--dry-run", action="store_true", help="say whether it would be created, create nothing")
    set_command(create, cmd_create)


def cmd_status(args: argparse.Namespace) -> int:
    from keyops.errors import KeyStateError, NotFound

    with open_keyops() as k:
        status = master_status(k, check_token=not args.no_token)
    if args.json:
        print_json({"exists": status.exists, "registry_id": status.registry_id, "primary": status.primary,
                    "versions": status.versions, "missing_from_token": status.missing})
    elif status.exists:
        print(f"master key registry {status.registry_id or '(no id yet)'}, primary v{status.primary}")
        for v in status.versions:
            mark = "*" if v.version == status.primary else " "
            where = {True: "on token", False: paint("MISSING from token", "red", sys.stdout), None: ""}[v.on_token]
            root = f"token {v.token}" if v.token else v.root
            print(f"  v{v.version}{mark} {v.state:<13} {v.label:<40} {v.created_at}  {root:<20} {where}")
    if not status.exists:
        raise NotFound("no master key is registered; create it with 'keyops master create'")
    if status.missing:
        raise KeyStateError(f"master key version(s) {', '.join(map(str, status.missing))} are registered but "
                            "missing from the HSM token; point keyops at the right token")
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        registry, changed = create_master(k, dry_run=args.dry_run)
        label = k.master_label(registry.primary)
    if args.json:
        print_json({"changed": changed, "dry_run": args.dry_run, "version": registry.primary, "label": label,
                    "registry_id": registry.registry_id})
    elif not changed:
        print(f"nothing to do: master key v{registry.primary} ({label}) exists")
    else:
        print(f"{'would create' if args.dry_run else 'created'} master key v{registry.primary} ({label})")
    return 0 if changed else EXIT_NOTHING_TO_DO
