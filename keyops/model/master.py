"""The master key registry (KV ``master``): which HSM keys a registry owns, by label and CKA_ID. No I/O.

Document shape (see docs/formats.md, "The master key registry")::

    {"schema": 1, "registry_id": "3f9c2a7b1d4e5f60", "primary": 2, "period_days": 365,
     "versions": [{"version": 1, "label": "keyops-master-v1", "key_id": null, "state": "destroyed", ...},
                  {"version": 2, "label": "keyops-master-3f9c2a7b1d4e5f60-v2",
                   "key_id": "3f9c2a7b1d4e5f6000000002", "state": "active", "root": "pkcs11",
                   "params": {}, ...}]}

Each version names the root backend that protects it (``root``) and that
root's non-secret parameters (``params``); a version written before roots
had names has neither and is a PKCS#11 one. So a registry may hold versions
of several roots at once: old ones keep unwrapping with their own root while
new ones use the configured one.

One HSM token may serve several registries (two Vault clusters, two OpenBao
namespaces). The random registry id in every label and CKA_ID is what keeps
them apart: keyops uses a key only when both match, and deletes only keys
whose names carry its own registry's id.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import secrets
from collections.abc import Mapping
from typing import Any

from keyops.errors import KeyStateError
from keyops.model.keyring import format_time

#: The state of a master version claimed in the registry whose HSM key may not exist yet
#: (by a master rotation, see ``keyops.ops.rotation``, or by the registry's first creation).
MASTER_PENDING = "pending"
#: The root backends a master version may come from (``KEYOPS_ROOT``); see keyops.roots.
ROOT_BACKENDS = ("pkcs11", "transit", "passphrase")
#: Parameter values a version entry may hold: never key material in the clear.
_PARAM_TYPES = (str, int, type(None))
#: Bytes of randomness in a registry id: two registries sharing a token never pick the same.
REGISTRY_ID_BYTES = 8
_REGISTRY_ID = re.compile(r"[0-9a-f]{16}")
_KEY_ID = re.compile(r"(?:[0-9a-f]{2}){1,64}")
#: How long a process waits for the first master key that another process has
#: claimed; a claim older than this was left by a crash, and is finished.
FIRST_MASTER_WAIT = 10.0


@dataclasses.dataclass(frozen=True)
class MasterVersion:
    """One master key version. ``key_id``: the HSM key's CKA_ID, hex (registry id ‖ version, 4 bytes).

    ``key_id`` is None for a version made before registries had ids (label
    ``<prefix>-v<N>``): it is found by label alone, and since another Vault or
    namespace on the same token may use the same key, keyops never deletes it
    from the HSM.
    """

    version: int
    label: str
    state: str
    created_at: str
    key_id: str | None = None
    #: Which root backend made it (``ROOT_BACKENDS``), and that backend's non-secret parameters: the
    #: KMS address, mount and key; the passphrase's Argon2id salt and costs and its wrapped key.
    root: str = "pkcs11"
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def on_hsm(self) -> bool:
        """Its key is an object on the PKCS#11 token (label, CKA_ID), which keyops creates and may delete."""
        return self.root == "pkcs11"

    def without_material(self) -> MasterVersion:
        """This version once destroyed: a passphrase version's wrapped key goes, so it is gone for good."""
        return dataclasses.replace(self, params={k: v for k, v in self.params.items() if k != "wrapped"})

    @property
    def owned(self) -> bool:
        """Provably this registry's key: its label and CKA_ID carry the registry's random id."""
        return self.key_id is not None

    @property
    def key_id_bytes(self) -> bytes | None:
        return bytes.fromhex(self.key_id) if self.key_id is not None else None


#: Default rotation period of the master key; a registry may set its own ``period_days``.
MASTER_PERIOD_DAYS = 365


@dataclasses.dataclass(frozen=True)
class MasterRegistry:
    """The ``master`` document: HSM key versions by label and CKA_ID, their states, the primary.

    States: ``active`` (the primary), ``decrypt_only``, ``retired``,
    ``destroyed``; and ``pending`` for a version claimed but not yet made
    primary (see ``keyops.ops.rotation``), or a first version not yet created.

    ``registry_id`` is random, made with the registry; every HSM key the
    registry creates carries it in its label (``<prefix>-<registry id>-v<N>``)
    and its CKA_ID, so registries of two Vaults or namespaces sharing one
    token never adopt or destroy each other's keys. A registry written before
    ids has none until its next write (``with_id``); its older versions keep
    their labels and no ``key_id``.
    """

    primary: int
    versions: tuple[MasterVersion, ...]
    period_days: int = MASTER_PERIOD_DAYS
    registry_id: str | None = None

    def get(self, version: int) -> MasterVersion:
        for mv in self.versions:
            if mv.version == version:
                return mv
        raise KeyStateError(f"master key version {version} is not registered")

    @classmethod
    def first(cls, prefix: str, now: dt.datetime) -> MasterRegistry:
        """A new registry with a new id and its first version claimed (``pending``)."""
        registry = cls(1, ()).with_id()
        return dataclasses.replace(registry, versions=(registry.new_version(prefix, 1, now),))

    def with_id(self) -> MasterRegistry:
        """This registry, given a random id unless it has one (registries written before ids)."""
        if self.registry_id is not None:
            return self
        return dataclasses.replace(self, registry_id=secrets.token_hex(REGISTRY_ID_BYTES))

    def new_version(self, prefix: str, version: int, now: dt.datetime, root: str = "pkcs11",
                    params: Mapping[str, Any] | None = None) -> MasterVersion:
        """Version ``version``, ``pending``, named by this registry's id (call ``with_id`` first).

        Every root gets the same label and key id, so that a version is named
        the same way whatever protects it; only a ``pkcs11`` one is an HSM object.
        """
        if self.registry_id is None:
            raise KeyStateError("the master key registry has no id yet; it cannot name a new key")
        return MasterVersion(version, f"{prefix}-{self.registry_id}-v{version}", MASTER_PENDING, format_time(now),
                             self.registry_id + version.to_bytes(4, "big").hex(), root, dict(params or {}))

    def replace_version(self, mv: MasterVersion) -> MasterRegistry:
        return dataclasses.replace(self, versions=tuple(mv if v.version == mv.version else v for v in self.versions))

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, "registry_id": self.registry_id, "primary": self.primary,
                "period_days": self.period_days, "versions": [_version_dict(v) for v in self.versions]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MasterRegistry:
        try:
            registry_id = data.get("registry_id")
            if registry_id is not None and not _REGISTRY_ID.fullmatch(str(registry_id)):
                raise ValueError("registry_id must be 16 lowercase hex digits")
            versions = tuple(_master_version(v) for v in data["versions"])
            return cls(int(data["primary"]), versions, int(data.get("period_days", MASTER_PERIOD_DAYS)),
                       registry_id)
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyStateError(f"the master key registry in Vault is malformed ({exc}); restore an earlier "
                                "version of it (KV metadata of path 'master')") from exc


def _version_dict(mv: MasterVersion) -> dict[str, Any]:
    return {**dataclasses.asdict(mv), "params": dict(mv.params)}


def _master_version(data: Mapping[str, Any]) -> MasterVersion:
    key_id = data.get("key_id")
    if key_id is not None and not _KEY_ID.fullmatch(str(key_id)):
        raise ValueError(f"key_id of master version {data.get('version')!r} is not hex")
    # Versions written before roots had names are PKCS#11 keys.
    root = data.get("root", "pkcs11")
    if root not in ROOT_BACKENDS:
        raise ValueError(f"root of master version {data.get('version')!r} is {root!r}, not one of "
                         f"{', '.join(ROOT_BACKENDS)}")
    params = data.get("params") or {}
    if not isinstance(params, Mapping) or not all(
            isinstance(k, str) and isinstance(v, _PARAM_TYPES) for k, v in params.items()):
        raise ValueError(f"params of master version {data.get('version')!r} must map names to strings or numbers")
    return MasterVersion(int(data["version"]), str(data["label"]), str(data["state"]), str(data["created_at"]),
                         None if key_id is None else str(key_id), str(root), dict(params))
