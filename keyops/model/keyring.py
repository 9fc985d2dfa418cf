"""The keyring model: tenants' policies, key versions and their lifecycle. No I/O.

A keyring is an immutable value. Every change returns a new keyring; the
store writes it with a check-and-set on the version it was read at, so two
concurrent changes never both win.

Document shape in KV v2 (``tenants/<tenant>/keyring``)::

    {"schema": 1, "tenant": "acme", "created_at": "...",
     "policy": {"kek_residence": "kv", "kek_period_days": 90, ...},
     "kek": {"primary": 1, "versions": [{"version": 1, "state": "active", ...}]},
     "dek": {"primary": 1, "versions": [...]},
     "tombstones": {"kek": [...], "dek": [...]}}

Destroyed versions leave only a small tombstone (version, dates) and the
number of tombstones kept is bounded, so years of rotations do not grow the
document without limit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from keyops.errors import InvalidInput, KeyNotFound, KeyStateError
from keyops.model.names import validate_tenant

SCHEMA = 1
Level = Literal["master", "kek", "dek"]
TenantLevel = Literal["kek", "dek"]
TENANT_LEVELS: tuple[TenantLevel, ...] = ("kek", "dek")
LEVELS: tuple[str, ...] = ("master", "kek", "dek")
STATES: tuple[str, ...] = ("active", "decrypt_only", "retired", "destroyed")
RESIDENCES: tuple[str, ...] = ("kv", "transit")

#: NIST SP 800-38D allows 2**32 encryptions per key with random 96-bit nonces;
#: the default cap stays far below it.
DEFAULT_DEK_USAGE_CAP = 2**30
MAX_DEK_USAGE_CAP = 2**32 - 1
#: A DEK is due for rotation once this fraction of its cap is reserved, so a
#: scheduled rotation happens before encryption would be refused at the cap.
DUE_USAGE_FRACTION = 0.9
MAX_TOMBSTONES = 64
#: At most this many usable versions per level under a retention policy (MAX_TOMBSTONES bounds the rest).
MAX_KEEP = 32
RETENTION_FIELDS = ("keep_versions", "destroy_after_days")
#: Random bytes in a key version's ``uid``: 128 bits, so two versions anywhere never share one.
UID_BYTES = 16


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def format_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"invalid timestamp {s!r} in keyring") from exc


@dataclasses.dataclass(frozen=True)
class Policy:
    kek_residence: str = "kv"
    kek_period_days: int = 90
    dek_period_days: int = 30
    dek_usage_cap: int = DEFAULT_DEK_USAGE_CAP
    #: Retention: how many usable versions (active and decrypt_only) of each level to keep. Older ones
    #: are retired by the scheduled run once nothing refers to them. None keeps every version (as
    #: before retention existed, so that stored keyrings read the same).
    keep_versions: int | None = None
    #: Retention: days a version stays retired before the scheduled run destroys it (with the destroy
    #: right, that is the security-admin role). None never destroys on its own.
    destroy_after_days: int | None = None

    def __post_init__(self) -> None:
        if self.kek_residence not in RESIDENCES:
            raise InvalidInput(f"kek_residence must be one of {', '.join(RESIDENCES)}, "
                               f"not {self.kek_residence!r}")
        for name in ("kek_period_days", "dek_period_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 36500:
                raise InvalidInput(f"{name} must be a whole number of days between 1 and 36500, got {value!r}")
        cap = self.dek_usage_cap
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_DEK_USAGE_CAP:
            raise InvalidInput(f"dek_usage_cap must be between 1 and {MAX_DEK_USAGE_CAP} "
                               f"(the random-nonce limit of AES-GCM), got {cap!r}")
        keep = self.keep_versions
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= MAX_KEEP):
            raise InvalidInput(f"keep_versions must be a whole number between 1 and {MAX_KEEP} (the primary "
                               f"counts as one), got {keep!r}")
        after = self.destroy_after_days
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= 36500):
            raise InvalidInput(f"destroy_after_days must be a whole number of days between 0 and 36500, "
                               f"got {after!r}")
        if after is not None and keep is None:
            raise InvalidInput("destroy_after_days needs keep_versions: only versions retired by retention are "
                               "destroyed on schedule")

    def to_dict(self) -> dict[str, Any]:
        # Retention fields left unset are not written, so a keyring without them reads and compares as before.
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None or k not in RETENTION_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInput(f"unknown policy fields: {', '.join(sorted(unknown))}")
        return cls(**dict(data))

    def period_days(self, level: str) -> int:
        return self.kek_period_days if level == "kek" else self.dek_period_days


@dataclasses.dataclass(frozen=True)
class Escrow:
    """A KEK version's break-glass copy: the KEK under the operator's RSA public key (keyops.wrappers.escrow).

    ``key`` names that public key (``sha256:`` and the hex SHA-256 of its
    SubjectPublicKeyInfo); ``wrapped`` is base64 of RSA-OAEP-SHA256 of the
    KEK, its label the version's ``key_context``. Only the private key,
    which keyops' servers and Vault never see, opens it.
    """

    key: str
    wrapped: str

    @classmethod
    def from_dict(cls, data: Any) -> Escrow:
        if not isinstance(data, Mapping) or set(data) != {"key", "wrapped"} or not all(
                isinstance(v, str) and v for v in data.values()):
            raise InvalidInput("escrow of a key version must be an object with the strings 'key' and 'wrapped'")
        return cls(data["key"], data["wrapped"])


@dataclasses.dataclass(frozen=True)
class KeyVersion:
    """One version of a KEK or DEK. ``wrapped`` is ciphertext, never key material."""

    version: int
    state: str
    created_at: str
    wrapped: str  # base64 of the wrapper's blob
    parent_version: int  # master version (KEK) or KEK version (DEK) that wraps it
    state_changed_at: str | None = None
    uses: int = 0  # DEK: encryptions reserved before usage moved to its own document (keyops.model.usage); read only
    transit_version: int | None = None  # KEK of residence transit: its version in the Transit key
    #: Random, public and never reused (not even by a tenant deleted and made again): what names this
    #: version outside keyops, e.g. as the Kubernetes KMS ``key_id``. None for versions made before it.
    uid: str | None = None
    #: KEK only, optional: the break-glass copy under the recovery public key (absent in keyrings written before).
    escrow: Escrow | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyVersion:
        fields = dict(data)
        if fields.get("escrow") is not None:
            fields["escrow"] = Escrow.from_dict(fields["escrow"])
        return cls(**fields)

    @property
    def usable_for_decrypt(self) -> bool:
        return self.state in ("active", "decrypt_only")


@dataclasses.dataclass(frozen=True)
class Tombstone:
    version: int
    created_at: str
    destroyed_at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class KeyChain:
    """The versions of one level of one tenant."""

    primary: int
    versions: tuple[KeyVersion, ...]
    tombstones: tuple[Tombstone, ...] = ()

    def get(self, version: int) -> KeyVersion:
        for kv in self.versions:
            if kv.version == version:
                return kv
        raise KeyNotFound(f"key version {version} does not exist (or was destroyed)")

    @property
    def primary_key(self) -> KeyVersion:
        return self.get(self.primary)

    @property
    def empty(self) -> bool:
        return not self.versions

    @property
    def latest_version(self) -> int:
        numbers = [kv.version for kv in self.versions] + [t.version for t in self.tombstones]
        return max(numbers, default=0)

    def replace(self, new: KeyVersion) -> KeyChain:
        return dataclasses.replace(
            self, versions=tuple(new if kv.version == new.version else kv for kv in self.versions))

    def to_dict(self) -> dict[str, Any]:
        return {"primary": self.primary,
                "versions": [kv.to_dict() for kv in self.versions],
                "tombstones": [t.to_dict() for t in self.tombstones]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyChain:
        chain = cls(primary=data["primary"],
                    versions=tuple(KeyVersion.from_dict(v) for v in data["versions"]),
                    tombstones=tuple(Tombstone(**t) for t in data.get("tombstones", ())))
        chain._check()
        return chain

    def _check(self) -> None:
        """A document from storage names each version once, in a known state, with a real primary."""
        numbers = [kv.version for kv in self.versions]
        for n in numbers + [t.version for t in self.tombstones] + [self.primary]:
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise InvalidInput(f"key version {n!r} is not a version number")
        if 0 in numbers or len(set(numbers)) != len(numbers):
            raise InvalidInput(f"key versions {numbers} are not distinct positive numbers")
        for kv in self.versions:
            if kv.state not in STATES or not isinstance(kv.wrapped, str):
                raise InvalidInput(f"key version {kv.version} has an unknown state or no wrapped key")
        if (self.primary == 0) != (not self.versions) or (self.versions and self.primary not in numbers):
            raise InvalidInput(f"primary version {self.primary} is not one of the versions {numbers}")


@dataclasses.dataclass(frozen=True)
class Keyring:
    tenant: str
    policy: Policy
    created_at: str
    kek: KeyChain
    dek: KeyChain

    def chain(self, level: str) -> KeyChain:
        if level == "kek":
            return self.kek
        if level == "dek":
            return self.dek
        raise InvalidInput(f"level must be 'kek' or 'dek' for a tenant keyring, not {level!r}")

    def with_chain(self, level: str, chain: KeyChain) -> Keyring:
        self.chain(level)  # InvalidInput for any other level
        if level == "kek":
            return dataclasses.replace(self, kek=chain)
        return dataclasses.replace(self, dek=chain)

    # --- lifecycle -----------------------------------------------------------------

    def add_version(self, level: str, wrapped: str, parent_version: int, now: dt.datetime,
                    transit_version: int | None = None, escrow: Escrow | None = None) -> Keyring:
        """Add a new primary version; the old primary becomes decrypt_only."""
        chain = self.chain(level)
        stamp = format_time(now)
        new = KeyVersion(version=chain.latest_version + 1, state="active", created_at=stamp,
                         wrapped=wrapped, parent_version=parent_version, state_changed_at=stamp,
                         transit_version=transit_version, uid=secrets.token_hex(UID_BYTES), escrow=escrow)
        versions = tuple(
            dataclasses.replace(kv, state="decrypt_only", state_changed_at=stamp)
            if kv.state == "active" else kv for kv in chain.versions)
        return self.with_chain(level, KeyChain(new.version, versions + (new,), chain.tombstones))

    def set_state(self, level: str, version: int, state: str, now: dt.datetime) -> Keyring:
        if state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}, not {state!r}")
        chain = self.chain(level)
        current = chain.get(version)
        if version == chain.primary and state != "active":
            raise KeyStateError(f"{level} version {version} of tenant {self.tenant!r} is the primary key; "
                                "rotate first so that the tenant keeps a usable primary")
        order = STATES.index
        if order(state) < order(current.state):
            raise KeyStateError(f"{level} version {version} is {current.state}; it cannot go back to {state}")
        stamp = format_time(now)
        if state == "destroyed":
            tomb = Tombstone(version, current.created_at, stamp)
            versions = tuple(kv for kv in chain.versions if kv.version != version)
            tombstones = (chain.tombstones + (tomb,))[-MAX_TOMBSTONES:]
            return self.with_chain(level, KeyChain(chain.primary, versions, tombstones))
        return self.with_chain(level, chain.replace(
            dataclasses.replace(current, state=state, state_changed_at=stamp)))

    def replace_version(self, level: str, new: KeyVersion) -> Keyring:
        return self.with_chain(level, self.chain(level).replace(new))

    # --- serialisation -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "tenant": self.tenant, "created_at": self.created_at,
                "policy": self.policy.to_dict(), "kek": self.kek.to_dict(), "dek": self.dek.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Keyring:
        if not isinstance(data, Mapping):
            raise InvalidInput(f"keyring document is malformed: an object is expected, not {type(data).__name__}")
        schema = data.get("schema")
        if type(schema) is not int or schema != SCHEMA:
            raise InvalidInput(_schema_problem(schema))
        try:
            return cls(tenant=validate_tenant(data["tenant"]), policy=Policy.from_dict(data["policy"]),
                       created_at=data["created_at"], kek=KeyChain.from_dict(data["kek"]),
                       dek=KeyChain.from_dict(data["dek"]))
        except (KeyError, TypeError) as exc:
            raise InvalidInput(f"keyring document is malformed: {exc}") from exc


def _schema_problem(schema: Any) -> str:
    """What is wrong with a keyring's ``schema`` field, in words (a string "1" is not the number 1)."""
    expected = f"expected the number {SCHEMA}"
    if schema is None:
        return f"keyring has no schema; {expected} (this is not a keyops keyring)"
    if isinstance(schema, bool):
        return f"keyring has schema {schema!r} (a boolean); {expected}"
    if isinstance(schema, int):
        newer = " (written by a newer keyops?)" if schema > SCHEMA else ""
        return f"keyring has schema {schema}, which this keyops does not read{newer}; {expected}"
    kinds = {str: "a string", float: "a number with a fraction", list: "a list", dict: "an object"}
    kind = kinds.get(type(schema), f"a {type(schema).__name__}")
    shown = repr(schema[:40]) if isinstance(schema, str) else repr(schema)[:40]
    return f"keyring has schema {shown} ({kind}); {expected}"


# --- due-ness -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Due:
    level: str
    version: int
    reason: str  # "age" or "usage"
    detail: str


def age_days(created_at: str, now: dt.datetime) -> float:
    return (now - parse_time(created_at)).total_seconds() / 86400.0


def due_rotations(keyring: Keyring, now: dt.datetime, primary_dek_uses: int | None = None) -> list[Due]:
    """What the tenant's policy says should rotate now.

    ``primary_dek_uses``: the primary DEK's reserved uses from the tenant's
    usage document (``keyops.model.usage``); without it, the count the keyring
    itself kept before usage moved out of it.
    """
    out: list[Due] = []
    for level in TENANT_LEVELS:
        primary = keyring.chain(level).primary_key
        period = keyring.policy.period_days(level)
        age = age_days(primary.created_at, now)
        if age >= period:
            out.append(Due(level, primary.version, "age", f"{age:.1f} days old, period {period} days"))
        elif level == "dek":
            cap = keyring.policy.dek_usage_cap
            uses = max(primary.uses, primary_dek_uses or 0)
            if uses >= DUE_USAGE_FRACTION * cap:
                out.append(Due(level, primary.version, "usage", f"{uses} of {cap} uses reserved"))
    return out


def next_due(keyring: Keyring, level: str) -> dt.datetime:
    primary = keyring.chain(level).primary_key
    return parse_time(primary.created_at) + dt.timedelta(days=keyring.policy.period_days(level))


def referenced_parents(chain: KeyChain) -> set[int]:
    return {kv.parent_version for kv in chain.versions}


def versions_in(chain: KeyChain, states: Iterable[str]) -> list[int]:
    wanted = set(states)
    return [kv.version for kv in chain.versions if kv.state in wanted]
