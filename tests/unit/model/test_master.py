"""The master registry's root fields: what each version records, and registries written before them."""

from __future__ import annotations

import datetime as dt

import pytest

from keyops.errors import KeyStateError
from keyops.model.master import MasterRegistry

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
#: A registry as keyops wrote it before roots had names (no "root", no "params").
LEGACY = {"schema": 1, "registry_id": "3f9c2a7b1d4e5f60", "primary": 2, "period_days": 365,
          "versions": [{"version": 1, "label": "keyops-master-v1", "key_id": None, "state": "decrypt_only",
                        "created_at": "2025-01-01T00:00:00Z"},
                       {"version": 2, "label": "keyops-master-3f9c2a7b1d4e5f60-v2",
                        "key_id": "3f9c2a7b1d4e5f6000000002", "state": "active", "created_at": "2026-01-01T00:00:00Z"}]}


def test_a_registry_written_before_roots_is_all_pkcs11() -> None:
    registry = MasterRegistry.from_dict(LEGACY)
    assert [(mv.root, dict(mv.params), mv.on_hsm) for mv in registry.versions] == [("pkcs11", {}, True)] * 2
    again = MasterRegistry.from_dict(registry.to_dict())
    assert again == registry
    assert [v["root"] for v in registry.to_dict()["versions"]] == ["pkcs11", "pkcs11"]


def test_each_version_keeps_its_own_root_and_parameters() -> None:
    registry = MasterRegistry.from_dict(LEGACY)
    params = {"addr": "https://kms.example:8200", "mount": "transit", "key": "keyops_root", "namespace": None}
    new = registry.new_version("keyops-master", 3, T0, "transit", params)
    registry = MasterRegistry(2, registry.versions + (new,), 365, registry.registry_id)
    back = MasterRegistry.from_dict(registry.to_dict())
    assert back.get(3).root == "transit" and dict(back.get(3).params) == params and not back.get(3).on_hsm
    assert back.get(3).key_id == "3f9c2a7b1d4e5f6000000003"  # named like any other version
    assert back.get(2).root == "pkcs11"


def test_destroying_a_passphrase_version_drops_its_wrapped_key() -> None:
    registry = MasterRegistry.from_dict(LEGACY)
    mv = registry.new_version("keyops-master", 3, T0, "passphrase", {"kdf": "argon2id", "salt": "c2FsdA==",
                                                                     "wrapped": "d3JhcHBlZA=="})
    assert "wrapped" not in mv.without_material().params and mv.without_material().params["salt"] == "c2FsdA=="


@pytest.mark.parametrize(("field", "value", "message"), [
    ("root", "kms", "not one of pkcs11, transit, passphrase"),
    ("params", {"wrapped": b"raw bytes"}, "must map names to strings or numbers"),
    ("params", ["a", "list"], "must map names to strings or numbers"),
])
def test_a_malformed_root_field_is_refused(field: str, value: object, message: str) -> None:
    doc = {**LEGACY, "versions": [{**LEGACY["versions"][1], field: value}]}  # type: ignore[dict-item]
    with pytest.raises(KeyStateError, match=message):
        MasterRegistry.from_dict(doc)
