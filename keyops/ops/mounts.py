"""The mounts keyops works in: a KV v2 mount (``KEYOPS_KV_MOUNT``) and a Transit mount (``KEYOPS_TRANSIT_MOUNT``).

``init_mounts`` (``keyops init``, and the ``master_key`` module) creates the
ones that are missing in a fresh Vault or namespace, with the settings keyops
relies on: KV version 2, and the history ``access.ensure_history`` keeps
(the mount's default ``max_versions``; ``cas_required`` and the longer
history of keyrings, usage documents and the registry are set per document,
when each is made). Idempotent: mounts that are there are checked, never
re-made or re-tuned beyond raising the history; a mount of the wrong kind is
an error that names it. Creating a mount needs a token that may write
``sys/mounts`` (an administrator's).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from keyops import access
from keyops.errors import ConfigError, PermissionDenied

if TYPE_CHECKING:  # pragma: no cover
    from keyops.ops.front import Keyops

#: How long a KV v2 mount just enabled may answer "upgrading" before its configuration can be set.
KV_READY_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class MountChange:
    path: str
    engine: str  # "kv" (version 2) or "transit"
    action: str  # "create" or "unchanged"


@dataclasses.dataclass(frozen=True)
class InitResult:
    mounts: tuple[MountChange, ...]
    #: The KV mount's history setting; None in a dry run that would create the mount (nothing to read yet).
    history: access.HistoryResult | None
    dry_run: bool
    #: Why nothing was checked (the token may not read ``sys/mounts``); empty when the mounts were checked.
    skipped: str = ""

    @property
    def changed(self) -> bool:
        return any(m.action != "unchanged" for m in self.mounts) or bool(self.history and self.history.changed)

    @property
    def detail(self) -> str:
        if self.skipped:
            return self.skipped
        verb = "would create" if self.dry_run else "created"
        made = [f"{m.engine} mount {m.path!r}" for m in self.mounts if m.action == "create"]
        tuned = self.history is not None and self.history.changed
        if not made and not tuned:
            return "nothing to do: " + ", ".join(f"{m.engine} mount {m.path!r}" for m in self.mounts) + " in place"
        parts = [f"{verb} {', '.join(made)}"] if made else []
        if tuned:
            parts.append(("would raise" if self.dry_run else "raised") + " the KV history to keyops' settings")
        return "; ".join(parts)


def init_mounts(k: Keyops, *, dry_run: bool = False, required: bool = True) -> InitResult:
    """Create the KV v2 and Transit mounts keyops uses when they are missing; set the KV history.

    ``required=False`` (the ``master_key`` module's default): a token that may
    not read ``sys/mounts`` is no error; the mounts are left unchecked, and a
    missing one is reported by the first request that needs it.
    """
    store = k.store
    try:
        found = {mount: store.read_mount(mount) for mount in (store.kv_mount, store.transit_mount)}
    except PermissionDenied as exc:
        if required:
            raise PermissionDenied(f"{exc}; `keyops init` needs a token that may read and enable secrets "
                                   "engines (sys/mounts), such as an administrator's") from exc
        return InitResult((), None, dry_run, skipped=f"mounts not checked: the token may not read sys/mounts "
                                                     f"({exc.code})")
    changes = [_plan(store.kv_mount, "kv", found[store.kv_mount]),
               _plan(store.transit_mount, "transit", found[store.transit_mount])]
    for change in changes:
        if change.action == "create" and not dry_run:
            with k.audited("mount.enable", level="policy", path=change.path, engine=change.engine):
                if change.engine == "kv":
                    store.enable_secrets_engine("kv", change.path, options={"version": "2"},
                                                description="keyops keyrings and encrypted secrets")
                else:
                    store.enable_secrets_engine("transit", change.path, description="keyops Transit-resident KEKs")
    kv_missing = changes[0].action == "create"
    history = None
    if not (dry_run and kv_missing):
        store.read_engine_config(wait=KV_READY_SECONDS)  # a new KV v2 mount answers "upgrading" for a moment
        try:
            history = access.ensure_history(k, master=True, mount=True, dry_run=dry_run)
        except PermissionDenied:
            if required:
                raise
            # A role without history.config (rotation, say) leaves the history to `keyops policy apply`.
    return InitResult(tuple(changes), history, dry_run)


def _plan(path: str, engine: str, found: dict[str, Any] | None) -> MountChange:
    if found is None:
        return MountChange(path, engine, "create")
    kind = found.get("type")
    version = str((found.get("options") or {}).get("version") or "1")
    if engine == "kv" and (kind != "kv" or version != "2"):
        what = f"KV version {version}" if kind == "kv" else f"a {kind} engine"
        raise ConfigError(f"mount {path!r} is {what}, not the KV version 2 mount keyops needs; set "
                          "KEYOPS_KV_MOUNT to another path, or move that mount away")
    if engine == "transit" and kind != "transit":
        raise ConfigError(f"mount {path!r} is a {kind} engine, not the Transit mount keyops needs; set "
                          "KEYOPS_TRANSIT_MOUNT to another path, or move that mount away")
    return MountChange(path, engine, "unchanged")
