"""What a server does with its caller's own Vault token: rotations, tenant creation, status.

These change keyrings, so they run through a ``Keyops`` of the caller's token
(and this process's HSM PIN), not the server's: Vault enforces the caller's
policies on every write, and the audit trail names the caller. The server's
own check comes first (``Caller.require``), so that a refusal names the role
that is missing and changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, Literal

from keyops.config import Config
from keyops.errors import InvalidInput
from keyops.model.keyring import Policy
from keyops.model.names import validate_tenant
from keyops.ops.front import Keyops
from keyops.ops.results import TenantResult
from keyops.ops.rotation import RotationResult, rotate
from keyops.ops.views import to_json
from keyops.serve.callers import Caller
from keyops.serve.service import Service

POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))


@contextlib.contextmanager
def as_caller(config: Config, token: str) -> Iterator[Keyops]:
    """A ``Keyops`` acting with ``token`` for one request; its leases end and its HSM session closes after."""
    own = dataclasses.replace(config, vault_token=token, vault_token_file=None, approle_role_id=None,
                              approle_secret_id=None)
    audit = None
    try:
        from keyops.audit import sink_from_config
    except ImportError:  # pragma: no cover - the audit package ships with keyops
        pass
    else:
        audit = sink_from_config(own)  # its own sink: a sink attaches to one token's store
    with Keyops(own, audit=audit, pool_size=2) as k:  # type: ignore[arg-type]  # see keyops.cli._common
        yield k


def rotate_key(service: Service, caller: Caller, token: str, tenant: str,
               level: Literal["dek", "kek"] = "dek") -> RotationResult:
    caller.require("rotate", tenant)
    tenant = validate_tenant(tenant)
    with as_caller(service.k.config, token) as k:
        result = rotate(k, tenant, level, reason="through keyops serve")
    service.refresh(tenant)
    return result


def policy_from(body: dict[str, Any]) -> Policy:
    unknown = sorted(set(body) - set(POLICY_FIELDS) - {"tenant"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(unknown)}; known: tenant, {', '.join(POLICY_FIELDS)}")
    return Policy(**{name: body[name] for name in POLICY_FIELDS if name in body})


def generate_kek(service: Service, caller: Caller, token: str, body: dict[str, Any]) -> TenantResult:
    """Create the tenant (its first KEK and DEK); idempotent, as ``keyops tenant create`` is."""
    tenant = body.get("tenant")
    if not isinstance(tenant, str):
        raise InvalidInput("missing tenant: a tenant name (string) is required")
    caller.require("tenant.create", tenant)
    tenant = validate_tenant(tenant)
    policy = policy_from(body)
    with as_caller(service.k.config, token) as k:
        return k.create_tenant(tenant, policy)


def status(service: Service, caller: Caller, tenant: str | None) -> Any:
    """``keyops status`` for one tenant (``keyring.read``) or every tenant (``status.read``), as JSON."""
    if tenant is None:
        caller.require("status.read")
        return to_json(service.k.status())
    caller.require("keyring.read", tenant)
    return to_json(service.k.tenant_status(validate_tenant(tenant)))
