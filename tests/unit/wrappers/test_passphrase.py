"""The passphrase root: Argon2id, then an AES-256-GCM wrap bound to the registry id and version."""

from __future__ import annotations

import pytest

from keyops import crypto
from keyops.errors import ConfigError, DecryptionError, KeyStateError
from keyops.wrappers import passphrase

PASSPHRASE = "a long enough passphrase"
REGISTRY = "3f9c2a7b1d4e5f60"
CONTEXT = crypto.key_context("acme", "kek", 1)


@pytest.fixture(scope="module")
def params() -> dict[str, object]:
    return passphrase.seal_master(PASSPHRASE, REGISTRY, 2)


def test_the_stored_parameters_are_owasp_grade_and_hold_no_secret(params: dict[str, object]) -> None:
    assert params["kdf"] == "argon2id"
    # RFC 9106's second recommended option, above OWASP's minimum (19 MiB, t=2, p=1).
    assert (params["iterations"], params["lanes"], params["memory_cost"]) == (3, 4, 64 * 1024)
    assert len(crypto.b64d(str(params["salt"]))) == 16
    assert len(crypto.b64d(str(params["wrapped"]))) == 12 + 32 + 16
    assert PASSPHRASE not in repr(params)
    assert passphrase.seal_master(PASSPHRASE, REGISTRY, 2)["salt"] != params["salt"]  # a fresh salt each time


def test_the_right_passphrase_opens_the_same_master_key(params: dict[str, object]) -> None:
    blob = passphrase.open_master(PASSPHRASE, params, REGISTRY, 2).wrap(b"k" * 32, CONTEXT)
    assert passphrase.open_master(PASSPHRASE, params, REGISTRY, 2).unwrap(blob, CONTEXT) == b"k" * 32
    with pytest.raises(DecryptionError):
        passphrase.open_master(PASSPHRASE, params, REGISTRY, 2).unwrap(blob, crypto.key_context("acme", "kek", 2))


def test_a_wrong_passphrase_is_named_as_such(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="passphrase does not open master key v2") as info:
        passphrase.open_master(PASSPHRASE + "!", params, REGISTRY, 2)
    assert PASSPHRASE not in str(info.value)


@pytest.mark.parametrize(("registry_id", "version"), [("0" * 16, 2), (REGISTRY, 3)])
def test_the_entry_is_bound_to_its_registry_and_version(params: dict[str, object], registry_id: str,
                                                        version: int) -> None:
    with pytest.raises(ConfigError):
        passphrase.open_master(PASSPHRASE, params, registry_id, version)


def test_a_short_passphrase_makes_no_new_version() -> None:
    with pytest.raises(ConfigError, match="at least 12 characters"):
        passphrase.seal_master("short", REGISTRY, 1)


@pytest.mark.parametrize("change", [{"memory_cost": 64 * 1024 * 1024}, {"kdf": "pbkdf2"}, {"iterations": 0},
                                    {"salt": "AAAA"}, {"salt": "not base64!"}])
def test_tampered_parameters_are_refused_before_any_hashing(params: dict[str, object],
                                                           change: dict[str, object]) -> None:
    with pytest.raises(KeyStateError, match="malformed"):
        passphrase.open_master(PASSPHRASE, {**params, **change}, REGISTRY, 2)


def test_a_destroyed_version_has_nothing_left_to_open(params: dict[str, object]) -> None:
    gone = {k: v for k, v in params.items() if k != "wrapped"}
    with pytest.raises(KeyStateError, match="destroyed"):
        passphrase.open_master(PASSPHRASE, gone, REGISTRY, 2)
