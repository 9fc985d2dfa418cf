"""``keyops escrow``: give every KEK version its break-glass copy under the recovery public key.

    keyops escrow [--tenant T ...] [--dry-run] [--replace] [--json]
    keyops escrow --check [--tenant T ...] [--json]

The public key is ``KEYOPS_ESCROW_PUBLIC_KEY`` (a PEM file). New KEK versions
get their copy when they are made; this command fills in the versions made
before. ``--check`` changes nothing and exits 1 while a KEK version has no
copy (under the configured key, when one is set), so that monitoring can
tell. ``--replace`` (security-admin) moves copies made under another public
key to the configured one: how the recovery key is rotated.
"""

from __future__ import annotations

import argparse

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.errors import InvalidInput
from keyops.ops.escrow import EscrowReport, escrow, escrow_status

EXIT_INCOMPLETE = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "escrow", help="escrow every KEK version to the break-glass recovery public key",
        description="Give every KEK version a copy under KEYOPS_ESCROW_PUBLIC_KEY (RSA-OAEP-SHA256), stored in its "
                    "keyring. Exit codes: 0 done or nothing to do (3 with --detailed-exitcode), 1 some tenants "
                    "failed or (--check) some KEK versions have no copy.")
    parser.add_argument("--tenant", action="append", metavar="T", help="only these tenants (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be escrowed, change nothing")
    parser.add_argument("--check", action="store_true", help="report KEK versions without a copy; change nothing")
    parser.add_argument("--replace", action="store_true",
                        help="also replace copies under another public key (security-admin: recovery key rotation)")
    set_command(parser, cmd_escrow)


def cmd_escrow(args: argparse.Namespace) -> int:
    if args.check and (args.dry_run or args.replace):
        raise InvalidInput("--check changes nothing; leave out --dry-run and --replace")
    with open_keyops() as k:
        report = (escrow_status(k, args.tenant) if args.check
                  else escrow(k, args.tenant, dry_run=args.dry_run, replace=args.replace))
    _print(report, args)
    if report.failures or (args.check and report.missing):
        return EXIT_INCOMPLETE
    return 0 if report.changed or args.check else EXIT_NOTHING_TO_DO


def _print(report: EscrowReport, args: argparse.Namespace) -> None:
    if args.json:
        print_json({"command": "escrow", "check": args.check, "dry_run": report.dry_run, "changed": report.changed,
                    "key": report.key, "missing": report.missing, "tenants": report.tenants,
                    "failures": report.failures, "summary": report.summary()})
        return
    for t in report.tenants:
        if t.escrowed or t.missing or t.other_key:
            parts = [f"escrowed {_list(t.escrowed)}" if t.escrowed else "",
                     f"no copy {_list(t.missing)}" if t.missing else "",
                     f"other key {_list(t.other_key)}" if t.other_key else ""]
            print(f"{t.tenant}: " + "; ".join(p for p in parts if p))
    for f in report.failures:
        print(f"FAILED tenant {f.tenant}: {f.message}")
    if args.check:
        print(f"{report.missing} KEK versions have no escrow copy" + (f" under {report.key}" if report.key else ""))
    else:
        print(report.summary())


def _list(versions: tuple[int, ...]) -> str:
    return ", ".join(f"v{v}" for v in versions)
