"""ansible-lint (production profile) over the repository, and ``molecule test`` of the default scenario.

Both run the real tools of this venv as an operator would, from the
repository root, with the collection keyops.kms taken from the checkout.
``molecule test`` starts and stops its own OpenBao and SoftHSM2 (``keyops dev
up`` in a state folder under the scenario's ephemeral directory): the
session stack's settings are taken out of its environment, so that nothing
but the scenario's own stack can make it pass.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

#: The session stack's settings and the test callback: none of them may reach molecule's runs.
_FOREIGN = ("VAULT_", "BAO_", "KEYOPS_", "SOFTHSM2_CONF", "ANSIBLE_CALLBACK", "MOLECULE_")


def tool_env(ansible_env: dict[str, str], **more: str) -> dict[str, str]:
    env = {k: v for k, v in ansible_env.items() if not k.startswith(_FOREIGN)}
    env.update(more)
    return env


def test_ansible_lint_production_profile_passes(ansible_env: dict[str, str]) -> None:
    proc = subprocess.run([str(VENV_BIN / "ansible-lint"), "--nocolor"], cwd=REPO, env=tool_env(ansible_env),
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-8000:]
    assert "Profile 'production' was required, and it passed." in output, output[-3000:]


@pytest.mark.slow
def test_molecule_default_scenario_converges_idempotently_and_verifies(
        ansible_env: dict[str, str], tmp_path: Path) -> None:
    ephemeral = tmp_path / "ephemeral"
    env = tool_env(ansible_env, MOLECULE_EPHEMERAL_DIRECTORY=str(ephemeral), ANSIBLE_FORCE_COLOR="0",
                   PY_COLORS="0", NO_COLOR="1")
    proc = subprocess.run([str(VENV_BIN / "molecule"), "test", "--scenario-name", "default"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-10000:]
    for action in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"{action}\W+Executed: Successful", output), f"{action} did not pass:\n{output[-6000:]}"
    # destroy stopped the scenario's own stack and removed its folder, tokens included
    assert not (ephemeral / "keyops-stack").exists()
