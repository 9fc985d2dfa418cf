"""Fixtures for running ansible-playbook against the session stack.

For the module tests (tests/ansible/test_modules*.py) and the playbook tests
(tests/ansible/test_playbooks*.py). Everything runs the real ``ansible-playbook``
of this venv against the session's real OpenBao and SoftHSM2 (``stack`` from
tests/conftest.py); nothing imports a module.

* ``collections_dir`` (session): a temporary folder with
  ``ansible_collections/keyops/kms`` symlinked to the repository root, so the
  checkout itself is the installed collection.
* ``ansible_env`` (session): ``os.environ`` + ``stack.env()`` (VAULT_ADDR,
  VAULT_TOKEN, SOFTHSM2_CONF, KEYOPS_PKCS11_* ...) + ANSIBLE_COLLECTIONS_PATH
  pointing at ``collections_dir``, the venv's Python as interpreter, Ansible's
  temporary and home folders in a temporary directory, no colour, no retry
  files, and the test callback that records results (see below). Use it for
  any subprocess that runs Ansible (``ansible``, ``ansible-playbook``,
  ``ansible-doc``, ``molecule`` ...).
* ``ansible_playbook`` (session): ``ansible_playbook(playbook, *args,
  check=False, diff=False, verbosity=0, extra_vars=None, inventory=None,
  env=None, timeout=600) -> PlaybookRun``. ``playbook`` is a path, or YAML
  text (a str containing a newline) written to a temporary file. Without
  ``inventory`` the implicit localhost is used (local connection, this venv's
  Python). It never raises on a failed play: check ``run.rc`` (and use
  ``run.assert_ok()`` for a readable failure).
* ``PlaybookRun``: ``rc``, ``stdout``, ``stderr``, ``output`` (both),
  ``results`` (each task result as callbacks see it, censored exactly as an
  operator would see it: ``{"task", "host", "status", "result"}``),
  ``result(task_name)`` (the one result of that task), ``changed_tasks()``,
  ``recap`` (the PLAY RECAP counts per host, from stdout).
* ``find_leaks`` (session): ``find_leaks(output, needles) -> list`` of the needles
  (plaintexts, PIN, token) found in ``output``, raw or base64, for ``-vvv`` scans.
* ``tenant_name`` (function): a fresh tenant name ``t-<8 hex>`` (the stack is
  shared by the whole session).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CALLBACK_DIR = Path(__file__).resolve().parent / "plugins" / "callback"
VENV_BIN = Path(sys.executable).parent

_RECAP_RE = re.compile(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class PlaybookRun:
    args: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    results: tuple[dict[str, Any], ...]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def result(self, task: str) -> dict[str, Any]:
        """The result of the one task named ``task`` (its censored, as-displayed form)."""
        found = [r for r in self.results if r["task"] == task]
        if len(found) != 1:
            raise AssertionError(f"expected one result of task {task!r}, found {len(found)}; tasks run: "
                                 f"{[r['task'] for r in self.results]}\n{self.output[-4000:]}")
        return found[0]["result"]

    def status(self, task: str) -> str:
        found = [r for r in self.results if r["task"] == task]
        assert len(found) == 1, f"task {task!r} ran {len(found)} times"
        return found[0]["status"]

    def changed_tasks(self) -> list[str]:
        return [r["task"] for r in self.results if r["result"].get("changed")]

    @property
    def recap(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for host, counts in _RECAP_RE.findall(self.stdout):
            out[host] = {k: int(v) for k, v in (pair.split("=") for pair in counts.split())}
        return out

    def assert_ok(self) -> PlaybookRun:
        if self.rc != 0:
            failed = [r for r in self.results if r["status"] in ("failed", "unreachable")]
            raise AssertionError(f"ansible-playbook exited {self.rc}; failed tasks: "
                                 f"{json.dumps(failed, indent=1)[:6000]}\n--- output tail ---\n"
                                 f"{self.output[-6000:]}")
        return self


@pytest.fixture(scope="session")
def collections_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collections")
    namespace = root / "ansible_collections" / "keyops"
    namespace.mkdir(parents=True)
    (namespace / "kms").symlink_to(REPO_ROOT, target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def ansible_env(stack: Any, collections_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("ansible-home")
    env = dict(os.environ)
    env.update(stack.env())
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(collections_dir),
        "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACK_DIR),
        "ANSIBLE_CALLBACKS_ENABLED": "keyops_test_results",
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    # An operator's own Ansible settings must not change what the tests see.
    env.pop("ANSIBLE_CONFIG", None)
    env.pop("ANSIBLE_STDOUT_CALLBACK", None)
    return env


@pytest.fixture(scope="session")
def ansible_playbook(ansible_env: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Callable[..., PlaybookRun]:
    workdir = tmp_path_factory.mktemp("playbooks")

    def run(playbook: str | os.PathLike[str], *args: str, check: bool = False, diff: bool = False,
            verbosity: int = 0, extra_vars: Mapping[str, Any] | None = None,
            inventory: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 600) -> PlaybookRun:
        token = uuid.uuid4().hex[:8]
        if isinstance(playbook, str) and "\n" in playbook:
            path = workdir / f"play-{token}.yml"
            path.write_text(playbook)
        else:
            path = Path(playbook)
        results_file = workdir / f"results-{token}.jsonl"
        cmd: list[str] = [str(VENV_BIN / "ansible-playbook"), str(path)]
        if inventory is not None:
            cmd += ["-i", str(inventory)]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        if verbosity:
            cmd.append("-" + "v" * verbosity)
        if extra_vars:
            vars_file = workdir / f"vars-{token}.json"
            vars_file.write_text(json.dumps(dict(extra_vars)))
            vars_file.chmod(0o600)
            cmd += ["-e", f"@{vars_file}"]
        cmd += list(args)
        full_env = dict(ansible_env)
        full_env["KEYOPS_TEST_RESULTS"] = str(results_file)
        if env:
            full_env.update(env)
        proc = subprocess.run(cmd, env=full_env, cwd=str(workdir), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
        results: list[dict[str, Any]] = []
        if results_file.exists():
            results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
        return PlaybookRun(tuple(cmd), proc.returncode, proc.stdout, proc.stderr, tuple(results))

    return run


@pytest.fixture
def tenant_name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def _leaks(output: str, needles: Sequence[str | bytes]) -> list[str]:
    found = []
    for needle in needles:
        raw = needle.encode() if isinstance(needle, str) else needle
        forms = {raw.decode("utf-8", "replace"), base64.b64encode(raw).decode()}
        if any(form and form in output for form in forms):
            found.append(raw.decode("utf-8", "replace")[:4] + "...")
    return found


@pytest.fixture(scope="session")
def find_leaks() -> Callable[[str, Sequence[str | bytes]], list[str]]:
    """``find_leaks(output, needles)``: the needles (plaintexts, PINs, tokens), also in base64,
    that appear in ``output``; each reported by its first 4 characters only."""
    return _leaks
