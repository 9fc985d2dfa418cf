"""``keyops retire`` and ``keyops destroy``: end a key version's life once nothing refers to it.

    keyops retire  --tenant T --level dek|kek --version N [--dry-run] [--json]
    keyops retire  --level master --version N [--dry-run] [--json]
    keyops destroy --tenant T --level dek|kek --version N --yes [--dry-run] [--json]
    keyops destroy --level master --version N --yes [--dry-run] [--json]

Exit codes: 0 done (or, with --dry-run, would be done), 0 (3 with
``--detailed-exitcode``) nothing to do (already in that state), 2 invalid input or ``destroy`` without ``--yes``,
8 refused (the primary, or still referred to: ``key_in_use``), 5 not found;
the full table is in ``keyops.cli.rotate``.
"""

from __future__ import annotations

import argparse

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.cli._output import note
from keyops.cli.rotate import EXIT_DONE
from keyops.ops.lifecycle import LifecycleResult, destroy, retire


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for action, help_text in (
            ("retire", "retire a key version nothing refers to (unusable, kept for audit)"),
            ("destroy", "destroy a key version nothing refers to (irreversible; needs --yes)")):
        parser = sub.add_parser(action, help=help_text,
                                description=f"{help_text[0].upper()}{help_text[1:]}. Exit codes: 0 done "
                                            "or nothing to do (3 with --detailed-exitcode), 2 invalid input, "
                                            "8 refused (primary or in use).")
        parser.add_argument("--tenant", metavar="T", help="the tenant (not with --level master)")
        parser.add_argument("--level", choices=("dek", "kek", "master"), required=True)
        parser.add_argument("--version", type=int, required=True, metavar="N", help="the key version")
        if action == "destroy":
            parser.add_argument("--yes", action="store_true",
                                help="confirm: irreversible (a master key's HSM object, made non-destroyable, "
                                     "stays until the token's security officer deletes it)")
        parser.add_argument("--acknowledge-external", action="store_true",
                            help="a DEK version that encrypted for callers outside keyops' store: proceed anyway "
                                 "(after applications rewrapped their ciphertexts with 'keyops rewrap')")
        parser.add_argument("--dry-run", action="store_true", help="check and say what would happen, change nothing")
        set_command(parser, cmd_lifecycle, action=action)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    with open_keyops() as k:
        common = {"dry_run": args.dry_run, "acknowledge_external": args.acknowledge_external,
                  "on_wait": None if args.json else _say_wait}  # --json: stderr holds only the error
        if args.action == "retire":
            result = retire(k, args.tenant, args.level, args.version, **common)
        else:
            result = destroy(k, args.tenant, args.level, args.version, confirm=args.yes,
                             confirm_hint=("--yes", "--dry-run"), **common)
    _print(result, args.json)
    return EXIT_DONE if result.changed else EXIT_NOTHING_TO_DO


def _say_wait(seconds: float, why: str) -> None:
    note(f"waiting {seconds:.0f}s: {why}")


def _print(result: LifecycleResult, as_json: bool) -> None:
    if as_json:
        print_json({"command": result.action, "changed": result.changed, "dry_run": result.dry_run,
                    "result": result})
    else:
        print(result.detail)
