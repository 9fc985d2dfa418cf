"""Which path runs what, how an error maps to Vault's status, and what --listen accepts (no server needed)."""

from __future__ import annotations

import pytest

from keyops.api import routes
from keyops.api.app import http_status
from keyops.cli.serve import is_loopback, parse_listen
from keyops.errors import (
    CheckAndSetFailed,
    DecryptionError,
    InvalidInput,
    KeyopsError,
    MalformedCiphertext,
    NotPermitted,
    TenantNotFound,
    UsageCapReached,
    VaultSealed,
    VaultUnreachable,
)


@pytest.mark.parametrize(("path", "operation", "params"), [
    ("/v1/transit/encrypt/acme", "encrypt", ("acme",)),
    ("/v1/transit/decrypt/acme", "decrypt", ("acme",)),
    ("/v1/transit/rewrap/acme", "rewrap", ("acme",)),
    ("/v1/transit/datakey/plaintext/acme", "datakey", ("plaintext", "acme")),
    ("/v1/transit/keys/acme", "keys.read", ("acme",)),
    ("/v1/transit/keys/acme/rotate", "keys.rotate", ("acme",)),
    ("/api/v1/kek/generate", "kek.generate", ()),
    ("/api/v1/kek/status", "kek.status", ()),
])
def test_known_paths(path: str, operation: str, params: tuple[str, ...]) -> None:
    found = routes.find("transit", path)
    assert found is not None and found[0].operation == operation and found[1] == params


@pytest.mark.parametrize("path", ["/v1/transit/sign/acme", "/v1/other/encrypt/acme", "/v1/transit/encrypt",
                                  "/v1/transit/encrypt/a/b", "/api/v1/kek/destroy", "/", "/v2/transit/encrypt/a"])
def test_unknown_paths(path: str) -> None:
    assert routes.find("transit", path) is None


def test_a_nested_mount() -> None:
    found = routes.find("kms/transit", "/v1/kms/transit/encrypt/acme")
    assert found is not None and found[1] == ("acme",)
    assert routes.find("kms/transit", "/v1/transit/encrypt/acme") is None


@pytest.mark.parametrize(("exc", "status"), [
    (InvalidInput("x"), 400), (MalformedCiphertext("x"), 400), (DecryptionError(), 400),
    (UsageCapReached("x"), 400), (NotPermitted("x"), 403), (TenantNotFound("acme"), 404),
    (CheckAndSetFailed("x"), 409), (VaultUnreachable("x"), 503), (VaultSealed("x"), 503), (KeyopsError("x"), 500),
])
def test_errors_get_vaults_status_codes(exc: KeyopsError, status: int) -> None:
    assert http_status(exc) == status


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8200") == ("127.0.0.1", 8200)
    assert parse_listen("[::1]:8200") == ("::1", 8200)
    for bad in ("8200", "host:", "host:0", "host:99999", ":8200"):
        with pytest.raises(InvalidInput, match="HOST:PORT"):
            parse_listen(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")
