"""A process whose cached keyring predates another process's KEK rotation still decrypts.

A KEK rotation re-wraps every DEK, and for residence ``transit`` raises the
Transit key's ``min_decryption_version``, so a wrapped DEK in a keyring cached
before the rotation can no longer be unwrapped. ``Keyops.dek`` must notice and
re-read the keyring instead of failing for up to ``keyring_ttl`` seconds.
"""

from __future__ import annotations

import pytest
from _tenants import new_tenant

from keyops.config import Config
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops, transit_key_name
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("residence", ["kv", "transit"])
def test_decrypt_with_keyring_cached_before_kek_rotation(config: Config, vault_client, residence: str) -> None:
    tenant = new_tenant(f"stale-{residence}")
    with Keyops(config) as operator, Keyops(config, keyring_ttl=3600) as app:
        operator.create_tenant(tenant, Policy(kek_residence=residence))
        ciphertext = operator.encrypt(tenant, b"written before the rotation", "ctx")
        app.get_tenant(tenant)  # the app caches the keyring, but no DEK yet
        result = rotate(operator, tenant, "kek")
        assert result.changed and result.new_version == 2
        if residence == "transit":
            info = vault_client.secrets.transit.read_key(name=transit_key_name(tenant), mount_point="transit")
            assert info["data"]["min_decryption_version"] == 2  # the old wrapping no longer unwraps
        assert app.decrypt(tenant, ciphertext, "ctx") == b"written before the rotation"
