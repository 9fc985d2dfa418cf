"""SoftHSM2 tokens of their own, and runbooks run as written (internal to the tests).

SoftHSM2 reads ``SOFTHSM2_CONF`` once per process and lists only the tokens
that existed then, so a test that makes, deletes or replaces tokens works in
a token folder of its own and drives keyops through CLI subprocesses; the
test process never loads these tokens. A runbook's ``sh`` blocks are run in
order as one bash script (``set -euo pipefail``), with ``keyops`` on the PATH
as this checkout's CLI.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from _rotation_support import keyops_cli

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


@dataclasses.dataclass(frozen=True)
class TokenFolder:
    """A SoftHSM2 configuration and token folder of one test."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "softhsm2.conf"

    @property
    def pins(self) -> Path:
        return self.root / "pins"

    @classmethod
    def make(cls, root: Path) -> TokenFolder:
        folder = cls(root)
        (root / "tokens").mkdir(parents=True, mode=0o700)
        folder.pins.mkdir(mode=0o700)
        folder.conf.write_text(f"directories.tokendir = {root / 'tokens'}/\nobjectstore.backend = file\n"
                               "log.level = ERROR\nslots.removable = false\n")
        return folder

    def init_token(self, label: str) -> Path:
        """A new token ``label``; returns its user PIN's owner-only file."""
        pin, so_pin = secrets.token_hex(8), secrets.token_hex(8)
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", so_pin,
                        "--pin", pin], env=self.env(), check=True, capture_output=True, text=True)
        pin_file = self.pins / f"{label}.pin"
        pin_file.write_text(pin)
        pin_file.chmod(0o600)
        return pin_file

    def labels(self) -> list[str]:
        shown = subprocess.run(["softhsm2-util", "--show-slots"], env=self.env(), check=True, capture_output=True,
                               text=True).stdout
        return [m.group(1).strip() for m in re.finditer(r"^\s*Label:\s*(\S.*)$", shown, re.M) if m.group(1).strip()]

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


def keyops_shim(folder: Path) -> Path:
    """A ``keyops`` program (this interpreter and checkout) in ``folder``, for runbooks that say ``keyops``."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "keyops"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m keyops.cli.main "$@"\n')
    shim.chmod(0o755)
    return folder


def runbook_script(name: str, part: str | None = None) -> str:
    """The ``sh`` blocks of ``docs/runbooks/<name>`` (of its section ``## <part>...`` only), in order, as one script."""
    text = (RUNBOOKS / name).read_text()
    if part is not None:
        start = text.index(f"\n## {part}")
        end = text.find("\n## ", start + 1)
        text = text[start:end if end >= 0 else len(text)]
    blocks = _SH_BLOCK.findall(text)
    assert blocks, f"{name} has no sh blocks" + (f" in {part}" if part else "")
    return "set -euo pipefail\n" + "\n".join(blocks)


def run_runbook(name: str, env: Mapping[str, str], bin_dir: Path, part: str | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**env, "PATH": f"{keyops_shim(bin_dir)}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", runbook_script(name, part)], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cli(env: Mapping[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if stdin is None:
        return keyops_cli(env, *args)
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], env=dict(env), input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)
