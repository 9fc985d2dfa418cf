"""``ansible-test sanity`` for the collection keyops.kms, as users get it.

The collection is built with ``ansible-galaxy collection build`` (so
galaxy.yml's build_ignore decides what ships), installed from the tarball
into a temporary ``ansible_collections/`` tree, and ``ansible-test sanity
--python 3.11`` runs there with this venv's ansible-test, without docker.

ansible-test runs each sanity test in a virtual environment of its own,
which it bootstraps with a ``get-pip.py`` downloaded from Ansible's CI file
host (out of reach here) and fills with pinned requirements from the package
index with pip. So ansible-test gets a HOME of its own (a persistent cache,
``$KEYOPS_ANSIBLE_TEST_HOME`` or ``~/.cache/keyops/ansible-test``) holding a
stand-in ``get-pip.py`` that takes pip from Python's ``ensurepip``; its
virtual environments are kept there between runs (keyed by their
requirements), so only the first run on a machine installs them.

Exceptions are listed, each with its reason, in tests/sanity/ignore-2.19.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

GET_PIP_STANDIN = '''"""Stand-in for get-pip.py, written by keyops' tests/ansible/test_sanity.py.

pip comes from the standard library's ensurepip (in a subprocess: ensurepip
hides pip's configuration from its own process), then installs what
ansible-test asked for, with the machine's pip configuration.
"""
import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
'''


def ansible_test_home() -> Path:
    configured = os.environ.get("KEYOPS_ANSIBLE_TEST_HOME")
    home = Path(configured) if configured else Path.home() / ".cache" / "keyops" / "ansible-test"
    from ansible_test._internal.python_requirements import get_venv_packages

    pip_version = get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"]
    standin = home / ".ansible" / "test" / "cache" / f"get_pip_{pip_version.replace('.', '_')}.py"
    standin.parent.mkdir(parents=True, exist_ok=True)
    if not standin.exists() or standin.read_text() != GET_PIP_STANDIN:
        standin.write_text(GET_PIP_STANDIN)
    return home


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
                          **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def installed_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The collection built from this checkout and installed from its tarball."""
    work = tmp_path_factory.mktemp("sanity")
    built = run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(work), str(REPO_ROOT)])
    assert built.returncode == 0, built.stdout + built.stderr
    [tarball] = work.glob("keyops-kms-*.tar.gz")
    installed = run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--force", "-p",
                     str(work / "collections"), str(tarball)])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return work / "collections" / "ansible_collections" / "keyops" / "kms"


def test_tarball_holds_the_collection_only(installed_collection: Path) -> None:
    shipped = {str(p.relative_to(installed_collection)) for p in installed_collection.rglob("*") if p.is_file()}
    assert {"meta/runtime.yml", "plugins/module_utils/_connection.py", "plugins/lookup/secret.py",
            "plugins/action/secret.py", "tests/config.yml", "tests/sanity/ignore-2.19.txt"} <= shipped
    assert all(not name.startswith(("keyops/", "tests/ansible/", "tests/unit/", ".venv/", "benchmarks/",
                                    "inventories/", "ansible/")) for name in shipped), sorted(shipped)


@pytest.mark.slow
def test_ansible_test_sanity(installed_collection: Path) -> None:
    env = dict(os.environ)
    env.update(HOME=str(ansible_test_home()), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    for name in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_CONFIG"):
        env.pop(name, None)
    result = run([str(VENV_BIN / "ansible-test"), "sanity", "--python", "3.11", "--color", "no"],
                 cwd=str(installed_collection), env=env, timeout=3000)
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if re.match(r"(ERROR|FATAL)", line)]
    assert result.returncode == 0, "\n".join(errors) or result.stdout[-5000:] + result.stderr[-5000:]
    assert 'Running sanity test "validate-modules"' in result.stdout + result.stderr
    shutil.rmtree(installed_collection / "tests" / "output", ignore_errors=True)


@pytest.mark.slow
def test_module_reference_is_current() -> None:
    """docs/modules.md is what ansible-doc renders from the plugins now."""
    result = run([sys.executable, str(REPO_ROOT / "scripts" / "module_docs.py"), "--check"], timeout=600)
    assert result.returncode == 0, result.stderr


def test_installs_from_the_checkout(tmp_path: Path) -> None:
    """``ansible-galaxy collection install <checkout>`` gives the same collection as the tarball."""
    result = run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "-p", str(tmp_path), str(REPO_ROOT)])
    assert result.returncode == 0, result.stdout + result.stderr
    root = tmp_path / "ansible_collections" / "keyops" / "kms"
    assert (root / "plugins" / "modules" / "transit_key.py").is_file()
    assert (root / "meta" / "runtime.yml").is_file() and not (root / "keyops").exists()
