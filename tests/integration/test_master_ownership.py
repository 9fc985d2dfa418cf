"""Master keys of registries sharing one HSM token (issue 8, item 2), against the real OpenBao and SoftHSM2.

* Two OpenBao namespaces with the same label prefix on the session's token:
  each registry makes and uses its own keys (distinct labels and CKA_IDs);
  rotating and destroying master versions in one leaves the other whole.
* A key already on the token under the name a rotation would claim is
  refused before the claim, never adopted.
* A registry written before registry ids (label ``<prefix>-v<N>``, no
  ``key_id``), as two namespaces on one token used to share, keeps working:
  it decrypts, rotates to owned names, and its destroy never deletes the
  shared key.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.exceptions
import pkcs11
import pytest
from _rotation_support import check_secrets, fresh, isolated_mount, kv_version, raw_doc, write_doc
from _tenants import new_tenant
from pkcs11 import Attribute, KeyType, ObjectClass

from keyops.config import Config
from keyops.errors import HsmKeyNotOwned
from keyops.model.keyring import Policy, format_time, utcnow
from keyops.ops.front import MASTER_PATH, Keyops, MasterRegistry
from keyops.ops.lifecycle import destroy, retire
from keyops.ops.rotation import LOCKS_PATH, rotate_master

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def namespace(stack: Any, config: Config, vault_client: hvac.Client, name: str) -> Iterator[Config]:
    """An OpenBao namespace with its own ``keyops`` (KV v2) and ``transit`` mounts; the Config that uses it."""
    vault_client.adapter.post(f"/v1/sys/namespaces/{name}")
    client = hvac.Client(url=stack.addr, token=stack.env()["VAULT_TOKEN"], namespace=name)
    client.sys.enable_secrets_engine(backend_type="kv", path="keyops", options={"version": "2"})
    client.sys.enable_secrets_engine(backend_type="transit", path="transit")
    deadline = time.monotonic() + 30
    while True:  # a new KV v2 mount answers "upgrading" for a moment
        try:
            client.secrets.kv.v2.read_secret_metadata(path="ready-probe", mount_point="keyops")
        except hvac.exceptions.InvalidPath:
            break
        except hvac.exceptions.InvalidRequest:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    try:
        yield config.replace(vault_namespace=name, kv_mount="keyops", transit_mount="transit")
    finally:
        with contextlib.suppress(hvac.exceptions.VaultError):
            for mount in ("keyops", "transit"):
                client.sys.disable_secrets_engine(path=mount)
            vault_client.adapter.delete(f"/v1/sys/namespaces/{name}")


def populate(cfg: Config, prefix: str) -> dict[str, dict[str, bytes]]:
    with Keyops(cfg) as k:
        tenant = new_tenant(prefix)
        k.create_tenant(tenant, Policy())
        values = {f"s{i}": f"{prefix} {tenant} {i}".encode() for i in range(2)}
        for name, value in values.items():
            k.put_secret(tenant, name, value)
    return {tenant: values}


def check(cfg: Config, made: dict[str, dict[str, bytes]]) -> None:
    for tenant, values in made.items():
        check_secrets(cfg, tenant, values)


def registry_of(cfg: Config) -> MasterRegistry:
    with fresh(cfg) as k:
        found = k.read_master()
    assert found is not None
    return found[0]


def token_objects(k: Keyops, label: str) -> list[tuple[str, bytes]]:
    """(label, CKA_ID) of the secret keys on the token with ``label``, read with python-pkcs11 directly."""
    with k.hsm._open() as session:
        return [(o[Attribute.LABEL], bytes(o[Attribute.ID]))
                for o in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label})]


def test_two_namespaces_on_one_token_never_share_master_keys(stack: Any, config: Config,
                                                             vault_client: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    prefix = f"km-{tag}"  # the same prefix in both, as the default "keyops-master" would be
    with isolated_mount(stack, config, vault_client) as iso, \
            namespace(stack, config, vault_client, f"team-{tag}") as ns_base:
        root_cfg = iso.config.replace(master_key_label=prefix)
        ns_cfg = ns_base.replace(master_key_label=prefix)
        root_made, ns_made = populate(root_cfg, "root"), populate(ns_cfg, "team")

        root_reg, ns_reg = registry_of(root_cfg), registry_of(ns_cfg)
        assert root_reg.registry_id and ns_reg.registry_id and root_reg.registry_id != ns_reg.registry_id
        root_v1, ns_v1 = root_reg.get(1), ns_reg.get(1)
        assert root_v1.label != ns_v1.label and root_v1.key_id != ns_v1.key_id
        with Keyops(root_cfg) as k:
            for mv in (root_v1, ns_v1):  # one object each on the token, named by its own registry
                assert token_objects(k, mv.label) == [(mv.label, bytes.fromhex(mv.key_id or ""))]
            assert not k.hsm.has_key(f"{prefix}-v1")  # nobody made the old shared name

            # Root rotates, retires and destroys its v1: the namespace is untouched.
            rotate_master(k)
            retire(k, None, "master", 1)
            destroy(k, None, "master", 1, confirm=True)
        check(ns_cfg, ns_made)
        check(root_cfg, root_made)

        # A rotation in the namespace makes its own v2, not root's.
        with Keyops(ns_cfg) as k:
            rotate_master(k)
            root_v2, ns_v2 = registry_of(root_cfg).get(2), registry_of(ns_cfg).get(2)
            assert root_v2.label != ns_v2.label and root_v2.key_id != ns_v2.key_id
            for mv in (root_v2, ns_v2):
                assert token_objects(k, mv.label) == [(mv.label, bytes.fromhex(mv.key_id or ""))]
            retire(k, None, "master", 1)
            destroy(k, None, "master", 1, confirm=True)
        check(root_cfg, root_made)
        check(ns_cfg, ns_made)


def test_a_key_already_under_the_next_name_is_refused_before_the_claim(stack: Any, config: Config,
                                                                        vault_client: Any) -> None:
    with isolated_mount(stack, config, vault_client) as iso:
        made = populate(iso.config, "squat")
        reg = registry_of(iso.config)
        label = f"{iso.config.master_key_label}-{reg.registry_id}-v2"
        key_id = bytes.fromhex(f"{reg.registry_id}00000002")
        with Keyops(iso.config) as k:
            k.hsm.ensure_key(label, key_id=key_id)  # made by something else than this registry's rotation
            before, revision = raw_doc(vault_client, MASTER_PATH, iso.mount), kv_version(
                vault_client, MASTER_PATH, iso.mount)
            with pytest.raises(HsmKeyNotOwned, match="did not create"):
                rotate_master(k)
        assert raw_doc(vault_client, MASTER_PATH, iso.mount) == before
        assert kv_version(vault_client, MASTER_PATH, iso.mount) == revision
        assert kv_version(vault_client, f"{LOCKS_PATH}/master", iso.mount) == 0
        check(iso.config, made)


def _legacy_key(k: Keyops, label: str) -> None:
    """A master key as keyops made it before registry ids: found by label, no CKA_ID, destroyable."""
    with k.hsm._open() as session:
        session.generate_key(KeyType.AES, 256, label=label, store=True,
                             capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT,
                             template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                       Attribute.TOKEN: True, Attribute.PRIVATE: True,
                                       Attribute.WRAP: False, Attribute.UNWRAP: False})


def test_legacy_registries_sharing_a_key_keep_working(stack: Any, config: Config, vault_client: Any) -> None:
    """Two registries written the old way, sharing ``<prefix>-v1``: one destroys its v1, the other still decrypts."""
    prefix = f"km-legacy-{uuid.uuid4().hex[:8]}"
    legacy_label = f"{prefix}-v1"
    with isolated_mount(stack, config, vault_client) as a, isolated_mount(stack, config, vault_client) as b:
        a_cfg, b_cfg = a.config.replace(master_key_label=prefix), b.config.replace(master_key_label=prefix)
        old_doc = {"schema": 1, "primary": 1, "period_days": 365,
                   "versions": [{"version": 1, "label": legacy_label, "state": "active",
                                 "created_at": format_time(utcnow())}]}
        with Keyops(a_cfg) as k:
            _legacy_key(k, legacy_label)
        for iso in (a, b):
            write_doc(vault_client, MASTER_PATH, old_doc, iso.mount)
        a_made, b_made = populate(a_cfg, "old-a"), populate(b_cfg, "old-b")
        check(a_cfg, a_made)
        check(b_cfg, b_made)
        assert raw_doc(vault_client, MASTER_PATH, a.mount) == old_doc  # reading and using it writes nothing

        with Keyops(a_cfg) as k:
            rotate_master(k)
            reg = registry_of(a_cfg)
            assert reg.registry_id is not None  # given an id with its first write since the upgrade
            assert reg.get(1).label == legacy_label and reg.get(1).key_id is None
            assert reg.get(2).label == f"{prefix}-{reg.registry_id}-v2" and reg.get(2).owned
            check(a_cfg, a_made)
            retire(k, None, "master", 1)
            result = destroy(k, None, "master", 1, confirm=True)
            assert result.state_after == "destroyed" and "before master key registries had ids" in result.detail
            assert k.hsm.has_key(legacy_label)  # never deleted: b still uses it
        assert raw_doc(vault_client, MASTER_PATH, b.mount) == old_doc
        check(b_cfg, b_made)
        check(a_cfg, a_made)


def test_a_version_claimed_before_registry_ids_is_finished_under_an_owned_name(stack: Any, config: Config,
                                                                              vault_client: Any) -> None:
    """An older keyops crashed right after claiming v2 (``<prefix>-v2``, pending) and maybe after making its key."""
    with isolated_mount(stack, config, vault_client) as iso:
        prefix = iso.config.master_key_label
        with Keyops(iso.config) as k:
            _legacy_key(k, f"{prefix}-v1")
            _legacy_key(k, f"{prefix}-v2")  # made by the old rotation before it died: unprovable, not adopted
        now = format_time(utcnow())
        write_doc(vault_client, MASTER_PATH, {"schema": 1, "primary": 1, "period_days": 365, "versions": [
            {"version": 1, "label": f"{prefix}-v1", "state": "active", "created_at": now},
            {"version": 2, "label": f"{prefix}-v2", "state": "pending", "created_at": now}]}, iso.mount)
        made = populate(iso.config, "claimed")
        with Keyops(iso.config) as k:
            result = rotate_master(k, expect_version=1)
            assert result.resumed and result.new_version == 2
            reg = registry_of(iso.config)
            v2 = reg.get(2)
            assert reg.primary == 2 and v2.state == "active" and v2.owned
            assert v2.label == f"{prefix}-{reg.registry_id}-v2"
            assert token_objects(k, v2.label) == [(v2.label, bytes.fromhex(v2.key_id or ""))]
            assert len(token_objects(k, f"{prefix}-v2")) == 1  # the old claim's key, left alone
        check(iso.config, made)
