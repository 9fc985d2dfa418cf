"""A throw-away local stack for one benchmark run: started in a temporary folder, always stopped."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from keyops.devstack import DevStack, free_port


@contextlib.contextmanager
def temporary_stack() -> Iterator[DevStack]:
    """A DevStack on a free port in a temporary folder; stopped and removed on exit.

    ``SOFTHSM2_CONF`` is set for this process before anything opens the
    PKCS#11 module (SoftHSM2 reads it once per process).
    """
    with tempfile.TemporaryDirectory(prefix="keyops-bench-") as folder:
        stack = DevStack(os.path.join(folder, "stack"), port=free_port(), die_with_parent=True)
        try:
            stack.up()
            os.environ["SOFTHSM2_CONF"] = str(stack.softhsm_conf)
            yield stack
        finally:
            stack.down()
