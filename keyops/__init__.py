"""keyops: an HSM-rooted envelope-encryption key hierarchy on Vault/OpenBao.

The public surface is small: ``Keyops`` (the operations API), ``Config``,
``Policy`` and the errors. Everything else is internal and may change.

The names are imported on first use, so that ``import keyops.crypto`` (or
the model) stays free of hvac and python-pkcs11, as the design promises.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Config", "DecryptionError", "Keyops", "KeyopsError", "Policy"]
__version__ = "0.1.0"

_HOMES = {"Config": "keyops.config", "DecryptionError": "keyops.errors", "KeyopsError": "keyops.errors",
          "Policy": "keyops.model.keyring", "Keyops": "keyops.ops.front"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'keyops' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
