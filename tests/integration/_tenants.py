"""Tenant names for the integration tests (internal to the tests, not a test module).

Every test module shares the session's one OpenBao and SoftHSM2, so each test
makes its own tenants under names no other test uses: a prefix that tells
which test made it, and 8 random hex digits.
"""

from __future__ import annotations

import uuid

from keyops.model.keyring import Policy
from keyops.ops.front import Keyops


def new_tenant(prefix: str = "t") -> str:
    """A fresh tenant name ``<prefix>-<8 hex>``; nothing is created."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def created_tenant(k: Keyops, prefix: str = "t", policy: Policy | None = None) -> str:
    """A fresh tenant, created through ``k`` with ``policy`` (the default policy when None)."""
    tenant = new_tenant(prefix)
    k.create_tenant(tenant, policy)
    return tenant
