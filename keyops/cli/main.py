"""``keyops``: the command line. Thin over ``keyops.ops.front``.

One domain error type is turned into exit codes here, at the edge: each
``KeyopsError`` subclass carries its ``exit_code``; messages go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from keyops.errors import KeyopsError

#: Modules under keyops.cli that each register one or more commands with ``add_parser``.
COMMANDS = ("dev", "tenant", "secret", "data", "status")
OPTIONAL_COMMANDS = ("rotate", "reencrypt", "migrate", "lifecycle", "policy", "audit", "kms", "serve")
#: Which module registers which command, so that a run imports only what its command needs (a unit
#: test checks this table against the parser that every module builds).
COMMAND_MODULES = {
    "dev": "dev", "tenant": "tenant", "secret": "secret", "encrypt": "data", "decrypt": "data", "rewrap": "data",
    "status": "status", "rotate": "rotate", "reencrypt": "reencrypt", "migrate": "migrate", "retire": "lifecycle",
    "destroy": "lifecycle", "policy": "policy", "audit": "audit", "kms": "kms",
    "serve": "serve",
}


def _new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="keyops", description="Envelope-encryption key management on Vault/OpenBao with an HSM master key.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, sub


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command``, of that command only (fewer imports)."""
    parser, sub = _new_parser()
    if command is not None and command in COMMAND_MODULES:
        importlib.import_module(f"keyops.cli.{COMMAND_MODULES[command]}").add_parser(sub)
        return parser
    for name in COMMANDS:
        importlib.import_module(f"keyops.cli.{name}").add_parser(sub)
    for name in OPTIONAL_COMMANDS:
        try:
            module = importlib.import_module(f"keyops.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"keyops.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first word names the command; anything else (--help, a typo) gets the whole parser.
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyopsError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.code, "message": str(exc)}), file=sys.stderr)
        else:
            print(f"keyops: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("keyops: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
