"""``keyops encrypt`` and ``keyops decrypt``: stdin to stdout."""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import open_keyops


def add_parser(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser("encrypt", help="encrypt stdin for a tenant; prints keyops:v1:... (or binary)")
    enc.add_argument("--tenant", required=True)
    enc.add_argument("--context", default="", help="associated data the ciphertext is bound to (e.g. a path)")
    enc.add_argument("--binary", action="store_true", help="write the binary form instead of text")
    enc.set_defaults(func=cmd_encrypt)

    dec = sub.add_parser("decrypt", help="decrypt a keyops ciphertext (text or binary) from stdin")
    dec.add_argument("--tenant", required=True)
    dec.add_argument("--context", default="")
    dec.set_defaults(func=cmd_decrypt)


def cmd_encrypt(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read()
    with open_keyops() as k:
        ct = k.encrypt_ciphertext(args.tenant, data, args.context)
    if args.binary:
        sys.stdout.buffer.write(ct.to_bytes())
    else:
        sys.stdout.write(ct.to_text() + "\n")
    sys.stdout.flush()
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    data = sys.stdin.buffer.read()
    if data.startswith(b"keyops:"):
        data = data.strip()
    with open_keyops() as k:
        plaintext = k.decrypt(args.tenant, data, args.context)
    sys.stdout.buffer.write(plaintext)
    sys.stdout.flush()
    return 0
