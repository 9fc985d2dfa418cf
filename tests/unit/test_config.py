"""Config.load: Vault's environment conventions, the TOML file, and secrets kept out of files others read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyops.config import Config, read_secret_file
from keyops.errors import ConfigError

PIN = "pin-8f3a1c"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_defaults_verify_tls() -> None:
    c = Config.load(env={})
    assert c.vault_addr == "https://127.0.0.1:8200"
    assert c.tls_verify is True and c.vault_skip_verify is False
    assert c.kv_mount == "keyops" and c.transit_mount == "transit"
    assert c.vault_token is None and c.pkcs11_pin is None


def test_vault_names_win_over_bao_names() -> None:
    env = {"VAULT_ADDR": "https://vault:8200", "BAO_ADDR": "https://bao:8200",
           "VAULT_TOKEN": "vault-token", "BAO_TOKEN": "bao-token",
           "VAULT_NAMESPACE": "ns-v", "BAO_NAMESPACE": "ns-b", "VAULT_CACERT": "/v.pem", "BAO_CACERT": "/b.pem"}
    c = Config.load(env=env)
    assert (c.vault_addr, c.vault_token, c.vault_namespace, c.vault_cacert) == \
        ("https://vault:8200", "vault-token", "ns-v", "/v.pem")
    assert c.tls_verify == "/v.pem"


def test_bao_names_alone() -> None:
    c = Config.load(env={"BAO_ADDR": "https://bao:8200", "BAO_TOKEN": "bao-token", "BAO_NAMESPACE": "ns"})
    assert (c.vault_addr, c.vault_token, c.vault_namespace) == ("https://bao:8200", "bao-token", "ns")


def test_empty_vault_variable_falls_through_to_bao() -> None:
    assert Config.load(env={"VAULT_ADDR": "", "BAO_ADDR": "https://bao:8200"}).vault_addr == "https://bao:8200"


@pytest.mark.parametrize("value, expected", [("true", True), ("1", True), ("yes", True), ("false", False),
                                             ("0", False), ("", False)])
def test_skip_verify(value: str, expected: bool) -> None:
    c = Config.load(env={"VAULT_SKIP_VERIFY": value})
    assert c.vault_skip_verify is expected
    assert c.tls_verify is (not expected)


def test_keyops_variables() -> None:
    env = {"KEYOPS_PKCS11_MODULE": "/lib/p11.so", "KEYOPS_PKCS11_TOKEN": "tok", "KEYOPS_PKCS11_PIN": PIN,
           "KEYOPS_KV_MOUNT": "kv2", "KEYOPS_TRANSIT_MOUNT": "tr", "KEYOPS_MASTER_KEY_LABEL": "m",
           "KEYOPS_VAULT_TIMEOUT": "2.5", "VAULT_ROLE_ID": "role", "VAULT_SECRET_ID": "sid"}
    c = Config.load(env=env)
    assert (c.pkcs11_module, c.pkcs11_token_label, c.pkcs11_pin, c.kv_mount, c.transit_mount,
            c.master_key_label, c.vault_timeout, c.approle_role_id, c.approle_secret_id) == \
        ("/lib/p11.so", "tok", PIN, "kv2", "tr", "m", 2.5, "role", "sid")


def test_secrets_are_not_in_repr() -> None:
    c = Config.load(env={"VAULT_TOKEN": "tok-8c2e77", "KEYOPS_PKCS11_PIN": PIN, "VAULT_SECRET_ID": "sid-5d1e"})
    for secret in ("tok-8c2e77", PIN, "sid-5d1e"):
        assert secret not in repr(c)


def test_bad_timeout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="KEYOPS_VAULT_TIMEOUT|vault_timeout"):
        Config.load(env={"KEYOPS_VAULT_TIMEOUT": "soon"})


# --- the config file ------------------------------------------------------------------------------


def test_config_file_then_environment_then_arguments(tmp_path: Path) -> None:
    path = write(tmp_path / "keyops.toml", """
[keyops]
vault_addr = "https://from-file:8200"
kv_mount = "file-kv"
pkcs11_token_label = "file-token"
vault_timeout = 7
""")
    c = Config.load(env={}, config_file=path)
    assert (c.vault_addr, c.kv_mount, c.pkcs11_token_label, c.vault_timeout) == \
        ("https://from-file:8200", "file-kv", "file-token", 7.0)
    c = Config.load(env={"VAULT_ADDR": "https://from-env:8200", "KEYOPS_CONFIG": str(path)})
    assert (c.vault_addr, c.kv_mount) == ("https://from-env:8200", "file-kv")
    c = Config.load(env={"BAO_ADDR": "https://from-env:8200"}, config_file=path, kv_mount="arg-kv",
                    vault_addr=None)
    assert (c.vault_addr, c.kv_mount) == ("https://from-env:8200", "arg-kv")


def test_config_file_without_section(tmp_path: Path) -> None:
    path = write(tmp_path / "k.toml", 'vault_addr = "https://flat:8200"\n')
    assert Config.load(env={}, config_file=path).vault_addr == "https://flat:8200"


@pytest.mark.parametrize("line", [
    'vault_token = "hvs.file-token-value"', 'pkcs11_pin = "file-pin-value"',
    'approle_secret_id = "file-secret-id-value"',
])
@pytest.mark.parametrize("section", [True, False])
def test_config_file_refuses_secrets(tmp_path: Path, line: str, section: bool) -> None:
    text = f"[keyops]\n{line}\n" if section else f"{line}\n"
    path = write(tmp_path / "k.toml", text)
    with pytest.raises(ConfigError, match="must not hold secrets") as info:
        Config.load(env={}, config_file=path)
    assert "value" not in str(info.value)  # names the field, never echoes the secret


def test_config_file_refuses_secrets_outside_the_section(tmp_path: Path) -> None:
    path = write(tmp_path / "k.toml", 'vault_token = "hvs.stray-token"\n[keyops]\nkv_mount = "kv"\n')
    with pytest.raises(ConfigError, match="must not hold secrets"):
        Config.load(env={}, config_file=path)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        Config.load(env={}, config_file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(env={}, config_file=write(tmp_path / "bad.toml", "vault_addr = \n"))
    with pytest.raises(ConfigError, match="unknown configuration keys: colour"):
        Config.load(env={}, config_file=write(tmp_path / "unknown.toml", '[keyops]\ncolour = "red"\n'))


# --- secret files --------------------------------------------------------------------------------------


def test_pin_file_owner_only(tmp_path: Path) -> None:
    pin_file = write(tmp_path / "pin", PIN + "\n", 0o600)
    c = Config.load(env={"KEYOPS_PKCS11_PIN_FILE": str(pin_file)})
    assert c.resolve_pkcs11_pin() == PIN
    write(pin_file, PIN + "\n", 0o400)
    assert c.resolve_pkcs11_pin() == PIN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o777])
def test_pin_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    pin_file = write(tmp_path / "pin", PIN + "\n", mode)
    c = Config.load(env={"KEYOPS_PKCS11_PIN_FILE": str(pin_file)})
    with pytest.raises(ConfigError, match="chmod 600") as info:
        c.resolve_pkcs11_pin()
    assert PIN not in str(info.value)


def test_pin_file_in_config_file_is_checked_too(tmp_path: Path) -> None:
    pin_file = write(tmp_path / "pin", PIN, 0o644)
    path = write(tmp_path / "k.toml", f'pkcs11_pin_file = "{pin_file}"\n')
    c = Config.load(env={}, config_file=path)
    with pytest.raises(ConfigError, match="group or others"):
        c.resolve_pkcs11_pin()


def test_pin_environment_wins_over_pin_file(tmp_path: Path) -> None:
    pin_file = write(tmp_path / "pin", "file-pin", 0o600)
    c = Config.load(env={"KEYOPS_PKCS11_PIN": PIN, "KEYOPS_PKCS11_PIN_FILE": str(pin_file)})
    assert c.resolve_pkcs11_pin() == PIN


def test_missing_empty_or_absent_pin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no HSM PIN"):
        Config.load(env={}).resolve_pkcs11_pin()
    with pytest.raises(ConfigError, match="cannot be read"):
        Config.load(env={"KEYOPS_PKCS11_PIN_FILE": str(tmp_path / "nope")}).resolve_pkcs11_pin()
    empty = write(tmp_path / "empty", "\n", 0o600)
    with pytest.raises(ConfigError, match="empty"):
        Config.load(env={"KEYOPS_PKCS11_PIN_FILE": str(empty)}).resolve_pkcs11_pin()


def test_vault_token_file(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "hvs.file-token\n", 0o600)
    c = Config.load(env={"KEYOPS_VAULT_TOKEN_FILE": str(token_file)})
    assert c.resolve_vault_token() == "hvs.file-token"
    assert Config.load(env={"VAULT_TOKEN": "hvs.env", "KEYOPS_VAULT_TOKEN_FILE": str(token_file)}) \
        .resolve_vault_token() == "hvs.env"
    os.chmod(token_file, 0o644)
    with pytest.raises(ConfigError, match="group or others"):
        c.resolve_vault_token()


def test_read_secret_file_does_not_follow_loose_modes(tmp_path: Path) -> None:
    path = write(tmp_path / "s", "value", 0o620)
    with pytest.raises(ConfigError):
        read_secret_file(path, what="test secret")


def test_pkcs11_module_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KEYOPS_PKCS11_MODULE"):
        Config.load(env={"KEYOPS_PKCS11_MODULE": str(tmp_path / "missing.so")}).resolve_pkcs11_module()
