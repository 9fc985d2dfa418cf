"""The one path layout of keyops' documents in KV (relative to the KV mount) and its Transit key names. Pure.

    master                          the master key registry
    tenants/<tenant>/keyring        policy, KEK and DEK versions (applications only read it)
    tenants/<tenant>/usage          DEK usage reservations, leases and fences
    tenants/<tenant>/jobs/<id>      checkpoints of re-encryption and migration jobs
    secrets/<tenant>/<name>         encrypted secret records
    locks/...                       leases of rotations (keyops.ops.rotation)

The mount itself (``KEYOPS_KV_MOUNT``, ``KEYOPS_TRANSIT_MOUNT``) is
configuration; tenant and secret names are validated before they get here
(``keyops.model.names``).
"""

from __future__ import annotations

MASTER_PATH = "master"
LOCKS_PATH = "locks"
TRANSIT_KEY_PREFIX = "keyops-"


def keyring_path(tenant: str) -> str:
    return f"tenants/{tenant}/keyring"


def usage_path(tenant: str) -> str:
    return f"tenants/{tenant}/usage"


def jobs_path(tenant: str) -> str:
    return f"tenants/{tenant}/jobs"


def job_path(tenant: str, job_id: str) -> str:
    return f"{jobs_path(tenant)}/{job_id}"


def secrets_path(tenant: str) -> str:
    return f"secrets/{tenant}"


def secret_path(tenant: str, name: str) -> str:
    return f"{secrets_path(tenant)}/{name}"


def tenant_lock_path(tenant: str) -> str:
    return f"{LOCKS_PATH}/tenants/{tenant}"


def transit_key_name(tenant: str) -> str:
    return f"{TRANSIT_KEY_PREFIX}{tenant}"


def secret_context(name: str) -> bytes:
    """The associated data a secret record's ciphertext is bound to: its name."""
    return b"secret:" + name.encode("utf-8")
