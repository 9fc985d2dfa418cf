"""Who is calling a server: the caller's Vault token, looked up once per short TTL, mapped to keyops roles.

A server acts with its own credentials (a token of its own, the HSM PIN), so
it must not let a caller's token stand for more than Vault gives it. The
caller's policies are read with the caller's own token (``lookup-self``) and
mapped to keyops roles (``keyops.access``); the server then grants only what
those roles grant. Unlike the CLI's early checks, a policy keyops did not
generate grants nothing here: the server, not Vault, is the one that enforces.

Lookups are cached for ``ttl`` seconds (and never past the token's own
expiry), keyed by a digest of the token: the cache never holds a token. A
token revoked in Vault is still served for up to ``ttl`` seconds by each
process that looked it up; so is a wrong token refused for that long, which
keeps a flood of bad tokens from reaching Vault.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Callable

from keyops import access
from keyops.backends.vault import VaultStore
from keyops.errors import KeyopsError, NotPermitted, PermissionDenied

DEFAULT_TTL = 10.0
#: Cached callers, most recently used kept; enough for every app of a large platform.
MAX_CACHED = 10_000
_NO_TOKEN = ("permission denied: no Vault token; send it in the X-Vault-Token header "
             "(or Authorization: Bearer)")
_BAD_TOKEN = "permission denied: the Vault token is not valid (unknown, expired or revoked)"


@dataclasses.dataclass(frozen=True)
class Caller:
    """A looked-up caller: its principal (accessor, roles). Never its token."""

    principal: access.Principal

    @property
    def accessor(self) -> str:
        return self.principal.accessor or "unknown"

    def may(self, operation: str, tenant: str | None = None) -> bool:
        return permits(self.principal, operation, tenant)

    def require(self, operation: str, tenant: str | None = None) -> None:
        if not self.may(operation, tenant):
            denied = access.denial(dataclasses.replace(self.principal, complete=True), operation, tenant)
            # Vault's clients look for "permission denied"; keyops' message says which role is missing.
            raise NotPermitted(f"permission denied: {denied or operation}")


def permits(principal: access.Principal, operation: str, tenant: str | None = None) -> bool:
    """What the caller's keyops roles grant; a policy keyops did not generate grants nothing here."""
    return dataclasses.replace(principal, complete=True).allows(operation, tenant)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Callers:
    """Caller look-ups against the real Vault, cached per token digest for at most ``ttl`` seconds."""

    def __init__(self, store: VaultStore, roles: access.Roles, ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.roles = roles
        self.ttl = ttl
        self.clock = clock
        self._cache: collections.OrderedDict[str, tuple[float, Caller | KeyopsError]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def cached(self, token: str | None) -> Caller | None:
        """The caller from the cache, without I/O; raises for a missing or known-bad token; None: look it up."""
        if not token:
            raise PermissionDenied(_NO_TOKEN)
        key = token_digest(token)
        with self._lock:
            found = self._cache.get(key)
            if found is None or self.clock() >= found[0]:
                return None
            self._cache.move_to_end(key)
            self.hits += 1
        if isinstance(found[1], KeyopsError):
            raise found[1]
        return found[1]

    def lookup(self, token: str | None) -> Caller:
        """The caller, from the cache or from Vault (``PermissionDenied`` for a bad token)."""
        caller = self.cached(token)
        if caller is not None:
            return caller
        assert token  # cached() refused an empty one
        now = self.clock()
        result: Caller | KeyopsError
        try:
            data = self.store.lookup_token(token)
        except PermissionDenied:
            result = PermissionDenied(_BAD_TOKEN)
            until = now + self.ttl
        else:
            result = Caller(self._principal(data))
            until = now + min(self.ttl, _seconds_left(data.get("expire_time")))
        with self._lock:
            self.misses += 1
            self._cache[token_digest(token)] = (until, result)
            while len(self._cache) > MAX_CACHED:
                self._cache.popitem(last=False)
        if isinstance(result, KeyopsError):
            raise result
        return result

    def _principal(self, data: dict[str, object]) -> access.Principal:
        accessor = str(data.get("accessor") or "") or None
        meta = data.get("meta")
        approle = meta.get("role_name") if isinstance(meta, dict) else None
        actor = f"approle:{approle}" if approle else f"token:{accessor or 'unknown'}"
        policies: list[str] = []
        for key in ("policies", "identity_policies"):
            found = data.get(key)
            if isinstance(found, list):
                policies.extend(str(p) for p in found)
        return access.principal_from_policies(policies, self.roles, actor, accessor,
                                              str(approle) if approle else None)


def _seconds_left(expire_time: object) -> float:
    """Seconds until a token's ``expire_time`` (RFC 3339, or None for a token that does not expire)."""
    if not isinstance(expire_time, str) or not expire_time:
        return float("inf")
    try:
        when = dt.datetime.fromisoformat(expire_time.replace("Z", "+00:00"))
    except ValueError:
        return 0.0  # not a time we understand: do not cache it at all
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
