"""One access record per request, as Vault's file audit device keeps one per request.

A record names the caller by token accessor only, the tenant, the operation,
the key versions it used and the result; never a token, plaintext, ciphertext
or key. Records are JSON lines appended to a file (or written to stderr), one
``write`` each on a descriptor opened with ``O_APPEND``, so that the worker
processes of one server can share the file without interleaving lines.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

#: What a record may hold. Anything else a caller passes is dropped, so no field can carry a secret by mistake.
FIELDS = ("time", "request_id", "remote", "accessor", "operation", "tenant", "versions", "items", "status",
          "result", "duration_ms")


class AccessLog:
    def __init__(self, path: str | None) -> None:
        """``path``: a file (made with mode 0600 when new), ``"-"`` for stderr, or None for no records."""
        self.path = path
        self._fd: int | None = None
        if path and path != "-":
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        elif path == "-":
            self._fd = sys.stderr.fileno()

    def record(self, **fields: Any) -> None:
        if self._fd is None:
            return
        entry: dict[str, Any] = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")}
        entry.update((key, value) for key, value in fields.items() if key in FIELDS and value is not None)
        os.write(self._fd, (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None and self.path != "-":
            os.close(self._fd)
        self._fd = None


def versions_field(versions: Iterable[int]) -> list[int] | None:
    found = sorted(set(versions))
    return found or None
