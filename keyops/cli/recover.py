"""``keyops recover``: rebuild the master wrapping of every KEK from the break-glass escrow (a lost HSM).

    keyops recover --private-key FILE|- [--passphrase-file FILE] [--dry-run] [--json]

Takes the security-admin role. The private key comes from an owner-only
file, or from stdin with ``-``, and is used in memory for this run only. See
docs/runbooks/hsm-recovery.md for the whole procedure.
"""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import EXIT_NOTHING_TO_DO, open_keyops, print_json, set_command
from keyops.config import read_secret_file
from keyops.errors import InvalidInput
from keyops.ops.recovery import recover
from keyops.wrappers.escrow import RecoveryKey

EXIT_INCOMPLETE = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "recover", help="after losing the HSM: re-wrap every KEK under a new master key from the escrow",
        description="Rebuild the master wrapping from the break-glass escrow: a new master version under the "
                    "configured root (KEYOPS_PKCS11_TOKEN: the new token) when the primary is lost, and every KEK "
                    "opened from its escrow copy and re-wrapped under it. Resumable: run it again after a crash. "
                    "Exit codes: 0 done or nothing to do (3 with --detailed-exitcode), 1 some tenants could not be "
                    "recovered, 2 a private key that is not the escrow's.")
    parser.add_argument("--private-key", required=True, metavar="FILE",
                        help="the recovery private key (PEM): an owner-only file, or - for stdin")
    parser.add_argument("--passphrase-file", metavar="FILE",
                        help="an owner-only file holding the private key's passphrase, when it is encrypted")
    parser.add_argument("--dry-run", action="store_true", help="say what would be recovered, change nothing")
    set_command(parser, cmd_recover)


def _private_key(args: argparse.Namespace) -> RecoveryKey:
    if args.private_key == "-":
        data = sys.stdin.buffer.read()
        if not data.strip():
            raise InvalidInput("--private-key -: stdin is empty")
    else:
        data = read_secret_file(args.private_key, what="recovery private key file").encode("ascii", "replace")
    passphrase = (read_secret_file(args.passphrase_file, what="passphrase file").encode()
                  if args.passphrase_file else None)
    return RecoveryKey.from_pem(data, passphrase)


def cmd_recover(args: argparse.Namespace) -> int:
    key = _private_key(args)
    try:
        with open_keyops() as k:
            result = recover(k, key, dry_run=args.dry_run)
    finally:
        del key
    if args.json:
        print_json({"command": "recover", "changed": result.changed, "dry_run": result.dry_run, "result": result})
    else:
        for f in result.failures:
            print(f"FAILED tenant {f.tenant}: {f.message}")
        print(result.detail)
    if result.failures:
        return EXIT_INCOMPLETE
    return 0 if result.changed else EXIT_NOTHING_TO_DO
