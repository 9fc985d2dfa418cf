"""The usage document of a tenant: DEK encryptions reserved, leases and fences. No I/O.

Document shape in KV v2 (``tenants/<tenant>/usage``), the only tenant
document an application writes besides its secrets (it only reads the
keyring)::

    {"schema": 1, "tenant": "acme",
     "versions": {"3": {"reserved": 8192, "external": 4096,
                        "leases": {"5f0c2a9e41b7": "2026-05-01T12:00:31Z"}, "closed_at": null}}}

* ``reserved``: encryptions reserved under DEK version 3 by every process, a
  block at a time: an upper bound of the encryptions done, never fewer.
* ``external``: the part of ``reserved`` handed to callers outside keyops'
  store (``Keyops.encrypt``, ``keyops encrypt``): ciphertexts that keyops
  cannot find when it counts references, so retiring the version needs an
  explicit acknowledgement.
* ``leases``: per process holding a reservation (a random id of its
  ``Keyops`` object), the time after which it writes no ciphertext of this
  version. A process encrypts under a reservation only until its lease
  ends, and the lease it records covers its own request deadline, so a
  write that was in flight has landed (or failed) by then. A process that
  closes cleanly removes its leases (it encrypts no more); expired leases
  are dropped at the next reservation, so the document stays bounded.
* ``closed_at``: set by retire and destroy (a check-and-set write) before
  they wait out the leases and count references; no reservation of a closed
  version is ever granted again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Iterable, Mapping
from typing import Any

from keyops.errors import InvalidInput, KeyStateError
from keyops.model.keyring import format_time, parse_time

SCHEMA = 1


#: Clocks of the hosts that write and the host that retires or re-encrypts may differ this much.
CLOCK_SKEW_SECONDS = 2.0
#: Expired leases are dropped once they are this old (a lease is never needed after its end).
LEASE_PRUNE_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class VersionUsage:
    reserved: int = 0
    external: int = 0
    leases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    closed_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"reserved": self.reserved, "external": self.external, "leases": dict(sorted(self.leases.items())),
                "closed_at": self.closed_at}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> VersionUsage:
        if not isinstance(data, Mapping) or set(data) - {f.name for f in dataclasses.fields(cls)}:
            raise InvalidInput(f"{where}: expected an object with reserved, external, leases, closed_at")
        usage = cls(**dict(data))
        for name in ("reserved", "external"):
            value = getattr(usage, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{where}: {name} must be a whole number >= 0, not {value!r}")
        if not isinstance(usage.leases, Mapping) or not all(isinstance(h, str) for h in usage.leases):
            raise InvalidInput(f"{where}: leases must map holder ids to times")
        for value in (*usage.leases.values(), usage.closed_at):
            if value is not None:
                parse_time(value)
        return usage

    def lease_end(self) -> dt.datetime | None:
        """When the last lease of this version ends (None: no lease recorded)."""
        return max((parse_time(t) for t in self.leases.values()), default=None)


@dataclasses.dataclass(frozen=True)
class Usage:
    tenant: str
    versions: Mapping[int, VersionUsage] = dataclasses.field(default_factory=dict)

    def get(self, version: int) -> VersionUsage:
        return self.versions.get(version, VersionUsage())

    def uses(self, version: int, legacy_uses: int = 0) -> int:
        """Encryptions reserved under ``version``; ``legacy_uses``: the count kept in the keyring before."""
        return max(self.get(version).reserved, legacy_uses)

    def reserve(self, version: int, count: int, cap: int, *, external: bool, holder: str, now: dt.datetime,
                lease_until: dt.datetime, legacy_uses: int = 0) -> tuple[Usage, int, int]:
        """Reserve up to ``count`` uses of ``version`` for ``holder`` under a lease.

        Returns the new document and ``[start, end)``. The range is shorter
        than asked near the cap and empty at the cap (the document is then
        unchanged).
        """
        current = self.get(version)
        if current.closed_at is not None:
            raise KeyStateError(f"DEK version {version} of tenant {self.tenant!r} is being retired "
                                f"(closed at {current.closed_at}); no new encryptions under it")
        start = self.uses(version, legacy_uses)
        end = min(start + count, cap)
        if end <= start:
            return self, start, start
        until = _ceil_seconds(lease_until)
        held = current.leases.get(holder)
        if held is not None and parse_time(held) > until:
            until = parse_time(held)  # a lease never shrinks while its holder may still use it
        horizon = now - dt.timedelta(seconds=LEASE_PRUNE_SECONDS)
        leases = {h: t for h, t in current.leases.items() if parse_time(t) >= horizon}
        leases[holder] = format_time(until)
        new = dataclasses.replace(current, reserved=end, external=current.external + (end - start if external else 0),
                                  leases=leases)
        return self._with(version, new), start, end

    def release(self, holder: str, now: dt.datetime) -> Usage:
        """``holder`` encrypts no more: its leases end now (kept as the time of its last possible write).

        Ending rather than removing them keeps ``lease_end`` an upper bound of
        every write under a version, which a re-encryption relies on to skip
        its verification (``keyops.ops.reencrypt``); they are pruned later.
        """
        stamp = _ceil_seconds(now)
        versions = {}
        for v, u in self.versions.items():
            held = u.leases.get(holder)
            if held is not None and parse_time(held) > stamp:
                u = dataclasses.replace(u, leases={**u.leases, holder: format_time(stamp)})
            versions[v] = u
        return dataclasses.replace(self, versions=versions)

    def leases_end(self, versions: Iterable[int]) -> dt.datetime | None:
        """When the last lease of any of ``versions`` ends (None: none was ever recorded)."""
        return max((end for v in versions if (end := self.get(v).lease_end()) is not None), default=None)

    def close(self, version: int, now: dt.datetime) -> Usage:
        """Fence ``version``: no reservation of it is granted any more (idempotent)."""
        current = self.get(version)
        if current.closed_at is not None:
            return self
        return self._with(version, dataclasses.replace(current, closed_at=format_time(now)))

    def forget(self, versions: set[int]) -> Usage:
        """Drop the entries of destroyed versions, so that the document stays bounded."""
        return dataclasses.replace(self, versions={v: u for v, u in self.versions.items() if v not in versions})

    def _with(self, version: int, usage: VersionUsage) -> Usage:
        return dataclasses.replace(self, versions={**self.versions, version: usage})

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "tenant": self.tenant,
                "versions": {str(v): u.to_dict() for v, u in sorted(self.versions.items())}}

    @classmethod
    def from_dict(cls, data: Any, tenant: str) -> Usage:
        """The stored document of ``tenant``'s path; one naming another tenant is refused."""
        where = f"usage document of tenant {tenant!r}"
        if not isinstance(data, Mapping):
            raise InvalidInput(f"{where} is malformed: an object is expected, not {type(data).__name__}")
        schema = data.get("schema")
        if schema != SCHEMA or isinstance(schema, bool):
            raise InvalidInput(f"{where} has schema {schema!r} ({type(schema).__name__}); expected the number "
                               f"{SCHEMA}")
        if data.get("tenant") != tenant:
            raise InvalidInput(f"{where} names tenant {data.get('tenant')!r}; a document must name the tenant "
                               "of its path (restore a good version: docs/access.md)")
        raw = data.get("versions", {})
        if not isinstance(raw, Mapping):
            raise InvalidInput(f"{where}: versions must be an object")
        versions: dict[int, VersionUsage] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or not key.isdigit() or int(key) < 1:
                raise InvalidInput(f"{where}: {key!r} is not a DEK version number")
            versions[int(key)] = VersionUsage.from_dict(value, f"{where}, DEK version {key}")
        return cls(tenant, versions)


def _ceil_seconds(t: dt.datetime) -> dt.datetime:
    """Stored times have whole seconds: a lease's end is rounded up, never down."""
    whole = t.replace(microsecond=0)
    return whole if whole == t else whole + dt.timedelta(seconds=1)


def seconds_until(t: dt.datetime | None, now: dt.datetime) -> float:
    return 0.0 if t is None else max(0.0, math.ceil((t - now).total_seconds()))
