"""Keeps a long-lived server's own Vault token alive.

A CLI run outlives no token; a KMS plugin or an API server runs for months.
Half-way through the token's life it is renewed (``renew-self``) when it is
renewable and the renewal still buys time, else replaced by a new login with
the configured auth method (AppRole, JWT, Kubernetes). A token that can be
neither is reported in the log while there is time to act.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from keyops.backends.vault import VaultStore
from keyops.errors import KeyopsError

#: The part of a token's life left when it is renewed or replaced.
RENEW_AT = 0.5
#: Bounds of the pause between two checks.
MIN_PAUSE, MAX_PAUSE = 2.0, 300.0

_log = logging.getLogger("keyops.serve")


class TokenKeeper:
    def __init__(self, store: VaultStore, *, can_log_in: bool) -> None:
        self.store = store
        self.can_log_in = can_log_in
        self.renewals = 0
        self.logins = 0

    def step(self) -> float:
        """Renew or replace the token if half its life is gone; the seconds until the next step."""
        data = self.store.lookup_self()
        ttl = int(data.get("ttl") or 0)
        if ttl == 0:
            return MAX_PAUSE  # a token that does not expire (root, or a periodic one with no TTL)
        full = max(int(data.get("creation_ttl") or 0), ttl)
        if ttl <= full * RENEW_AT:
            ttl = self._refresh(data, ttl, full)
        return min(MAX_PAUSE, max(MIN_PAUSE, ttl * RENEW_AT / 2))

    def _refresh(self, data: dict[str, Any], ttl: int, full: int) -> int:
        if data.get("renewable"):
            try:
                renewed = int(self.store.renew_self().get("lease_duration") or 0)
            except KeyopsError as exc:
                if not self.can_log_in:
                    raise
                _log.warning("renewing the Vault token failed (%s); logging in again", exc.code)
            else:
                self.renewals += 1
                # Near its max TTL a renewal buys little: a new login then buys a whole life.
                if renewed > full * RENEW_AT or not self.can_log_in:
                    return renewed
        if self.can_log_in:
            lease = int(self.store.log_in_again().get("lease_duration") or 0)
            self.logins += 1
            _log.info("logged in to Vault again: the token had %d s left", ttl)
            return lease
        _log.warning("the Vault token expires in %d s and can be neither renewed nor replaced (no auth method "
                     "is configured): give this server a renewable token or an auth method", ttl)
        return ttl


def keep_token_alive(keeper: TokenKeeper, stop: threading.Event) -> None:
    """``keeper.step`` until ``stop``; a failed step is logged and tried again soon."""
    pause = 0.0
    while not stop.wait(pause):
        try:
            pause = keeper.step()
        except KeyopsError as exc:
            _log.warning("checking the Vault token failed: %s: %s", exc.code, exc)
            pause = MIN_PAUSE * 5
