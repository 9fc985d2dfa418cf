"""``keyops encrypt``, ``keyops decrypt`` and ``keyops rewrap``: stdin to stdout."""

from __future__ import annotations

import argparse
import sys

from keyops.cli._common import open_keyops, set_command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enc = sub.add_parser("encrypt", help="encrypt stdin for a tenant; prints keyops:v1:... (or binary)")
    enc.add_argument("--tenant", required=True)
    enc.add_argument("--context", default="", help="associated data the ciphertext is bound to (e.g. a path)")
    enc.add_argument("--binary", action="store_true", help="write the binary form instead of text")
    set_command(enc, cmd_encrypt, json=False, data_output=True)

    dec = sub.add_parser("decrypt", help="decrypt a keyops ciphertext (text or binary) from stdin")
    dec.add_argument("--tenant", required=True)
    dec.add_argument("--context", default="")
    set_command(dec, cmd_decrypt, json=False, data_output=True)

    rew = sub.add_parser("rewrap", help="move a ciphertext kept outside keyops' store to the tenant's primary DEK",
                         description="Re-encrypt a keyops ciphertext (text or binary, from stdin) under the "
                                     "tenant's primary DEK, in the same form, without showing the plaintext. "
                                     "One already under the primary is printed as it is. Run it over the "
                                     "ciphertexts an application keeps before an older DEK version is retired.")
    rew.add_argument("--tenant", required=True)
    rew.add_argument("--context", default="", help="the associated data the ciphertext is bound to")
    set_command(rew, cmd_rewrap, json=False, data_output=True)


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


def _read_ciphertext() -> bytes | str:
    data = sys.stdin.buffer.read()
    if data.startswith(b"keyops:"):
        return data.strip().decode("ascii", errors="replace")  # the text form; the parser names any fault
    return data


def cmd_rewrap(args: argparse.Namespace) -> int:
    data = _read_ciphertext()
    with open_keyops() as k:
        out = k.rewrap(args.tenant, data, args.context)
    if isinstance(out, str):
        sys.stdout.write(out + "\n")
    else:
        sys.stdout.buffer.write(out)  # type: ignore[arg-type]  # bytes: rewrap keeps the form it was given
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
