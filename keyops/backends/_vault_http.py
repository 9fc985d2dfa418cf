"""Internal to the Vault backend, may change: a light HTTP transport for hvac.

hvac's adapters (``hvac.adapters.JSONAdapter``) send every request through
``session.request(method, url, headers=..., allow_redirects=..., timeout=...,
verify=..., cert=..., proxies=..., params=..., json=...)`` and read
``status_code``, ``ok``, ``headers``, ``text`` and ``json()`` from the
answer. ``Session`` offers exactly that over one urllib3 ``PoolManager``, so
hvac keeps building URLs, the token, namespace and ``X-Vault-Request``
headers, and keeps raising its exceptions from the status code, while the
per-request work of ``requests`` (settings merged from the environment,
cookie jars, hooks, a prepared request and a response object of many parts)
is gone. Against a local OpenBao that work was most of the client's CPU, more
than the server spent answering (docs/benchmarks.md).

What is kept from ``requests.Session`` as keyops used it: TLS verification
on unless ``verify`` is False, against ``certifi``'s bundle or the CA file
(or folder) named by ``verify``; no proxy and nothing else read from the
environment (keyops set ``trust_env = False``); a pool of ``pool_size``
connections per host that never blocks; no retries; redirects followed, up
to 30, as requests does. What is not offered, because keyops never asks for
it: client certificates and proxies (refused, not ignored).

Transport failures are raised as ``TransportError`` and its subclasses, which
``keyops.backends.vault`` maps to keyops errors with every other Vault error.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import certifi
import urllib3
import urllib3.exceptions

_MAX_REDIRECTS = 30  # requests' limit
_USER_AGENT = "keyops"


class TransportError(Exception):
    """The request did not get an answer: no connection, a dropped one, or a bad URL."""


class TransportTimeout(TransportError):
    """No connection or no answer within the timeout."""


class TlsVerifyFailed(TransportError):
    """The server's certificate did not verify (or the TLS handshake failed)."""


class Response:
    """The part of ``requests.Response`` that hvac reads."""

    __slots__ = ("content", "headers", "reason", "status_code", "url")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes, url: str,
                 reason: str | None = None) -> None:
        self.status_code = status_code
        self.headers = headers  # urllib3's HTTPHeaderDict: case-insensitive, as hvac expects
        self.content = content
        self.url = url
        self.reason = reason

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        # Vault answers JSON, which is UTF-8 (RFC 8259); requests would guess the encoding.
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The decoded body; ``ValueError`` when it is not JSON (hvac's JSONAdapter relies on that)."""
        return json.loads(self.content)

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


class Session:
    """A stand-in for ``requests.Session`` that hvac's adapters accept (see the module's docstring)."""

    def __init__(self, verify: bool | str = True, pool_size: int = 32) -> None:
        # hvac's Adapter reads these three when it is given a session.
        self.verify = verify
        self.cert = None
        self.proxies: dict[str, str] = {}
        tls: dict[str, Any]
        if verify is False:
            tls = {"cert_reqs": "CERT_NONE"}
        elif isinstance(verify, str):
            where = "ca_cert_dir" if os.path.isdir(verify) else "ca_certs"
            tls = {"cert_reqs": "CERT_REQUIRED", where: verify}
        else:
            tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": certifi.where()}
        # No retries (requests' default): a request that failed may have been applied.
        self._once = urllib3.Retry(total=None, connect=0, read=False, status=0, other=0, redirect=0,
                                   raise_on_redirect=False, raise_on_status=False)
        self._follow = self._once.new(redirect=_MAX_REDIRECTS)
        self._timeouts: dict[Any, urllib3.Timeout] = {}
        self._settings: dict[str, Any] = {"maxsize": pool_size, "block": False, "headers": {"User-Agent": _USER_AGENT}}
        self._tls = tls
        # One pool per origin asked for (in practice: VAULT_ADDR), looked up without parsing the URL
        # (PoolManager parses every URL it is given); redirects go through the PoolManager.
        self._origins: dict[str, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()
        self._redirects = urllib3.PoolManager(num_pools=4, **self._settings, **tls)

    def request(self, method: str, url: str, headers: Mapping[str, str] | None = None, *,
                allow_redirects: bool = True, timeout: Any = None, verify: bool | str | None = None,
                cert: Any = None, proxies: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
                json: Any = None, data: Any = None) -> Response:
        if cert or proxies:
            raise TransportError("client certificates and proxies are not supported by keyops' Vault transport")
        if verify is not None and verify != self.verify:
            # TLS settings are the pool's; a per-request change would silently not apply.
            raise TransportError("TLS verification is set once per Vault client, not per request")
        method = method.upper()
        if params:
            query = urllib.parse.urlencode([(k, v) for k, v in params.items() if v is not None], doseq=True)
            if query:
                url = f"{url}{'&' if '?' in url else '?'}{query}"
        send_headers = dict(headers or {})
        body: bytes | None = None
        if json is not None:
            body = _dumps(json)
            send_headers.setdefault("Content-Type", "application/json")
        elif data is not None:
            if isinstance(data, Mapping):
                body = urllib.parse.urlencode(list(data.items()), doseq=True).encode("ascii")
                send_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            else:
                body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        deadline = self._timeout(timeout)
        pool, path = self._pool(url)
        try:
            resp = pool.urlopen(method, path, body=body, headers=send_headers, retries=self._once, redirect=False,
                                assert_same_host=False, timeout=deadline, preload_content=True)
            if allow_redirects and resp.get_redirect_location():
                # A standby node's redirect, say: send it again through urllib3's own redirect logic.
                resp = self._redirects.urlopen(method, url, body=body, headers=send_headers, retries=self._follow,
                                               redirect=True, timeout=deadline, preload_content=True)
        except urllib3.exceptions.MaxRetryError as exc:
            raise _failure(exc.reason or exc) from exc
        except urllib3.exceptions.HTTPError as exc:
            raise _failure(exc) from exc
        return Response(resp.status, resp.headers, resp.data, url, resp.reason)

    def _pool(self, url: str) -> tuple[urllib3.HTTPConnectionPool, str]:
        """The pool of ``url``'s origin, and the rest of the URL (path and query)."""
        scheme, _, rest = url.partition("://")
        authority, _, path = rest.partition("/")
        origin = f"{scheme}://{authority}"
        pool = self._origins.get(origin)
        if pool is None:
            with self._lock:
                pool = self._origins.get(origin)
                if pool is None:
                    try:
                        tls = self._tls if scheme == "https" else {}  # plain HTTP pools take no TLS settings
                        pool = urllib3.connection_from_url(origin, **self._settings, **tls)
                    except urllib3.exceptions.HTTPError as exc:  # e.g. a malformed VAULT_ADDR
                        raise _failure(exc) from exc
                    self._origins[origin] = pool
        return pool, "/" + path

    def _timeout(self, value: Any) -> urllib3.Timeout:
        """``requests``' forms: seconds, ``(connect, read)`` or None (wait for ever)."""
        key = tuple(value) if isinstance(value, list) else value
        found = self._timeouts.get(key)
        if found is None:
            connect, read = key if isinstance(key, tuple) else (key, key)
            found = self._timeouts[key] = urllib3.Timeout(connect=connect, read=read)
        return found

    def close(self) -> None:
        with self._lock:
            pools, self._origins = list(self._origins.values()), {}
        for pool in pools:
            pool.close()
        self._redirects.clear()

    def __repr__(self) -> str:
        return f"<keyops Vault transport verify={self.verify!r}>"


def _dumps(value: Any) -> bytes:
    # As requests sends json=: no NaN or Infinity, which are not JSON.
    return json.dumps(value, allow_nan=False).encode("utf-8")


def _failure(reason: BaseException) -> TransportError:
    """The TransportError for urllib3's failure ``reason`` (its message names the host, never a header)."""
    text = f"{type(reason).__name__}: {reason}"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return TlsVerifyFailed(text)
    # NewConnectionError derives from ConnectTimeoutError, yet means "refused" or "no route".
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return TransportError(text)
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return TransportTimeout(text)
    return TransportError(text)
