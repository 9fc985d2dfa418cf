"""Tenant and secret names are validated before they become Vault paths."""

from __future__ import annotations

import pytest

from keyops.errors import InvalidInput
from keyops.model.names import (
    MAX_NAME_LEN,
    MAX_SECRET_NAME_LEN,
    validate_secret_name,
    validate_tenant,
    validate_version,
)

BAD_FOR_BOTH = [
    "", "..", ".", "/", "../etc", "a/../b", "a\x00b", "\x00", "x" * 10_000,
    "\u0430cme",  # Cyrillic а (U+0430) for Latin a
    "acm\u0435",  # Cyrillic е
    "ac\u200bme",  # zero-width space
    "\uff41cme",  # fullwidth a
    "a b", "a\nb", "acme\n", "\tacme", "a\\b", "a:b", "a*b", "a%2fb", "a?b", "a#b",
]


@pytest.mark.parametrize("name", ["acme", "a", "0", "a-b_c", "0abc", "t-1234abcd", "a" * MAX_NAME_LEN,
                                  "a" + "-" * (MAX_NAME_LEN - 1)])
def test_valid_tenants(name: str) -> None:
    assert validate_tenant(name) == name


@pytest.mark.parametrize("name", BAD_FOR_BOTH + [
    "a/b", "acme/", "/acme", "ACME", "Acme", "acmE", "-acme", "_acme", "a.b", "a@b", "a+b",
    "a" * (MAX_NAME_LEN + 1), "é",
])
def test_invalid_tenants(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_tenant(name)
    assert type(info.value) is InvalidInput
    # The message names the problem but never echoes a huge input back.
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", [None, 5, b"acme", ["acme"]])
def test_tenant_must_be_str(value: object) -> None:
    with pytest.raises(InvalidInput):
        validate_tenant(value)


def test_invalid_tenant_message_says_what_is_allowed() -> None:
    with pytest.raises(InvalidInput, match="lowercase ASCII"):
        validate_tenant("Acme")
    with pytest.raises(InvalidInput, match="at most 63"):
        validate_tenant("x" * 10_000)


@pytest.mark.parametrize("name", ["db", "db/password", "app/prod/db.password", "A-Z_a.z@x+y=z,w",
                                  "x" * MAX_SECRET_NAME_LEN, "...a", "a..b", "v1/.hidden"])
def test_valid_secret_names(name: str) -> None:
    assert validate_secret_name(name) == name


@pytest.mark.parametrize("name", BAD_FOR_BOTH + [
    "/a", "a/", "a//b", "a/./b", "./a", "a/..", "x" * (MAX_SECRET_NAME_LEN + 1), "\u00e9t\u00e9",
])
def test_invalid_secret_names(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_secret_name(name)
    assert type(info.value) is InvalidInput
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", [None, 1, b"db"])
def test_secret_name_must_be_str(value: object) -> None:
    with pytest.raises(InvalidInput):
        validate_secret_name(value)


@pytest.mark.parametrize("version", [1, 2, 2**31 - 1])
def test_valid_versions(version: int) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize("version", [0, -1, 2**31, True, False, 1.0, "1", None])
def test_invalid_versions(version: object) -> None:
    with pytest.raises(InvalidInput):
        validate_version(version)
