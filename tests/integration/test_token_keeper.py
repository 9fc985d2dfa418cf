"""A long-lived server's own token kept alive against the real OpenBao: renewed, or replaced by a login."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from keyops.backends.vault import VaultStore
from keyops.config import Config
from keyops.serve.token_keeper import TokenKeeper

pytestmark = pytest.mark.integration

TTL = 6


def short_token(vault_client: Any, *, renewable: bool) -> str:
    made = vault_client.auth.token.create(policies=["default"], ttl=f"{TTL}s", explicit_max_ttl="1h",
                                          renewable=renewable)
    return str(made["auth"]["client_token"])


def store_with(config: Config, token: str, **changes: Any) -> VaultStore:
    return VaultStore(config.replace(vault_token=token, vault_token_file=None, **changes), pool_size=1)


def wait_until_half_gone(store: VaultStore) -> None:
    while int(store.lookup_self()["ttl"]) > TTL // 2:
        time.sleep(0.5)


def test_a_renewable_token_is_renewed_half_way(config: Config, vault_client: Any) -> None:
    store = store_with(config, short_token(vault_client, renewable=True))
    keeper = TokenKeeper(store, can_log_in=False)
    assert keeper.step() <= TTL and keeper.renewals == 0  # most of its life left: nothing to do yet
    wait_until_half_gone(store)
    keeper.step()
    assert keeper.renewals == 1 and keeper.logins == 0
    assert int(store.lookup_self()["ttl"]) > TTL // 2  # renewed to a whole TTL again
    time.sleep(TTL / 2 + 1)
    keeper.step()
    time.sleep(TTL / 2)
    assert store.lookup_self()["ttl"] > 0  # alive past its first TTL, because the keeper kept stepping


def test_a_token_that_cannot_be_renewed_is_replaced_by_a_login(config: Config, vault_client: Any) -> None:
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    vault_client.sys.enable_auth_method("approle", path=mount)
    role = f"server-{uuid.uuid4().hex[:8]}"
    vault_client.auth.approle.create_or_update_approle(role, token_policies=["default"], token_ttl="10m",
                                                       mount_point=mount)
    role_id = vault_client.auth.approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
    secret_id = vault_client.auth.approle.generate_secret_id(role, mount_point=mount)["data"]["secret_id"]
    store = store_with(config, short_token(vault_client, renewable=False), approle_role_id=role_id,
                       approle_secret_id=secret_id, approle_mount=mount)
    first = store.lookup_self()["accessor"]
    keeper = TokenKeeper(store, can_log_in=True)
    wait_until_half_gone(store)
    keeper.step()
    assert keeper.logins == 1 and keeper.renewals == 0
    now = store.lookup_self()
    assert now["accessor"] != first and int(now["ttl"]) > 60  # the AppRole's own 10-minute token
    assert secret_id not in repr(now) and "client_token" not in store.log_in_again()
