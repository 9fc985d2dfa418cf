"""``keyops backup --output FILE`` and ``keyops restore FILE``: thin over ``keyops.ops.backup`` and ``.restore``.

The runbook that uses both is docs/runbooks/backup-restore.md.
"""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser(
        "backup", help="write what keyops keeps in KV (wrapped keys and ciphertexts only) to one file",
        description="Back up the master key registry, every tenant's keyring, usage document, job checkpoints "
                    "and encrypted secret records, and the audit chain's heads, with their KV history settings, "
                    "to one JSON-lines file written atomically with mode 0600. It holds no plaintext and no "
                    "unwrapped key, and needs no HSM PIN. Not in it: Transit keys, the HSM's keys, the audit "
                    "log (docs/runbooks/backup-restore.md). Exit codes: 0 written, 7 a rotation kept changing "
                    "what was read (nothing written; run it again), 14 the token may not read it all.")
    backup.add_argument("--output", "-o", required=True, metavar="FILE", help="the backup file (replaced whole)")
    set_command(backup, cmd_backup)

    restore = sub.add_parser(
        "restore", help="bring a backup back: create what is missing, leave what is identical",
        description="Restore a backup made by 'keyops backup' into the KV mount (KEYOPS_KV_MOUNT; run "
                    "'keyops init' first when it is gone). Idempotent and check-and-set: missing documents are "
                    "created, identical ones left, usage counts merged (never lowered), audit heads never moved "
                    "back; a document that differs refuses the whole restore, naming it, unless --overwrite. "
                    "Exit codes: 0 restored (3 with --detailed-exitcode: everything was in place), 2 the file is "
                    "damaged or not a backup, 7 documents differ (nothing restored), 14 not permitted.")
    restore.add_argument("file", metavar="FILE", help="a file written by 'keyops backup'")
    restore.add_argument("--dry-run", action="store_true", help="say what each document would get, write nothing")
    restore.add_argument("--overwrite", action="store_true",
                         help="replace documents that differ with the backup's version (a new KV version: the "
                              "current one stays in KV's history); never an audit head")
    restore.add_argument("--tenant", action="append", default=[], metavar="TENANT",
                         help="restore only this tenant's documents (repeatable); not the registry or audit heads")
    set_command(restore, cmd_restore)


def cmd_backup(args: argparse.Namespace) -> int:
    from keyops.ops.backup import write_backup

    with open_keyops() as k:
        result = write_backup(k, args.output)
    if args.json:
        print_json({"command": "backup", "changed": True, "result": result})
    else:
        print(result.detail)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from keyops.errors import Conflict
    from keyops.ops.backup import load_backup
    from keyops.ops.restore import restore

    backup = load_backup(args.file)  # a damaged file is refused before Vault is asked anything
    with open_keyops() as k:
        result = restore(k, backup, args.file, dry_run=args.dry_run, overwrite=args.overwrite,
                         tenants=args.tenant)
    if args.json:
        print_json({"command": "restore", "changed": result.changed, "dry_run": result.dry_run, "result": result})
    else:
        print(result.detail)
        for step in result.steps:
            if step.action != "unchanged":
                print(f"  {step.action:<9} {step.kind:<10} {step.path}" + (f"  ({step.detail})" if step.detail else ""))
    for warning in result.warnings:
        print(f"keyops: warning: {warning}", file=sys.stderr)
    if result.conflicts:  # a dry run that a real run would refuse
        raise Conflict(f"{len(result.conflicts)} document(s) differ from the backup; a restore would refuse them "
                       "(--overwrite replaces them)")
    return 0 if result.changed else EXIT_NOTHING_TO_DO
