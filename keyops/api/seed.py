"""The seed's own endpoints, ``/api/v1/kek/{generate,rotate,status}``: tenant creation, KEK rotation, status.

Bodies and answers are JSON (docs/http-api.md); errors are Vault-shaped, as on every other path.
"""

from __future__ import annotations

from typing import Any

from keyops.errors import InvalidInput
from keyops.ops.views import to_json
from keyops.serve import admin
from keyops.serve.callers import Caller
from keyops.serve.service import Service

Answer = tuple[int, Any]


def generate(service: Service, caller: Caller, token: str, body: dict[str, Any]) -> Answer:
    result = admin.generate_kek(service, caller, token, body)
    return (201 if result.changed else 200), {
        "tenant": result.tenant, "changed": result.changed, "kek_version": result.kek_version,
        "dek_version": result.dek_version,
        "kek_residence": result.keyring.policy.kek_residence if result.keyring else None}


def rotate(service: Service, caller: Caller, token: str, body: dict[str, Any]) -> Answer:
    tenant = body.get("tenant")
    if not isinstance(tenant, str):
        raise InvalidInput("missing tenant: a tenant name (string) is required")
    unknown = sorted(set(body) - {"tenant"})
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(unknown)}; known: tenant")
    result = admin.rotate_key(service, caller, token, tenant, "kek")
    return 200, to_json(result)


def status(service: Service, caller: Caller, query: dict[str, str]) -> Answer:
    unknown = sorted(set(query) - {"tenant"})
    if unknown:
        raise InvalidInput(f"unknown query parameter(s) {', '.join(unknown)}; known: tenant")
    return 200, admin.status(service, caller, query.get("tenant"))
