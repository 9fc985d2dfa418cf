"""Connection and HSM configuration, following Vault's own conventions.

Precedence, highest first: explicit keyword arguments, environment variables,
the TOML file named by ``KEYOPS_CONFIG`` (or passed as ``config_file``),
defaults. Secrets (token, AppRole secret id, JWT, PIN) are never accepted
from a command line; they come from the environment or a file. Which token or
auth method a connection uses is decided in ``keyops.auth``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from keyops.errors import ConfigError, InvalidInput
from keyops.model.master import ROOT_BACKENDS
from keyops.model.names import validate_mount

#: Places where distributions install SoftHSM2's PKCS#11 module.
SOFTHSM_MODULE_GLOBS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/*-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)

# field -> environment variables, first one set wins (Vault's names first).
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "vault_addr": ("VAULT_ADDR", "BAO_ADDR"),
    "vault_token": ("VAULT_TOKEN", "BAO_TOKEN"),
    "vault_token_file": ("KEYOPS_VAULT_TOKEN_FILE",),
    "vault_namespace": ("VAULT_NAMESPACE", "BAO_NAMESPACE"),
    "vault_cacert": ("VAULT_CACERT", "BAO_CACERT"),
    "vault_skip_verify": ("VAULT_SKIP_VERIFY", "BAO_SKIP_VERIFY"),
    "vault_timeout": ("KEYOPS_VAULT_TIMEOUT",),
    "job_stall_timeout": ("KEYOPS_JOB_STALL_TIMEOUT",),
    "approle_role_id": ("VAULT_ROLE_ID", "KEYOPS_APPROLE_ROLE_ID"),
    "approle_secret_id": ("VAULT_SECRET_ID", "KEYOPS_APPROLE_SECRET_ID"),
    "approle_secret_id_file": ("VAULT_SECRET_ID_FILE", "KEYOPS_APPROLE_SECRET_ID_FILE"),
    "approle_mount": ("KEYOPS_APPROLE_MOUNT",),
    "auth_method": ("KEYOPS_AUTH_METHOD",),
    "jwt_role": ("KEYOPS_JWT_ROLE",),
    "jwt": ("KEYOPS_JWT",),
    "jwt_file": ("KEYOPS_JWT_FILE",),
    "jwt_mount": ("KEYOPS_JWT_MOUNT",),
    "kubernetes_role": ("KEYOPS_KUBERNETES_ROLE",),
    "kubernetes_token_file": ("KEYOPS_KUBERNETES_TOKEN_FILE",),
    "kubernetes_mount": ("KEYOPS_KUBERNETES_MOUNT",),
    "kv_mount": ("KEYOPS_KV_MOUNT",),
    "transit_mount": ("KEYOPS_TRANSIT_MOUNT",),
    "pkcs11_module": ("KEYOPS_PKCS11_MODULE",),
    "pkcs11_token_label": ("KEYOPS_PKCS11_TOKEN",),
    "pkcs11_pin": ("KEYOPS_PKCS11_PIN",),
    "pkcs11_pin_file": ("KEYOPS_PKCS11_PIN_FILE",),
    # The token being replaced: it only unwraps the master versions it holds (keyops.roots).
    "pkcs11_old_token_label": ("KEYOPS_PKCS11_OLD_TOKEN",),
    "pkcs11_old_module": ("KEYOPS_PKCS11_OLD_MODULE",),
    "pkcs11_old_pin": ("KEYOPS_PKCS11_OLD_PIN",),
    "pkcs11_old_pin_file": ("KEYOPS_PKCS11_OLD_PIN_FILE",),
    # The break-glass recovery key: every KEK version is also escrowed to this RSA public key (keyops.ops.escrow).
    "escrow_public_key": ("KEYOPS_ESCROW_PUBLIC_KEY",),
    "master_key_label": ("KEYOPS_MASTER_KEY_LABEL",),
    # The root of the hierarchy for new master versions (keyops.roots): pkcs11, transit or passphrase.
    "root": ("KEYOPS_ROOT",),
    "root_passphrase": ("KEYOPS_ROOT_PASSPHRASE",),
    "root_passphrase_file": ("KEYOPS_ROOT_PASSPHRASE_FILE",),
    "root_transit_addr": ("KEYOPS_ROOT_TRANSIT_ADDR",),
    "root_transit_token": ("KEYOPS_ROOT_TRANSIT_TOKEN",),
    "root_transit_token_file": ("KEYOPS_ROOT_TRANSIT_TOKEN_FILE",),
    "root_transit_role_id": ("KEYOPS_ROOT_TRANSIT_ROLE_ID",),
    "root_transit_secret_id": ("KEYOPS_ROOT_TRANSIT_SECRET_ID",),
    "root_transit_namespace": ("KEYOPS_ROOT_TRANSIT_NAMESPACE",),
    "root_transit_cacert": ("KEYOPS_ROOT_TRANSIT_CACERT",),
    "root_transit_skip_verify": ("KEYOPS_ROOT_TRANSIT_SKIP_VERIFY",),
    "root_transit_timeout": ("KEYOPS_ROOT_TRANSIT_TIMEOUT",),
    "root_transit_mount": ("KEYOPS_ROOT_TRANSIT_MOUNT",),
    "root_transit_key": ("KEYOPS_ROOT_TRANSIT_KEY",),
    "audit_log": ("KEYOPS_AUDIT_LOG",),
    "audit_kv_path": ("KEYOPS_AUDIT_KV_PATH",),
    "audit_syslog": ("KEYOPS_AUDIT_SYSLOG",),
    "audit_anchor": ("KEYOPS_AUDIT_ANCHOR",),
    "audit_key": ("KEYOPS_AUDIT_KEY",),
    "roles_file": ("KEYOPS_ROLES_FILE",),
}

SECRET_FIELDS = frozenset({"vault_token", "approle_secret_id", "jwt", "pkcs11_pin", "pkcs11_old_pin",
                           "root_passphrase", "root_transit_token", "root_transit_secret_id"})
_FLOATS = ("vault_timeout", "job_stall_timeout", "root_transit_timeout")

#: Where a pod's service-account token is mounted (Kubernetes auth reads it from there by default).
DEFAULT_KUBERNETES_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"

#: The Transit key whose HMACs chain the audit log (``KEYOPS_AUDIT_KEY``); never a tenant's
#: ``keyops-<tenant>`` name.
DEFAULT_AUDIT_KEY = "keyops_audit"

# Where the local dev stack (keyops.dev.stack, `keyops dev up`) listens unless told otherwise, and the file
# in its state folder that remembers its port. They live here, below the library, so that a connection
# error can say "run `keyops dev up`" without the library importing the stack (which imports from here).
DEV_HOST = "127.0.0.1"
DEV_DEFAULT_PORT = 8200
DEV_PORT_ENV = "KEYOPS_DEV_PORT"
DEV_STATE_DIR_ENV = "KEYOPS_STATE_DIR"
DEV_DEFAULT_STATE_DIR = ".keyops"
DEV_STACK_FILE = "stack.json"


@dataclasses.dataclass(frozen=True)
class Config:
    vault_addr: str = "https://127.0.0.1:8200"
    vault_token: str | None = dataclasses.field(default=None, repr=False)
    vault_token_file: str | None = None
    vault_namespace: str | None = None
    vault_cacert: str | None = None
    vault_skip_verify: bool = False
    #: The deadline of one Vault request, whole: connecting, sending and reading the complete answer
    #: (a server that answers a byte at a time cannot stretch it). Seconds.
    vault_timeout: float = 30.0
    #: A re-encryption, migration or rotation of many stops (resumable) when no item finishes in this
    #: many seconds. Seconds.
    job_stall_timeout: float = 300.0
    approle_role_id: str | None = None
    approle_secret_id: str | None = dataclasses.field(default=None, repr=False)
    approle_secret_id_file: str | None = None
    approle_mount: str = "approle"
    #: "auto" (a token when one is configured, else the one auth method configured), "token", or the
    #: method to log in with whatever token is around: "approle", "jwt", "kubernetes" (keyops.auth).
    auth_method: str = "auto"
    jwt_role: str | None = None
    jwt: str | None = dataclasses.field(default=None, repr=False)
    jwt_file: str | None = None
    jwt_mount: str = "jwt"
    kubernetes_role: str | None = None
    kubernetes_token_file: str = DEFAULT_KUBERNETES_TOKEN_FILE
    kubernetes_mount: str = "kubernetes"
    kv_mount: str = "keyops"
    transit_mount: str = "transit"
    pkcs11_module: str | None = None
    pkcs11_token_label: str = "keyops"
    pkcs11_pin: str | None = dataclasses.field(default=None, repr=False)
    pkcs11_pin_file: str | None = None
    #: The token a replacement moves away from (its label, PKCS#11 module when not the same, PIN): keyops only
    #: unwraps with the master versions it holds, and makes nothing on it.
    pkcs11_old_token_label: str | None = None
    pkcs11_old_module: str | None = None
    pkcs11_old_pin: str | None = dataclasses.field(default=None, repr=False)
    pkcs11_old_pin_file: str | None = None
    #: A PEM file with the operator's RSA public key (at least 3072 bits; 4096 advised) to which every KEK
    #: version is escrowed. Its private key never reaches keyops' servers or Vault.
    escrow_public_key: str | None = None
    master_key_label: str = "keyops-master"
    #: What protects new master versions; older versions keep the root recorded with them.
    root: str = "pkcs11"
    root_passphrase: str | None = dataclasses.field(default=None, repr=False)
    root_passphrase_file: str | None = None
    #: The KMS: a Transit key of another Vault or OpenBao, with its own address, credentials and TLS.
    root_transit_addr: str | None = None
    root_transit_token: str | None = dataclasses.field(default=None, repr=False)
    root_transit_token_file: str | None = None
    root_transit_role_id: str | None = None
    root_transit_secret_id: str | None = dataclasses.field(default=None, repr=False)
    root_transit_namespace: str | None = None
    root_transit_cacert: str | None = None
    root_transit_skip_verify: bool = False
    root_transit_timeout: float = 10.0
    root_transit_mount: str = "transit"
    #: Not ``keyops-<name>``: that is how tenants' Transit keys are named, should the KMS be a Vault keyops uses too.
    root_transit_key: str = "keyops_root"
    audit_log: str | None = None
    #: KV path (under kv_mount) that receives a copy of every audit event; unset: none.
    audit_kv_path: str | None = None
    #: Syslog destination for audit events: "/dev/log", "udp://host:514", "tcp://host:514"; unset: none.
    audit_syslog: str | None = None
    #: The anchor of the keyed audit chain: "auto" (named after the host and the log's path), a name of
    #: your own, or unset/"off" for the unkeyed (legacy) chain. See keyops.audit.
    audit_anchor: str | None = None
    #: Transit key (type hmac, not exportable) that keys the audit chain when an anchor is set.
    audit_key: str = DEFAULT_AUDIT_KEY
    #: Roles file (see keyops.access); unset: the packaged keyops/data/roles.toml.
    roles_file: str | None = None

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, config_file: str | os.PathLike[str] | None = None,
             **overrides: Any) -> Config:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config_file or env.get("KEYOPS_CONFIG")
        if path:
            values.update(_read_config_file(Path(path)))
        for name, keys in ENV_NAMES.items():
            for key in keys:
                if env.get(key):
                    values[name] = env[key]
                    break
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown configuration keys: {', '.join(sorted(unknown))}")
        for flag in ("vault_skip_verify", "root_transit_skip_verify"):
            if flag in values:
                values[flag] = _truthy(values[flag])
        for name in _FLOATS:
            if name in values:
                values[name] = _seconds(name, values[name])
        if values.get("root", "pkcs11") not in ROOT_BACKENDS:
            raise ConfigError(f"root (KEYOPS_ROOT) must be one of {', '.join(ROOT_BACKENDS)}, "
                              f"not {values['root']!r}")
        return cls(**values)

    def __post_init__(self) -> None:
        for name in ("kv_mount", "transit_mount"):
            try:
                validate_mount(getattr(self, name), name)
            except InvalidInput as exc:
                raise ConfigError(f"{exc} ({name}, {ENV_NAMES[name][0]})") from None
        for name in ("vault_timeout", "job_stall_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} ({ENV_NAMES[name][0]}) must be a positive number of seconds")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @property
    def tls_verify(self) -> bool | str:
        if self.vault_skip_verify:
            return False
        return self.vault_cacert or True

    @property
    def token_file_path(self) -> Path:
        """Where ``keyops login`` writes the token and keyops looks for one: KEYOPS_VAULT_TOKEN_FILE,
        else ``~/.vault-token``, the file the ``vault`` and ``bao`` CLIs use."""
        return Path(self.vault_token_file).expanduser() if self.vault_token_file else Path.home() / ".vault-token"

    def resolve_vault_token(self) -> str | None:
        """The token to use as it is: VAULT_TOKEN, else the token file; None when none is, or when
        ``auth_method`` names a method to log in with (which then wins over any token around)."""
        if self.auth_method not in ("auto", "token"):
            return None
        if self.vault_token:
            return self.vault_token
        if self.vault_token_file:
            return read_secret_file(self.token_file_path, what="Vault token file")
        default = self.token_file_path
        if default.is_file():
            return default.read_text().strip() or None
        return None

    def resolve_pkcs11_module(self) -> str:
        if self.pkcs11_module:
            if not Path(self.pkcs11_module).is_file():
                raise ConfigError(f"PKCS#11 module {self.pkcs11_module!r} does not exist; "
                                  "set KEYOPS_PKCS11_MODULE to your HSM vendor's library")
            return self.pkcs11_module
        found = find_softhsm_module()
        if found is None:
            raise ConfigError("no PKCS#11 module configured and SoftHSM2 is not installed; "
                              "install it (apt-get install softhsm2) or set KEYOPS_PKCS11_MODULE")
        return found

    def resolve_pkcs11_pin(self) -> str:
        if self.pkcs11_pin:
            return self.pkcs11_pin
        if self.pkcs11_pin_file:
            return read_secret_file(self.pkcs11_pin_file, what="PKCS#11 PIN file")
        raise ConfigError("no HSM PIN configured: set KEYOPS_PKCS11_PIN or KEYOPS_PKCS11_PIN_FILE "
                          "(a file readable only by its owner)")

    def resolve_pkcs11_old_pin(self) -> str:
        if self.pkcs11_old_pin:
            return self.pkcs11_old_pin
        if self.pkcs11_old_pin_file:
            return read_secret_file(self.pkcs11_old_pin_file, what="PIN file of the old PKCS#11 token")
        raise ConfigError(f"no PIN for the old HSM token {self.pkcs11_old_token_label!r}: set "
                          "KEYOPS_PKCS11_OLD_PIN_FILE (a file readable only by its owner) or KEYOPS_PKCS11_OLD_PIN")

    def resolve_root_passphrase(self, why: str) -> str:
        """The root passphrase (surrounding whitespace dropped, as from a file); ``why`` says who needs it."""
        if self.root_passphrase and self.root_passphrase.strip():
            return self.root_passphrase.strip()
        if self.root_passphrase_file:
            return read_secret_file(self.root_passphrase_file, what="root passphrase file")
        raise ConfigError(f"no root passphrase configured, and {why}: set KEYOPS_ROOT_PASSPHRASE or "
                          "KEYOPS_ROOT_PASSPHRASE_FILE (a file readable only by its owner)")


def dev_stack_addrs(env: Mapping[str, str] | None = None) -> set[str]:
    """The addresses the local dev stack would have here: its default port, and the port it remembers."""
    env = os.environ if env is None else env
    ports = {str(DEV_DEFAULT_PORT), env.get(DEV_PORT_ENV) or str(DEV_DEFAULT_PORT)}
    state = Path(env.get(DEV_STATE_DIR_ENV) or DEV_DEFAULT_STATE_DIR).expanduser() / DEV_STACK_FILE
    # No stack here, or a state file that the stack itself will complain about: the default port only.
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        ports.add(str(int(json.loads(state.read_text())["port"])))
    return {f"http://{host}:{port}" for host in (DEV_HOST, "localhost") for port in ports}


def is_dev_stack_addr(addr: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``addr`` is where the local dev stack listens (so `keyops dev up` is the advice to give)."""
    parts = urllib.parse.urlsplit(addr.strip())
    return f"{parts.scheme}://{parts.netloc}" in dev_stack_addrs(env)


def find_softhsm_module() -> str | None:
    for pattern in SOFTHSM_MODULE_GLOBS:
        for match in sorted(glob.glob(pattern)):
            return match
    return None


def read_secret_file(path: str | os.PathLike[str], what: str) -> str:
    """Read a one-line secret, refusing a file that others may read."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what} {str(p)!r} is accessible by group or others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); run 'chmod 600 {p}'")
    value = p.read_text().strip()
    if not value:
        raise ConfigError(f"{what} {str(p)!r} is empty")
    return value


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
    section = data.get("keyops", data)
    # A secret anywhere in the file is refused, even where keyops would not read it.
    secrets = SECRET_FIELDS & (set(section) | set(data))
    if secrets:
        raise ConfigError(f"config file {str(path)!r} must not hold secrets ({', '.join(sorted(secrets))}); "
                          "use the environment or a *_file setting")
    return dict(section)


def _seconds(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} ({ENV_NAMES[name][0]}) must be a number of seconds, not {value!r}") from None


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}
