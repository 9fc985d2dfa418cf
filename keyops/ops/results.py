"""What operations return: results, records and status views. No key material in any of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from keyops.model.keyring import DUE_USAGE_FRACTION, Due, Keyring


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    created_at: str
    age_days: float
    parent_version: int
    uses: int | None = None  # DEK: encryptions reserved (an upper bound of those done)
    external_uses: int | None = None  # DEK: the part of them handed to callers outside keyops' store


@dataclasses.dataclass(frozen=True)
class LevelStatus:
    level: str
    primary: int
    period_days: int
    next_due: str
    versions: tuple[VersionStatus, ...]
    # For monitoring: alert on these without parsing dates.
    primary_age_days: float = 0.0
    seconds_until_due: int = 0  # negative once the primary is older than its period
    state_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TenantStatus:
    tenant: str
    residence: str
    policy: Mapping[str, Any]
    created_at: str
    kek: LevelStatus
    dek: LevelStatus
    dek_usage: int
    dek_usage_cap: int
    due: tuple[Due, ...]
    # For monitoring: usage against cap, and the soonest rotation (0 when one is due now).
    dek_usage_ratio: float = 0.0
    dek_usage_due_ratio: float = DUE_USAGE_FRACTION
    seconds_until_due: int = 0
    is_due: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TenantResult:
    tenant: str
    changed: bool
    keyring: Keyring | None

    @property
    def kek_version(self) -> int | None:
        return self.keyring.kek.primary if self.keyring else None

    @property
    def dek_version(self) -> int | None:
        return self.keyring.dek.primary if self.keyring else None


@dataclasses.dataclass(frozen=True)
class SecretResult:
    tenant: str
    name: str
    changed: bool
    version: int | None  # KV version of the record
    dek_version: int | None


@dataclasses.dataclass(frozen=True)
class SecretRecord:
    """A stored record as read, with the KV version needed for check-and-set."""

    tenant: str
    name: str
    ciphertext: str
    dek_version: int
    kv_version: int


@dataclasses.dataclass(frozen=True)
class TenantProblem:
    """Why one tenant's status could not be read (the message names the tenant and what to do)."""

    tenant: str
    error: str  # the KeyopsError code
    exit_code: int
    message: str


@dataclasses.dataclass(frozen=True)
class StatusReport(Sequence[TenantStatus]):
    """The tenants' statuses (a sequence of ``TenantStatus``) and the tenants that could not be read."""

    tenants: tuple[TenantStatus, ...]
    problems: tuple[TenantProblem, ...] = ()

    def __getitem__(self, index: Any) -> Any:
        return self.tenants[index]

    def __len__(self) -> int:
        return len(self.tenants)
