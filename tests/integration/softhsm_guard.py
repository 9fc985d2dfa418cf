"""Keep the SoftHSM2 token readable across the crash tests' SIGKILLs.

SoftHSM2's file store rewrites ``token.object`` in place at every C_Login
(it stores the PIN-count flags there), so a process killed inside that write
leaves the token unreadable for every later process (CKR_GENERAL_ERROR). A
network HSM has no such file. The crash tests test keyops, not SoftHSM2, so
around each kill the token file is kept as it was: a successful login writes
the same bytes back, so the snapshot is what an unkilled login would leave.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path


def _token_objects(env: Mapping[str, str]) -> list[Path]:
    conf = Path(env["SOFTHSM2_CONF"]).read_text()
    match = re.search(r"^\s*directories\.tokendir\s*=\s*(.+?)\s*$", conf, re.M)
    assert match, "softhsm2.conf names no token folder"
    return sorted(Path(match.group(1)).glob("*/token.object"))


@contextlib.contextmanager
def token_object_kept(env: Mapping[str, str]) -> Iterator[None]:
    snapshots = {path: path.read_bytes() for path in _token_objects(env)}
    try:
        yield
    finally:
        for path, data in snapshots.items():
            if path.read_bytes() != data:
                tmp = path.with_name(path.name + ".restore")
                tmp.write_bytes(data)
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
