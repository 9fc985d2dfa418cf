"""``keyops status [--tenant T] [--json]``."""

from __future__ import annotations

import argparse

from keyops.cli._common import add_json_flag, open_keyops, print_json
from keyops.cli.tenant import print_status_table

STATUS_SCHEMA = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("status", help="key versions, states, ages, usage and what is due")
    parser.add_argument("--tenant")
    add_json_flag(parser)
    parser.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        statuses = k.status(args.tenant)
    if args.json:
        print_json({"schema": STATUS_SCHEMA, "tenants": statuses})
    elif not statuses:
        print("no tenants")
    else:
        print_status_table(statuses)
    return 0
