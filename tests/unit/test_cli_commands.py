"""The CLI's command table: a run builds only its command's parser, and the table matches the modules."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from keyops.cli.main import COMMAND_MODULES, build_parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_the_table_names_every_command_and_the_module_that_registers_it() -> None:
    assert _commands(build_parser()) == set(COMMAND_MODULES)
    for module in set(COMMAND_MODULES.values()):
        parser = argparse.ArgumentParser()
        importlib.import_module(f"keyops.cli.{module}").add_parser(parser.add_subparsers())
        assert _commands(parser) == {c for c, m in COMMAND_MODULES.items() if m == module}, module


def test_one_command_imports_only_what_it_needs() -> None:
    code = ("import sys; from keyops.cli.main import build_parser; build_parser('secret'); "
            "print(sorted(m for m in ('keyops.dev.stack', 'keyops.ops.rotation', 'keyops.ops.migrate', "
            "'keyops.audit', 'keyops.cli.policy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # An unknown word or a flag gets the whole parser, so that argparse can list the commands.
    assert _commands(build_parser("no-such-command")) == set(COMMAND_MODULES)
