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
connections per host that never blocks; no retries of urllib3's own (keyops'
are below); redirects followed, up to 30, as requests does. What is not offered, because keyops never asks for
it: client certificates and proxies (refused, not ignored).

Every request has a deadline, whole: the ``timeout`` hvac passes (keyops'
``KEYOPS_VAULT_TIMEOUT``) bounds connecting, sending and reading the complete
answer, not only each read. A per-read timeout alone lets a server (or a
proxy) that sends a byte every few seconds keep a request alive for ever, so
one watchdog thread shuts the socket of a request that passes its deadline,
and the request fails with ``TransportTimeout``.

Several nodes (an HA cluster): the session sends every request to the node
it knows as active, whatever address hvac built the URL from. It finds that
node with ``/v1/sys/health`` (200 active; 429 standby, 472/473 performance
standby, 501 uninitialised and 503 sealed are not), at the first request and
after a failure, and adopts the leader a standby's 307 redirect names.

Retries: a request is sent again, after a jittered, growing pause, while
``retry_window`` seconds have not passed since its first failure, when it
failed in a way a repeat cannot make worse:

* any request that no node received (no connection could be made), or that a
  node refused unread (503 sealed, 429);
* an idempotent request after a dropped connection or any other 5xx: reads
  (GET, LIST, HEAD) always, and the writes that the Vault boundary declares
  safe to repeat (``idempotent()``: check-and-set writes, whose guard refuses
  a second application, and Transit encrypt, decrypt and HMAC).

A request past its deadline is not sent again: the deadline is the bound of
one request, and a stalled network is reported, not waited out twice. Every
retry, failover and health probe is reported to ``count`` (the Vault
boundary's CallCounter: ``vault.retry``, ``vault.failover``, ``vault.probe``).

Transport failures are raised as ``TransportError`` and its subclasses, which
``keyops.backends.vault`` maps to keyops errors with every other Vault error.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import os
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import certifi
import urllib3
import urllib3.connection
import urllib3.exceptions
import urllib3.util

_MAX_REDIRECTS = 30  # requests' limit
_USER_AGENT = "keyops"
_READS = frozenset({"GET", "HEAD", "LIST"})
#: Answers after which an idempotent request is sent again (501, "not initialised", is not transient).
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Answers that say the node did nothing with the request, so any request may be sent again.
_REFUSED_STATUS = frozenset({429})
_SEALED = b"vault is sealed"
_PAUSE_FIRST = 0.05  # seconds; doubled after each retry, up to _PAUSE_MOST
_PAUSE_MOST = 0.5
_PROBE_TIMEOUT = 2.0  # seconds, at most, for one node's /v1/sys/health


class TransportError(Exception):
    """The request did not get an answer: no connection, a dropped one, or a bad URL.

    ``reason``: what happened, in a few words ("connection refused"), for messages.
    ``sent``: False when no connection was made, so no server can have seen the request.
    """

    def __init__(self, text: str, reason: str = "", *, sent: bool = True) -> None:
        super().__init__(text)
        self.reason = reason or text
        self.sent = sent


class TransportTimeout(TransportError):
    """No connection or no answer within the timeout."""


class TlsVerifyFailed(TransportError):
    """The server's certificate did not verify (or the TLS handshake failed)."""


# --- deadlines ------------------------------------------------------------------------------


class _Watch:
    """One request's deadline and the connection it runs on."""

    __slots__ = ("conn", "deadline", "done", "fired")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: Any = None
        self.done = False
        self.fired = False

    def attach(self, conn: Any) -> None:
        self.conn = conn
        if self.fired:
            _shut(conn)

    def expire(self) -> None:
        self.fired = True
        if self.conn is not None:
            _shut(self.conn)


def _shut(conn: Any) -> None:
    """Wake a read blocked on ``conn``'s socket: it sees the end of the stream and fails."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        # socket.socket's own shutdown, also for a TLS socket: SSLSocket.shutdown would drop its
        # TLS state under the thread that is reading. OSError: it is closed already.
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One thread for every request's deadline: it expires watches whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, watch: _Watch) -> None:
        with self._cond:
            # Finished requests are dropped from the top here, so the heap holds about the requests in flight.
            while self._heap and self._heap[0][2].done:
                heapq.heappop(self._heap)
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="keyops-vault-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    watch = heapq.heappop(self._heap)[2]
                    if not watch.done:
                        watch.expire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
_current = threading.local()  # the watch of the request this thread is sending; whether it is idempotent


def resent() -> bool:
    """Whether this thread's last request was sent again after an attempt that a node may have applied.

    A check-and-set write whose first attempt landed but whose answer was
    lost fails its repeat's check; the Vault boundary then reads the document
    back to tell its own write from another writer's.
    """
    return bool(getattr(_current, "resent", False))


@contextlib.contextmanager
def idempotent() -> Iterator[None]:
    """Declare the requests this thread sends inside as safe to repeat (see the module's docstring)."""
    before = getattr(_current, "idempotent", False)
    _current.idempotent = True
    try:
        yield
    finally:
        _current.idempotent = before


class _Watched:
    """Connections that tell the request's watch which socket to shut (urllib3 calls both in the sending thread)."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watched()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._watched()  # a connection from the pool is already connected
        super().request(*args, **kwargs)  # type: ignore[misc]

    def _watched(self) -> None:
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.attach(self)


class _HTTPConnection(_Watched, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: dict[str, Any] = {"http": _HTTPPool, "https": _HTTPSPool}


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

    def __init__(self, verify: bool | str = True, pool_size: int = 32, *, nodes: Sequence[str] = (),
                 retry_window: float = 0.0, count: Callable[[str], None] | None = None) -> None:
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
        # No retries of urllib3's: a request that failed may have been applied; request() decides.
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
        self._redirects.pool_classes_by_scheme = _POOLS  # redirected requests keep their deadline too
        self._nodes = tuple(_origin(node) for node in nodes)
        self._active = self._nodes[0] if self._nodes else ""
        self._found = len(self._nodes) < 2  # with several nodes, the first request asks which is active
        self.retry_window = retry_window
        self.count: Callable[[str], None] = count or _uncounted

    @property
    def active(self) -> str:
        """The origin of the node requests go to ("" when no nodes were given: each URL's own)."""
        return self._active

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
        if not self._found:
            self._find_active(timeout)
        may_repeat = method in _READS or getattr(_current, "idempotent", False)
        _current.resent = False
        first_failure: float | None = None
        attempt = 0
        while True:
            url = self._routed(url)
            failure: TransportError | None = None
            try:
                resp = self._send(method, url, body, send_headers, allow_redirects, timeout)
            except TransportError as exc:
                if isinstance(exc, (TransportTimeout, TlsVerifyFailed)) or not (may_repeat or not exc.sent):
                    raise
                failure = exc
            else:
                if resp.status_code not in _RETRY_STATUS or not (may_repeat or _refused(resp)):
                    return resp
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            attempt += 1
            pause = min(_PAUSE_MOST, _PAUSE_FIRST * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
            if now + pause - first_failure > self.retry_window:
                if failure is not None:
                    raise failure
                return resp
            self.count("vault.retry")
            if (failure.sent if failure is not None else not _refused(resp)):
                _current.resent = True  # the attempt may have been applied: VaultStore.write checks its repeat
            time.sleep(pause)
            if len(self._nodes) > 1:
                self._find_active(timeout)

    def _send(self, method: str, url: str, body: bytes | None, send_headers: dict[str, str],
              allow_redirects: bool, timeout: Any) -> Response:
        """One attempt, with its own deadline (redirects followed within it)."""
        limits, total = self._timeout(timeout)
        pool, path = self._pool(url)
        watch = None
        if total is not None:
            watch = _current.watch = _Watch(time.monotonic() + total)
            _WATCHDOG.arm(watch)
        try:
            resp = pool.urlopen(method, path, body=body, headers=send_headers, retries=self._once, redirect=False,
                                assert_same_host=False, timeout=limits, preload_content=True)
            location = resp.get_redirect_location()
            if allow_redirects and location:
                # A standby node's redirect, say: send it again through urllib3's own redirect logic.
                self._adopt(urllib.parse.urljoin(url, location))
                resp = self._redirects.urlopen(method, url, body=body, headers=send_headers, retries=self._follow,
                                               redirect=True, timeout=limits, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            if watch is not None and watch.fired:
                raise TransportTimeout(f"no complete answer within {total:g} s",
                                       f"no complete answer within {total:g} s") from exc
            reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else None
            raise _failure(reason or exc) from exc
        finally:
            if watch is not None:
                watch.done = True
                _current.watch = None
        return Response(resp.status, resp.headers, resp.data, url, resp.reason)

    def _routed(self, url: str) -> str:
        """``url`` sent to the active node when it names one of the cluster's nodes."""
        if len(self._nodes) < 2:
            return url
        origin = _origin(url)
        if origin != self._active and origin in self._nodes:
            return self._active + url[len(origin):]
        return url

    def _adopt(self, url: str) -> None:
        """Make the node of ``url`` the active one, when it is one of the cluster's (a redirect's target)."""
        origin = _origin(url)
        if origin != self._active and origin in self._nodes:
            self._active = origin
            self.count("vault.failover")

    def _find_active(self, timeout: Any) -> None:
        """Ask each node's ``/v1/sys/health``, the current one first; the first that answers 200 is active.

        When none does (an election under way, every node sealed), the current
        node stays: the next attempt finds out again.
        """
        self._found = True
        _, total = self._timeout(timeout)
        limit = min(_PROBE_TIMEOUT, total) if total else _PROBE_TIMEOUT
        for origin in sorted(self._nodes, key=lambda node: node != self._active):
            self.count("vault.probe")
            try:
                # standbyok=false: a standby answers 429 even where Vault would let it read.
                resp = self._send("GET", origin + "/v1/sys/health", None, {}, False, limit)
            except TransportError:
                continue
            if resp.status_code == 200:
                if origin != self._active:
                    self._active = origin
                    self.count("vault.failover")
                return

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
                        parts = urllib3.util.parse_url(origin)
                        if parts.scheme not in _POOLS or not parts.host:
                            raise urllib3.exceptions.LocationValueError(f"not an http(s) address: {origin!r}")
                        pool = _POOLS[parts.scheme](parts.host, port=parts.port, **self._settings, **tls)
                    except urllib3.exceptions.HTTPError as exc:  # e.g. a malformed VAULT_ADDR
                        raise _failure(exc) from exc
                    self._origins[origin] = pool
        return pool, "/" + path

    def _timeout(self, value: Any) -> tuple[urllib3.Timeout, float | None]:
        """``requests``' forms: seconds, ``(connect, read)`` or None (wait for ever).

        Also the request's deadline, whole: the seconds given, or of the pair, the longer.
        """
        key = tuple(value) if isinstance(value, list) else value
        found = self._timeouts.get(key)
        if found is None:
            connect, read = key if isinstance(key, tuple) else (key, key)
            found = self._timeouts[key] = urllib3.Timeout(connect=connect, read=read)
        if isinstance(key, tuple):
            return found, max((float(v) for v in key if v is not None), default=None)
        return found, None if key is None else float(key)

    def close(self) -> None:
        with self._lock:
            pools, self._origins = list(self._origins.values()), {}
        for pool in pools:
            pool.close()
        self._redirects.clear()

    def __repr__(self) -> str:
        return f"<keyops Vault transport verify={self.verify!r}>"


def _uncounted(kind: str) -> None:
    """The default ``count``: a session used without a Vault boundary counts nothing."""


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL, as written (no trailing slash or path)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}"


def _refused(resp: Response) -> bool:
    """The node did nothing with the request: it is sealed, or it refused it (429)."""
    return resp.status_code in _REFUSED_STATUS or (resp.status_code == 503 and _SEALED in resp.content.lower())


def _dumps(value: Any) -> bytes:
    # As requests sends json=: no NaN or Infinity, which are not JSON.
    return json.dumps(value, allow_nan=False).encode("utf-8")


def _failure(reason: BaseException) -> TransportError:
    """The TransportError for urllib3's failure ``reason`` (its message names the host, never a header)."""
    text = f"{type(reason).__name__}: {reason}"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return TlsVerifyFailed(text, "TLS handshake or certificate verification failed")
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return TransportError(text, "its host name does not resolve")
    # NewConnectionError derives from ConnectTimeoutError, yet means "refused" or "no route".
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return TransportError(text, os_reason(reason) or "no connection could be made", sent=False)
    if isinstance(reason, urllib3.exceptions.TimeoutError):
        return TransportTimeout(text, "no answer in time")
    if isinstance(reason, urllib3.exceptions.ProtocolError):
        return TransportError(text, os_reason(reason) or "the connection was dropped before a complete answer")
    return TransportError(text, os_reason(reason))


def os_reason(exc: BaseException) -> str:
    """The operating system's word for a failed connection ("connection refused"), when there is one."""
    seen: BaseException | None = exc
    for _ in range(5):  # a short chain of causes, never a loop
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror[:1].lower() + seen.strerror[1:]
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, OSError) and arg.strerror:
                return arg.strerror[:1].lower() + arg.strerror[1:]
        seen = seen.__cause__ or seen.__context__
    return ""
