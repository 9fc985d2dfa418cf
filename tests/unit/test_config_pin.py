"""The HSM PIN: from the environment or an owner-only file; a file others may read is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keyops.config import Config
from keyops.errors import ConfigError

PIN = "7c0ffee-pin-4711"


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_an_owner_only_pin_file_is_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "pin"
    path.write_text(PIN + "\n")
    os.chmod(path, mode)
    assert Config(pkcs11_pin_file=str(path)).resolve_pkcs11_pin() == PIN


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601, 0o700 | 0o020])
def test_a_pin_file_group_or_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "pin"
    path.write_text(PIN + "\n")
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as info:
        Config(pkcs11_pin_file=str(path)).resolve_pkcs11_pin()
    message = str(info.value)
    assert f"mode {mode:04o}" in message and f"chmod 600 {path}" in message
    assert PIN not in message and PIN not in repr(info.value.__cause__)


def test_the_pin_comes_from_the_environment_first(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    path.write_text("from-file\n")
    os.chmod(path, 0o644)  # not even looked at: the environment wins
    config = Config.load(env={"KEYOPS_PKCS11_PIN": PIN, "KEYOPS_PKCS11_PIN_FILE": str(path)})
    assert config.resolve_pkcs11_pin() == PIN
    assert PIN not in repr(config)


def test_no_pin_at_all_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="KEYOPS_PKCS11_PIN or KEYOPS_PKCS11_PIN_FILE"):
        Config().resolve_pkcs11_pin()


def test_the_pin_is_never_taken_from_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "keyops.toml"
    config_file.write_text(f'[keyops]\npkcs11_pin = "{PIN}"\n')
    with pytest.raises(ConfigError, match="must not hold secrets") as info:
        Config.load(env={}, config_file=config_file)
    assert PIN not in str(info.value)
