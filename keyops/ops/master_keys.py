"""The master key: its registry in KV and its keys, on the HSM token or under another root (keyops.roots)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING

from keyops import access
from keyops.errors import (
    Conflict,
    HsmTokenNotConfigured,
    KeyStateError,
    PermissionDenied,
)
from keyops.model.keyring import (
    age_days,
)
from keyops.model.master import FIRST_MASTER_WAIT, MASTER_PENDING, MasterRegistry
from keyops.model.paths import (
    MASTER_PATH,
)

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops


def master_label(k: Keyops, version: int) -> str:
    """The HSM label of master ``version``: as registered, else as this registry would name it."""
    seen = k.hierarchy.seen_master
    if seen is None or all(mv.version != version for mv in seen.versions):
        found = k.read_master()
        seen = found[0] if found else None
    for mv in seen.versions if seen is not None else ():
        if mv.version == version:
            return mv.label
    registry_id = seen.registry_id if seen is not None and seen.registry_id else "<new registry id>"
    return f"{k.config.master_key_label}-{registry_id}-v{version}"


def planned_first(k: Keyops, registry: MasterRegistry | None = None) -> MasterRegistry:
    """The registry a first ``ensure_master`` would make, as a dry run reports it (no I/O)."""
    registry = registry or MasterRegistry.first(k.config.master_key_label, k.clock())
    return registry.replace_version(dataclasses.replace(registry.get(1), state="active",
                                                        root=k.hierarchy.roots.configured))


def ensure_master(k: Keyops, dry_run: bool = False) -> tuple[MasterRegistry, bool]:
    """The master key exists under its root and is registered in KV. Returns (registry, changed).

    A new registry gets a random id, and its first version, under the
    configured root, is claimed (``pending``) before its key is made, then
    turned active: a crash in between leaves a claim that the next call
    finishes, never an HSM key that no registry knows. A key already on the
    token under the new name is refused, never adopted (``HsmKeyNotOwned``).
    """
    roots = k.hierarchy.roots
    found = k.read_master()
    if found is None:
        registry = MasterRegistry.first(k.config.master_key_label, k.clock())
        if dry_run:
            return planned_first(k, registry), True
        with k.audited("master.create", level="master", versions=[1]) as event:
            # A wrong PIN, passphrase or KMS, or a look-alike HSM key, fails before anything is written.
            roots.check_configured()
            registry = registry.replace_version(roots.new_version(registry, 1, k.clock()))
            roots.check_unused(registry.get(1))
            try:
                revision = k.store.write(MASTER_PATH, registry.to_dict(), cas=0)
            except Conflict:
                # Registered by a concurrent process (first tenants created in parallel): use theirs.
                event["changed"] = False
                found = k.read_master()
                if found is None:
                    raise
            else:
                made = _activate_first_master(k, registry, revision), True
                if k.principal.allows("history.config"):
                    # The registry's history and check-and-set are set when it is made, as a keyring's are;
                    # a server that refuses leaves it to `keyops policy apply`, as for a keyring.
                    with contextlib.suppress(PermissionDenied):
                        access.ensure_history(k, master=True, mount=False)
                return made
    registry, revision = found
    if registry.get(registry.primary).state == MASTER_PENDING:
        if dry_run:
            return registry, True
        registry, created = _await_first_master(k, registry, revision)
        if created:
            return registry, True
    primary = registry.get(registry.primary)
    if roots.present(primary):
        return registry, False
    token = primary.params.get("token", k.config.pkcs11_token_label)
    raise KeyStateError(f"master key {primary.label!r} is registered in Vault but missing from HSM token "
                        f"{token!r}; point keyops at the right token, or, if the token is lost, recover from the "
                        "escrow (docs/runbooks/hsm-recovery.md)")


def _await_first_master(k: Keyops, registry: MasterRegistry, revision: int) -> tuple[MasterRegistry, bool]:
    """The first master version, claimed by another process: wait for it; finish a claim left by a crash."""
    claimed_at = registry.get(registry.primary).created_at
    wait = min(FIRST_MASTER_WAIT, max(0.0, FIRST_MASTER_WAIT - age_days(claimed_at, k.clock()) * 86400))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        time.sleep(0.1)
        found = k.read_master()
        if found is None:
            raise Conflict("the master key registry vanished while its first key was being made; re-run")
        registry, revision = found
        if registry.get(registry.primary).state != MASTER_PENDING:
            return registry, False
    with k.audited("master.create", level="master", versions=[registry.primary], resumed=True):
        return _activate_first_master(k, registry, revision), True


def _activate_first_master(k: Keyops, registry: MasterRegistry, revision: int) -> MasterRegistry:
    mv = registry.get(registry.primary)
    if mv.key_id is None:
        raise KeyStateError(f"the pending first master version {mv.version} has no key id; inspect the registry")
    k.hierarchy.roots.make(registry, mv)
    active = registry.replace_version(dataclasses.replace(mv, state="active"))
    try:
        k.store.write(MASTER_PATH, active.to_dict(), cas=revision)
    except Conflict:
        found = k.read_master()
        if found is not None and found[0].get(found[0].primary).state == "active":
            return found[0]
        raise Conflict("the master key registry changed while its first key was being made; re-run") from None
    k.hierarchy.saw_master(active)
    return active


@dataclasses.dataclass(frozen=True)
class MasterVersionStatus:
    """One master version as the registry records it, and whether the HSM token holds its key."""

    version: int
    label: str
    state: str
    created_at: str
    key_id: str | None
    on_token: bool | None  # None: not looked for (destroyed versions, a token not configured, or not asked)
    #: The root that made it, and for ``pkcs11`` the token it recorded (None: made before tokens were recorded).
    root: str = "pkcs11"
    token: str | None = None


@dataclasses.dataclass(frozen=True)
class MasterStatus:
    """The master key registry, without key material: ``exists`` false when none is registered yet."""

    exists: bool
    registry_id: str | None = None
    primary: int | None = None
    versions: tuple[MasterVersionStatus, ...] = ()

    @property
    def missing(self) -> tuple[int, ...]:
        """Versions in use whose key the token does not hold."""
        return tuple(v.version for v in self.versions if v.on_token is False)


def master_status(k: Keyops, check_token: bool = True) -> MasterStatus:
    """The registry's versions and states; with ``check_token``, whether each usable key is on the token."""
    found = k.read_master()
    if found is None:
        return MasterStatus(False)
    registry = found[0]
    versions = []
    roots = k.hierarchy.roots
    for mv in registry.versions:
        on_token = None
        if check_token and mv.on_hsm and mv.state in ("active", "decrypt_only"):
            # A retired token (after a replacement) is not configured any more: not looked for.
            with contextlib.suppress(HsmTokenNotConfigured):
                on_token = roots.present(mv)
        token = mv.params.get("token") if mv.on_hsm else None
        versions.append(MasterVersionStatus(mv.version, mv.label, mv.state, mv.created_at, mv.key_id, on_token,
                                            mv.root, None if token is None else str(token)))
    return MasterStatus(True, registry.registry_id, registry.primary, tuple(versions))


def create_master(k: Keyops, dry_run: bool = False) -> tuple[MasterRegistry, bool]:
    """``ensure_master`` for a caller that asks for it by name (``keyops master create``): needs ``master.write``."""
    k.authorize("master.write")
    return ensure_master(k, dry_run=dry_run)
