"""Declarative Transit keys: compare what is with what is wanted, then change only the difference.

Any Transit key, not only the tenants' KEKs: its type, ``auto_rotate_period``,
``min_decryption_version``, ``min_encryption_version``, ``deletion_allowed``,
never ``exportable``, an explicit rotation and trimming of old versions.

``plan`` is pure: from the key as read (``TransitKeyView`` or None) and the
wanted state (``TransitKeySpec``) it computes the steps and the key as they
would leave it, checking every constraint Transit would check (and a few it
does not) before anything is written, so check mode and a real run agree and
a bad request changes nothing. ``apply`` reads the key, plans, and performs
the steps in a safe order: create, rotate, configure, trim, delete.

Views carry versions and settings only: Transit never returns symmetric key
material from ``read_key``, and the public keys of asymmetric keys are not
copied either.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from keyops.backends.vault import VaultStore
from keyops.errors import InvalidInput, KeyStateError
from keyops.model.names import validate_tenant

KEY_TYPES: tuple[str, ...] = (
    "aes128-gcm96", "aes256-gcm96", "chacha20-poly1305", "ed25519", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521",
    "rsa-2048", "rsa-3072", "rsa-4096", "hmac",
)
DEFAULT_TYPE = "aes256-gcm96"
#: Transit refuses shorter automatic rotation periods.
MIN_AUTO_ROTATE_SECONDS = 3600
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_DURATION_RE = re.compile(r"(\d+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: Settings ``/config`` takes, in the order they are reported.
CONFIG_FIELDS: tuple[str, ...] = ("min_decryption_version", "min_encryption_version", "deletion_allowed",
                                  "auto_rotate_period")


def validate_key_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise InvalidInput(f"invalid Transit key name {name!r}: use 1-128 ASCII letters, digits, '_', '.' or '-'")
    return name


def parse_duration(value: object) -> int:
    """Seconds from ``3600``, ``"3600"``, ``"90m"``, ``"24h"`` or ``"30d"`` (Transit's periods)."""
    if isinstance(value, bool):
        raise InvalidInput(f"a duration must be seconds or a number with s/m/h/d, not {value!r}")
    if isinstance(value, int):
        seconds = value
    else:
        match = _DURATION_RE.fullmatch(str(value).strip())
        if match is None:
            raise InvalidInput(f"invalid duration {value!r}: use seconds or a number with s, m, h or d "
                               "(e.g. 24h, 30d)")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds < 0:
        raise InvalidInput(f"a duration cannot be negative, got {value!r}")
    return seconds


@dataclasses.dataclass(frozen=True)
class TransitKeyView:
    """A Transit key's settings and versions; no key material."""

    name: str
    type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    min_available_version: int
    auto_rotate_period: int
    deletion_allowed: bool
    exportable: bool
    allow_plaintext_backup: bool
    imported: bool
    versions: tuple[int, ...]

    @classmethod
    def from_response(cls, name: str, data: Mapping[str, Any]) -> TransitKeyView:
        versions = tuple(sorted(int(v) for v in (data.get("keys") or {})))
        return cls(
            name=name, type=str(data.get("type", "")), latest_version=int(data.get("latest_version", 0)),
            min_decryption_version=int(data.get("min_decryption_version", 1)),
            min_encryption_version=int(data.get("min_encryption_version", 0)),
            min_available_version=int(data.get("min_available_version", 0)),
            auto_rotate_period=parse_duration(data.get("auto_rotate_period") or 0),
            deletion_allowed=bool(data.get("deletion_allowed", False)), exportable=bool(data.get("exportable", False)),
            allow_plaintext_backup=bool(data.get("allow_plaintext_backup", False)),
            imported=bool(data.get("imported_key", False)), versions=versions)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["versions"] = list(self.versions)
        return out


@dataclasses.dataclass(frozen=True)
class TransitKeySpec:
    """The wanted state. ``None`` leaves a setting as it is (or Transit's default for a new key)."""

    name: str
    state: str = "present"
    type: str | None = None
    auto_rotate_period: int | None = None
    min_decryption_version: int | None = None
    min_encryption_version: int | None = None
    min_available_version: int | None = None
    deletion_allowed: bool | None = None
    exportable: bool = False
    rotate: bool = False
    expect_version: int | None = None

    def __post_init__(self) -> None:
        validate_key_name(self.name)
        if self.state not in ("present", "absent"):
            raise InvalidInput(f"state must be 'present' or 'absent', not {self.state!r}")
        if self.type is not None and self.type not in KEY_TYPES:
            raise InvalidInput(f"Transit key type must be one of {', '.join(KEY_TYPES)}, not {self.type!r}")
        if self.exportable:
            raise InvalidInput("keyops never makes a Transit key exportable: its key material could then be read "
                               "out of Vault; use exportable false")
        period = self.auto_rotate_period
        if period is not None and period != 0 and period < MIN_AUTO_ROTATE_SECONDS:
            raise InvalidInput(f"auto_rotate_period must be 0 (off) or at least {MIN_AUTO_ROTATE_SECONDS} seconds "
                               f"(1h), got {period}")
        for name in ("min_decryption_version", "min_available_version", "expect_version"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidInput(f"{name} must be a positive version number, got {value}")
        if self.min_encryption_version is not None and self.min_encryption_version < 0:
            raise InvalidInput(f"min_encryption_version must be 0 (the latest) or a version, "
                               f"got {self.min_encryption_version}")
        if self.expect_version is not None and not self.rotate:
            raise InvalidInput("expect_version only applies with rotate: true")


@dataclasses.dataclass(frozen=True)
class TransitKeyPlan:
    """The steps that bring a key to the spec, and the key as they would leave it."""

    name: str
    create: dict[str, Any] | None  # creation parameters
    rotate: bool
    config: dict[str, Any]  # only the settings that change
    trim_to: int | None
    delete: bool
    before: TransitKeyView | None
    after: TransitKeyView | None
    notes: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.create is not None or self.rotate or self.config or self.trim_to is not None or self.delete)

    def actions(self) -> list[str]:
        out = []
        if self.create is not None:
            out.append(f"create {self.create['type']} key")
        if self.rotate:
            out.append("rotate")
        for name, value in self.config.items():
            out.append(f"set {name}={value}")
        if self.trim_to is not None:
            out.append(f"trim versions below {self.trim_to}")
        if self.delete:
            out.append("delete")
        return out


def plan(current: TransitKeyView | None, spec: TransitKeySpec) -> TransitKeyPlan:
    """What to do to bring ``current`` to ``spec``. Pure; raises InvalidInput/KeyStateError before any write."""
    if spec.state == "absent":
        if current is None:
            return TransitKeyPlan(spec.name, None, False, {}, None, False, None, None)
        config: dict[str, Any] = {}
        if not current.deletion_allowed:
            if spec.deletion_allowed is not True:
                raise InvalidInput(f"Transit key {spec.name!r} does not allow deletion; deleting it destroys every "
                                   "version and what they encrypted. Confirm with deletion_allowed: true")
            config["deletion_allowed"] = True
        return TransitKeyPlan(spec.name, None, False, config, None, True, current, None)

    notes: list[str] = []
    create = None
    if current is None:
        key_type = spec.type or DEFAULT_TYPE
        create = {"type": key_type, "exportable": False, "allow_plaintext_backup": False}
        if spec.auto_rotate_period:
            create["auto_rotate_period"] = spec.auto_rotate_period
        state = TransitKeyView(spec.name, key_type, 1, 1, 0, 0, spec.auto_rotate_period or 0, False, False, False,
                               False, (1,))
        base = state
    else:
        if spec.type is not None and spec.type != current.type:
            raise InvalidInput(f"Transit key {spec.name!r} is of type {current.type!r}; a key's type cannot change "
                               f"(create a key of type {spec.type!r} under another name)")
        if current.exportable:
            raise KeyStateError(f"Transit key {spec.name!r} is exportable, and Transit cannot take that back; "
                                "move its users to a new, non-exportable key")
        state = base = current

    rotate = False
    if spec.rotate:
        if spec.expect_version is not None and spec.expect_version != state.latest_version:
            notes.append(f"not rotated: the latest version is {state.latest_version}, not {spec.expect_version}")
        elif create is not None and spec.expect_version is None:
            notes.append("not rotated: the key was created by this task")
        else:
            rotate = True
            latest = state.latest_version + 1
            state = dataclasses.replace(state, latest_version=latest, versions=state.versions + (latest,))

    config = {}
    wanted = {"min_decryption_version": spec.min_decryption_version,
              "min_encryption_version": spec.min_encryption_version,
              "deletion_allowed": spec.deletion_allowed,
              "auto_rotate_period": spec.auto_rotate_period if create is None else None}
    for name in CONFIG_FIELDS:
        value = wanted[name]
        if value is not None and getattr(state, name) != value:
            config[name] = value
    state = dataclasses.replace(state, **config)

    trim_to = None
    if spec.min_available_version is not None and spec.min_available_version != state.min_available_version:
        if spec.min_available_version < state.min_available_version:
            raise InvalidInput(f"Transit key {spec.name!r} is trimmed below version {state.min_available_version} "
                               f"already; trimmed versions are gone and min_available_version cannot go back to "
                               f"{spec.min_available_version}")
        trim_to = spec.min_available_version
        state = dataclasses.replace(state, min_available_version=trim_to,
                                    versions=tuple(v for v in state.versions if v >= trim_to))

    _check_versions(spec.name, state)
    after = state
    if create is None and not rotate and not config and trim_to is None:
        after = base
    return TransitKeyPlan(spec.name, create, rotate, config, trim_to, False, current, after, tuple(notes))


def _check_versions(name: str, key: TransitKeyView) -> None:
    """Transit's constraints between the version settings, on the state a plan would leave."""
    latest = key.latest_version
    if key.min_decryption_version > latest:
        raise InvalidInput(f"min_decryption_version {key.min_decryption_version} of Transit key {name!r} is above "
                           f"its latest version {latest}")
    if key.min_encryption_version > latest:
        raise InvalidInput(f"min_encryption_version {key.min_encryption_version} of Transit key {name!r} is above "
                           f"its latest version {latest}")
    if key.min_encryption_version and key.min_encryption_version < key.min_decryption_version:
        raise InvalidInput(f"min_encryption_version {key.min_encryption_version} of Transit key {name!r} is below "
                           f"min_decryption_version {key.min_decryption_version}: it would encrypt with a version "
                           "it cannot decrypt")
    if key.min_available_version > key.min_decryption_version:
        raise InvalidInput(f"cannot trim Transit key {name!r} below version {key.min_available_version} while "
                           f"min_decryption_version is {key.min_decryption_version}; raise min_decryption_version "
                           "first (in the same task)")
    if key.min_encryption_version and key.min_available_version > key.min_encryption_version:
        raise InvalidInput(f"cannot trim Transit key {name!r} below version {key.min_available_version} while "
                           f"min_encryption_version is {key.min_encryption_version}")


def config_requests(state: TransitKeyView, config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``config`` as one or more ``/config`` requests, each leaving a state Transit accepts.

    hvac refuses ``min_encryption_version`` equal to ``min_decryption_version``
    when both come in one call (Transit itself accepts the pair), so the two
    version settings go in separate requests, ordered so that
    ``min_encryption_version`` is 0 or at least ``min_decryption_version`` after each.
    """
    rest = {k: v for k, v in config.items() if k not in ("min_decryption_version", "min_encryption_version")}
    dec = config.get("min_decryption_version")
    enc = config.get("min_encryption_version")
    if dec is None or enc is None:
        single = dict(rest)
        single.update({k: v for k, v in (("min_decryption_version", dec), ("min_encryption_version", enc))
                       if v is not None})
        return [single] if single else []
    # Encryption first when it does not fall below the current decryption minimum.
    if enc == 0 or enc >= state.min_decryption_version:
        return [dict(rest, min_encryption_version=enc), {"min_decryption_version": dec}]
    return [dict(rest, min_decryption_version=dec), {"min_encryption_version": enc}]


# --- I/O ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransitKeyResult:
    name: str
    changed: bool
    actions: tuple[str, ...]
    before: TransitKeyView | None
    after: TransitKeyView | None
    dry_run: bool
    notes: tuple[str, ...] = ()


def read_key(store: VaultStore, name: str) -> TransitKeyView | None:
    data = store.transit_read_key(validate_key_name(name))
    return None if data is None else TransitKeyView.from_response(name, data)


def _tenant_of(store: VaultStore, name: str) -> str | None:
    """The tenant whose KEK this key is (``keyops-<tenant>`` with a keyring), else None."""
    if not name.startswith("keyops-"):
        return None
    try:
        tenant = validate_tenant(name[len("keyops-"):])
    except InvalidInput:
        return None
    return tenant if store.read(f"tenants/{tenant}/keyring") is not None else None


def apply(store: VaultStore, spec: TransitKeySpec, dry_run: bool = False) -> TransitKeyResult:
    """Bring the Transit key ``spec.name`` to ``spec``; only the differences are written."""
    current = read_key(store, spec.name)
    steps = plan(current, spec)
    if steps.delete:
        tenant = _tenant_of(store, spec.name)
        if tenant is not None:
            raise KeyStateError(f"Transit key {spec.name!r} holds the KEKs of tenant {tenant!r}; remove the tenant "
                                "(and its secrets) before its Transit key")
    if dry_run or not steps.changed:
        return TransitKeyResult(spec.name, steps.changed, tuple(steps.actions()), current, steps.after, dry_run,
                                steps.notes)
    if steps.create is not None:
        # Never exportable, no plaintext backup: the store's create sends both as False.
        store.transit_create_key(spec.name, str(steps.create["type"]),
                                 auto_rotate_period=steps.create.get("auto_rotate_period"))
    if steps.rotate:
        store.transit_rotate_key(spec.name)
    configured = current
    if configured is None:  # created by this call, so the plan holds the key it makes
        assert steps.after is not None
        configured = dataclasses.replace(steps.after, min_decryption_version=1, min_encryption_version=0)
    for request in config_requests(configured, steps.config):
        store.transit_configure_key(spec.name, **request)
    if steps.trim_to is not None:
        store.transit_trim_key(spec.name, steps.trim_to)
    if steps.delete:
        store.transit_delete_key(spec.name)
    after = None if steps.delete else read_key(store, spec.name)
    return TransitKeyResult(spec.name, True, tuple(steps.actions()), current, after, False, steps.notes)
