"""Write docs/cli.md: the reference of every ``keyops`` command, as its own parser prints its ``--help``.

    .venv/bin/python scripts/cli_docs.py            # rewrite docs/cli.md
    .venv/bin/python scripts/cli_docs.py --check    # exit 1 when docs/cli.md is stale

The text comes from ``keyops.cli.main.build_parser``, so the reference is
the code's: a new command, flag or help text changes it, and
``tests/unit/test_cli_docs.py`` fails until it is regenerated.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET = REPO_ROOT / "docs" / "cli.md"
#: argparse wraps help to the terminal's width: a fixed one makes the file the same on every machine.
WIDTH = "100"

HEADER = """# keyops — command reference

Generated from the command line's own parser (`keyops.cli.main.build_parser`) by
`scripts/cli_docs.py`; do not edit. Regenerate with:

```sh
.venv/bin/python scripts/cli_docs.py
```

Every command also takes `--detailed-exitcode`, `-q`/`--quiet` and `-v`/`--verbose`, before or after
its name; the exit codes are the [README's table](../README.md#exit-codes). Runbooks that use these
commands: [runbooks/README.md](runbooks/README.md).

"""


def commands(parser: argparse.ArgumentParser, summary: str = "") -> Iterator[tuple[argparse.ArgumentParser, str]]:
    """Every parser below and including ``parser``, depth first in the order they were added, with its help line."""
    yield parser, summary
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in dict((n, p) for n, p in action.choices.items()).items():
                if child.prog.rsplit(" ", 1)[-1] != name:
                    continue  # an alias: documented under its own name
                yield from commands(child, helps.get(name, ""))


def anchor(prog: str) -> str:
    return prog.replace(" ", "-")


def render() -> str:
    os.environ["COLUMNS"] = WIDTH
    sys.path.insert(0, str(REPO_ROOT))
    from keyops.cli.main import build_parser

    found = list(commands(build_parser()))
    parts = [HEADER, "## Contents\n\n"]
    for parser, summary in found[1:]:
        depth = parser.prog.count(" ") - 1
        parts.append(f"{'  ' * depth}- [`{parser.prog}`](#{anchor(parser.prog)})" + (f": {summary}" if summary
                                                                                      else "") + "\n")
    for parser, _ in found:
        parts.append(f"\n## {parser.prog}\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/cli.md is not up to date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(REPO_ROOT)} is stale; run: .venv/bin/python scripts/cli_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
