"""docs/cli.md is generated from the parser: it fails here as soon as a command, flag or help text changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cli_docs.py"


def test_docs_cli_md_is_what_the_parser_prints() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr + "(regenerate: .venv/bin/python scripts/cli_docs.py)"


def test_the_reference_holds_every_command_the_parser_runs() -> None:
    from keyops.cli.main import build_parser, leaf_parsers

    text = (REPO / "docs" / "cli.md").read_text()
    progs = {leaf.prog for leaf in leaf_parsers(build_parser())}
    assert {"keyops backup", "keyops restore", "keyops tenant create"} <= progs
    for prog in progs:
        assert f"\n## {prog}\n" in text, prog


def test_check_fails_on_a_stale_reference(tmp_path: Path) -> None:
    copy = tmp_path / "scripts"
    copy.mkdir()
    (copy / "cli_docs.py").write_text(SCRIPT.read_text())
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text((REPO / "docs" / "cli.md").read_text().replace("--dry-run", "--dryrun"))
    (tmp_path / "keyops").symlink_to(REPO / "keyops", target_is_directory=True)
    proc = subprocess.run([sys.executable, str(copy / "cli_docs.py"), "--check"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 1 and "docs/cli.md is stale" in proc.stderr
