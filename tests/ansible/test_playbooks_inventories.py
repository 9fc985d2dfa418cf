"""The committed inventories: well-formed tenants and policies, no secret in them, playbooks parse with each.

Pure checks of the YAML (unit level), plus one ``ansible-playbook
--syntax-check`` of every playbook per inventory, which needs no server.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyops.model.keyring import Policy
from keyops.model.names import validate_secret_name, validate_tenant

REPO = Path(__file__).resolve().parents[2]
INVENTORIES = ("dev", "staging", "prod")
PLAYBOOKS = ("site", "rotate", "reencrypt", "migrate", "status")
VENV_BIN = Path(sys.executable).parent

#: Module options that hold secrets: never set in an inventory (they come from the environment or files).
SECRET_OPTIONS = {"token", "secret_id", "pkcs11_pin"}


def group_vars(inventory: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted((REPO / "inventories" / inventory / "group_vars" / "keyops").glob("*.yml")):
        merged.update(yaml.safe_load(path.read_text()))
    return merged


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_every_tenant_is_valid_and_names_a_declared_valid_policy(inventory: str) -> None:
    gv = group_vars(inventory)
    policies = gv["keyops_rotation_policies"]
    for fields in policies.values():
        Policy(**fields)  # periods and usage cap within the library's bounds
    tenants = gv["keyops_tenants"]
    assert len(tenants) >= 3
    names = [validate_tenant(t["name"]) for t in tenants]
    assert len(set(names)) == len(names)
    for tenant in tenants:
        assert tenant["policy"] in policies
        assert tenant["residence"] in ("kv", "transit")
        for seed in tenant["secrets"]:
            validate_secret_name(seed["name"])
    if inventory != "dev":  # realistic examples: several policies, both residences
        assert len(policies) >= 3
        assert {t["residence"] for t in tenants} == {"kv", "transit"}


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_no_secret_is_committed_in_an_inventory(inventory: str) -> None:
    gv = group_vars(inventory)
    assert not SECRET_OPTIONS & set(gv["keyops_connection"]), "secrets come from the environment or files"
    for tenant in gv["keyops_tenants"]:
        for seed in tenant["secrets"]:
            value = seed["value"]
            assert value.startswith("{{ lookup(") and value.endswith("}}"), (
                f"{inventory}: seed {tenant['name']}/{seed['name']} must come from a lookup, not a literal")


def test_staging_and_prod_use_ha_vault_over_tls_approle_and_a_network_hsm() -> None:
    for inventory in ("staging", "prod"):
        conn = group_vars(inventory)["keyops_connection"]
        assert conn["url"].startswith("https://") and conn["validate_certs"] is True and conn["ca_cert"]
        assert "role_id" in conn and "token_file" not in conn
        assert "softhsm" not in conn["pkcs11_module"] and conn["pkcs11_module"].endswith(".so")
        assert conn["pkcs11_pin_file"].startswith("/")


@pytest.mark.parametrize("inventory", INVENTORIES)
def test_every_playbook_parses_with_the_inventory(inventory: str, ansible_env: dict[str, str]) -> None:
    cmd = [str(VENV_BIN / "ansible-playbook"), "--syntax-check", "-i", str(REPO / "inventories" / inventory),
           *(str(REPO / "ansible" / f"{name}.yml") for name in PLAYBOOKS)]
    proc = subprocess.run(cmd, env=ansible_env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
