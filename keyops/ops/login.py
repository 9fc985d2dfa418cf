"""Log in to Vault once, and keep the token where later commands find it.

``keyops login`` and the ``keyops.kms.login`` module are thin over
``login``: one login with the configured (or given) method, or, for
``token``, a check of a token as it is. ``store_token`` writes the token
file that keyops and the ``vault``/``bao`` CLIs read (``~/.vault-token``
unless ``KEYOPS_VAULT_TOKEN_FILE`` names another), so that a play or a CI
job spends a single-use AppRole secret id once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from keyops import auth
from keyops.backends.vault import VaultStore, fresh_login
from keyops.config import Config
from keyops.errors import AuthenticationFailed, ConfigError, InvalidInput, KeyopsError
from keyops.files import write_file_atomic


@dataclasses.dataclass(frozen=True)
class LoginResult:
    """Who the token is; ``token`` is the token itself (never in ``view()``, repr, logs or output)."""

    method: str
    mount: str | None
    accessor: str
    policies: tuple[str, ...]
    ttl: int  # seconds; 0: no expiry (a root token)
    renewable: bool
    token: str = dataclasses.field(repr=False)

    def view(self) -> dict[str, Any]:
        """Every field but the token, for ``--json`` and module results."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "token"}


def login(config: Config, method: str | None = None, token: str | None = None) -> LoginResult:
    """Log in with ``method`` (else ``config.auth_method``; ``auto``: the one method configured, or the
    token when none is), or with ``token`` check ``token`` (else the configured one) and return it."""
    method = planned_method(config, method)
    if method == "token":
        return check_token(config, token or config.replace(auth_method="token").resolve_vault_token())
    wanted = auth.resolve_login(config, method)
    found = fresh_login(config, wanted)
    return LoginResult(method, wanted.mount, str(found.get("accessor") or ""),
                       tuple(found.get("policies") or ()), int(found.get("lease_duration") or 0),
                       bool(found.get("renewable")), str(found["client_token"]))


def planned_method(config: Config, method: str | None = None) -> str:
    """The method ``login`` would use: ``token`` or a login method (check mode shows it, spending nothing)."""
    method = auth.check_method(method or config.auth_method)
    if method == "auto":
        return auth.login_method(config) if auth.configured_methods(config) else "token"
    return method


def check_token(config: Config, token: str | None) -> LoginResult:
    """``token`` as a LoginResult, once Vault has said whose it is (``lookup-self``)."""
    if not token:
        raise ConfigError(auth.NO_TOKEN)
    store = VaultStore(config.replace(vault_token=token, auth_method="token"), pool_size=1)
    try:
        data = store.lookup_self()
    except AuthenticationFailed as exc:  # lookup-self's 403: the token is not valid here
        raise AuthenticationFailed("token login: Vault does not accept the token (expired, revoked, of another "
                                   "server or namespace, or without the default policy)") from exc
    return LoginResult("token", None, str(data.get("accessor") or ""), tuple(data.get("policies") or ()),
                       int(data.get("ttl") or 0), bool(data.get("renewable")), token)


def store_token(result: LoginResult, path: str | Path, config: Config | None = None) -> Path:
    """Write the token to ``path`` (mode 0600 from the start, replaced whole) and return the path.

    With ``config``, a file holding another token that is a live root token is
    refused (``InvalidInput``): ``keyops dev env`` points KEYOPS_VAULT_TOKEN_FILE
    at the dev stack's root token, which a login must not overwrite.
    """
    target = Path(path).expanduser()
    if config is not None:
        _keep_root_token(config, target, result.token)
    write_file_atomic(target, result.token + "\n", mode=0o600)
    return target


def _keep_root_token(config: Config, target: Path, token: str) -> None:
    try:
        old = target.read_text().strip()
    except OSError:
        return
    if not old or old == token:
        return
    try:
        policies = VaultStore(config.replace(vault_token=old, auth_method="token"), pool_size=1).lookup_self()
    except KeyopsError:  # expired, revoked, of another server: nothing worth keeping
        return
    if "root" in (policies.get("policies") or ()):
        raise InvalidInput(f"{target} holds a root token (the dev stack's?); keyops login does not replace it: "
                           "write the token elsewhere with --token-file, or unset KEYOPS_VAULT_TOKEN_FILE")

