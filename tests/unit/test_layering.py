"""The design's one-way dependencies: crypto, model and names import no backend."""

from __future__ import annotations

import subprocess
import sys


def test_pure_modules_import_no_backend() -> None:
    code = ("import sys, keyops.crypto, keyops.model.keyring, keyops.model.names, keyops.model.usage; "
            "print(sorted(m for m in ('hvac', 'requests', 'pkcs11') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve() -> None:
    import keyops
    from keyops.ops.front import Keyops

    assert keyops.Keyops is Keyops
    assert all(getattr(keyops, name) is not None for name in keyops.__all__)
