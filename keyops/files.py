"""Files that hold secrets (tokens, PINs, unseal keys): written whole, private from the start."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_file_atomic(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Write ``text`` atomically with ``mode`` from the start: no window with wider rights, no half file.

    An existing file is replaced, never written into: its old mode does not carry over.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
