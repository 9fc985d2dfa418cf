"""docs/audit.md's promise, against the real stack: an audit log that cannot be written stops the operation.

The event of an operation is appended after it, but a log that cannot be
opened is found before it starts: the operation is refused, and nothing
changes. The operations below emit no earlier event (the DEK is cached, or
nothing is unwrapped), so only that check can stop them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _tenants import created_tenant, new_tenant

from keyops.audit import AuditLog, AuditTrail
from keyops.config import Config
from keyops.errors import AuditError
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration


def blocked_log(tmp_path: Path) -> AuditTrail:
    """A log whose folder is a file: it can never be opened."""
    folder = tmp_path / "not-a-folder"
    folder.write_text("a file where the log's folder should be\n")
    return AuditTrail(AuditLog(folder / "audit.jsonl"))


def test_an_unwritable_audit_log_refuses_the_operation(config: Config, k: Keyops, tmp_path: Path) -> None:
    tenant = new_tenant("aud-refuse")
    existing = created_tenant(k, "aud-refuse")
    keyring_before = k.read_keyring(existing)[1]
    with Keyops(config, audit=blocked_log(tmp_path)) as audited:  # type: ignore[arg-type]
        audited.audit = None
        audited.encrypt_record(existing, b"warm", b"secret:warm")  # the DEK cached without the trail
        audited.audit = blocked_log(tmp_path)
        with pytest.raises(AuditError, match="cannot be opened"):
            audited.create_tenant(tenant)
        with pytest.raises(AuditError, match="cannot be opened"):
            audited.put_secret(existing, "db/password", b"never stored")
        with pytest.raises(AuditError, match="cannot be opened"):
            audited.put_secret(existing, "db/password", b"never stored")  # again: no key was left cached
    assert tenant not in k.list_tenants()
    assert k.list_secrets(existing) == []
    assert k.read_keyring(existing)[1] == keyring_before
