"""rotate.yml with a single-use AppRole secret id, as the prod inventory runs it (issue 9, item 1).

The rotation and the re-encryption after it are two keyops tasks of one play:
the play's login step spends the secret id once and both use its token. The
dev inventory's connection is replaced (extra variables) by AppRole settings
for the rotation role's generated policy; the secret id comes from the
environment, as the scheduler hands it over.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest

from keyops import access
from keyops.config import Config
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def backdate_primary_dek(vault_client: Any, tenant: str, days: float) -> None:
    path = f"tenants/{tenant}/keyring"
    found = vault_client.secrets.kv.v2.read_secret_version(path=path, mount_point="keyops",
                                                           raise_on_deleted_version=True)
    doc, version = found["data"]["data"], found["data"]["metadata"]["version"]
    stamp = (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for dek in doc["dek"]["versions"]:
        if dek["version"] == doc["dek"]["primary"]:
            dek["created_at"] = stamp
    vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret=doc, cas=version, mount_point="keyops")


def test_rotate_yml_rotates_and_reencrypts_with_one_single_use_secret_id(
        ansible_playbook: Any, vault_client: Any, config: Config, stack: Any, tmp_path: Path,
        find_leaks: Any) -> None:
    with Keyops(config) as k:
        access.apply_policies(k, access.render_policies(k.roles, [], access.Mounts.from_config(config)))
        tenant = f"lg-{uuid.uuid4().hex[:8]}"
        k.create_tenant(tenant)
        k.put_secret(tenant, "db/password", b"rotated under one login")
    backdate_primary_dek(vault_client, tenant, days=31)
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_auth_method("approle", path=mount)
    vault_client.auth.approle.create_or_update_approle("rotation", token_policies=["keyops-rotation"],
                                                       token_ttl="10m", secret_id_num_uses=1, mount_point=mount)
    role_id = vault_client.auth.approle.read_role_id("rotation", mount_point=mount)["data"]["role_id"]
    secret_id = vault_client.auth.approle.generate_secret_id("rotation", mount_point=mount)["data"]["secret_id"]
    connection = {"url": stack.addr, "role_id": role_id, "approle_mount": mount, "kv_mount": "keyops",
                  "transit_mount": "transit", "pkcs11_token": "keyops", "pkcs11_pin_file": str(stack.pin_file),
                  "softhsm2_conf": str(stack.softhsm_conf)}
    variables = {"keyops_tenants": [{"name": tenant, "residence": "kv", "policy": "standard", "secrets": []}],
                 "keyops_connection": connection}
    env = {"KEYOPS_STATE_DIR": str(stack.state_dir), "VAULT_TOKEN": "", "BAO_TOKEN": "",
           "KEYOPS_VAULT_TOKEN_FILE": "", "HOME": str(tmp_path), "VAULT_SECRET_ID": secret_id}
    run = ansible_playbook(REPO / "ansible" / "rotate.yml", inventory=REPO / "inventories" / "dev",
                           extra_vars=variables, env=env, verbosity=3).assert_ok()
    rotated = [r["result"] for r in run.results if r["task"].endswith("Rotate every key that is due")]
    reencrypted = [r["result"] for r in run.results
                   if r["task"].endswith("Re-encrypt the secrets of the tenants whose DEK rotated")]
    assert rotated and rotated[0]["changed"] and reencrypted and reencrypted[0]["changed"]
    with Keyops(config) as k:
        keyring, _ = k.read_keyring(tenant)
        assert keyring.dek.primary == 2
        record = vault_client.secrets.kv.v2.read_secret_version(path=f"secrets/{tenant}/db/password",
                                                                mount_point="keyops",
                                                                raise_on_deleted_version=True)["data"]["data"]
        assert record["dek_version"] == 2 and k.get_secret(tenant, "db/password") == b"rotated under one login"
    assert not isinstance(vault_client.auth.approle.read_secret_id("rotation", secret_id, mount_point=mount), dict)
    assert find_leaks(run.output, [secret_id]) == []
