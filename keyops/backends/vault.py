"""The Vault/OpenBao boundary: KV v2 documents with check-and-set, and Transit.

hvac exceptions are mapped to keyops errors here, once. Every request is
counted (``calls``) so that tests and benchmarks can see what an operation
costs. Responses are never returned raw: Transit answers can carry plaintext.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import hvac
import hvac.exceptions
import requests
import requests.adapters

from keyops.config import Config
from keyops.errors import (
    AuthenticationFailed,
    CheckAndSetFailed,
    ConfigError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    VaultError,
    VaultSealed,
    VaultUnreachable,
)

_CAS_MISMATCH = "check-and-set parameter did not match"


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


@contextlib.contextmanager
def vault_errors(what: str, addr: str = "") -> Iterator[None]:
    """Map hvac/requests failures of one request to keyops errors."""
    try:
        yield
    except hvac.exceptions.Forbidden as exc:
        raise PermissionDenied(f"{what}: permission denied by Vault; the token's policies do not allow "
                               "this path (check the role or token)") from exc
    except hvac.exceptions.Unauthorized as exc:
        raise AuthenticationFailed(f"{what}: Vault rejected the credentials; log in again or check "
                                   "VAULT_TOKEN / AppRole settings") from exc
    except hvac.exceptions.VaultDown as exc:
        raise VaultSealed(f"{what}: Vault at {addr or 'the configured address'} is sealed; "
                          "unseal it (keyops dev up does so for the local stack)") from exc
    except hvac.exceptions.InvalidPath as exc:
        raise NotFound(f"{what}: not found in Vault") from exc
    except hvac.exceptions.InvalidRequest as exc:
        if _CAS_MISMATCH in str(exc):
            raise CheckAndSetFailed(f"{what}: another writer changed it first (check-and-set); "
                           "re-read and retry") from exc
        raise VaultError(f"{what}: Vault refused the request: {_first_error(exc)}") from exc
    except hvac.exceptions.VaultError as exc:
        raise VaultError(f"{what}: Vault error: {_first_error(exc)}") from exc
    except requests.exceptions.SSLError as exc:
        raise VaultUnreachable(f"{what}: TLS verification of {addr} failed; set VAULT_CACERT to the "
                               "CA that signed Vault's certificate") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise VaultUnreachable(f"{what}: Vault at {addr or 'the configured address'} is unreachable; "
                               "check VAULT_ADDR and that the server runs") from exc


def _first_error(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else str(exc)
    # Vault error strings name paths and parameters, never values, but keep them short.
    return text.splitlines()[0][:300] if text else "unknown error"


def make_client(config: Config, pool_size: int = 32) -> hvac.Client:
    """An hvac client with a session sized for our worker pools.

    ``trust_env=False``: requests otherwise re-reads proxy and netrc settings
    from the environment on every request, which costs more CPU than the
    local server spends answering.
    """
    session = requests.Session()
    session.trust_env = False
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if not config.vault_addr.startswith(("http://", "https://")):
        raise ConfigError(f"VAULT_ADDR {config.vault_addr!r} must start with http:// or https://")
    client = hvac.Client(url=config.vault_addr, token=config.resolve_vault_token(),
                         namespace=config.vault_namespace, verify=config.tls_verify,
                         timeout=config.vault_timeout, session=session)
    if config.approle_role_id and not config.vault_token:
        if not config.approle_secret_id:
            raise ConfigError("AppRole login needs a secret id: set VAULT_SECRET_ID")
        with vault_errors("AppRole login", config.vault_addr):
            client.auth.approle.login(role_id=config.approle_role_id, secret_id=config.approle_secret_id,
                                      mount_point=config.approle_mount)
    if not client.token:
        raise ConfigError("no Vault token: set VAULT_TOKEN (or BAO_TOKEN), KEYOPS_VAULT_TOKEN_FILE, "
                          "or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole")
    return client


class VaultStore:
    """KV v2 documents and Transit operations under the configured mounts."""

    def __init__(self, config: Config, client: hvac.Client | None = None,
                 counter: CallCounter | None = None, pool_size: int = 32) -> None:
        self.config = config
        self.client = client or make_client(config, pool_size=pool_size)
        self.kv_mount = config.kv_mount
        self.transit_mount = config.transit_mount
        self.calls = counter or CallCounter()

    def _errors(self, what: str) -> contextlib.AbstractContextManager[None]:
        return vault_errors(what, self.config.vault_addr)

    # --- KV v2 -----------------------------------------------------------------------

    def read(self, path: str, mount: str | None = None) -> tuple[dict[str, Any], int] | None:
        """The latest live version of a document and its version number, or None."""
        mount = mount or self.kv_mount
        self.calls.add("kv.read")
        try:
            with self._errors(f"reading {mount}/{path}"):
                resp = self.client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=mount, raise_on_deleted_version=True)
        except NotFound:
            return None
        data = resp["data"]
        return data["data"], int(data["metadata"]["version"])

    def write(self, path: str, data: Mapping[str, Any], cas: int, mount: str | None = None) -> int:
        """Write with check-and-set: ``cas=0`` creates, else it must match the current version."""
        mount = mount or self.kv_mount
        self.calls.add("kv.write")
        with self._errors(f"writing {mount}/{path}"):
            resp = self.client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=dict(data), cas=cas, mount_point=mount)
        return int(resp["data"]["version"])

    def list(self, path: str, mount: str | None = None) -> list[str]:
        mount = mount or self.kv_mount
        self.calls.add("kv.list")
        try:
            with self._errors(f"listing {mount}/{path}"):
                resp = self.client.secrets.kv.v2.list_secrets(path=path, mount_point=mount)
        except NotFound:
            return []
        return list(resp["data"]["keys"])

    def delete_all_versions(self, path: str, mount: str | None = None) -> None:
        mount = mount or self.kv_mount
        self.calls.add("kv.delete")
        with self._errors(f"deleting {mount}/{path}"):
            self.client.secrets.kv.v2.delete_metadata_and_all_versions(path=path, mount_point=mount)

    def read_metadata(self, path: str, mount: str | None = None) -> dict[str, Any] | None:
        """A path's KV metadata (``max_versions``, ``cas_required``, ``current_version``, ...), or None."""
        mount = mount or self.kv_mount
        self.calls.add("kv.read_metadata")
        try:
            with self._errors(f"reading the metadata of {mount}/{path}"):
                resp = self.client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
        except NotFound:
            return None
        return dict(resp["data"])

    def write_metadata(self, path: str, *, max_versions: int, cas_required: bool, mount: str | None = None) -> None:
        """Set how many versions KV keeps of ``path`` and whether writes must be check-and-set.

        Only these two fields are sent: the path's other settings (e.g.
        ``custom_metadata``) stay as they are. The path need not exist yet.
        """
        mount = mount or self.kv_mount
        self.calls.add("kv.write_metadata")
        with self._errors(f"writing the metadata of {mount}/{path}"):
            self.client.adapter.post(f"/v1/{mount}/metadata/{path}",
                                     json={"max_versions": max_versions, "cas_required": cas_required})

    def read_engine_config(self, mount: str | None = None) -> dict[str, Any]:
        """The KV mount's own settings (``max_versions`` 0 means Vault's default, 10)."""
        mount = mount or self.kv_mount
        self.calls.add("kv.read_config")
        with self._errors(f"reading the configuration of KV mount {mount!r}"):
            resp = self.client.adapter.get(f"/v1/{mount}/config")
        return dict((resp or {}).get("data") or {})

    def configure_engine(self, *, max_versions: int, mount: str | None = None) -> None:
        """Set the mount's default history (paths without their own ``max_versions``); nothing else changes."""
        mount = mount or self.kv_mount
        self.calls.add("kv.write_config")
        with self._errors(f"configuring KV mount {mount!r}"):
            self.client.adapter.post(f"/v1/{mount}/config", json={"max_versions": max_versions})

    # --- Transit ---------------------------------------------------------------------

    def transit_encrypt(self, key: str, plaintext: bytes, context: bytes, key_version: int | None = None) -> str:
        self.calls.add("transit.encrypt")
        with self._errors(f"Transit encrypt with key {key!r}"):
            resp = self.client.secrets.transit.encrypt_data(
                name=key, plaintext=_b64(plaintext), associated_data=_b64(context),
                key_version=key_version, mount_point=self.transit_mount)
        return str(resp["data"]["ciphertext"])

    def transit_decrypt(self, key: str, ciphertext: str, context: bytes) -> bytes:
        self.calls.add("transit.decrypt")
        with self._errors(f"Transit decrypt with key {key!r}"):
            resp = self.client.secrets.transit.decrypt_data(
                name=key, ciphertext=ciphertext, associated_data=_b64(context),
                mount_point=self.transit_mount)
        return base64.b64decode(resp["data"]["plaintext"])

    def transit_read_key(self, key: str) -> dict[str, Any] | None:
        self.calls.add("transit.read_key")
        try:
            with self._errors(f"reading Transit key {key!r}"):
                resp = self.client.secrets.transit.read_key(name=key, mount_point=self.transit_mount)
        except NotFound:
            return None
        return dict(resp["data"])

    def transit_wrapping_key(self) -> str:
        """The PEM public key that Transit's BYOK import expects keys wrapped to."""
        self.calls.add("transit.wrapping_key")
        with self._errors("reading Transit's wrapping key"):
            resp = self.client.adapter.get(f"/v1/{self.transit_mount}/wrapping_key")
        return str(resp["data"]["public_key"])

    def transit_import(self, key: str, ciphertext: str, new_version: bool, key_type: str = "aes256-gcm96") -> None:
        """BYOK import (``keys/<name>/import``) or ``import_version`` of a wrapped key.

        hvac has no call for these endpoints; its adapter escapes nothing, so
        the key name is validated by the caller.
        """
        self.calls.add("transit.import")
        if new_version:
            url = f"/v1/{self.transit_mount}/keys/{key}/import_version"
            body: dict[str, Any] = {"ciphertext": ciphertext, "hash_function": "SHA256"}
        else:
            url = f"/v1/{self.transit_mount}/keys/{key}/import"
            body = {"ciphertext": ciphertext, "hash_function": "SHA256", "type": key_type,
                    "exportable": False, "allow_plaintext_backup": False}
        with self._errors(f"importing into Transit key {key!r}"):
            self.client.adapter.post(url, json=body)

    def transit_configure_key(self, key: str, **settings: Any) -> None:
        self.calls.add("transit.config")
        with self._errors(f"configuring Transit key {key!r}"):
            self.client.adapter.post(f"/v1/{self.transit_mount}/keys/{key}/config", json=settings)

    def transit_trim_key(self, key: str, min_available_version: int) -> None:
        """Delete the Transit key's versions below ``min_available_version`` (irreversible)."""
        self.calls.add("transit.trim")
        with self._errors(f"trimming Transit key {key!r}"):
            self.client.adapter.post(f"/v1/{self.transit_mount}/keys/{key}/trim",
                                     json={"min_available_version": min_available_version})

    # --- server ----------------------------------------------------------------------

    def token_accessor(self) -> str | None:
        """The accessor of our token, for audit events (never the token itself)."""
        self.calls.add("auth.lookup_self")
        with self._errors("looking up the Vault token"):
            resp = self.client.auth.token.lookup_self()
        accessor: str | None = resp["data"].get("accessor")
        return accessor

    def check_mounts(self) -> None:
        """Fail early, with a clear error, when the KV mount is missing or not version 2."""
        self.calls.add("sys.read_mount")
        try:
            with self._errors(f"reading the configuration of mount {self.kv_mount!r}"):
                resp = self.client.adapter.get(f"/v1/sys/mounts/{self.kv_mount}")
        except NotFound as exc:
            raise InvalidInput(f"KV mount {self.kv_mount!r} does not exist; enable it with "
                               f"'bao secrets enable -path={self.kv_mount} -version=2 kv'") from exc
        options = (resp.get("data") or resp).get("options") or {}
        if str(options.get("version")) != "2":
            raise InvalidInput(f"mount {self.kv_mount!r} is not a KV version 2 mount")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
