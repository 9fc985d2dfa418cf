"""Vault Transit's request and response bodies, over ``keyops.serve``'s operations.

Field names, base64 conventions, batch semantics (``reference`` echoed, order
kept, a failed item answered in place with ``error`` and the request with 400,
or ``partial_failure_response_code``) follow Transit's API, so that its
clients need no change. What differs is said where it differs: ciphertexts
are keyops' own (``keyops:v1:...``), ``associated_data`` is bound on every
operation (``rewrap`` too), and key derivation (``context``) is refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from keyops.errors import InvalidInput
from keyops.serve import admin
from keyops.serve.callers import Caller
from keyops.serve.service import Item, ItemResult, Service

Answer = tuple[int, dict[str, Any]]


def b64decode(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"failed to base64-decode {field}") from None


def _item(raw: Any, want: str) -> Item:
    item = Item()
    if not isinstance(raw, dict):
        item.error = InvalidInput("each batch_input item must be a JSON object")
        return item
    ref = raw.get("reference")
    item.reference = ref if isinstance(ref, str) else None
    try:
        if raw.get("context"):
            raise InvalidInput("context (key derivation) is not supported by keyops; bind data with "
                               "associated_data instead")
        if raw.get("associated_data") not in (None, ""):
            item.context = b64decode(raw["associated_data"], "associated_data")
        value = raw.get(want)
        if want == "plaintext":
            item.plaintext = None if value is None else b64decode(value, "plaintext")
        elif value is not None:
            if not isinstance(value, str):
                raise InvalidInput("ciphertext must be a string")
            item.ciphertext = value
    except InvalidInput as exc:
        item.error = exc
    return item


def items_of(body: dict[str, Any], want: str) -> tuple[list[Item], bool]:
    """The request's items and whether it was a batch (``batch_input``) rather than one item."""
    batch = body.get("batch_input")
    if batch is None:
        return [_item(body, want)], False
    if not isinstance(batch, list) or not batch:
        raise InvalidInput("batch_input must be a non-empty list of JSON objects")
    return [_item(raw, want) for raw in batch], True


def _view(result: ItemResult, fields: tuple[str, ...]) -> dict[str, Any]:
    if result.error is not None:
        out: dict[str, Any] = {"error": str(result.error)}
    else:
        out = {}
        if "ciphertext" in fields:
            out["ciphertext"] = result.ciphertext
        if "plaintext" in fields and result.plaintext is not None:
            out["plaintext"] = base64.b64encode(result.plaintext).decode("ascii")
        if "key_version" in fields:
            out["key_version"] = result.key_version
    if result.reference is not None:
        out["reference"] = result.reference
    return out


#: Set on an answer for the access record (the versions used), and taken off before it is sent.
VERSIONS = "_keyops_versions"


def answer_items(results: list[ItemResult], batch: bool, body: dict[str, Any], fields: tuple[str, ...]) -> Answer:
    status, payload = _answer_items(results, batch, body, fields)
    payload[VERSIONS] = sorted({r.key_version for r in results if r.key_version is not None})
    return status, payload


def _answer_items(results: list[ItemResult], batch: bool, body: dict[str, Any], fields: tuple[str, ...]) -> Answer:
    if not batch:
        first = results[0]
        if first.error is not None:
            raise first.error
        view = _view(first, fields)
        view.pop("reference", None)
        return 200, {"data": view}
    failed = sum(1 for r in results if r.error is not None)
    status = 200
    if failed:
        status = 400
        code = body.get("partial_failure_response_code")
        if failed < len(results) and isinstance(code, int) and 100 <= code <= 599:
            status = code
    return status, {"data": {"batch_results": [_view(r, fields) for r in results]}}


def _key_version(body: dict[str, Any]) -> int:
    value = body.get("key_version", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("key_version must be a whole number")
    return value


def encrypt(service: Service, caller: Caller, tenant: str, body: dict[str, Any]) -> Answer:
    items, batch = items_of(body, "plaintext")
    results = service.encrypt(caller, tenant, items, _key_version(body))
    return answer_items(results, batch, body, ("ciphertext", "key_version"))


def decrypt(service: Service, caller: Caller, tenant: str, body: dict[str, Any]) -> Answer:
    items, batch = items_of(body, "ciphertext")
    return answer_items(service.decrypt(caller, tenant, items), batch, body, ("plaintext",))


def rewrap(service: Service, caller: Caller, tenant: str, body: dict[str, Any]) -> Answer:
    items, batch = items_of(body, "ciphertext")
    return answer_items(service.rewrap(caller, tenant, items), batch, body, ("ciphertext", "key_version"))


def datakey(service: Service, caller: Caller, tenant: str, body: dict[str, Any], kind: str) -> Answer:
    if kind not in ("plaintext", "wrapped"):
        raise InvalidInput(f"datakey type must be plaintext or wrapped, not {kind!r}")
    if body.get("context"):
        raise InvalidInput("context (key derivation) is not supported by keyops; use associated_data")
    bits = body.get("bits", 256)
    if isinstance(bits, str) and bits.isdigit():
        bits = int(bits)  # the bao CLI sends key=value pairs as strings
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise InvalidInput("bits must be 128, 256 or 512")
    context = b""
    if body.get("associated_data") not in (None, ""):
        context = b64decode(body["associated_data"], "associated_data")
    key, text, version = service.datakey(caller, tenant, bits, context)
    data: dict[str, Any] = {"ciphertext": text, "key_version": version}
    if kind == "plaintext":
        data["plaintext"] = base64.b64encode(key).decode("ascii")
    return 200, {"data": data}


def read_key(service: Service, caller: Caller, tenant: str) -> Answer:
    return 200, {"data": service.key(caller, tenant)}


def rotate_key(service: Service, caller: Caller, token: str, tenant: str) -> Answer:
    admin.rotate_key(service, caller, token, tenant, "dek")
    return read_key(service, caller, tenant) if caller.may("keyring.read", tenant) else (204, {})
