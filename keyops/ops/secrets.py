"""Secret records: encrypted values stored in KV, written with check-and-set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keyops import crypto
from keyops.errors import (
    InvalidInput,
    SecretNotFound,
)
from keyops.model.keyring import (
    format_time,
)
from keyops.model.names import validate_secret_name, validate_tenant
from keyops.model.paths import (
    secret_context,
    secret_path,
    secrets_path,
)
from keyops.ops.cas import retry_on_conflict
from keyops.ops.results import (
    SecretRecord,
    SecretResult,
)

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

RECORD_SCHEMA = 1
#: The largest secret value keyops stores, in bytes. Its record (the ciphertext in base64, in a JSON
#: document) must fit one entry of OpenBao's integrated storage, at most 1 MiB (raft's
#: ``max_entry_size``, 1,048,576 bytes): on OpenBao 2.x the largest value that fits was measured at
#: 786,073 bytes. This leaves room for the record's other fields and long names (docs/formats.md).
MAX_SECRET_SIZE = 768_000


def read_record(k: Keyops, tenant: str, name: str) -> SecretRecord | None:
    tenant, name = validate_tenant(tenant), validate_secret_name(name)
    k.authorize("secrets.read", tenant)
    found = k.store.read(secret_path(tenant, name))
    if found is None:
        return None
    data, version = found
    try:
        return SecretRecord(tenant, name, str(data["ciphertext"]), int(data["dek_version"]), version)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"secret {name!r} of tenant {tenant!r} is not a keyops record") from exc


def write_record(k: Keyops, tenant: str, name: str, ct: crypto.Ciphertext, cas: int,
                 extra: Mapping[str, Any] | None = None) -> int:
    """Write a record with check-and-set. ``extra``: provenance fields (which job wrote it, from where)."""
    k.authorize("secrets.write", tenant)
    record: dict[str, Any] = dict(extra or {})
    record.update({"schema": RECORD_SCHEMA, "ciphertext": ct.to_text(), "dek_version": ct.dek_version,
                   "updated_at": format_time(k.clock())})
    return k.store.write(secret_path(tenant, name), record, cas=cas)


def get_secret(k: Keyops, tenant: str, name: str) -> bytes:
    record = k.read_record(tenant, name)
    if record is None:
        k.cached_keyring(tenant)  # TenantNotFound when it is the tenant that is missing
        raise SecretNotFound(f"tenant {tenant!r} has no secret {name!r}")
    return k.decrypt(tenant, record.ciphertext, secret_context(name))


def put_secret(k: Keyops, tenant: str, name: str, value: bytes | str, dry_run: bool = False,
               create_only: bool = False, expect_new: bool = False) -> SecretResult:
    """Store ``value`` encrypted; no write (``changed=False``) when it is already stored.

    ``create_only``: a secret that exists is left as it is, whatever its value (a seed never overwrites
    what an application stored since); the creation is a check-and-set on "absent".

    ``expect_new``: the caller has reason to think no record exists yet (a
    tenant it just created), so the first attempt skips the read and writes
    with check-and-set 0, which only creates: a record that exists after all
    makes that write fail, and the next attempt reads it and decides as usual.
    """
    tenant, name = validate_tenant(tenant), validate_secret_name(name)
    value = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(value) > MAX_SECRET_SIZE:
        raise InvalidInput(f"the value of secret {name!r} is {len(value):,} bytes; keyops stores at most "
                           f"{MAX_SECRET_SIZE:,} bytes a secret (its encrypted record must fit Vault's storage "
                           "entry limit of 1 MiB); store large data encrypted elsewhere ('keyops encrypt') "
                           "and keep its key or location here")
    k.authorize("secrets.write", tenant)
    k.cached_keyring(tenant)  # a clear TenantNotFound before anything else

    skip_read = [expect_new and not dry_run]

    def attempt() -> SecretResult:
        record = None if skip_read[0] else k.read_record(tenant, name)
        skip_read[0] = False
        if record is not None and create_only:
            return SecretResult(tenant, name, False, record.kv_version, record.dek_version)
        if record is not None and k.decrypt(tenant, record.ciphertext, secret_context(name)) == value:
            return SecretResult(tenant, name, False, record.kv_version, record.dek_version)
        if dry_run:
            return SecretResult(tenant, name, True, record.kv_version if record else None, None)
        ct = k.encrypt_record(tenant, value, secret_context(name))
        with k.audited("secret.write", tenant=tenant, name=name, level="dek", versions=[ct.dek_version]):
            version = k.write_record(tenant, name, ct, cas=record.kv_version if record else 0)
        return SecretResult(tenant, name, True, version, ct.dek_version)

    return retry_on_conflict(attempt, f"secret {name!r} of tenant {tenant!r}")


def list_secrets(k: Keyops, tenant: str, prefix: str = "") -> list[str]:
    tenant = validate_tenant(tenant)
    k.authorize("secrets.read", tenant)
    k.cached_keyring(tenant)
    out: list[str] = []
    pending = [prefix.strip("/")]
    while pending:
        folder = pending.pop()
        path = f"{secrets_path(tenant)}/{folder}".rstrip("/")
        for key in k.store.list(path):
            full = f"{folder}/{key}".lstrip("/") if folder else key
            if key.endswith("/"):
                pending.append(full.rstrip("/"))
            else:
                out.append(full)
    return sorted(out)


def delete_secret(k: Keyops, tenant: str, name: str, dry_run: bool = False) -> bool:
    """Remove the record and its history. False when there was nothing to delete."""
    tenant, name = validate_tenant(tenant), validate_secret_name(name)
    k.authorize("secrets.delete", tenant)
    if k.read_record(tenant, name) is None:
        return False
    if not dry_run:
        with k.audited("secret.delete", tenant=tenant, name=name, level="dek"):
            k.store.delete_all_versions(secret_path(tenant, name))
    return True
