"""One module per backend: hvac and the HTTP stack only in the Vault backend, pkcs11 only in the HSM one.

Read from the source with ``ast`` (every import statement, those inside
functions too), so that an import on a path no test happens to run is caught.
The local stack (``keyops/dev/``) may use hvac: it talks to a server that has
no token yet, before there is a VaultStore to go through.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import keyops

ROOT = Path(keyops.__file__).parent

#: third-party top-level module -> the files of keyops/ allowed to import it (relative to keyops/).
ALLOWED = {
    "hvac": {"backends/vault.py", "dev/"},
    "requests": {"backends/vault.py", "dev/"},
    "urllib3": {"backends/_vault_http.py"},
    "certifi": {"backends/_vault_http.py"},
    "pkcs11": {"backends/hsm.py"},
}


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every absolute module that ``path`` imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def allowed(module: str, relative: str) -> bool:
    return any(relative == where or (where.endswith("/") and relative.startswith(where))
               for where in ALLOWED[module])


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import hvac.exceptions\nfrom pkcs11 import Mechanism\n"
                      "def f():\n    import urllib3 as u\n    from . import sibling\n")
    assert imported_modules(source) == {"hvac", "pkcs11", "urllib3"}


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_backend_libraries_are_imported_only_by_their_backend(module: str) -> None:
    offenders = sorted(relative for path in ROOT.rglob("*.py")
                       if module in imported_modules(path)
                       and not allowed(module, relative := path.relative_to(ROOT).as_posix()))
    assert offenders == [], f"{module} imported outside {sorted(ALLOWED[module])}: {offenders}"


def test_the_backends_do_import_them() -> None:
    """Guards the test itself: a rename of the backend files must update ALLOWED."""
    assert "hvac" in imported_modules(ROOT / "backends" / "vault.py")
    assert "urllib3" in imported_modules(ROOT / "backends" / "_vault_http.py")
    assert "pkcs11" in imported_modules(ROOT / "backends" / "hsm.py")
