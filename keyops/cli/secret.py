"""``keyops secret put|get|list|delete``. Values travel by stdin and stdout only."""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import add_json_flag, open_keyops, print_json


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("secret", help="store and read encrypted secrets")
    ssub = parser.add_subparsers(dest="secret_command", metavar="ACTION", required=True)

    put = ssub.add_parser("put", help="store the bytes read from stdin as secret NAME")
    put.add_argument("tenant")
    put.add_argument("name")
    put.add_argument("--dry-run", action="store_true")
    add_json_flag(put)
    put.set_defaults(func=cmd_put)

    get = ssub.add_parser("get", help="write the secret's bytes, exactly as stored, to stdout")
    get.add_argument("tenant")
    get.add_argument("name")
    get.set_defaults(func=cmd_get)

    lst = ssub.add_parser("list", help="list a tenant's secret names")
    lst.add_argument("tenant")
    lst.add_argument("--prefix", default="")
    add_json_flag(lst)
    lst.set_defaults(func=cmd_list)

    delete = ssub.add_parser("delete", help="delete a secret and its history")
    delete.add_argument("tenant")
    delete.add_argument("name")
    delete.add_argument("--dry-run", action="store_true")
    add_json_flag(delete)
    delete.set_defaults(func=cmd_delete)


def cmd_put(args: argparse.Namespace) -> int:
    value = sys.stdin.buffer.read()
    with open_keyops() as k:
        result = k.put_secret(args.tenant, args.name, value, dry_run=args.dry_run)
    if args.json:
        print_json({"tenant": result.tenant, "name": result.name, "changed": result.changed,
                    "version": result.version, "dek_version": result.dek_version, "dry_run": args.dry_run})
    elif not result.changed:
        print(f"{args.tenant}/{args.name}: unchanged (already stored)", file=sys.stderr)
    else:
        verb = "would store" if args.dry_run else "stored"
        print(f"{args.tenant}/{args.name}: {verb}" + ("" if args.dry_run else f" (version {result.version}, "
              f"DEK v{result.dek_version})"), file=sys.stderr)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        value = k.get_secret(args.tenant, args.name)
    sys.stdout.buffer.write(value)
    sys.stdout.flush()
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        names = k.list_secrets(args.tenant, args.prefix)
    if args.json:
        print_json(names)
    else:
        for name in names:
            print(name)
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        existed = k.delete_secret(args.tenant, args.name, dry_run=args.dry_run)
    if args.json:
        print_json({"tenant": args.tenant, "name": args.name, "changed": existed, "dry_run": args.dry_run})
    elif existed:
        print(f"{args.tenant}/{args.name}: {'would delete' if args.dry_run else 'deleted'}", file=sys.stderr)
    else:
        print(f"{args.tenant}/{args.name}: not present; nothing to do", file=sys.stderr)
    return 0
