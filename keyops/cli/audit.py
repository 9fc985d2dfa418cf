"""``keyops audit verify|show|rotate|init|server``: the audit trail and the server's own record."""

from __future__ import annotations

import argparse
import json
import sys

from keyops import audit
from keyops.backends.vault import VaultStore
from keyops.cli._common import add_json_flag, open_keyops, print_json
from keyops.config import Config
from keyops.errors import AuditChainBroken, ConfigError


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("audit", help="verify and search the keyed, anchored audit log")
    asub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    verify = asub.add_parser("verify", help="check the chain's links, MACs and head; name the first broken entry")
    _log_flag(verify)
    verify.add_argument("--anchor", help="the log's anchor (default: $KEYOPS_AUDIT_ANCHOR; 'auto' derives it "
                                         "from the host and the log's path)")
    add_json_flag(verify)
    verify.set_defaults(func=cmd_verify, data_output=True)

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
    show.set_defaults(func=cmd_show, data_output=True)

    rotate = asub.add_parser("rotate", help="archive the local log and continue its chain in a new file")
    rotate.add_argument("--force", action="store_true",
                        help="archive a log that does not match its head (its damage stays visible)")
    add_json_flag(rotate)
    rotate.set_defaults(func=cmd_rotate)

    init = asub.add_parser("init", help="create the Transit key that keys the audit chain (security-admin)")
    add_json_flag(init)
    init.set_defaults(func=cmd_init)

    server = asub.add_parser("server", help="list the Vault/OpenBao audit devices (the server's own record)")
    add_json_flag(server)
    server.set_defaults(func=cmd_server, data_output=True)


def _log_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help="audit log file (default: $KEYOPS_AUDIT_LOG)")


def _log_path(args: argparse.Namespace, config: Config | None = None) -> str:
    path = args.log or (config or Config.load()).audit_log
    if not path:
        raise ConfigError("no audit log: pass --log or set KEYOPS_AUDIT_LOG ('keyops dev env' sets it)")
    return str(path)


def cmd_verify(args: argparse.Namespace) -> int:
    from keyops.access import Mounts

    config = Config.load()
    path = _log_path(args, config)
    mounts = Mounts.from_config(config)
    opened: list[VaultStore] = []

    def connect() -> VaultStore:  # only a keyed or anchored log needs Vault
        if not opened:
            opened.append(VaultStore(config))
        return opened[0]

    result = audit.verify_log(path, key=audit.TransitHmacKey(mounts.audit_key, connect=connect),
                              heads=audit.KvHeads(mounts.audit, connect=connect),
                              anchor=audit.anchor_name(args.anchor or config.audit_anchor, path))
    if args.json:
        print_json({"log": result.path, "ok": result.ok, "entries": result.entries,
                    "keyed_entries": result.keyed_entries, "unkeyed_entries": result.unkeyed_entries,
                    "key": result.key, "anchor": result.anchor, "head_seq": result.head_seq,
                    "notes": list(result.notes), "last_hash": result.last_hash,
                    "problem": None if result.problem is None else
                    {"line": result.problem.line, "message": result.problem.message}})
    elif result.ok:
        print(result.summary())
        for note in result.notes:
            print(f"  note: {note}")
    if result.problem is not None:
        err = AuditChainBroken(f"audit log {result.path} is not intact: {result.problem} "
                               f"({result.entries} entries before it verify)")
        if not args.json:
            print(f"keyops: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        if k.audit is None or getattr(k.audit, "log", None) is None:
            raise ConfigError("no audit log to rotate: set KEYOPS_AUDIT_LOG")
        k.authorize("audit.write")
        principal = k.principal
        # k.audit is typed as a callable sink; one with a log, checked above, is an AuditTrail.
        result = k.audit.rotate(force=args.force, actor=principal.actor,  # type: ignore[attr-defined]
                                accessor=principal.accessor)
    if args.json:
        print_json(result)
    elif result.seq is None:
        print(f"archived the unkeyed log as {result.archived}; the next event starts a new chain")
    else:
        damaged = "" if result.intact else " (it did not match its head: its damage stays visible)"
        print(f"archived as {result.archived}{damaged}; the chain continues at seq {result.seq} in the new log")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from keyops.access import Mounts

    with open_keyops() as k:
        name = Mounts.from_config(k.config).audit_key
        with k.audited("audit.init", level="audit", audit_key=name) as event:
            created = audit.ensure_audit_key(k.store, name)
            event["created"] = created
    if args.json:
        print_json({"key": name, "created": created})
    else:
        print(f"Transit key {k.config.transit_mount}/{name} (hmac, not exportable) "
              f"{'created' if created else 'already present'}")
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
    with open_keyops() as k:
        devices = k.store.list_enabled_audit_devices()
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
