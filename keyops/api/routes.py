"""Which path and method runs what: Transit's paths under ``/v1/<mount>/``, health, metrics, the seed's API.

A route says whether it needs a caller (a Vault token) and whether it may
block on Vault or the HSM: those run in a worker thread, so that the event
loop keeps serving the encryptions and decryptions, which answer from memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from keyops.api import seed, transit
from keyops.serve.callers import Caller
from keyops.serve.service import Service

Answer = tuple[int, Any]


@dataclasses.dataclass(frozen=True)
class Request:
    service: Service
    caller: Caller | None
    token: str | None
    params: tuple[str, ...]
    body: dict[str, Any]
    query: dict[str, str]

    @property
    def who(self) -> Caller:
        assert self.caller is not None  # routes with ``caller=True`` only
        return self.caller


@dataclasses.dataclass(frozen=True)
class Route:
    operation: str  # the name in metrics and access records
    methods: frozenset[str]
    run: Callable[[Request], Answer]
    caller: bool = True
    blocking: bool = False


WRITE = frozenset({"POST", "PUT"})
READ = frozenset({"GET"})


def _transit_routes() -> dict[str, Route]:
    return {
        "encrypt": Route("encrypt", WRITE, lambda r: transit.encrypt(r.service, r.who, r.params[0], r.body)),
        "decrypt": Route("decrypt", WRITE, lambda r: transit.decrypt(r.service, r.who, r.params[0], r.body)),
        # A rewrap of a ciphertext already under the primary reads the keyring afresh: it may block.
        "rewrap": Route("rewrap", WRITE, lambda r: transit.rewrap(r.service, r.who, r.params[0], r.body),
                        blocking=True),
        "datakey": Route("datakey", WRITE, lambda r: transit.datakey(r.service, r.who, r.params[1], r.body,
                                                                     r.params[0])),
        "keys": Route("keys.read", READ, lambda r: transit.read_key(r.service, r.who, r.params[0]), blocking=True),
        "keys/rotate": Route("keys.rotate", WRITE, lambda r: transit.rotate_key(
            r.service, r.who, r.token or "", r.params[0]), blocking=True),
    }


TRANSIT = _transit_routes()
SEED = {
    "generate": Route("kek.generate", WRITE, lambda r: seed.generate(r.service, r.who, r.token or "", r.body),
                      blocking=True),
    "rotate": Route("kek.rotate", WRITE, lambda r: seed.rotate(r.service, r.who, r.token or "", r.body),
                    blocking=True),
    "status": Route("kek.status", READ, lambda r: seed.status(r.service, r.who, r.query), blocking=True),
}


def find(mount: str, path: str) -> tuple[Route, tuple[str, ...]] | None:
    """The route of ``path`` and its parameters (tenant, datakey type), or None for an unknown path."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["api"] and len(parts) == 4 and parts[1:3] == ["v1", "kek"] and parts[3] in SEED:
        return SEED[parts[3]], ()
    if parts[:1] != ["v1"]:
        return None
    rest = parts[1:]
    prefix = mount.split("/")
    if rest[:len(prefix)] != prefix:
        return None
    rest = rest[len(prefix):]
    if len(rest) == 2 and rest[0] in ("encrypt", "decrypt", "rewrap", "keys"):
        return TRANSIT[rest[0]], (rest[1],)
    if len(rest) == 3 and rest[0] == "keys" and rest[2] == "rotate":
        return TRANSIT["keys/rotate"], (rest[1],)
    if len(rest) == 3 and rest[0] == "datakey":
        return TRANSIT["datakey"], (rest[1], rest[2])
    return None
