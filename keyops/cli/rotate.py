"""``keyops rotate``: rotate keys on demand, or only what is due (``--due``).

    keyops rotate --tenant T --level dek|kek [--expect-version N] [--dry-run] [--json]
    keyops rotate --level master [--expect-version N] [--dry-run] [--json]
    keyops rotate --due [--tenant T ...] [--no-master] [--dry-run] [--json]

Exit codes of ``rotate``, ``retire`` and ``destroy`` (one contract for CI jobs):

====  ===========================================================================
0     done: something changed (with ``--dry-run``: something would change);
      also nothing to do, unless ``--detailed-exitcode`` is given
3     with ``--detailed-exitcode``: nothing to do: nothing due, the primary is no longer ``--expect-version``
      (another run rotated it), the version is already retired/destroyed
1     ``rotate --due``: at least one of its rotations failed (each is in the
      output; the others still ran)
2     invalid input: bad arguments, ``destroy`` without ``--yes``
7     conflict: another rotation won the race; this run changed nothing
8     refused by key state: the primary key, a version still in use
      (``key_in_use``), a half-made tenant
5     not found: tenant, key version or master key
9-30  other failures, by kind: Vault (10-14), HSM (20-24), configuration (15);
      see ``keyops.errors``
====  ===========================================================================

With ``--json`` the result goes to stdout as one JSON object, and an error
to stderr as ``{"error": <code>, "message": ...}``.
"""

from __future__ import annotations

import argparse
from typing import Any

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.errors import InvalidInput
from keyops.ops.rotation import (
    DueRotationReport,
    MasterRotationResult,
    RotationResult,
    rotate,
    rotate_due,
    rotate_master,
)

EXIT_DONE = 0
EXIT_PARTLY_FAILED = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "rotate", help="rotate a tenant's DEK or KEK, the master key, or whatever is due",
        description="Rotate keys. Exit codes: 0 done or nothing to do (3 with --detailed-exitcode), "
                    "7 another rotation won, 1 some --due rotations failed, others: the error's code.")
    parser.add_argument("--tenant", action="append", metavar="T",
                        help="the tenant (with --due: limit to these tenants; repeatable)")
    parser.add_argument("--level", choices=("dek", "kek", "master"), help="which key to rotate")
    parser.add_argument("--expect-version", type=int, metavar="N",
                        help="rotate only while the primary is still version N (safe to re-run)")
    parser.add_argument("--due", action="store_true",
                        help="rotate only what is due by policy (age, DEK usage), across all tenants")
    parser.add_argument("--no-master", action="store_true", help="with --due: leave the master key alone")
    parser.add_argument("--dry-run", action="store_true", help="say what would be rotated, change nothing")
    set_command(parser, cmd_rotate)


def cmd_rotate(args: argparse.Namespace) -> int:
    tenants: list[str] = args.tenant or []
    if args.due:
        if args.level or args.expect_version is not None:
            raise InvalidInput("--due picks the levels itself; leave out --level and --expect-version")
        with open_keyops() as k:
            report = rotate_due(k, dry_run=args.dry_run, tenants=tenants or None, include_master=not args.no_master)
        return _report_due(report, args.json)
    if args.no_master:
        raise InvalidInput("--no-master goes with --due")
    if not args.level:
        raise InvalidInput("say what to rotate: --level dek|kek|master (with --tenant), or --due")
    if args.level == "master":
        if tenants:
            raise InvalidInput("the master key belongs to no tenant; leave out --tenant with --level master")
        with open_keyops() as k:
            result: RotationResult | MasterRotationResult = rotate_master(
                k, dry_run=args.dry_run, expect_version=args.expect_version)
    else:
        if len(tenants) != 1:
            raise InvalidInput(f"--level {args.level} needs exactly one --tenant")
        with open_keyops() as k:
            result = rotate(k, tenants[0], args.level, dry_run=args.dry_run, expect_version=args.expect_version)
    if args.json:
        print_json({"command": "rotate", "changed": result.changed, "dry_run": result.dry_run, "result": result})
    else:
        print(result.detail)
    return EXIT_DONE if result.changed else EXIT_NOTHING_TO_DO


def _report_due(report: DueRotationReport, as_json: bool) -> int:
    if as_json:
        out: dict[str, Any] = {"command": "rotate", "mode": "due", "changed": report.changed,
                               "dry_run": report.dry_run, "nothing_due": report.nothing_due,
                               "tenants_checked": report.tenants_checked, "master_checked": report.master_checked,
                               "rotations": report.rotations, "failures": report.failures,
                               "summary": report.summary()}
        print_json(out)
    else:
        for r in report.rotations:
            print(f"{r.detail} [{r.reason}]" if r.changed else r.detail)
        for f in report.failures:
            where = f"tenant {f.tenant}" if f.tenant else "master key"
            print(f"FAILED {where} ({f.level}): {f.message}")
        print(report.summary())
    if report.failures:
        return EXIT_PARTLY_FAILED
    return EXIT_DONE if report.changed else EXIT_NOTHING_TO_DO
