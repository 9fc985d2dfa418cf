"""A server's health: Vault answers and is unsealed; the HSM master key wraps and unwraps (when used).

Probed at most once per ``ttl`` seconds, so that a monitoring loop or a load
balancer polling ``/v1/sys/health`` costs Vault and the HSM nothing more.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from keyops.errors import KeyopsError, KeyStateError
from keyops.ops.front import Keyops
from keyops.serve.tenant_keys import short_reason

_PROBE_CONTEXT = b"keyops-serve-health-hsm"
DEFAULT_TTL = 2.0


def uses_hsm(k: Keyops) -> bool:
    """Whether this server was given the HSM PIN (a server of ``transit`` tenants only runs without)."""
    return bool(k.config.pkcs11_pin or k.config.pkcs11_pin_file)


class HealthProbe:
    def __init__(self, k: Keyops, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.k = k
        self.ttl = ttl
        self.clock = clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def check(self) -> dict[str, Any]:
        """``{"vault": "ok"|reason, "hsm": "ok"|"not used"|reason, "initialized", "sealed", "standby", "ok"}``."""
        with self._lock:
            if self._cached is not None and self.clock() < self._cached[0]:
                return self._cached[1]
            found = self._probe()
            self._cached = (self.clock() + self.ttl, found)
            return found

    def _probe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"initialized": True, "sealed": False, "standby": False}
        try:
            vault = self.k.store.server_health()
        except KeyopsError as exc:
            out.update(vault=short_reason(exc), initialized=False)
        else:
            out.update(initialized=bool(vault.get("initialized")), sealed=bool(vault.get("sealed")),
                       standby=bool(vault.get("standby")))
            out["vault"] = "ok" if out["initialized"] and not out["sealed"] else "sealed or not initialized"
        out["hsm"] = self._hsm() if uses_hsm(self.k) else "not used"
        out["ok"] = out["vault"] == "ok" and out["hsm"] in ("ok", "not used")
        return out

    def _hsm(self) -> str:
        try:
            _, wrapper = self.k.hierarchy.master_wrapper()
            probe = os.urandom(32)
            if wrapper.unwrap(wrapper.wrap(probe, _PROBE_CONTEXT), _PROBE_CONTEXT) != probe:
                raise KeyStateError("the master key does not decrypt what it encrypts")
        except KeyopsError as exc:
            return short_reason(exc)
        return "ok"
