"""``keyops``: the command line. Thin over ``keyops.ops.front``.

One domain error type is turned into exit codes here, at the edge: each
``KeyopsError`` subclass carries its ``exit_code``; messages go to stderr.

"Nothing to do" (exit 3 inside a command) is a success for a scheduler, so
it leaves as 0 unless the caller asks for ``--detailed-exitcode`` (as
Terraform's ``plan`` does); commands whose 3 means something else (``dev
status``: not running) say so with ``exit_3_is_status``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import sys
from collections.abc import Iterator, Sequence

from keyops.cli import _output
from keyops.errors import KeyopsError

#: Modules under keyops.cli that each register one or more commands with ``add_parser``.
COMMANDS = ("dev", "init", "login", "tenant", "secret", "data", "status", "master", "completion")
OPTIONAL_COMMANDS = ("plan", "retention", "rotate", "reencrypt", "migrate", "lifecycle", "policy", "audit", "kms",
                     "serve", "backup", "escrow", "recover")
#: Which module registers which command, so that a run imports only what its command needs (a unit
#: test checks this table against the parser that every module builds).
COMMAND_MODULES = {
    "dev": "dev", "init": "init", "tenant": "tenant", "secret": "secret", "encrypt": "data", "decrypt": "data",
    "rewrap": "data", "status": "status", "rotate": "rotate", "reencrypt": "reencrypt", "migrate": "migrate",
    "retire": "lifecycle", "destroy": "lifecycle", "policy": "policy", "audit": "audit", "master": "master",
    "completion": "completion", "kms": "kms", "login": "login", "serve": "serve", "plan": "plan", "apply": "plan",
    "retention": "retention", "backup": "backup", "restore": "backup", "escrow": "escrow", "recover": "recover",
}
EXIT_NOTHING_TO_DO = 3  # keyops.cli._common's, not imported: that module loads the whole library
#: Flags every command takes, before or after its name (``keyops -q rotate --due`` = ``keyops rotate --due -q``).
_GLOBAL_FLAGS = ("--detailed-exitcode", "-q", "--quiet", "-v", "--verbose")


def version() -> str:
    """The installed distribution's version; a source checkout (no metadata) reports the package's."""
    from importlib import metadata

    try:
        return metadata.version("keyops")
    except metadata.PackageNotFoundError:
        import keyops

        return keyops.__version__


def _add_global_flags(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # Below the top level the defaults are SUPPRESS, so that a subcommand does not reset what was given
    # before its name (argparse copies a subparser's defaults over the namespace).
    default: object = argparse.SUPPRESS
    group = parser.add_argument_group("output and exit codes")
    group.add_argument("--detailed-exitcode", action="store_true", default=False if top else default,
                       help="exit 3 when there was nothing to do (default: 0, a success)")
    loud = group.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", default=False if top else default,
                      help="print only results (values, ciphertexts, --json) and errors")
    loud.add_argument("-v", "--verbose", action="count", default=0 if top else default,
                      help="log what keyops does to stderr (-vv: debug); never secrets")


def _new_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="keyops", description="Envelope-encryption key management on Vault/OpenBao with an HSM master key.")
    parser.add_argument("--version", action="version", version=f"keyops {version()}")
    _add_global_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser, sub


def leaf_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser below ``parser`` that has no subcommands of its own (the ones that run something)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for sub in subs:
        for child in dict.fromkeys(sub.choices.values()):  # aliases map to the same parser
            yield from leaf_parsers(child)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command``, of that command only (fewer imports)."""
    parser, sub = _new_parser()
    if command is not None and command in COMMAND_MODULES:
        importlib.import_module(f"keyops.cli.{COMMAND_MODULES[command]}").add_parser(sub)
    else:
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
    for sub_action in [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]:
        for child in dict.fromkeys(sub_action.choices.values()):
            for leaf in leaf_parsers(child):
                _add_global_flags(leaf, top=False)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    for word in argv:
        if word in _GLOBAL_FLAGS or (word.startswith("-v") and set(word[1:]) == {"v"}):
            continue
        return None if word.startswith("-") else word
    return None


@contextlib.contextmanager
def _quieted(args: argparse.Namespace) -> Iterator[None]:
    """``--quiet``: a command's human report on stdout is dropped; results (``data_output``, --json) stay."""
    if not args.quiet or getattr(args, "json", False) or getattr(args, "data_output", False):
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command word names the module to load; anything else (--help, a typo) gets the whole parser.
    parser = build_parser(_command_word(argv))
    args = parser.parse_args(argv)
    _output.configure(quiet=args.quiet, verbose=args.verbose)
    try:
        with _quieted(args):
            code = int(args.func(args) or 0)
    except KeyopsError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.code, "message": str(exc)}), file=sys.stderr)
        else:
            print(f"{_output.paint('keyops: error:', 'red', sys.stderr)} {exc}", file=sys.stderr)
        # plan --detailed-exitcode (as Terraform's): 2 means "changes", so every error is one code.
        if args.detailed_exitcode and getattr(args, "error_exit", None) is not None:
            return int(args.error_exit)
        return exc.exit_code
    except KeyboardInterrupt:
        print("keyops: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    if code == EXIT_NOTHING_TO_DO and not args.detailed_exitcode and not getattr(args, "exit_3_is_status", False):
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
