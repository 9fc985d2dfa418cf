"""``keyops secret put|get|list|delete``. Values travel by stdin and stdout only."""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, print_names, set_command
from keyops.cli._output import note
from keyops.files import write_file_atomic


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("secret", help="store and read encrypted secrets")
    ssub = parser.add_subparsers(dest="secret_command", metavar="ACTION", required=True)

    put = _one_secret(ssub, "put", "store the bytes read from stdin as secret NAME")
    put.add_argument("--dry-run", action="store_true")
    set_command(put, cmd_put)

    get = _one_secret(ssub, "get", "write the secret's bytes, exactly as stored, to stdout (or FILE)")
    get.add_argument("--output", "-o", metavar="FILE",
                     help="write the value to FILE instead (created with mode 0600, replaced atomically)")
    set_command(get, cmd_get, data_output=True)

    lst = ssub.add_parser("list", help="list a tenant's secret names")
    lst.add_argument("tenant")
    lst.add_argument("--prefix", default="")
    set_command(lst, cmd_list, data_output=True)

    delete = _one_secret(ssub, "delete", "delete a secret and its history")
    delete.add_argument("--dry-run", action="store_true")
    set_command(delete, cmd_delete)


def _one_secret(ssub: argparse._SubParsersAction[argparse.ArgumentParser], action: str,
                summary: str) -> argparse.ArgumentParser:
    """The parser of an action on one secret: TENANT NAME."""
    parser: argparse.ArgumentParser = ssub.add_parser(action, help=summary)
    parser.add_argument("tenant")
    parser.add_argument("name")
    return parser


def cmd_put(args: argparse.Namespace) -> int:
    value = sys.stdin.buffer.read()
    with open_keyops() as k:
        result = k.put_secret(args.tenant, args.name, value, dry_run=args.dry_run)
    if args.json:
        print_json({"tenant": result.tenant, "name": result.name, "changed": result.changed,
                    "version": result.version, "dek_version": result.dek_version, "dry_run": args.dry_run})
    elif not result.changed:
        note(f"{args.tenant}/{args.name}: unchanged (already stored)")
    else:
        verb = "would store" if args.dry_run else "stored"
        note(f"{args.tenant}/{args.name}: {verb}" + ("" if args.dry_run else f" (version {result.version}, "
             f"DEK v{result.dek_version})"))
    return 0 if result.changed else EXIT_NOTHING_TO_DO


def cmd_get(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        value = k.get_secret(args.tenant, args.name)
    if args.output:
        write_file_atomic(Path(args.output), value)
        note(f"{args.tenant}/{args.name}: written to {args.output} ({len(value)} bytes, mode 0600)")
        if args.json:
            print_json({"tenant": args.tenant, "name": args.name, "output": args.output, "bytes": len(value)})
        return 0
    if args.json:
        print_json(secret_json(args.tenant, args.name, value))
        return 0
    sys.stdout.buffer.write(value)
    sys.stdout.flush()
    return 0


def secret_json(tenant: str, name: str, value: bytes) -> dict[str, object]:
    """``secret get --json``: the value as text when it is UTF-8, else as base64 (``encoding`` says which)."""
    try:
        return {"tenant": tenant, "name": name, "encoding": "utf-8", "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"tenant": tenant, "name": name, "encoding": "base64", "value": base64.b64encode(value).decode()}


def cmd_list(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        names = k.list_secrets(args.tenant, args.prefix)
    print_names(names, args.json)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        existed = k.delete_secret(args.tenant, args.name, dry_run=args.dry_run)
    if args.json:
        print_json({"tenant": args.tenant, "name": args.name, "changed": existed, "dry_run": args.dry_run})
    elif existed:
        note(f"{args.tenant}/{args.name}: {'would delete' if args.dry_run else 'deleted'}")
    else:
        note(f"{args.tenant}/{args.name}: not present; nothing to do")
    return 0 if existed else EXIT_NOTHING_TO_DO
