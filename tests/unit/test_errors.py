"""The one exception tree: codes and exit codes the CLI and Ansible rely on."""

from __future__ import annotations

import inspect

import pytest

from keyops import errors
from keyops.errors import DecryptionError, InvalidInput, KeyopsError, MalformedCiphertext, TenantNotFound


def all_errors() -> list[type[KeyopsError]]:
    return [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, KeyopsError)]


def test_codes_are_distinct_and_exit_codes_non_zero() -> None:
    classes = all_errors()
    assert len(classes) >= 20
    # A refinement that reports exactly as its parent (same code: the JSON and audit contract stays) is
    # the one kind of class that may share a code, e.g. CheckAndSetFailed and Conflict.
    codes = [c.code for c in classes if c.code != getattr(c.__mro__[1], "code", None)]
    assert len(codes) == len(set(codes)), sorted(codes)
    for c in classes:
        assert c.code.replace("_", "").isalnum() and c.code.islower(), c
        assert 1 <= c.exit_code <= 125 and c.exit_code not in (126, 127, 130), c


@pytest.mark.parametrize("name", ["AuthenticationFailed", "KeyNotFound", "TenantNotFound", "VaultSealed",
                                  "VaultUnreachable", "HsmUnavailable", "HsmLoginFailed", "Conflict", "InvalidInput",
                                  "DecryptionError", "MalformedCiphertext", "PermissionDenied", "ConfigError"])
def test_issue_2_kinds_exist(name: str) -> None:
    assert issubclass(getattr(errors, name), KeyopsError)


def test_failures_the_cli_must_tell_apart_have_their_own_exit_codes() -> None:
    kinds = [errors.InvalidInput, errors.ConfigError, errors.DecryptionError, errors.NotFound, errors.TenantExists,
             errors.Conflict, errors.VaultUnreachable, errors.VaultSealed, errors.PermissionDenied,
             errors.HsmUnavailable, errors.HsmLoginFailed]
    exit_codes = [k.exit_code for k in kinds]
    assert len(set(exit_codes)) == len(exit_codes), dict(zip([k.__name__ for k in kinds], exit_codes, strict=True))


def test_families() -> None:
    assert issubclass(InvalidInput, ValueError)  # a programmer's bad argument is still a ValueError
    assert issubclass(MalformedCiphertext, InvalidInput)
    assert issubclass(errors.VaultSealed, errors.VaultError) and issubclass(errors.VaultUnreachable, errors.VaultError)
    assert issubclass(errors.HsmLoginFailed, errors.HsmError) and issubclass(errors.TenantNotFound, errors.NotFound)
    assert not issubclass(DecryptionError, InvalidInput)  # tampering is not a usage mistake


def test_decryption_error_is_opaque() -> None:
    assert str(DecryptionError()) == str(DecryptionError()) and "not authentic" in str(DecryptionError())


def test_tenant_not_found_says_what_to_do() -> None:
    exc = TenantNotFound("acme")
    assert exc.tenant == "acme" and "keyops tenant create acme" in str(exc)
