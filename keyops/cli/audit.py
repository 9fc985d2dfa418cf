"""``keyops audit verify|show|server``: the audit trail and the server's own record."""

from __future__ import annotations

import argparse
import json
import sys

from keyops import audit
from keyops.cli._common import add_json_flag, open_keyops, print_json
from keyops.config import Config
from keyops.errors import AuditChainBroken, ConfigError
from keyops.vault import vault_errors


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("audit", help="verify and search the hash-chained audit log")
    asub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = asub.add_parser("verify", help="check the hash chain; name the first broken entry")
    _log_flag(verify)
    add_json_flag(verify)
    verify.set_defaults(func=cmd_verify)

    show = asub.add_parser("show", help="list events, filtered by tenant, operation, time, result, actor")
    _log_flag(show)
    show.add_argument("--tenant")
    show.add_argument("--operation", help="e.g. rotate, dek.unwrap, 'policy.*' (a prefix matches its sub-events)")
    show.add_argument("--since", help="ISO time (2024-05-01T12:00:00Z) or a duration back from now (90m, 2h, 7d)")
    show.add_argument("--until", help="ISO time or a duration back from now")
    show.add_argument("--result", help="ok, error:*, error:not_permitted, ...")
    show.add_argument("--actor", help="token:<accessor> or approle:<role> (globs allowed)")
    show.add_argument("--limit", type=int, default=0, help="only the last N matching events")
    add_json_flag(show)
    show.set_defaults(func=cmd_show)

    server = asub.add_parser("server", help="list the Vault/OpenBao audit devices (the server's own record)")
    add_json_flag(server)
    server.set_defaults(func=cmd_server)


def _log_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help="audit log file (default: $KEYOPS_AUDIT_LOG)")


def _log_path(args: argparse.Namespace) -> str:
    path = args.log or Config.load().audit_log
    if not path:
        raise ConfigError("no audit log: pass --log or set KEYOPS_AUDIT_LOG ('keyops dev env' sets it)")
    return str(path)


def cmd_verify(args: argparse.Namespace) -> int:
    result = audit.verify_log(_log_path(args))
    if args.json:
        print_json({"log": result.path, "ok": result.ok, "entries": result.entries, "last_hash": result.last_hash,
                    "problem": None if result.problem is None else
                    {"line": result.problem.line, "message": result.problem.message}})
    elif result.ok:
        print(f"{result.path}: {result.entries} entries, hash chain intact (last hash {result.last_hash[:16]}...)")
    if result.problem is not None:
        err = AuditChainBroken(f"audit log {result.path} is not intact: {result.problem} "
                               f"({result.entries} entries before it verify)")
        if not args.json:
            print(f"keyops: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    since = audit.parse_time_filter(args.since) if args.since else None
    until = audit.parse_time_filter(args.until) if args.until else None
    events = audit.filter_events(audit.read_events(_log_path(args)), tenant=args.tenant, operation=args.operation,
                                 since=since, until=until, result=args.result, actor=args.actor)
    if args.limit > 0:
        events = events[-args.limit:]
    if args.json:
        for event in events:
            sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
        return 0
    for e in events:
        versions = "" if e.get("versions") in (None, [], {}) else json.dumps(e.get("versions"), sort_keys=True)
        print(f"{str(e.get('time', ''))[:23]:<23} {e.get('seq', ''):>6} {str(e.get('operation')):<18} "
              f"{str(e.get('tenant') or '-'):<20} {str(e.get('level') or '-'):<8} {versions:<20} "
              f"{str(e.get('result')):<24} {e.get('actor')}")
    if not events:
        print("no matching events", file=sys.stderr)
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    with open_keyops() as k, vault_errors("listing the server's audit devices", k.config.vault_addr):
        devices = k.store.client.sys.list_enabled_audit_devices()
    devices = devices.get("data", devices)
    rows = [{"path": path, "type": d.get("type"), "description": d.get("description"),
             "file_path": (d.get("options") or {}).get("file_path")} for path, d in sorted(devices.items())]
    if args.json:
        print_json(rows)
    elif not rows:
        print("no audit device is enabled: the server keeps no record of its own", file=sys.stderr)
        return 1
    else:
        for row in rows:
            print(f"{row['path']:<12} {row['type']:<8} {row['file_path'] or ''}  {row['description'] or ''}")
    return 0
