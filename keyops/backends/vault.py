"""The Vault/OpenBao boundary: every request keyops sends to Vault goes through here.

KV v2 documents with check-and-set, Transit, policies, tokens, AppRole and
the few ``sys`` endpoints keyops reads. hvac exceptions (and the transport's)
are mapped to keyops errors here, once, and nowhere else. Every request is
counted (``calls``) so that tests and benchmarks can see what an operation
costs. Responses are never returned raw: Transit answers can carry
plaintext, token answers carry tokens.

Method names follow the Vault API and hvac (``read_policy``,
``create_or_update_approle``, ``transit_trim_key``); hvac's own calls are used
where hvac has one, and ``hvac.utils.format_url`` escapes the URL segments of
the few requests that hvac has no call for.
"""

from __future__ import annotations

import base64
import builtins
import collections
import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import hvac
import hvac.exceptions
import requests
import requests.adapters
from hvac.utils import format_url

from keyops import auth
from keyops.backends import _vault_http
from keyops.config import Config, is_dev_stack_addr
from keyops.errors import (
    AuthenticationFailed,
    CheckAndSetFailed,
    ConfigError,
    KeyNotFound,
    MountMissing,
    NamespaceNotFound,
    NotFound,
    PermissionDenied,
    TransitNotAuthentic,
    VaultError,
    VaultSealed,
    VaultUnreachable,
)

_CAS_MISMATCH = "check-and-set parameter did not match"
# Transit's 400 answers for a ciphertext it cannot open: a wrong key, context or tampered blob
# ("cipher: message authentication failed"), or a mangled one ("invalid ciphertext: ..."). Vault
# gives them no code of their own, so this is the one place that reads them.
_NOT_AUTHENTIC = ("authentication failed", "invalid ciphertext")
# Transit's 400 answer for an HMAC with a key that does not exist ("encryption key not found").
_KEY_NOT_FOUND = "key not found"
# A KV v2 mount's 400 answer for a moment after it is enabled ("Upgrading from non-versioned ...").
_UPGRADING = "upgrading"


class CallCounter:
    """Thread-safe counts of backend calls by kind (e.g. ``kv.read``)."""

    def __init__(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def add(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[kind] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self, prefix: str = "") -> int:
        with self._lock:
            return sum(v for k, v in self._counts.items() if k.startswith(prefix))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


# --- errors ----------------------------------------------------------------------------------


@contextlib.contextmanager
def vault_errors(what: str, addr: str = "", timeout: float | None = None, *, namespace: str | None = None,
                 missing_mount: str = "", transit_ciphertext: bool = False,
                 transit_key: bool = False, idempotent: bool = False, where: str = "") -> Iterator[None]:
    """Map the hvac and transport failures of one request to keyops errors.

    ``missing_mount``: what to say when Vault has no engine at the request's
    path (it answers 404 "no handler for route"), e.g. that KV mount
    ``keyops`` is missing and ``keyops init`` creates it. ``transit_ciphertext``:
    the request opens a Transit ciphertext, so Transit's "cannot open it"
    answers become ``TransitNotAuthentic``. ``transit_key``: Transit's "key
    not found" answer becomes ``KeyNotFound`` (HMAC endpoints answer 400 for a
    missing key, not 404). ``idempotent``: the request is safe to send again
    (a check-and-set write, a Transit encrypt), so the transport retries it
    through failovers as it retries reads. ``where``: the address(es) for
    messages (``Config.vault_where``), when not ``addr``.
    """
    where = where or addr or "the configured address"
    try:
        with _vault_http.idempotent() if idempotent else contextlib.nullcontext():
            yield
    except hvac.exceptions.Forbidden as exc:
        raise PermissionDenied(f"{what}: permission denied by Vault; the token's policies do not allow "
                               "this path (check the role or token)") from exc
    except hvac.exceptions.Unauthorized as exc:
        raise AuthenticationFailed(f"{what}: Vault rejected the credentials; log in again or check "
                                   "VAULT_TOKEN / AppRole settings") from exc
    except hvac.exceptions.VaultDown as exc:
        raise VaultSealed(f"{what}: Vault at {where} is sealed; "
                          "unseal it (keyops dev up does so for the local stack)") from exc
    except hvac.exceptions.InvalidPath as exc:
        text = _server_reason(exc)
        if _NO_NAMESPACE in text:
            raise NamespaceNotFound(f"{what}: namespace {namespace or ''!r} does not exist in Vault at {where}, "
                                    "or the token cannot see it; check VAULT_NAMESPACE") from exc
        if _NO_ROUTE in text:
            if missing_mount:
                raise MountMissing(f"{what}: {missing_mount}") from exc
            raise NotFound(f"{what}: Vault at {where} has nothing mounted at this path ({text})") from exc
        raise NotFound(f"{what}: not found in Vault") from exc
    except hvac.exceptions.InvalidRequest as exc:
        text = _server_reason(exc)
        if _CAS_MISMATCH in str(exc):
            raise CheckAndSetFailed(f"{what}: another writer changed it first (check-and-set); "
                           "re-read and retry") from exc
        if transit_ciphertext and any(answer in text for answer in _NOT_AUTHENTIC):
            raise TransitNotAuthentic(f"{what}: Transit could not authenticate the ciphertext") from exc
        if transit_key and _KEY_NOT_FOUND in text:
            raise KeyNotFound(f"{what}: the Transit key does not exist") from exc
        raise VaultError(f"{what}: Vault refused the request: {text}") from exc
    except hvac.exceptions.VaultError as exc:
        raise VaultError(f"{what}: Vault error: {_server_reason(exc)}") from exc
    except (requests.exceptions.SSLError, _vault_http.TlsVerifyFailed) as exc:
        raise VaultUnreachable(f"Vault at {where} cannot be reached: TLS verification failed (while {what}); "
                               "set VAULT_CACERT to the CA that signed Vault's certificate") from exc
    except (requests.exceptions.Timeout, _vault_http.TransportTimeout) as exc:
        # A timed-out write may still have been applied: check-and-set makes the retry safe.
        limit = f"within {timeout:g} s " if timeout else ""
        raise VaultUnreachable(f"Vault at {where} cannot be reached: no complete answer {limit}"
                               f"(KEYOPS_VAULT_TIMEOUT) while {what}; {_advice(addr)}") from exc
    except (requests.exceptions.ConnectionError, _vault_http.TransportError) as exc:
        reason = exc.reason if isinstance(exc, _vault_http.TransportError) else _vault_http.os_reason(exc)
        raise VaultUnreachable(f"Vault at {where} cannot be reached: {reason or 'no connection'} (while {what}); "
                               f"{_advice(addr)}") from exc


_NO_ROUTE = "no handler for route"
_NO_NAMESPACE = "namespace not found"


def _advice(addr: str) -> str:
    if addr and is_dev_stack_addr(addr):
        return "this is the local dev stack's address: start it with `keyops dev up`"
    return "check VAULT_ADDR and that the server runs"


def _server_reason(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own reason, on one line.

    Vault wraps many failures in a multierror ("1 error occurred:\n\t* the
    reason\n\n"): the reason is on the second line, never to be dropped.
    """
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else str(exc)
    lines = [line.strip().removeprefix("* ").strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not _MULTIERROR_HEAD.fullmatch(line)]
    # Vault error strings name paths and parameters, never values, but keep them short.
    return "; ".join(lines)[:500] or "unknown error"


_MULTIERROR_HEAD = re.compile(r"\d+ errors? occurred:")


# --- the client ------------------------------------------------------------------------------

#: ``urllib3``: keyops' own light transport (``_vault_http``); ``requests``: hvac's default one,
#: kept for comparison in benchmarks/bench_vault_client.py.
TRANSPORTS = ("urllib3", "requests")


def make_client(config: Config, pool_size: int = 32, transport: str = "urllib3") -> hvac.Client:
    """An hvac client whose connection pool is sized for our worker pools.

    Its token is the configured one, else one from logging in with the
    configured method (``keyops.auth``). The default transport sends hvac's
    requests through urllib3 directly (see ``_vault_http``): the same TLS
    settings, headers and timeout, at a fraction of the client CPU of a
    ``requests.Session``.
    """
    token = config.resolve_vault_token()
    client = _client(config, token, pool_size, transport)
    if not token:
        log_in(client, config, auth.resolve_login(config))
    return client


def fresh_login(config: Config, login: auth.Login) -> dict[str, Any]:
    """Log in with ``login`` whatever token is configured: the ``auth`` part of the answer (its token included)."""
    return log_in(_client(config, None, pool_size=1), config, login)


def _client(config: Config, token: str | None, pool_size: int = 32, transport: str = "urllib3") -> hvac.Client:
    for addr in config.vault_nodes:
        if not addr.startswith(("http://", "https://")):
            raise ConfigError(f"VAULT_ADDR {addr!r} must start with http:// or https://")
    if transport == "urllib3":
        session: Any = _vault_http.Session(verify=config.tls_verify, pool_size=pool_size, nodes=config.vault_nodes,
                                           retry_window=config.retry_window)
    elif transport == "requests":
        session = _requests_session(pool_size, config.tls_verify)
    else:
        raise ConfigError(f"unknown Vault transport {transport!r}; use one of {', '.join(TRANSPORTS)}")
    # An empty token, not None: hvac would read VAULT_TOKEN and ~/.vault-token itself behind our back.
    return hvac.Client(url=config.vault_addr, token=token or "", namespace=config.vault_namespace,
                       verify=config.tls_verify, timeout=config.vault_timeout, session=session)


def log_in(client: hvac.Client, config: Config, login: auth.Login) -> dict[str, Any]:
    """Log ``client`` in with hvac's own call for the method; the ``auth`` part of the answer.

    Any refusal is ``AuthenticationFailed`` naming the method and mount (Vault
    answers a wrong secret id with 400, a wrong JWT with 400 or 403), never
    the credential.
    """
    what = login.what
    with vault_errors(what, config.vault_addr, config.vault_timeout, where=config.vault_where):
        try:
            if login.method == "approle":
                resp = client.auth.approle.login(role_id=login.role, secret_id=login.credential,
                                                 mount_point=login.mount)
            elif login.method == "jwt":
                resp = client.auth.jwt.jwt_login(role=login.role, jwt=login.credential, path=login.mount)
            else:
                resp = client.auth.kubernetes.login(role=login.role, jwt=login.credential, mount_point=login.mount)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized,
                hvac.exceptions.InvalidPath) as exc:
            # An AppRole's role id is not secret either, but it names no role a reader would recognise.
            role = "role id" if login.method == "approle" else f"role {login.role!r}"
            raise AuthenticationFailed(f"{what}: Vault refused the login ({_server_reason(exc)}); check the {role}, "
                                       f"the credential and that the {auth.NAMES[login.method]} auth method is "
                                       f"enabled at auth/{login.mount}") from exc
    return dict(resp["auth"])


def _requests_session(pool_size: int, verify: bool | str) -> requests.Session:
    """hvac's usual transport. ``trust_env=False``: requests otherwise re-reads proxy and netrc
    settings from the environment on every request.

    ``verify`` must be set on the session: hvac's adapter prefers a session's
    ``verify`` (True by default) to the client's, which would ignore
    VAULT_CACERT and VAULT_SKIP_VERIFY.
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = verify
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class VaultStore:
    """KV v2 documents, Transit operations and the server calls keyops makes, under the configured mounts.

    ``client`` is the hvac client; code outside this module calls the methods
    below instead (tests use ``client`` to send what any token holder could).
    The transport's retries, failovers and health probes are counted in
    ``calls`` too (``vault.retry``, ``vault.failover``, ``vault.probe``).
    Methods that pass ``idempotent=True`` to ``_errors`` are the writes that
    are safe to send twice; every other write is sent once, unless no node
    received it.
    """

    def __init__(self, config: Config, client: hvac.Client | None = None,
                 counter: CallCounter | None = None, pool_size: int = 32) -> None:
        self.config = config
        self.client = client or make_client(config, pool_size=pool_size)
        self.kv_mount = config.kv_mount
        self.transit_mount = config.transit_mount
        self.calls = counter or CallCounter()
        if isinstance(self.client.session, _vault_http.Session):
            self.client.session.count = self.calls.add

    def _errors(self, what: str, mount: str | None = None, **kinds: bool) -> contextlib.AbstractContextManager[None]:
        return vault_errors(what, self.config.vault_addr, self.config.vault_timeout, where=self.config.vault_where,
                            namespace=self.config.vault_namespace, missing_mount=self._missing(mount), **kinds)

    def _missing(self, mount: str | None) -> str:
        """What to say when ``mount`` turns out not to exist: which mount, and what creates it."""
        if mount is None:
            return ""
        where = f"Vault at {self.config.vault_where}" + (
            f", namespace {self.config.vault_namespace!r}" if self.config.vault_namespace else "")
        if mount == self.kv_mount:
            return (f"the KV v2 mount {mount!r} that keyops uses (KEYOPS_KV_MOUNT) does not exist in {where}; "
                    "create it with `keyops init`")
        if mount == self.transit_mount:
            return (f"the Transit mount {mount!r} that keyops uses (KEYOPS_TRANSIT_MOUNT) does not exist in "
                    f"{where}; create it with `keyops init`")
        return f"the mount {mount!r} does not exist in {where}; check its name (`bao secrets list`)"

    def _absent_is_none(self, kind: str, what: str, call: Any, mount: str | None = None, **kwargs: Any) -> Any:
        """``call(**kwargs)`` counted as ``kind``; None when Vault answers 404 (a missing ``mount`` is an error)."""
        self.calls.add(kind)
        try:
            with self._errors(what, mount or kwargs.get("mount_point")):
                return call(**kwargs)
        except NotFound:
            return None

    # --- KV v2 -----------------------------------------------------------------------

    def read(self, path: str, mount: str | None = None) -> tuple[dict[str, Any], int] | None:
        """The latest live version of a document and its version number, or None."""
        mount = mount or self.kv_mount
        resp = self._absent_is_none("kv.read", f"reading {mount}/{path}", self.client.secrets.kv.v2.read_secret_version,
                                    path=path, mount_point=mount, raise_on_deleted_version=True)
        if resp is None:
            return None
        data = resp["data"]
        return data["data"], int(data["metadata"]["version"])

    def write(self, path: str, data: Mapping[str, Any], cas: int, mount: str | None = None) -> int:
        """Write with check-and-set: ``cas=0`` creates, else it must match the current version."""
        mount = mount or self.kv_mount
        self.calls.add("kv.write")
        try:
            # A repeat after a lost answer fails its check-and-set: safe to retry (see below).
            with self._errors(f"writing {mount}/{path}", mount, idempotent=True):
                resp = self.client.secrets.kv.v2.create_or_update_secret(
                    path=path, secret=dict(data), cas=cas, mount_point=mount)
        except CheckAndSetFailed:
            if not _vault_http.resent():
                raise
            # The first attempt may have landed (a node died after committing it, before answering): then
            # the document is ours at cas + 1, and the write succeeded. Anything else is another writer's.
            found = self.read(path, mount)
            if found is None or found[1] != cas + 1 or found[0] != json.loads(json.dumps(dict(data))):
                raise
            self.calls.add("kv.write_confirmed")
            return found[1]
        return int(resp["data"]["version"])

    def list(self, path: str, mount: str | None = None, *, after: str = "", limit: int = 0) -> list[str]:
        """The keys of a folder (``[]`` when it is missing); with ``limit``, at most that many after ``after``.

        OpenBao pages with ``after``/``limit``; HashiCorp Vault ignores them and
        answers every key, which callers must allow for. hvac's ``list_secrets``
        takes no parameters, hence the adapter call for a page.
        """
        mount = mount or self.kv_mount
        what = f"listing {mount}/{path}"
        if limit:
            params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
            resp = self._absent_is_none("kv.list", what, self.client.adapter.list, mount,
                                        url=format_url("/v1/{}/metadata/{}", mount, path), params=params)
        else:
            resp = self._absent_is_none("kv.list", what, self.client.secrets.kv.v2.list_secrets,
                                        path=path, mount_point=mount)
        return list(((resp or {}).get("data") or {}).get("keys") or [])

    def delete_all_versions(self, path: str, mount: str | None = None) -> None:
        mount = mount or self.kv_mount
        self.calls.add("kv.delete")
        with self._errors(f"deleting {mount}/{path}", mount, idempotent=True):
            self.client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)

    def destroy_versions(self, path: str, versions: Sequence[int], mount: str | None = None) -> None:
        """Destroy these versions of ``path`` for good (their data is gone; the metadata stays)."""
        mount = mount or self.kv_mount
        self.calls.add("kv.destroy")
        with self._errors(f"destroying old versions of {mount}/{path}", mount, idempotent=True):
            self.client.secrets.kv.v2.destroy_secret_versions(path=path, versions=list(versions), mount_point=mount)

    def read_metadata(self, path: str, mount: str | None = None) -> dict[str, Any] | None:
        """A path's KV metadata (``max_versions``, ``cas_required``, ``versions``, ...), or None."""
        mount = mount or self.kv_mount
        resp = self._absent_is_none("kv.read_metadata", f"reading the metadata of {mount}/{path}",
                                    self.client.secrets.kv.v2.read_secret_metadata, path=path, mount_point=mount)
        return None if resp is None else dict(resp["data"])

    def write_metadata(self, path: str, *, max_versions: int, cas_required: bool, mount: str | None = None) -> None:
        """Set how many versions KV keeps of ``path`` and whether writes must be check-and-set.

        Only these two fields are sent: the path's other settings (e.g.
        ``custom_metadata``) stay as they are. The path need not exist yet.
        (hvac's ``update_metadata`` also sends ``delete_version_after``, which
        would reset it.)
        """
        mount = mount or self.kv_mount
        self.calls.add("kv.write_metadata")
        with self._errors(f"writing the metadata of {mount}/{path}", mount, idempotent=True):
            self.client.adapter.post(format_url("/v1/{}/metadata/{}", mount, path),
                                     json={"max_versions": max_versions, "cas_required": cas_required})

    def read_engine_config(self, mount: str | None = None, *, wait: float = 0.0) -> dict[str, Any]:
        """The KV mount's own settings (``max_versions`` 0 means Vault's default, 10).

        ``wait``: for up to that many seconds, wait out a KV v2 mount that was
        just enabled and still answers 400 "upgrading".
        """
        mount = mount or self.kv_mount
        deadline = time.monotonic() + wait
        while True:
            self.calls.add("kv.read_config")
            with self._errors(f"reading the configuration of KV mount {mount!r}", mount):
                try:
                    resp = self.client.secrets.kv.v2.read_configuration(mount_point=mount)
                    return dict((resp or {}).get("data") or {})
                except hvac.exceptions.InvalidRequest as exc:
                    if _UPGRADING not in str(exc).lower() or time.monotonic() >= deadline:
                        raise
            time.sleep(0.05)

    def configure_engine(self, *, max_versions: int, mount: str | None = None) -> None:
        """Set the mount's default history (paths without their own ``max_versions``); nothing else changes.

        (hvac's ``configure`` also sends ``delete_version_after``.)
        """
        mount = mount or self.kv_mount
        self.calls.add("kv.write_config")
        with self._errors(f"configuring KV mount {mount!r}", mount, idempotent=True):
            self.client.adapter.post(format_url("/v1/{}/config", mount), json={"max_versions": max_versions})

    # --- Transit ---------------------------------------------------------------------

    def transit_encrypt(self, key: str, plaintext: bytes, context: bytes, key_version: int | None = None) -> str:
        self.calls.add("transit.encrypt")
        with self._errors(f"Transit encrypt with key {key!r}", self.transit_mount, idempotent=True):
            resp = self.client.secrets.transit.encrypt_data(
                name=key, plaintext=_b64(plaintext), associated_data=_b64(context),
                key_version=key_version, mount_point=self.transit_mount)
        return str(resp["data"]["ciphertext"])

    def transit_decrypt(self, key: str, ciphertext: str, context: bytes, mount: str | None = None) -> bytes:
        """The plaintext of a Transit ciphertext; ``TransitNotAuthentic`` when Transit cannot open it.

        An empty ``context`` sends no associated data at all.
        """
        mount = mount or self.transit_mount
        self.calls.add("transit.decrypt")
        what = f"Transit decrypt with key {key!r}" + (f" of mount {mount!r}" if mount != self.transit_mount else "")
        with self._errors(what, mount, transit_ciphertext=True, idempotent=True):
            resp = self.client.secrets.transit.decrypt_data(
                name=key, ciphertext=ciphertext, associated_data=_b64(context) if context else None,
                mount_point=mount)
        return base64.b64decode(resp["data"]["plaintext"])

    def transit_read_key(self, key: str) -> dict[str, Any] | None:
        resp = self._absent_is_none("transit.read_key", f"reading Transit key {key!r}",
                                    self.client.secrets.transit.read_key, name=key, mount_point=self.transit_mount)
        return None if resp is None else dict(resp["data"])

    def transit_create_key(self, key: str, key_type: str, *, key_size: int | None = None,
                           auto_rotate_period: int | None = None) -> None:
        """Create a key that is never exportable and has no plaintext backup.

        hvac's ``create_key`` has no ``key_size`` (the size of an hmac key), so a
        sized key goes through the adapter.
        """
        self.calls.add("transit.create_key")
        settings = {"exportable": False, "allow_plaintext_backup": False}
        with self._errors(f"creating Transit key {key!r}", self.transit_mount):
            if key_size is None:
                self.client.secrets.transit.create_key(name=key, key_type=key_type, mount_point=self.transit_mount,
                                                       auto_rotate_period=auto_rotate_period, **settings)
            else:
                body: dict[str, Any] = {"type": key_type, "key_size": key_size, **settings}
                if auto_rotate_period is not None:
                    body["auto_rotate_period"] = auto_rotate_period
                self.client.adapter.post(format_url("/v1/{}/keys/{}", self.transit_mount, key), json=body)

    def transit_rotate_key(self, key: str) -> None:
        self.calls.add("transit.rotate_key")
        with self._errors(f"rotating Transit key {key!r}", self.transit_mount):
            self.client.secrets.transit.rotate_key(name=key, mount_point=self.transit_mount)

    def transit_delete_key(self, key: str) -> None:
        """Delete the key and every version of it (irreversible); it must allow deletion."""
        self.calls.add("transit.delete_key")
        with self._errors(f"deleting Transit key {key!r}", self.transit_mount):
            self.client.secrets.transit.delete_key(name=key, mount_point=self.transit_mount)

    def transit_wrapping_key(self) -> str:
        """The PEM public key that Transit's BYOK import expects keys wrapped to (hvac has no call for it)."""
        self.calls.add("transit.wrapping_key")
        with self._errors("reading Transit's wrapping key", self.transit_mount):
            resp = self.client.adapter.get(format_url("/v1/{}/wrapping_key", self.transit_mount))
        return str(resp["data"]["public_key"])

    def transit_import(self, key: str, ciphertext: str, new_version: bool, key_type: str = "aes256-gcm96") -> None:
        """BYOK import (``keys/<name>/import``) or ``import_version`` of a wrapped key (hvac has no call for these)."""
        self.calls.add("transit.import")
        if new_version:
            url = format_url("/v1/{}/keys/{}/import_version", self.transit_mount, key)
            body: dict[str, Any] = {"ciphertext": ciphertext, "hash_function": "SHA256"}
        else:
            url = format_url("/v1/{}/keys/{}/import", self.transit_mount, key)
            body = {"ciphertext": ciphertext, "hash_function": "SHA256", "type": key_type,
                    "exportable": False, "allow_plaintext_backup": False}
        with self._errors(f"importing into Transit key {key!r}", self.transit_mount):
            self.client.adapter.post(url, json=body)

    def transit_configure_key(self, key: str, *, min_decryption_version: int | None = None,
                              min_encryption_version: int | None = None, deletion_allowed: bool | None = None,
                              auto_rotate_period: int | None = None) -> None:
        """Change the given settings of a key (None: unchanged). Never makes a key exportable.

        hvac refuses both minimums equal in one call, although Transit accepts
        them: then the encryption minimum goes first, in a request of its own
        (it is at or above the current decryption minimum, as Transit wants).
        """
        if min_encryption_version and min_encryption_version == min_decryption_version:
            self.transit_configure_key(key, min_encryption_version=min_encryption_version)
            min_encryption_version = None
        self.calls.add("transit.config")
        with self._errors(f"configuring Transit key {key!r}", self.transit_mount, idempotent=True):
            self.client.secrets.transit.update_key_configuration(
                name=key, min_decryption_version=min_decryption_version,
                min_encryption_version=min_encryption_version, deletion_allowed=deletion_allowed,
                auto_rotate_period=auto_rotate_period, mount_point=self.transit_mount)

    def transit_trim_key(self, key: str, min_available_version: int) -> None:
        """Delete the Transit key's versions below ``min_available_version`` (irreversible)."""
        self.calls.add("transit.trim")
        with self._errors(f"trimming Transit key {key!r}", self.transit_mount, idempotent=True):
            self.client.secrets.transit.trim_key(name=key, min_version=min_available_version,
                                                 mount_point=self.transit_mount)

    def transit_generate_hmac(self, key: str, data: bytes, algorithm: str = "sha2-256") -> str:
        """Transit's HMAC of ``data`` (``vault:vN:...``); ``KeyNotFound`` when the key does not exist."""
        self.calls.add("transit.hmac")
        with self._errors(f"HMAC with the Transit key {key!r}", self.transit_mount, transit_key=True,
                          idempotent=True):
            resp = self.client.secrets.transit.generate_hmac(name=key, hash_input=_b64(data), algorithm=algorithm,
                                                             mount_point=self.transit_mount)
        return str(resp["data"]["hmac"])

    def transit_verify_hmacs(self, key: str, items: Sequence[tuple[bytes, str]],
                             algorithm: str = "sha2-256") -> builtins.list[Any]:
        """Transit's ``batch_results`` for ``(data, hmac)`` pairs, in one request.

        hvac's ``verify_signed_data`` takes one input, not a batch.
        """
        self.calls.add("transit.verify_hmac")
        with self._errors(f"verifying HMACs with the Transit key {key!r}", self.transit_mount, transit_key=True,
                          idempotent=True):
            resp = self.client.adapter.post(
                format_url("/v1/{}/verify/{}", self.transit_mount, key),
                json={"hash_algorithm": algorithm,
                      "batch_input": [{"input": _b64(data), "hmac": mac} for data, mac in items]})
        return list(resp["data"]["batch_results"])

    # --- policies --------------------------------------------------------------------

    def read_policy(self, name: str) -> str | None:
        """The HCL of an ACL policy, or None when it does not exist."""
        resp = self._absent_is_none("sys.read_policy", f"reading policy {name!r}", self.client.sys.read_policy,
                                    name=name)
        if resp is None:
            return None
        data = resp.get("data") or resp
        rules = data.get("rules", data.get("policy"))
        return None if rules is None else str(rules)

    def create_or_update_policy(self, name: str, policy: str) -> None:
        self.calls.add("sys.write_policy")
        with self._errors(f"writing policy {name!r}", idempotent=True):
            self.client.sys.create_or_update_policy(name=name, policy=policy)

    def delete_policy(self, name: str) -> None:
        self.calls.add("sys.delete_policy")
        with self._errors(f"deleting policy {name!r}", idempotent=True):
            self.client.sys.delete_policy(name=name)

    # --- tokens ----------------------------------------------------------------------

    def token_fingerprint(self) -> str:
        """A SHA-256 of our token, to key per-token caches without holding the token itself."""
        return hashlib.sha256((self.client.token or "").encode()).hexdigest()

    def lookup_self(self) -> dict[str, Any]:
        """``auth/token/lookup-self``: our token's accessor, policies and metadata (its ``id`` removed)."""
        self.calls.add("auth.lookup_self")
        try:
            with self._errors("looking up the Vault token"):
                data = dict(self.client.auth.token.lookup_self()["data"])
        except PermissionDenied as exc:
            # Vault answers an unknown, expired or revoked token with 403, as it answers a missing right:
            # on lookup-self, which the default policy grants every token, it means the token is not valid.
            raise AuthenticationFailed("looking up the Vault token: Vault rejected the token (unknown, expired or "
                                       "revoked, or made without the default policy); log in again or check "
                                       "VAULT_TOKEN") from exc
        data.pop("id", None)  # the token itself: nobody above this module needs it
        return data

    def renew_self(self) -> dict[str, Any]:
        """``auth/token/renew-self``: the ``auth`` part of the answer (its ``client_token`` removed)."""
        self.calls.add("auth.renew_self")
        with self._errors("renewing the Vault token"):
            data = dict(self.client.auth.token.renew_self()["auth"])
        data.pop("client_token", None)
        return data

    def log_in_again(self) -> dict[str, Any]:
        """Log in anew with the configured auth method; this client uses the new token from now on."""
        self.calls.add("auth.login")
        data = dict(log_in(self.client, self.config, auth.resolve_login(self.config)))
        data.pop("client_token", None)
        return data

    def lookup_token(self, token: str) -> dict[str, Any]:
        """``lookup-self`` sent with another caller's ``token`` (a server authenticating its callers).

        The caller's own token asks, so the server's token needs no right over
        other tokens; a wrong or revoked token gets ``PermissionDenied``. The
        answer's ``id`` (the token itself) is removed.
        """
        self.calls.add("auth.lookup_token")
        caller = hvac.Client(url=self.config.vault_addr, token=token, namespace=self.config.vault_namespace,
                             verify=self.config.tls_verify, timeout=self.config.vault_timeout,
                             session=self.client.session)
        with self._errors("looking up a caller's Vault token"):
            data = dict(caller.auth.token.lookup_self()["data"])
        data.pop("id", None)
        return data

    def server_health(self) -> dict[str, Any]:
        """``sys/health`` (no token needed): ``initialized``, ``sealed``, ``standby`` and the version."""
        self.calls.add("sys.health")
        with self._errors("reading Vault's health"):
            # Every state answers 200 here, so that the body (not the status) says which it is.
            found = self.client.sys.read_health_status(method="GET", standby_ok=True, sealed_code=200,
                                                       uninit_code=200, performance_standby_code=200)
        return dict(found) if isinstance(found, Mapping) else dict(found.json())

    def token_accessor(self) -> str | None:
        """The accessor of our token, for audit events (never the token itself)."""
        return self.lookup_self().get("accessor")

    def create_token(self, *, policies: Sequence[str], ttl: str, meta: Mapping[str, str], num_uses: int = 0,
                     display_name: str | None = None, orphan: bool = False) -> dict[str, Any]:
        """A new token (an orphan with ``orphan``): the ``auth`` part of the answer, ``client_token`` included."""
        self.calls.add("auth.create_token")
        create = self.client.auth.token.create_orphan if orphan else self.client.auth.token.create
        with self._errors(f"creating a token with policy {', '.join(policies)!r}"):
            resp = create(policies=list(policies), ttl=ttl, meta=dict(meta), num_uses=num_uses,
                          display_name=display_name)
        return dict(resp["auth"])

    # --- auth methods and AppRole ----------------------------------------------------

    def list_auth_methods(self) -> dict[str, Any]:
        """Enabled auth methods by path (``approle/`` -> its settings)."""
        self.calls.add("sys.list_auth")
        with self._errors("listing auth methods"):
            resp = self.client.sys.list_auth_methods()
        return dict(resp.get("data", resp))

    def enable_auth_method(self, method_type: str, path: str, description: str = "") -> None:
        self.calls.add("sys.enable_auth")
        with self._errors(f"enabling {method_type} auth at {path!r}"):
            self.client.sys.enable_auth_method(method_type, path=path, description=description or None)

    def read_approle(self, role_name: str, mount: str) -> dict[str, Any] | None:
        resp = self._absent_is_none("approle.read_role", f"reading AppRole {role_name!r}",
                                    self.client.auth.approle.read_role, role_name=role_name, mount_point=mount)
        return None if resp is None else dict(resp["data"])

    def create_or_update_approle(self, role_name: str, mount: str, **settings: Any) -> None:
        self.calls.add("approle.write_role")
        with self._errors(f"writing AppRole {role_name!r}"):
            self.client.auth.approle.create_or_update_approle(role_name=role_name, mount_point=mount, **settings)

    def read_approle_role_id(self, role_name: str, mount: str) -> str:
        self.calls.add("approle.read_role_id")
        with self._errors(f"reading the role id of AppRole {role_name!r}"):
            resp = self.client.auth.approle.read_role_id(role_name=role_name, mount_point=mount)
        return str(resp["data"]["role_id"])

    def generate_approle_secret_id(self, role_name: str, mount: str) -> tuple[str, str]:
        """A new secret id of the AppRole and its accessor; the caller keeps the secret id secret."""
        self.calls.add("approle.secret_id")
        with self._errors(f"creating a secret id for AppRole {role_name!r}"):
            resp = self.client.auth.approle.generate_secret_id(role_name=role_name, mount_point=mount)
        return str(resp["data"]["secret_id"]), str(resp["data"]["secret_id_accessor"])

    # --- server ----------------------------------------------------------------------

    def list_enabled_audit_devices(self) -> dict[str, Any]:
        """The server's audit devices by path (``file/`` -> type, description, options)."""
        self.calls.add("sys.list_audit")
        with self._errors("listing the server's audit devices"):
            resp = self.client.sys.list_enabled_audit_devices()
        return dict(resp.get("data", resp))

    def list_mounted_secrets_engines(self) -> dict[str, Any]:
        """Mounted secrets engines by path (``keyops/`` -> type, options)."""
        self.calls.add("sys.list_mounts")
        with self._errors("listing secrets engines"):
            resp = self.client.sys.list_mounted_secrets_engines()
        return dict(resp.get("data", resp))

    def enable_secrets_engine(self, backend_type: str, path: str, *, description: str = "",
                              options: Mapping[str, str] | None = None) -> None:
        self.calls.add("sys.enable_mount")
        with self._errors(f"enabling the {backend_type} engine at {path!r}"):
            self.client.sys.enable_secrets_engine(backend_type=backend_type, path=path,
                                                  description=description or None,
                                                  options=dict(options) if options else None)

    def read_mount(self, path: str) -> dict[str, Any] | None:
        """The secrets engine mounted at ``path`` (``type``, ``options``, ...), or None when nothing is."""
        self.calls.add("sys.read_mount")
        try:
            with self._errors(f"reading the mount {path!r}"):
                resp = self.client.adapter.get(format_url("/v1/sys/mounts/{}", path))
        except VaultError as exc:
            # Vault answers 400 "No secret engine mount at <path>/" for a path where nothing is mounted.
            if _NO_MOUNT in str(exc).lower():
                return None
            raise
        return dict((resp or {}).get("data") or resp or {})


_NO_MOUNT = "no secret engine mount at"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
