"""``keyops init [--dry-run] [--json]``: the KV v2 and Transit mounts keyops uses, in a fresh Vault or namespace.

Thin over ``keyops.ops.mounts.init_mounts``. Exit 0 when the mounts are in
place afterwards (made now or already there), so that a provisioning script
may run it every time; with ``--detailed-exitcode``, 3 when both were already
there, as every command says "nothing to do". ``--json`` says what changed.
"""

from __future__ import annotations

import argparse

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.ops.mounts import init_mounts


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "init", help="create the KV v2 and Transit mounts keyops uses (KEYOPS_KV_MOUNT, KEYOPS_TRANSIT_MOUNT)",
        description="Create the KV v2 mount (with keyops' history settings) and the Transit mount when they "
                    "are missing, in VAULT_NAMESPACE when set; needs a token that may enable secrets engines. "
                    "Idempotent. Exit codes: 0 the mounts are in place (with --detailed-exitcode: 3 when they "
                    "already were), 15 a mount of the wrong kind is in the "
                    "way, 14 the token may not manage mounts.")
    parser.add_argument("--dry-run", action="store_true", help="say what would be created, change nothing")
    set_command(parser, cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        result = init_mounts(k, dry_run=args.dry_run)
    if args.json:
        print_json({"command": "init", "changed": result.changed, "dry_run": result.dry_run, "result": result})
    else:
        print(result.detail)
    return 0 if result.changed else EXIT_NOTHING_TO_DO
