"""The declaration's loader and its JSON Schema agree; errors name the file, the line and the field."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from keyops.declare import load_text, validate
from keyops.declare.steps import retention
from keyops.errors import InvalidInput
from keyops.model.keyring import KeyChain, Keyring, Policy

REPO = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((REPO / "schema" / "keyops-declaration.schema.json").read_text())

VALID = [
    "tenants:\n  - name: acme\n    residence: kv\n    policy: {kek_period_days: 90, dek_period_days: 30, "
    "dek_usage_cap: 1000000, keep_versions: 2}\n",
    "tenants: []\n",
    "version: 1\nmaster: {period_days: 365}\naccess: {roles: [app, rotation]}\n"
    "policies:\n  std: {keep_versions: 3, destroy_after_days: 30}\n"
    "tenants:\n  - name: a-1\n    policy: std\n    secrets:\n      - {name: db/pw, value_env: PW}\n"
    "      - {name: api/key, value_file: /run/k, enforce: true}\n",
    "keyops_rotation_policies:\n  standard: {dek_period_days: 7}\nkeyops_tenants:\n"
    "  - {name: beta, residence: transit, policy: standard, secrets: []}\n",
]
INVALID = [
    ("tenants:\n  - name: Acme\n", 2, "tenants[0].name"),
    ("tenants:\n  - name: acme\n    residence: hsm\n", 3, "tenants[0].residence"),
    ("tenants:\n  - name: acme\n    policy: {keep_versions: 0}\n", 3, "tenants[0].policy.keep_versions"),
    ("tenants:\n  - name: acme\n    policy:\n      dek_period_days: 30\n      keep: 2\n", 5, "tenants[0].policy.keep"),
    ("tenants:\n  - name: acme\n    policy: {destroy_after_days: 3}\n", 3, "tenants[0].policy.destroy_after_days"),
    ("tenants:\n  - name: acme\n    secrets:\n      - {name: db/pw}\n", 4, "tenants[0].secrets[0]"),
    ("tenants:\n  - name: acme\n    secrets:\n      - {name: ../x, value: v}\n", 4, "tenants[0].secrets[0].name"),
    ("tenants:\n  - name: acme\n    secrets:\n      - {name: x, value: v, value_env: V}\n", 4,
     "tenants[0].secrets[0]"),
    ("master: {period_days: 0}\n", 1, "master.period_days"),
    ("tenant:\n  - name: acme\n", 1, "tenant"),
    ("version: 2\n", 1, "version"),
    ("tenants: {acme: {}}\n", 1, "tenants"),
    ("policies:\n  std: {dek_usage_cap: true}\n", 2, "policies.std.dek_usage_cap"),
    ("tenants: []\nkeyops_tenants: []\n", 2, "keyops_tenants"),
]


def schema_accepts(text: str) -> bool:
    try:
        jsonschema.validate(yaml.safe_load(text) or {}, SCHEMA)
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize("text", VALID)
def test_valid_examples_pass_both(text: str) -> None:
    assert schema_accepts(text)
    load_text(text, "keys.yml")


@pytest.mark.parametrize(("text", "line", "field"), INVALID)
def test_invalid_examples_fail_both_and_the_loader_names_file_line_and_field(text: str, line: int,
                                                                             field: str) -> None:
    assert not schema_accepts(text)
    with pytest.raises(InvalidInput) as failed:
        load_text(text, "keys.yml")
    assert f"keys.yml:{line}: {field}" in str(failed.value)


def test_the_issues_example_shape_loads() -> None:
    d = load_text("tenants:\n  - name: acme\n    residence: kv            # or transit\n"
                  "    policy: {kek_period_days: 90, dek_period_days: 30, dek_usage_cap: 1000000, keep_versions: 2}\n")
    (acme,) = d.tenants
    assert acme.wanted_policy(None) == Policy("kv", 90, 30, 1000000, keep_versions=2)


def test_what_json_schema_cannot_say_the_loader_still_refuses() -> None:
    with pytest.raises(InvalidInput, match=r"keys.yml:2: tenants\[0\].policy: names the policy 'gold'"):
        load_text("tenants:\n  - {name: a, policy: gold}\n", "keys.yml")
    with pytest.raises(InvalidInput, match=r"keys.yml:3: tenants\[1\].name: tenant a is declared twice"):
        load_text("tenants:\n  - {name: a}\n  - {name: a}\n", "keys.yml")
    with pytest.raises(InvalidInput, match=r"keys.yml:3: tenants\[0\].policy.x: given twice"):
        load_text("tenants:\n  - name: a\n    policy: {x: 1, x: 2}\n", "keys.yml")
    with pytest.raises(InvalidInput, match="is an Ansible template") as templated:
        load_text("tenants:\n  - name: a\n    secrets: [{name: s, value: \"{{ lookup('env', 'X') }}\"}]\n")
    assert "lookup" not in str(templated.value)  # a value is never repeated in an error
    with pytest.raises(InvalidInput, match=r"keys.yml:\d: not valid YAML"):
        load_text("tenants:\n  - name: [a\n", "keys.yml")


def test_several_errors_are_listed_together() -> None:
    with pytest.raises(InvalidInput) as failed:
        load_text("tenants:\n  - {name: a, residence: x}\n  - {name: B}\n", "k.yml")
    assert "k.yml:2: tenants[0].residence" in str(failed.value) and "k.yml:3: tenants[1].name" in str(failed.value)


@pytest.mark.parametrize("inventory", ["dev", "staging", "prod"])
def test_the_inventories_group_vars_are_declarations(inventory: str) -> None:
    text = (REPO / "inventories" / inventory / "group_vars" / "keyops" / "tenants.yml").read_text()
    data = yaml.safe_load(text)
    assert schema_accepts(text)
    d = validate(data, f"{inventory} group_vars")  # as Ansible hands it over (templates evaluated there)
    assert {t.name for t in d.tenants} >= {"acme", "globex"}


def test_a_seed_value_is_never_in_a_repr() -> None:
    d = load_text("tenants:\n  - name: a\n    secrets: [{name: s, value: hunter2-secret}]\n")
    assert "hunter2-secret" not in repr(d)


# --- retention's rule (pure) -----------------------------------------------------------------------------


def keyring(dek_versions: int, keep: int | None) -> Keyring:
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    kr = Keyring("t", Policy(keep_versions=keep), "2025-01-01T00:00:00Z", KeyChain(0, ()), KeyChain(0, ()))
    kr = kr.add_version("kek", "w", 1, now)
    for _ in range(dek_versions):
        kr = kr.add_version("dek", "w", 1, now)
    return kr


def actions(steps: list[Any]) -> list[tuple[str, str, int]]:
    return [(s.action, s.level, s.version) for s in steps]


def test_retention_retires_only_beyond_keep_and_only_what_nothing_refers_to() -> None:
    kr = keyring(4, keep=2)
    now = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)
    notes: list[str] = []
    assert actions(retention(kr, kr.policy, {1: 0, 2: 5, 3: 0, 4: 9}, {}, now, notes)) == [("retire", "dek", 1)]
    assert notes == ["DEK t v2 is beyond keep_versions 2 but stays: 5 secrets still refer to it"]
    outside: list[str] = []
    assert actions(retention(kr, kr.policy, {}, {1: 3}, now, outside)) == [("retire", "dek", 2)]
    assert "outside the store" in outside[0]
    assert retention(kr, Policy(), {}, {}, now, []) == []  # no keep_versions: every version stays


def test_retention_destroys_after_the_delay_only_with_the_destroy_right() -> None:
    kr = keyring(3, keep=1)
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    kr = kr.set_state("dek", 1, "retired", t0)
    policy = Policy(keep_versions=1, destroy_after_days=7)
    later = t0 + dt.timedelta(days=8)
    assert ("destroy", "dek", 1) in actions(retention(kr, policy, {}, {}, later, []))
    assert ("destroy", "dek", 1) not in actions(retention(kr, policy, {}, {}, t0 + dt.timedelta(days=6), []))
    notes: list[str] = []
    assert ("destroy", "dek", 1) not in actions(retention(kr, policy, {}, {}, later, notes, may_destroy=False))
    assert any("security-admin" in n for n in notes)


def test_policy_reads_stored_keyrings_without_retention_fields_and_writes_none() -> None:
    old = {"kek_residence": "kv", "kek_period_days": 90, "dek_period_days": 30, "dek_usage_cap": 2**30}
    assert Policy.from_dict(old) == Policy() and Policy().to_dict() == old
    assert Policy(keep_versions=2).to_dict()["keep_versions"] == 2
