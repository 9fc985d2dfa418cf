"""Public key ids: their shape, their parsing, and that no two versions anywhere share one."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from keyops.errors import InvalidInput
from keyops.model.keyring import Keyring, Policy
from keyops.serve.tenant_keys import MAX_KEY_ID_LEN, key_id, parse_key_id, short_reason

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def keyring(tenant: str = "acme") -> Keyring:
    from keyops.model.keyring import KeyChain

    empty = KeyChain(0, (), ())
    kr = Keyring(tenant, Policy(), "2026-01-01T00:00:00Z", empty, empty)
    return kr.add_version("kek", "a2Vr", 1, NOW).add_version("dek", "ZGVr", 1, NOW).add_version("dek", "ZDI=", 1, NOW)


def test_a_key_id_names_tenant_and_version_and_parses_back() -> None:
    kr = keyring()
    text = key_id(kr, 2)
    assert text.startswith("keyops:acme:dek:v2:") and len(text) <= MAX_KEY_ID_LEN
    assert parse_key_id(text) == ("acme", 2)
    assert key_id(kr, 1) != text


def test_versions_made_before_uids_get_a_stable_id_of_their_own() -> None:
    kr = keyring()
    legacy = kr.replace_version("dek", dataclasses.replace(kr.dek.get(1), uid=None))
    assert key_id(legacy, 1) == key_id(legacy, 1) != key_id(kr, 1)
    again = dataclasses.replace(legacy, created_at="2026-01-02T00:00:00Z")  # the tenant made again
    assert key_id(again, 1) != key_id(legacy, 1)


def test_a_tenant_made_again_never_repeats_a_key_id() -> None:
    assert key_id(keyring(), 1) != key_id(keyring(), 1)


@pytest.mark.parametrize("text", ["", "keyops:acme:dek:1:ab", "vault:v1:x", "keyops:acme:kek:v1:ab",
                                  "keyops:ACME!:dek:v1:ab", "keyops:acme:dek:v1:ab:extra", "k" * 2000])
def test_anything_else_is_not_a_key_id(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_key_id(text)


def test_a_reason_is_one_short_line() -> None:
    reason = short_reason(InvalidInput("line one\nline two " + "x" * 500))
    assert reason.startswith("invalid_input: line one line two") and len(reason) <= 200 and "\n" not in reason
