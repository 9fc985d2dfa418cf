"""``keyops retention``: retire (and later destroy) versions beyond each tenant's ``keep_versions``.

    keyops retention [--tenant T ...] [--dry-run] [--json]

For the scheduled job, after ``rotate --due`` and the re-encryptions. Exit
codes: 0 done, 0 (3 with --detailed-exitcode) nothing to retire or destroy,
1 some tenant failed (the others still ran).
"""

from __future__ import annotations

import argparse

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "retention", help="retire versions beyond each policy's keep_versions once nothing refers to them",
        description="Apply each tenant's retention policy: keep keep_versions usable versions of its KEK and DEK, "
                    "retire older ones once no record, DEK version or outside caller refers to them, destroy "
                    "retired ones after destroy_after_days (with the destroy right). Exit codes: 0 done, 0 (3 "
                    "with --detailed-exitcode) nothing to do, 1 a tenant failed.")
    parser.add_argument("--tenant", action="append", metavar="T", help="only these tenants (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be retired, change nothing")
    set_command(parser, cmd_retention)


def cmd_retention(args: argparse.Namespace) -> int:
    from keyops.ops.retention import apply_retention

    with open_keyops() as k:
        report = apply_retention(k, args.tenant, dry_run=args.dry_run)
    if args.json:
        print_json({"changed": report.changed, "dry_run": report.dry_run, "summary": report.summary(),
                    "results": [{"tenant": r.tenant, "level": r.level, "version": r.version, "action": r.action,
                                 "changed": r.changed, "detail": r.detail} for r in report.results],
                    "notes": list(report.notes),
                    "failures": [{"tenant": f.tenant, "error": f.code, "message": f.message}
                                 for f in report.failures]})
    else:
        print(report.summary())
        for r in report.results:
            print(f"  {r.detail}")
        for line in report.notes:
            print(f"note: {line}")
        for f in report.failures:
            print(f"FAILED: {f.tenant}: {f.message}")
    if report.failures:
        return 1
    return 0 if report.changed else EXIT_NOTHING_TO_DO
