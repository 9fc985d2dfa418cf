"""The root settings: KEYOPS_ROOT and its passphrase and KMS settings; secrets never from the TOML file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyops.config import Config
from keyops.errors import ConfigError
from keyops.roots import _kms_config

PASSPHRASE = "a long enough passphrase"


def test_the_root_defaults_to_the_hsm() -> None:
    assert Config.load(env={}).root == "pkcs11"


def test_an_unknown_root_is_refused() -> None:
    with pytest.raises(ConfigError, match="must be one of pkcs11, transit, passphrase, not 'hsm'"):
        Config.load(env={"KEYOPS_ROOT": "hsm"})


def test_the_kms_settings_come_from_the_environment_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "keyops.toml"
    toml.write_text('[keyops]\nroot = "transit"\nroot_transit_addr = "https://kms:8200"\nroot_transit_key = "k"\n'
                    'root_transit_timeout = 3\n')
    config = Config.load(env={"KEYOPS_CONFIG": str(toml), "KEYOPS_ROOT_TRANSIT_SKIP_VERIFY": "true",
                              "KEYOPS_ROOT_TRANSIT_TOKEN_FILE": "/run/kms.token"})
    assert (config.root, config.root_transit_addr, config.root_transit_key) == ("transit", "https://kms:8200", "k")
    assert config.root_transit_timeout == 3.0 and config.root_transit_skip_verify is True
    kms = _kms_config(config, "https://kms:8200", "transit", None)
    assert (kms.vault_addr, kms.vault_token_file, kms.vault_timeout, kms.tls_verify) == (
        "https://kms:8200", "/run/kms.token", 3.0, False)


@pytest.mark.parametrize("secret", ["root_passphrase", "root_transit_token", "root_transit_secret_id"])
def test_the_toml_file_holds_no_root_secret(tmp_path: Path, secret: str) -> None:
    toml = tmp_path / "keyops.toml"
    toml.write_text(f'[keyops]\n{secret} = "oops"\n')
    with pytest.raises(ConfigError, match=f"must not hold secrets \\({secret}\\)"):
        Config.load(env={"KEYOPS_CONFIG": str(toml)})


def test_the_kms_never_borrows_the_other_vaults_token() -> None:
    config = Config(vault_token="the-keyring-vaults-token", root="transit", root_transit_addr="https://kms:8200")
    with pytest.raises(ConfigError, match="no credential for the KMS"):
        _kms_config(config, "https://kms:8200", "transit", None)


def test_a_bad_timeout_is_named() -> None:
    with pytest.raises(ConfigError, match="root_transit_timeout \\(KEYOPS_ROOT_TRANSIT_TIMEOUT\\)"):
        Config.load(env={"KEYOPS_ROOT_TRANSIT_TIMEOUT": "soon"})


def test_the_passphrase_from_the_environment_or_an_owner_only_file(tmp_path: Path) -> None:
    assert Config.load(env={"KEYOPS_ROOT_PASSPHRASE": PASSPHRASE}).resolve_root_passphrase("test") == PASSPHRASE
    path = tmp_path / "passphrase"
    path.write_text(PASSPHRASE + "\n")
    os.chmod(path, 0o600)
    assert Config(root_passphrase_file=str(path)).resolve_root_passphrase("test") == PASSPHRASE
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="accessible by group or others") as info:
        Config(root_passphrase_file=str(path)).resolve_root_passphrase("test")
    assert PASSPHRASE not in str(info.value)
    assert PASSPHRASE not in repr(Config(root_passphrase=PASSPHRASE))


def test_no_passphrase_says_who_needs_it() -> None:
    with pytest.raises(ConfigError, match="no root passphrase configured, and master key v1 was made from one: set "
                                          "KEYOPS_ROOT_PASSPHRASE"):
        Config().resolve_root_passphrase("master key v1 was made from one")
