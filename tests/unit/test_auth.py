"""keyops.auth: which token or login a connection uses, and the credentials it reads (pure, no server).

Kubernetes auth is tested here only: OpenBao's kubernetes method asks a
cluster's TokenReview API to check the service-account token, and the suite
starts no cluster. The login call itself is hvac's ``auth.kubernetes.login``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyops.auth import Login, login_method, resolve_login
from keyops.config import DEFAULT_KUBERNETES_TOKEN_FILE, Config
from keyops.errors import ConfigError

SECRET = "0b1c-secret-id"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture(autouse=True)
def _empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_defaults() -> None:
    c = Config.load(env={})
    assert (c.auth_method, c.jwt_mount, c.kubernetes_mount, c.approle_mount) == ("auto", "jwt", "kubernetes",
                                                                                  "approle")
    assert c.kubernetes_token_file == DEFAULT_KUBERNETES_TOKEN_FILE == \
        "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_env_token_then_token_file_then_the_auth_method(_empty_home: Path) -> None:
    env = {"VAULT_ROLE_ID": "role", "VAULT_SECRET_ID": SECRET}
    assert Config.load(env={**env, "VAULT_TOKEN": "hvs.env"}).resolve_vault_token() == "hvs.env"
    assert Config.load(env=env).resolve_vault_token() is None  # nothing yet: log in with AppRole
    private(_empty_home / ".vault-token", "hvs.from-keyops-login")
    assert Config.load(env=env).resolve_vault_token() == "hvs.from-keyops-login"
    # A method named explicitly logs in whatever token is around.
    explicit = Config.load(env={**env, "VAULT_TOKEN": "hvs.env", "KEYOPS_AUTH_METHOD": "approle"})
    assert explicit.resolve_vault_token() is None and resolve_login(explicit).method == "approle"


def test_token_file_path_default_and_override(_empty_home: Path, tmp_path: Path) -> None:
    assert Config.load(env={}).token_file_path == _empty_home / ".vault-token"
    assert Config.load(env={"KEYOPS_VAULT_TOKEN_FILE": str(tmp_path / "t")}).token_file_path == tmp_path / "t"


def test_approle_secret_id_from_an_owner_only_file(tmp_path: Path) -> None:
    for name in ("VAULT_SECRET_ID_FILE", "KEYOPS_APPROLE_SECRET_ID_FILE"):
        path = private(tmp_path / name, SECRET)
        login = resolve_login(Config.load(env={"VAULT_ROLE_ID": "role", name: str(path)}))
        assert (login.method, login.mount, login.role, login.credential) == ("approle", "approle", "role", SECRET)
        assert SECRET not in repr(login)
    loose = private(tmp_path / "loose", SECRET, 0o640)
    with pytest.raises(ConfigError, match="group or others") as refused:
        resolve_login(Config.load(env={"VAULT_ROLE_ID": "role", "VAULT_SECRET_ID_FILE": str(loose)}))
    assert SECRET not in str(refused.value)
    # The variable wins over the file, as KEYOPS_PKCS11_PIN over its file.
    both = Config.load(env={"VAULT_ROLE_ID": "r", "VAULT_SECRET_ID": "from-env", "VAULT_SECRET_ID_FILE": str(loose)})
    assert resolve_login(both).credential == "from-env"


def test_a_secret_id_file_is_not_allowed_in_the_config_file_but_its_path_is(tmp_path: Path) -> None:
    toml = tmp_path / "keyops.toml"
    toml.write_text(f'approle_secret_id_file = "{tmp_path / "sid"}"\njwt_mount = "jwt-ci"\n')
    c = Config.load(env={}, config_file=toml)
    assert c.approle_secret_id_file == str(tmp_path / "sid") and c.jwt_mount == "jwt-ci"
    toml.write_text('jwt = "eyJ..."\n')
    with pytest.raises(ConfigError, match="must not hold secrets"):
        Config.load(env={}, config_file=toml)


def test_jwt_from_the_environment_or_a_file(tmp_path: Path) -> None:
    login = resolve_login(Config.load(env={"KEYOPS_JWT_ROLE": "ci", "KEYOPS_JWT": JWT, "KEYOPS_JWT_MOUNT": "gitlab"}))
    assert (login.method, login.mount, login.role, login.credential) == ("jwt", "gitlab", "ci", JWT)
    assert login.what == "JWT login at auth/gitlab" and JWT not in repr(login)
    path = private(tmp_path / "oidc", JWT)
    assert resolve_login(Config.load(env={"KEYOPS_JWT_ROLE": "ci", "KEYOPS_JWT_FILE": str(path)})).credential == JWT
    with pytest.raises(ConfigError, match="KEYOPS_JWT"):
        resolve_login(Config.load(env={"KEYOPS_JWT_ROLE": "ci"}))


def test_kubernetes_reads_the_pods_service_account_token(tmp_path: Path) -> None:
    sa = tmp_path / "token"
    sa.write_text(JWT)
    sa.chmod(0o644)  # as the kubelet mounts it: no owner-only check for this one
    login = resolve_login(Config.load(env={"KEYOPS_KUBERNETES_ROLE": "keyops-job",
                                           "KEYOPS_KUBERNETES_TOKEN_FILE": str(sa)}))
    assert (login.method, login.mount, login.role, login.credential) == ("kubernetes", "kubernetes", "keyops-job", JWT)
    assert login.what == "Kubernetes login at auth/kubernetes"
    with pytest.raises(ConfigError, match="KEYOPS_KUBERNETES_TOKEN_FILE"):
        resolve_login(Config.load(env={"KEYOPS_KUBERNETES_ROLE": "r", "KEYOPS_KUBERNETES_TOKEN_FILE":
                                       str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="KEYOPS_KUBERNETES_ROLE"):
        resolve_login(Config.load(env={"KEYOPS_AUTH_METHOD": "kubernetes"}))


def test_auto_picks_the_one_method_configured_and_refuses_to_guess() -> None:
    assert login_method(Config.load(env={"KEYOPS_JWT_ROLE": "ci"})) == "jwt"
    assert login_method(Config.load(env={"KEYOPS_KUBERNETES_ROLE": "r"})) == "kubernetes"
    both = {"VAULT_ROLE_ID": "role", "KEYOPS_JWT_ROLE": "ci"}
    with pytest.raises(ConfigError, match=r"several auth methods are configured \(approle, jwt\).*KEYOPS_AUTH_METHOD"):
        login_method(Config.load(env=both))
    assert login_method(Config.load(env={**both, "KEYOPS_AUTH_METHOD": "jwt"})) == "jwt"
    with pytest.raises(ConfigError, match="no Vault token.*keyops login"):
        login_method(Config.load(env={}))
    with pytest.raises(ConfigError, match="auth method token"):
        login_method(Config.load(env={"VAULT_ROLE_ID": "role", "KEYOPS_AUTH_METHOD": "token"}))
    with pytest.raises(ConfigError, match="unknown auth method 'ldap'"):
        login_method(Config.load(env={"KEYOPS_AUTH_METHOD": "ldap"}))


def test_missing_credentials_name_what_to_set() -> None:
    with pytest.raises(ConfigError, match="VAULT_SECRET_ID.*VAULT_SECRET_ID_FILE"):
        resolve_login(Config.load(env={"VAULT_ROLE_ID": "role"}))
    with pytest.raises(ConfigError, match="VAULT_ROLE_ID"):
        resolve_login(Config.load(env={"KEYOPS_AUTH_METHOD": "approle"}))
    with pytest.raises(ConfigError, match="KEYOPS_JWT_ROLE"):
        resolve_login(Config.load(env={"KEYOPS_AUTH_METHOD": "jwt", "KEYOPS_JWT": JWT}))


def test_login_repr_holds_no_credential() -> None:
    assert "s3cr3t" not in repr(Login("approle", "approle", "role", "s3cr3t"))
