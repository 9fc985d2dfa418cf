"""The break-glass escrow: every KEK version also wrapped to the operator's recovery public key.

With ``KEYOPS_ESCROW_PUBLIC_KEY`` set, each KEK version gets its escrow copy
when it is made (tenant creation, KEK rotation) in the same keyring write as
the KEK itself. ``escrow`` gives the versions made before (or by a process
without the setting) theirs: per tenant, one check-and-set write of the
keyring, after unwrapping the KEK with the master key; a re-run does only
what is left. A copy under another public key is left alone unless
``replace`` is given, which takes the ``recover`` right (security-admin):
replacing copies is how the recovery key is rotated, and a role that could
replace them with copies under a key nobody holds could quietly take away
the way back from a lost HSM.

Recovery (``keyops.ops.recovery``) opens these copies with the private key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from keyops import crypto
from keyops.config import Config
from keyops.errors import ConfigError, KeyopsError, TenantNotFound
from keyops.model.keyring import Escrow, Keyring
from keyops.model.names import validate_tenant
from keyops.ops.cas import retry_on_conflict
from keyops.ops.outcomes import TenantFailure
from keyops.wrappers.escrow import EscrowKey

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops  # which imports this module (through keyops.ops.tenants)


def configured_key(config: Config) -> EscrowKey | None:
    """The recovery public key of ``KEYOPS_ESCROW_PUBLIC_KEY``, or None when none is configured."""
    if not config.escrow_public_key:
        return None
    path = Path(config.escrow_public_key).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"the escrow public key {str(path)!r} (KEYOPS_ESCROW_PUBLIC_KEY) cannot be read: "
                          f"{exc.strerror}") from exc
    return EscrowKey.from_pem(data, f"the escrow public key {str(path)!r} (KEYOPS_ESCROW_PUBLIC_KEY)")


def new_copy(key: EscrowKey | None, tenant: str, version: int, kek: bytes) -> Escrow | None:
    """The escrow copy of a KEK being made (None without a configured key)."""
    if key is None:
        return None
    return Escrow(key.fingerprint, crypto.b64e(key.wrap(kek, crypto.key_context(tenant, "kek", version))))


@dataclasses.dataclass(frozen=True)
class TenantEscrow:
    tenant: str
    escrowed: tuple[int, ...]  # KEK versions given a copy by this run (or that would be, in a dry run)
    other_key: tuple[int, ...]  # KEK versions whose copy is under another public key (left alone)
    missing: tuple[int, ...]  # KEK versions without a copy after this run


@dataclasses.dataclass(frozen=True)
class EscrowReport:
    key: str | None  # the configured public key's fingerprint
    dry_run: bool
    tenants: tuple[TenantEscrow, ...]
    failures: tuple[TenantFailure, ...] = ()

    @property
    def changed(self) -> bool:
        return any(t.escrowed for t in self.tenants)

    @property
    def missing(self) -> int:
        return sum(len(t.missing) for t in self.tenants)

    def summary(self) -> str:
        done = sum(len(t.escrowed) for t in self.tenants)
        verb = "would escrow" if self.dry_run else "escrowed"
        other = sum(len(t.other_key) for t in self.tenants)
        text = f"{verb} {done} KEK versions of {len(self.tenants)} tenants to {self.key}"
        if other:
            text += f"; {other} are escrowed to another key (--replace to move them)"
        if self.missing:
            text += f"; {self.missing} have no escrow copy"
        return text


def escrow(k: Keyops, tenants: Sequence[str] | None = None, *, dry_run: bool = False,
           replace: bool = False) -> EscrowReport:
    """Give every KEK version of ``tenants`` (default: all) its copy under the configured recovery key."""
    key = configured_key(k.config)
    if key is None:
        raise ConfigError("no recovery public key configured: set KEYOPS_ESCROW_PUBLIC_KEY to its PEM file")
    if replace:
        k.authorize("recover")
    names = [validate_tenant(t) for t in tenants] if tenants else k.list_tenants()
    done: list[TenantEscrow] = []
    failures: list[TenantFailure] = []
    for tenant in names:
        try:
            done.append(_escrow_tenant(k, tenant, key, dry_run, replace))
        except TenantNotFound:
            if tenants:
                raise
        except KeyopsError as exc:
            failures.append(TenantFailure.of(tenant, "kek", exc))
    return EscrowReport(key.fingerprint, dry_run, tuple(done), tuple(failures))


def _needs(keyring: Keyring, key: EscrowKey, replace: bool) -> tuple[list[int], list[int]]:
    """(versions to escrow now, versions under another key that stay)."""
    todo, other = [], []
    for kv in keyring.kek.versions:
        if kv.escrow is None or (kv.escrow.key != key.fingerprint and replace):
            todo.append(kv.version)
        elif kv.escrow.key != key.fingerprint:
            other.append(kv.version)
    return todo, other


def _escrow_tenant(k: Keyops, tenant: str, key: EscrowKey, dry_run: bool, replace: bool) -> TenantEscrow:
    keyring, _ = k.read_keyring(tenant)
    todo, other = _needs(keyring, key, replace)
    if dry_run or not todo:
        return TenantEscrow(tenant, tuple(todo), tuple(other), tuple(todo) if dry_run else ())
    with k.audited("escrow", tenant=tenant, level="kek", versions=todo) as event:
        current: list[tuple[Keyring, int]] = []

        def attempt() -> list[int]:
            keyring, revision = current.pop() if current else k.read_keyring(tenant)
            todo, _ = _needs(keyring, key, replace)
            for version in todo:
                copy = k.hierarchy.escrow_copy(keyring, version, key, key.fingerprint)
                keyring = keyring.replace_version("kek", dataclasses.replace(keyring.kek.get(version), escrow=copy))
            if todo:
                k.write_keyring(tenant, keyring, cas=revision)
            return todo

        done = retry_on_conflict(attempt, f"the keyring of tenant {tenant!r} (re-run to escrow the rest)")
        event.update(changed=bool(done), key=key.fingerprint)
    return TenantEscrow(tenant, tuple(done), tuple(other), ())


def escrow_status(k: Keyops, tenants: Sequence[str] | None = None) -> EscrowReport:
    """Which KEK versions lack a copy under the configured key (under any key, when none is configured)."""
    key = configured_key(k.config)
    names = [validate_tenant(t) for t in tenants] if tenants else k.list_tenants()
    found: list[TenantEscrow] = []
    failures: list[TenantFailure] = []
    for tenant in names:
        try:
            keyring, _ = k.read_keyring(tenant)
        except TenantNotFound:
            if tenants:
                raise
            continue
        except KeyopsError as exc:
            failures.append(TenantFailure.of(tenant, "kek", exc))
            continue
        missing = tuple(kv.version for kv in keyring.kek.versions if kv.escrow is None)
        other = tuple(kv.version for kv in keyring.kek.versions
                      if kv.escrow is not None and key is not None and kv.escrow.key != key.fingerprint)
        found.append(TenantEscrow(tenant, (), other, missing))
    return EscrowReport(key.fingerprint if key else None, False, tuple(found), tuple(failures))
