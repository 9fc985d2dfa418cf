"""``keyops status [--tenant T] [--json]``.

Across every tenant, a tenant whose status cannot be read (a corrupted
keyring, say) is reported on its own, with its error code and message, and
the others are still shown: with ``--json`` under ``"problems"``, else on
stderr after the table. The exit code is then 1 (as for ``rotate --due``:
some failed, the others are shown). With ``--tenant``, that tenant's error is
the command's error, with its own exit code.
"""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import open_keyops, print_json, set_command
from keyops.cli.tenant import print_status_table

STATUS_SCHEMA = 1
EXIT_PARTLY_FAILED = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("status", help="key versions, states, ages, usage and what is due",
                            description="Status of every tenant (or one). Exit codes: 0 every tenant shown, "
                                        "1 some tenants could not be read (each is reported; the others are "
                                        "shown), others: the error's code.")
    parser.add_argument("--tenant")
    set_command(parser, cmd_status, data_output=True)


def cmd_status(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        report = k.status(args.tenant)
    if args.json:
        print_json({"schema": STATUS_SCHEMA, "tenants": report.tenants, "problems": report.problems})
    else:
        if report.tenants:
            print_status_table(list(report.tenants))
        elif not report.problems:
            print("no tenants")
        for problem in report.problems:
            print(f"keyops: error: tenant {problem.tenant}: {problem.message}", file=sys.stderr)
        if report.problems:
            total = len(report.tenants) + len(report.problems)
            print(f"keyops: {len(report.problems)} of {total} tenants could not be read; the others are shown",
                  file=sys.stderr)
    return EXIT_PARTLY_FAILED if report.problems else 0
