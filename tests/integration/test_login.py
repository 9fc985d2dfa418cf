"""Logging in against the real OpenBao: AppRole (secret id from a file, single-use), JWT with a key the test
makes, ``keyops login`` and its token file, which keyops and the real ``bao`` CLI both read (issue 9, items 1-2).

The JWTs are signed here with ``cryptography`` (RS256), and OpenBao's JWT auth
method checks them against the public key the test configures
(``jwt_validation_pubkeys``), as it would a GitHub Actions or GitLab CI token.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from _tenants import created_tenant
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from keyops import access
from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.errors import AuthenticationFailed, ConfigError
from keyops.ops.front import Keyops
from keyops.ops.login import login

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
BAO = Path(sys.executable).parent / "bao"
ISSUER = "https://ci.example.test"
AUDIENCE = "keyops-test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    """An RS256 JWT, as a CI system's OIDC provider issues them."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "repo:example/keyops:ref:refs/heads/main", "iat": now,
            "nbf": now - 5, "exp": now + 300, "project": "keyops", **claims}
    signing_input = (b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()) + "."
                     + b64url(json.dumps(body).encode()))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


def private_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def tenant(k: Keyops, config: Config) -> str:
    """A tenant whose app-role policy is on the server (the logins below get it)."""
    name = created_tenant(k, "login")
    access.apply_policies(k, access.render_policies(k.roles, [name], access.Mounts.from_config(config)))
    return name


@pytest.fixture(scope="module")
def approle_mount(vault_client: Any) -> str:
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_auth_method("approle", path=mount)
    return mount


def single_use_approle(vault_client: Any, mount: str, policy: str) -> tuple[str, str]:
    """An AppRole whose secret ids allow one login each, as the prod inventory documents: (role id, secret id)."""
    name = f"ci-{uuid.uuid4().hex[:8]}"
    vault_client.auth.approle.create_or_update_approle(name, token_policies=[policy], token_ttl="10m",
                                                       secret_id_num_uses=1, mount_point=mount)
    role_id = vault_client.auth.approle.read_role_id(name, mount_point=mount)["data"]["role_id"]
    secret_id = vault_client.auth.approle.generate_secret_id(name, mount_point=mount)["data"]["secret_id"]
    return role_id, secret_id


@pytest.fixture(scope="module")
def jwt_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwt_mount(vault_client: Any, jwt_key: rsa.RSAPrivateKey, tenant: str) -> str:
    mount = f"jwt-{uuid.uuid4().hex[:8]}"
    public = jwt_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    vault_client.sys.enable_auth_method("jwt", path=mount)
    vault_client.auth.jwt.configure(jwt_validation_pubkeys=[public], bound_issuer=ISSUER, path=mount)
    vault_client.auth.jwt.create_role("ci", user_claim="sub", allowed_redirect_uris=[], role_type="jwt",
                                      bound_audiences=[AUDIENCE], bound_claims={"project": "keyops"},
                                      token_policies=[f"keyops-app-{tenant}"], token_ttl="10m", path=mount)
    return mount


def bare(config: Config, **fields: Any) -> Config:
    """``config`` with no token and no token file (HOME is empty): only what ``fields`` configure."""
    return config.replace(vault_token=None, vault_token_file=None, **fields)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty HOME: no ~/.vault-token but the one a test writes."""
    path = tmp_path / "home"
    path.mkdir()
    return path


def cli_env(stack: DevStack, home: Path, **extra: str) -> dict[str, str]:
    """The stack's environment without any token: HOME's token file or a login only."""
    env = {**os.environ, **stack.env(), "HOME": str(home)}
    for name in ("VAULT_TOKEN", "BAO_TOKEN", "KEYOPS_VAULT_TOKEN_FILE"):
        env.pop(name, None)
    return {**env, **extra}


def run(args: list[str], env: dict[str, str], data: bytes = b"", code: int = 0) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(args, input=data, env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr.decode(errors="replace"))
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


@pytest.fixture(autouse=True)
def _empty_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ~/.vault-token of the operator's is read or written, in this process or the commands'."""
    monkeypatch.setenv("HOME", str(home))


# --- AppRole ---------------------------------------------------------------------------------------------


def test_approle_secret_id_from_an_owner_only_file(config: Config, vault_client: Any, approle_mount: str,
                                                   tenant: str, tmp_path: Path) -> None:
    role_id, secret_id = single_use_approle(vault_client, approle_mount, f"keyops-app-{tenant}")
    role_name = _role_name(vault_client, approle_mount, role_id)
    loose = tmp_path / "loose-secret-id"
    loose.write_text(secret_id)
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="group or others") as refused:
        Keyops(bare(config, approle_role_id=role_id, approle_secret_id_file=str(loose), approle_mount=approle_mount))
    assert secret_id not in str(refused.value)
    # Refused before any request: the single-use secret id is still unspent.
    assert vault_client.auth.approle.read_secret_id(role_name, secret_id, mount_point=approle_mount)["data"]
    secret_file = private_file(tmp_path / "secret-id", secret_id)
    app_config = bare(config, approle_role_id=role_id, approle_secret_id_file=str(secret_file),
                      approle_mount=approle_mount)
    with Keyops(app_config) as app:
        assert app.principal.roles == [f"app:{tenant}"]
        app.put_secret(tenant, "from-file/db", b"via a secret id file")
        assert app.get_secret(tenant, "from-file/db") == b"via a secret id file"
    # Spent by that one login (Vault answers 204, no body, for a secret id that is gone).
    assert not isinstance(vault_client.auth.approle.read_secret_id(role_name, secret_id, mount_point=approle_mount),
                          dict)


def _role_name(vault_client: Any, mount: str, role_id: str) -> str:
    for name in vault_client.auth.approle.list_roles(mount_point=mount)["data"]["keys"]:
        if vault_client.auth.approle.read_role_id(name, mount_point=mount)["data"]["role_id"] == role_id:
            return str(name)
    raise AssertionError("no such AppRole")


def test_a_spent_secret_id_is_authentication_failed_naming_method_and_mount(
        config: Config, vault_client: Any, approle_mount: str, tenant: str) -> None:
    role_id, secret_id = single_use_approle(vault_client, approle_mount, f"keyops-app-{tenant}")
    app_config = bare(config, approle_role_id=role_id, approle_secret_id=secret_id, approle_mount=approle_mount)
    with Keyops(app_config) as first:
        first.list_secrets(tenant)
    with pytest.raises(AuthenticationFailed) as failed:
        Keyops(app_config)
    message = str(failed.value)
    assert message.startswith(f"AppRole login at auth/{approle_mount}: Vault refused the login")
    assert secret_id not in message and failed.value.exit_code == 13


# --- JWT -------------------------------------------------------------------------------------------------


def test_jwt_login_through_the_library_then_a_real_operation(config: Config, jwt_key: rsa.RSAPrivateKey,
                                                             jwt_mount: str, tenant: str) -> None:
    jwt = sign_jwt(jwt_key)
    jwt_config = bare(config, jwt_role="ci", jwt=jwt, jwt_mount=jwt_mount)
    result = login(jwt_config)
    assert (result.method, result.mount) == ("jwt", jwt_mount)
    assert f"keyops-app-{tenant}" in result.policies and 0 < result.ttl <= 600 and result.accessor
    assert result.token not in repr(result) and "token" not in result.view()
    # The configured method alone, no token: every Keyops logs in by itself.
    with Keyops(jwt_config) as app:
        assert app.principal.roles == [f"app:{tenant}"]
        app.put_secret(tenant, "jwt/db", b"written with a JWT login")
        assert app.get_secret(tenant, "jwt/db") == b"written with a JWT login"


@pytest.mark.parametrize("claims, reason", [({"aud": "someone-else"}, "audience"),
                                            ({"project": "other"}, "claim"),
                                            ({"exp": int(time.time()) - 600}, "expired")])
def test_a_jwt_vault_refuses_is_authentication_failed(config: Config, jwt_key: rsa.RSAPrivateKey,
                                                      jwt_mount: str, claims: dict[str, Any], reason: str) -> None:
    jwt = sign_jwt(jwt_key, **claims)
    with pytest.raises(AuthenticationFailed) as failed:
        login(bare(config, jwt_role="ci", jwt=jwt, jwt_mount=jwt_mount))
    assert str(failed.value).startswith(f"JWT login at auth/{jwt_mount}: Vault refused the login"), reason
    assert jwt not in str(failed.value) and jwt.split(".")[2] not in str(failed.value)


def test_a_jwt_signed_by_another_key_is_refused(config: Config, jwt_mount: str) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(AuthenticationFailed, match=f"JWT login at auth/{jwt_mount}"):
        login(bare(config, jwt_role="ci", jwt=sign_jwt(other), jwt_mount=jwt_mount))


def test_keyops_login_with_a_jwt_file_then_commands_and_bao_use_the_token_file(
        stack: DevStack, jwt_key: rsa.RSAPrivateKey, jwt_mount: str, tenant: str, home: Path, tmp_path: Path) -> None:
    jwt = sign_jwt(jwt_key)
    jwt_file = private_file(tmp_path / "ci-oidc-token", jwt)
    env = cli_env(stack, home, KEYOPS_JWT_ROLE="ci", KEYOPS_JWT_FILE=str(jwt_file), KEYOPS_JWT_MOUNT=jwt_mount)
    proc = run([*KEYOPS, "login", "--json"], env)
    answer = json.loads(proc.stdout)
    token_file = home / ".vault-token"
    assert answer["method"] == "jwt" and answer["mount"] == jwt_mount and answer["token_file"] == str(token_file)
    assert "token" not in answer and f"keyops-app-{tenant}" in answer["policies"]
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token and token.encode() not in proc.stdout + proc.stderr and jwt.encode() not in proc.stdout + proc.stderr
    # Later commands, without the JWT at all: the token file.
    later = cli_env(stack, home)
    run([*KEYOPS, "secret", "put", tenant, "cli/jwt"], later, data=b"stored after keyops login")
    assert run([*KEYOPS, "secret", "get", tenant, "cli/jwt"], later).stdout == b"stored after keyops login"
    # The real bao CLI reads the same file.
    looked_up = run([str(BAO), "token", "lookup", "-format=json"], {**later, "BAO_ADDR": stack.addr})
    data = json.loads(looked_up.stdout)["data"]
    assert data["accessor"] == answer["accessor"] and f"keyops-app-{tenant}" in data["policies"]


# --- keyops login: AppRole with a single-use secret id ---------------------------------------------------


def test_keyops_login_spends_a_single_use_secret_id_once_for_many_commands(
        stack: DevStack, vault_client: Any, approle_mount: str, tenant: str, home: Path, tmp_path: Path) -> None:
    role_id, secret_id = single_use_approle(vault_client, approle_mount, f"keyops-app-{tenant}")
    secret_file = private_file(tmp_path / "secret-id", secret_id)
    env = cli_env(stack, home, VAULT_ROLE_ID=role_id, VAULT_SECRET_ID_FILE=str(secret_file),
                  KEYOPS_APPROLE_MOUNT=approle_mount)
    proc = run([*KEYOPS, "login"], env)
    assert proc.stdout == b"" and f"AppRole at auth/{approle_mount}".encode() in proc.stderr
    assert secret_id.encode() not in proc.stderr
    token_file = home / ".vault-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    # The AppRole settings are still there, but the token file comes first: no second login.
    for n in range(3):
        run([*KEYOPS, "secret", "put", tenant, f"cli/approle-{n}"], env, data=b"v")
    assert run([*KEYOPS, "secret", "list", tenant, "--prefix", "cli/"], env).stdout.count(b"approle-") == 3
    assert run([str(BAO), "token", "lookup"], {**env, "BAO_ADDR": stack.addr}).returncode == 0
    # Logging in again needs a new secret id: exit 13, the method and mount named, the secret not.
    again = run([*KEYOPS, "login"], env, code=13)
    assert f"AppRole login at auth/{approle_mount}".encode() in again.stderr
    assert secret_id.encode() not in again.stderr


def test_keyops_login_print_token_only_when_asked_and_no_store(stack: DevStack, home: Path) -> None:
    root = stack.env()["VAULT_TOKEN"]
    env = cli_env(stack, home)
    proc = run([*KEYOPS, "login", "--method", "token", "--token-stdin", "--no-store", "--print-token"], env,
               data=root.encode() + b"\n")
    assert proc.stdout.decode().strip() == root and root.encode() not in proc.stderr
    assert not (home / ".vault-token").exists()
    quiet = run([*KEYOPS, "login", "--method", "token", "--token-stdin", "--token-file", str(home / "t")], env,
                data=root.encode())
    assert root.encode() not in quiet.stdout + quiet.stderr and (home / "t").read_text().strip() == root
    assert stat.S_IMODE((home / "t").stat().st_mode) == 0o600
    bad = run([*KEYOPS, "login", "--method", "token", "--token-stdin", "--no-store"], env, data=b"s.not-a-token\n",
              code=13)
    assert b"token login" in bad.stderr and b"s.not-a-token" not in bad.stderr


def test_keyops_login_does_not_overwrite_a_root_token_file(stack: DevStack, vault_client: Any, approle_mount: str,
                                                          tenant: str, home: Path, tmp_path: Path) -> None:
    """``keyops dev env`` points KEYOPS_VAULT_TOKEN_FILE at the stack's root token: a login keeps it."""
    root_copy = private_file(tmp_path / "root-token", stack.env()["VAULT_TOKEN"])
    role_id, secret_id = single_use_approle(vault_client, approle_mount, f"keyops-app-{tenant}")
    env = cli_env(stack, home, VAULT_ROLE_ID=role_id, VAULT_SECRET_ID=secret_id, KEYOPS_APPROLE_MOUNT=approle_mount,
                  KEYOPS_VAULT_TOKEN_FILE=str(root_copy))
    refused = run([*KEYOPS, "login"], env, code=2)
    assert b"holds a root token" in refused.stderr and b"--token-file" in refused.stderr
    assert root_copy.read_text().strip() == stack.env()["VAULT_TOKEN"]
