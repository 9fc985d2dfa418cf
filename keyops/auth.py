"""Which credentials a Vault connection uses: a token, or a login with an auth method.

Pure selection over a ``Config`` (it reads the secret files it names, no
network): the Vault backend performs the login (``keyops.backends.vault``).

Order, when ``auth_method`` is ``auto``: ``VAULT_TOKEN`` (or ``BAO_TOKEN``);
then the token file (``KEYOPS_VAULT_TOKEN_FILE``, else ``~/.vault-token``,
where ``keyops login`` writes it); then the one auth method whose role is
configured (AppRole, JWT/OIDC, Kubernetes). The token file comes before a
method so that commands after a ``keyops login`` reuse its token instead of
spending a single-use AppRole secret id again. An ``auth_method`` other than
``auto`` and ``token`` logs in with that method whatever token is around.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from keyops.config import Config, read_secret_file
from keyops.errors import ConfigError

#: The methods keyops logs in with (``token`` uses a token as it is).
LOGIN_METHODS = ("approle", "jwt", "kubernetes")
AUTH_METHODS = ("auto", "token", *LOGIN_METHODS)
NAMES = {"token": "token", "approle": "AppRole", "jwt": "JWT", "kubernetes": "Kubernetes"}
NO_TOKEN = ("no Vault token: set VAULT_TOKEN (or BAO_TOKEN) or KEYOPS_VAULT_TOKEN_FILE, run 'keyops login', "
            "or configure an auth method: VAULT_ROLE_ID and VAULT_SECRET_ID (or VAULT_SECRET_ID_FILE) for "
            "AppRole, KEYOPS_JWT_ROLE and KEYOPS_JWT (or KEYOPS_JWT_FILE) for JWT/OIDC, KEYOPS_KUBERNETES_ROLE "
            "for Kubernetes")


@dataclasses.dataclass(frozen=True)
class Login:
    """A login to perform: the method, its mount, the role and the credential (a secret id or a JWT)."""

    method: str
    mount: str
    role: str
    credential: str = dataclasses.field(repr=False)

    @property
    def what(self) -> str:
        """How errors name this login: the method and its mount, never the credential."""
        return f"{NAMES[self.method]} login at auth/{self.mount}"


def check_method(method: str) -> str:
    if method not in AUTH_METHODS:
        raise ConfigError(f"unknown auth method {method!r} (KEYOPS_AUTH_METHOD); use one of {', '.join(AUTH_METHODS)}")
    return method


def configured_methods(config: Config) -> list[str]:
    """The login methods whose role is configured, in LOGIN_METHODS order."""
    roles = {"approle": config.approle_role_id, "jwt": config.jwt_role, "kubernetes": config.kubernetes_role}
    return [m for m in LOGIN_METHODS if roles[m]]


def login_method(config: Config, method: str | None = None) -> str:
    """The method to log in with: ``method``, else ``config.auth_method``, else the one configured.

    ``ConfigError`` when none is configured, or several are and nothing says which.
    """
    method = check_method(method or config.auth_method)
    if method in LOGIN_METHODS:
        return method
    found = configured_methods(config) if method == "auto" else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(NO_TOKEN if method == "auto" else "no Vault token (auth method token): set "
                          "VAULT_TOKEN (or BAO_TOKEN) or KEYOPS_VAULT_TOKEN_FILE, or run 'keyops login'")
    raise ConfigError(f"several auth methods are configured ({', '.join(found)}); choose one with "
                      "KEYOPS_AUTH_METHOD (or auth_method)")


def resolve_login(config: Config, method: str | None = None) -> Login:
    """The login for ``method`` (see ``login_method``) with its credential read from the environment or a file."""
    method = login_method(config, method)
    if method == "approle":
        if not config.approle_role_id:
            raise ConfigError("AppRole login needs a role id: set VAULT_ROLE_ID")
        secret = config.approle_secret_id or _file(config.approle_secret_id_file, "AppRole secret id file")
        if not secret:
            raise ConfigError("AppRole login needs a secret id: set VAULT_SECRET_ID, or VAULT_SECRET_ID_FILE "
                              "to a file readable only by its owner ('keyops policy mint --approle' writes one)")
        return Login("approle", config.approle_mount, config.approle_role_id, secret)
    if method == "jwt":
        if not config.jwt_role:
            raise ConfigError("JWT login needs a role: set KEYOPS_JWT_ROLE")
        jwt = config.jwt or _file(config.jwt_file, "JWT file")
        if not jwt:
            raise ConfigError("JWT login needs a token: set KEYOPS_JWT (GitLab CI: an id_tokens variable) or "
                              "KEYOPS_JWT_FILE (GitHub Actions: the OIDC token written to a file)")
        return Login("jwt", config.jwt_mount, config.jwt_role, jwt)
    if not config.kubernetes_role:
        raise ConfigError("Kubernetes login needs a role: set KEYOPS_KUBERNETES_ROLE")
    return Login("kubernetes", config.kubernetes_mount, config.kubernetes_role,
                 _service_account_token(config.kubernetes_token_file))


def _file(path: str | None, what: str) -> str | None:
    return read_secret_file(path, what=what) if path else None


def _service_account_token(path: str) -> str:
    # No owner-only check: the kubelet mounts the token readable by the pod's users (mode 0644 by
    # default), and it is short-lived and bound to the pod.
    p = Path(path)
    try:
        token = p.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"Kubernetes service-account token {str(p)!r} cannot be read: {exc.strerror}; "
                          "set KEYOPS_KUBERNETES_TOKEN_FILE") from exc
    if not token:
        raise ConfigError(f"Kubernetes service-account token {str(p)!r} is empty")
    return token
