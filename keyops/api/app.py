"""The ASGI application of ``keyops serve``: bodies in, Vault-shaped answers out, one access record each.

Written against ASGI itself, without a framework: a request is a few dict
look-ups from its route, and the hot path (encrypt, decrypt, datakey) runs on
the event loop, since it answers from memory; what may block on Vault or the
HSM runs in a worker thread. Every failure becomes ``{"errors": [...]}`` with
Vault's status code; an unexpected one is logged here with its traceback and
answered with "internal error", so no traceback ever reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from keyops.api import routes, transit
from keyops.errors import (
    Conflict,
    DecryptionError,
    InvalidInput,
    KeyopsError,
    KeyStateError,
    NotFound,
    PermissionDenied,
)
from keyops.serve.callers import Caller
from keyops.serve.metrics import CONTENT_TYPE
from keyops.serve.service import Service

DEFAULT_MAX_BODY = 1024 * 1024
_log = logging.getLogger("keyops.serve")
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class TooLarge(InvalidInput):
    code = "too_large"


class UnknownPath(InvalidInput):
    code = "unknown_path"


class BadMethod(InvalidInput):
    code = "unsupported_operation"


def http_status(exc: KeyopsError) -> int:
    for kind, status in ((TooLarge, 413), (UnknownPath, 404), (BadMethod, 405), (PermissionDenied, 403),
                         (Conflict, 409),
                         (DecryptionError, 400), (InvalidInput, 400), (NotFound, 404), (KeyStateError, 400)):
        if isinstance(exc, kind):
            return status
    return 503 if exc.retryable else 500


class Api:
    def __init__(self, service: Service, *, mount: str = "transit", max_body: int = DEFAULT_MAX_BODY,
                 metrics_token: bool = True, on_startup: Callable[[], None] | None = None,
                 on_shutdown: Callable[[], None] | None = None) -> None:
        self.service = service
        self.mount = mount.strip("/")
        self.max_body = max_body
        self.metrics_token = metrics_token
        self.on_startup = on_startup
        self.on_shutdown = on_shutdown

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.on_startup is not None:
                        await asyncio.get_running_loop().run_in_executor(None, self.on_startup)
                except KeyopsError as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"{exc.code}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.on_shutdown is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self.on_shutdown)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        operation, status, tenant, accessor, versions, items = "unknown", 500, None, None, None, None
        result = "ok"
        try:
            path, method = scope["path"], scope["method"]
            if path in ("/v1/sys/health", "/metrics", "/v1/sys/metrics"):
                operation = "health" if path == "/v1/sys/health" else "metrics"
                status = await self._special(operation, scope, receive, send)
                return
            found = routes.find(self.mount, path)
            if found is None:
                raise UnknownPath("no handler for route: an unknown path")
            route, params = found
            operation = route.operation
            tenant = params[-1] if params else None
            if method not in route.methods:
                raise BadMethod(f"unsupported operation: {method} on {operation}; use "
                                f"{' or '.join(sorted(route.methods))}")
            body = await self._body(scope, receive)
            token = _token(scope)
            caller = await self._caller(token) if route.caller else None
            accessor = caller.accessor if caller else None
            request = routes.Request(self.service, caller, token, params, body, _query(scope))
            if route.blocking:
                status, payload = await asyncio.get_running_loop().run_in_executor(None, route.run, request)
            else:
                status, payload = route.run(request)
            versions, items = _versions(payload)
            if status >= 400:
                result = "error:partial"
            await _send_json(send, status, payload)
        except KeyopsError as exc:
            status, result = http_status(exc), f"error:{exc.code}"
            await _send_json(send, status, {"errors": [str(exc)]})
        except Exception:  # a bug: logged with its traceback here, never shown to the client
            _log.exception("internal error in %s", operation)
            status, result = 500, "error:internal"
            await _send_json(send, 500, {"errors": ["internal error; see the server's log"]})
        finally:
            seconds = time.perf_counter() - started
            self.service.metrics.observe(operation, status, seconds)
            self.service.access_log.record(
                request_id=uuid.uuid4().hex[:16], remote=(scope.get("client") or ("", 0))[0], accessor=accessor,
                operation=operation, tenant=tenant, versions=versions, items=items, status=status, result=result,
                duration_ms=round(seconds * 1000, 3))

    async def _caller(self, token: str | None) -> Caller:
        caller = self.service.callers.cached(token)
        if caller is not None:
            self.service.metrics.token_cache.labels("hit").inc()
            return caller
        self.service.metrics.token_cache.labels("miss").inc()
        return await asyncio.get_running_loop().run_in_executor(None, self.service.callers.lookup, token)

    async def _body(self, scope: dict[str, Any], receive: Receive) -> dict[str, Any]:
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            raise TooLarge(f"request body too large: at most {self.max_body} bytes are accepted")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge(f"request body too large: at most {self.max_body} bytes are accepted")
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        raw = b"".join(chunks)
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInput(f"failed to parse JSON input: {type(exc).__name__} at position "
                               f"{getattr(exc, 'pos', '?')}") from None
        if not isinstance(body, dict):
            raise InvalidInput("failed to parse JSON input: the body must be a JSON object")
        return body

    async def _special(self, operation: str, scope: dict[str, Any], receive: Receive, send: Send) -> int:
        loop = asyncio.get_running_loop()
        if scope["method"] not in ("GET", "HEAD"):
            raise BadMethod(f"unsupported operation: {scope['method']} on {operation}; use GET")
        if operation == "health":
            health = await loop.run_in_executor(None, self.service.health.check)
            query = _query(scope)
            status = 200 if health["ok"] else _code(query.get("sealedcode"), 503)
            await _send_json(send, status, {**health, "server_time_utc": int(time.time()),
                                            "version": "keyops", "cluster_name": "keyops-serve"})
            return status
        if self.metrics_token:
            caller = await self._caller(_token(scope))
            caller.require("status.read")
        text = await loop.run_in_executor(None, self.service.metrics.exposition, self.service.state)
        headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(text)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": text})
        return 200


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _token(scope: dict[str, Any]) -> str | None:
    token = _header(scope, b"x-vault-token")
    if token:
        return token.strip()
    auth = _header(scope, b"authorization")
    if auth and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def _query(scope: dict[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string") or b""
    return dict(urllib.parse.parse_qsl(raw.decode("latin-1"))) if raw else {}


def _code(value: str | None, default: int) -> int:
    return int(value) if value and value.isdigit() and 100 <= int(value) <= 599 else default


def _versions(payload: Any) -> tuple[list[int] | None, int | None]:
    """Key versions and item count of an answer, for the access record (nothing else of it)."""
    if not isinstance(payload, dict):
        return None, None
    used = payload.pop(transit.VERSIONS, None)
    data = payload.get("data")
    if not isinstance(data, dict):
        return used or None, None
    if used is None:
        version = data.get("key_version", data.get("latest_version"))
        used = [version] if isinstance(version, int) else None
    results = data.get("batch_results")
    return used or None, len(results) if isinstance(results, list) else 1


async def _send_json(send: Send, status: int, payload: Any) -> None:
    body = b"" if status == 204 else json.dumps(payload, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
