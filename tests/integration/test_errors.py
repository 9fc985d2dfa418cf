"""Each failure gets its own clear error and changes nothing, against the real servers.

Stopped and sealed servers are separate stacks from ``stack_factory``, never
the shared one. PKCS#11 login is per process, so the wrong-PIN checks run
the CLI in a child process with the stack's environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import hvac
import pytest
import requests
from _tenants import new_tenant

from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.errors import (
    ConfigError,
    DecryptionError,
    HsmLoginFailed,
    HsmUnavailable,
    InvalidInput,
    KeyopsError,
    MalformedCiphertext,
    PermissionDenied,
    SecretNotFound,
    TenantNotFound,
    UsageCapReached,
    VaultSealed,
    VaultUnreachable,
)
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops, keyring_path

pytestmark = pytest.mark.integration

KV = "keyops"
WRONG_PIN = "wrong-pin-5b7e0c"


def client_for(addr: str, token: str) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=addr, token=token, session=session)


def snapshot(client: hvac.Client) -> dict[str, Any]:
    """Every document of the keyops mount with its version, and the Transit key names: what a change would touch."""
    docs: dict[str, Any] = {}
    pending = [""]
    while pending:
        folder = pending.pop()
        try:
            keys = client.secrets.kv.v2.list_secrets(path=folder, mount_point=KV)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            keys = []
        for key in keys:
            path = f"{folder}{key}"
            if key.endswith("/"):
                pending.append(path)
            else:
                meta = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=KV)["data"]
                data = client.secrets.kv.v2.read_secret_version(path=path, mount_point=KV,
                                                                raise_on_deleted_version=False)["data"]["data"]
                docs[path] = (meta["current_version"], data)
    try:
        transit = client.secrets.transit.list_keys()["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        transit = []
    return {"kv": docs, "transit": sorted(transit)}


def changed_paths(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    paths = set(before["kv"]) | set(after["kv"])
    changed = sorted(p for p in paths if before["kv"].get(p) != after["kv"].get(p))
    if before["transit"] != after["transit"]:
        changed.append("transit keys")
    return changed


def cli(env: dict[str, str], *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], input=data, env=env,
                          capture_output=True, timeout=120)


# --- the HSM ---------------------------------------------------------------------------------------


def test_wrong_pin_is_hsm_login_failed_and_changes_nothing(stack: DevStack, k: Keyops, vault_client: Any) -> None:
    existing = new_tenant("pin")
    k.create_tenant(existing)
    k.put_secret(existing, "s", b"value")
    before = snapshot(vault_client)
    env = {**os.environ, **stack.env(), "KEYOPS_PKCS11_PIN": WRONG_PIN}
    fresh = new_tenant("pin-new")
    runs = [
        cli(env, "tenant", "create", fresh),
        cli(env, "tenant", "create", new_tenant("pin-tr"), "--residence", "transit"),
        cli(env, "secret", "get", existing, "s"),
        cli(env, "secret", "put", existing, "s", data=b"other value"),
        cli(env, "encrypt", "--tenant", existing, data=b"more data"),
    ]
    for proc in runs:
        assert proc.returncode == HsmLoginFailed.exit_code == 22, (proc.args, proc.stderr)
        err = proc.stderr.decode()
        assert err.startswith("keyops: error: ") and "wrong PIN" in err and "KEYOPS_PKCS11_PIN" in err, err
        assert "Traceback" not in err and WRONG_PIN not in err
        assert proc.stdout == b""
    # No keyring, no record, no reservation of DEK uses, no Transit key; only the audit trail's head
    # moved on, since each refusal is itself an audited event.
    changed = changed_paths(before, snapshot(vault_client))
    assert [p for p in changed if not p.startswith("audit/")] == [], changed
    assert all(p.startswith("audit/head/") for p in changed), changed
    assert k.get_secret(existing, "s") == b"value"


def test_wrong_pin_file_is_refused_the_same_way(stack: DevStack, tmp_path: Any, vault_client: Any) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(WRONG_PIN + "\n")
    pin_file.chmod(0o600)
    env = {**os.environ, **stack.env(), "KEYOPS_PKCS11_PIN_FILE": str(pin_file)}
    tenant = new_tenant("pinf")
    proc = cli(env, "tenant", "create", tenant)
    assert proc.returncode == 22 and b"wrong PIN" in proc.stderr, proc.stderr
    with pytest.raises(hvac.exceptions.InvalidPath):
        vault_client.secrets.kv.v2.read_secret_version(path=keyring_path(tenant), mount_point=KV,
                                                       raise_on_deleted_version=True)
    pin_file.chmod(0o644)  # and a PIN file others can read is refused before any login
    proc = cli(env, "tenant", "create", tenant)
    assert proc.returncode == ConfigError.exit_code and b"chmod 600" in proc.stderr, proc.stderr


def test_unknown_token_is_hsm_unavailable(config: Config) -> None:
    with (Keyops(config.replace(pkcs11_token_label="no-such-token")) as k,
          pytest.raises(HsmUnavailable, match="no HSM token labelled 'no-such-token'")):
        k.hsm.has_key("keyops-master-v1")


def test_missing_module_is_a_config_error(config: Config, tmp_path: Any) -> None:
    with (Keyops(config.replace(pkcs11_module=str(tmp_path / "nope.so"))) as k,
          pytest.raises(ConfigError, match="KEYOPS_PKCS11_MODULE")):
        k.hsm.has_key("keyops-master-v1")


# --- stopped and sealed servers ------------------------------------------------------------------------------


def _extra_stack(stack_factory: Callable[..., DevStack], config: Config) -> tuple[DevStack, Config, hvac.Client]:
    """Another OpenBao; its keys are wrapped by the session token's master key (SoftHSM2 is bound per process)."""
    extra = stack_factory()
    extra.up()
    cfg = extra.config().replace(pkcs11_module=config.pkcs11_module, pkcs11_token_label=config.pkcs11_token_label,
                                 pkcs11_pin_file=config.pkcs11_pin_file, pkcs11_pin=config.pkcs11_pin)
    return extra, cfg, client_for(extra.addr or "", extra.env()["VAULT_TOKEN"])


def _populate(cfg: Config) -> tuple[str, str, str]:
    tenant, transit_tenant = new_tenant("up"), new_tenant("up-tr")
    with Keyops(cfg) as k:
        k.create_tenant(tenant)
        k.create_tenant(transit_tenant, Policy(kek_residence="transit"))
        k.put_secret(tenant, "s", b"kept")
        k.put_secret(transit_tenant, "s", b"kept too")
        ciphertext = k.encrypt(tenant, b"data", "c")
    return tenant, transit_tenant, ciphertext


def _every_operation_fails(cfg: Config, tenant: str, transit_tenant: str, ciphertext: str,
                           expected: type[KeyopsError]) -> list[str]:
    messages = []
    operations: list[Callable[[Keyops], Any]] = [
        lambda k: k.create_tenant(new_tenant("never")),
        lambda k: k.get_tenant(tenant),
        lambda k: k.list_tenants(),
        lambda k: k.encrypt(tenant, b"x"),
        lambda k: k.encrypt(transit_tenant, b"x"),
        lambda k: k.decrypt(tenant, ciphertext, "c"),
        lambda k: k.put_secret(tenant, "s", b"changed"),
        lambda k: k.put_secret(tenant, "new", b"new"),
        lambda k: k.get_secret(transit_tenant, "s"),
        lambda k: k.list_secrets(tenant),
        lambda k: k.delete_secret(tenant, "s"),
        lambda k: k.status(),
    ]
    for operation in operations:
        with Keyops(cfg) as cold:  # a fresh process-like state: nothing cached
            with pytest.raises(KeyopsError) as info:
                operation(cold)
            assert type(info.value) is expected, (operation, info.value)
            messages.append(str(info.value))
    return messages


def _still_there(cfg: Config, tenant: str, transit_tenant: str, ciphertext: str) -> None:
    with Keyops(cfg) as k:
        assert k.get_secret(tenant, "s") == b"kept"
        assert k.get_secret(transit_tenant, "s") == b"kept too"
        assert k.decrypt(tenant, ciphertext, "c") == b"data"


def test_stopped_server_is_unreachable_and_changes_nothing(stack_factory: Callable[..., DevStack],
                                                           config: Config) -> None:
    extra, cfg, client = _extra_stack(stack_factory, config)
    tenant, transit_tenant, ciphertext = _populate(cfg)
    before = snapshot(client)
    env = {**os.environ, **extra.env()}
    extra.down()

    messages = _every_operation_fails(cfg, tenant, transit_tenant, ciphertext, VaultUnreachable)
    for message in messages:
        # A dev stack's address (its default port, or the one its state names) gets the dev advice instead.
        assert message.startswith(f"Vault at {cfg.vault_addr} cannot be reached: connection refused"), message
        assert "check VAULT_ADDR" in message or "`keyops dev up`" in message, message
    proc = cli(env, "secret", "get", tenant, "s")
    assert proc.returncode == VaultUnreachable.exit_code == 11 and proc.stdout == b""
    # The CLI has the stack's environment (KEYOPS_STATE_DIR), so it knows the address for the dev stack's.
    assert proc.stderr.decode().startswith(f"keyops: error: Vault at {cfg.vault_addr} cannot be reached: ")
    assert b"`keyops dev up`" in proc.stderr and b"Traceback" not in proc.stderr

    extra.up()
    assert changed_paths(before, snapshot(client)) == []
    _still_there(cfg, tenant, transit_tenant, ciphertext)


def test_sealed_server_is_sealed_and_changes_nothing(stack_factory: Callable[..., DevStack], config: Config) -> None:
    extra, cfg, client = _extra_stack(stack_factory, config)
    tenant, transit_tenant, ciphertext = _populate(cfg)
    before = snapshot(client)
    env = {**os.environ, **extra.env()}
    extra.seal()

    messages = _every_operation_fails(cfg, tenant, transit_tenant, ciphertext, VaultSealed)
    for message in messages:
        assert "sealed" in message and "unseal" in message, message
    proc = cli(env, "secret", "get", tenant, "s")
    assert proc.returncode == VaultSealed.exit_code == 12 and proc.stdout == b""
    assert b"sealed" in proc.stderr and b"Traceback" not in proc.stderr

    extra.unseal()
    assert changed_paths(before, snapshot(client)) == []
    _still_there(cfg, tenant, transit_tenant, ciphertext)


# --- Vault permissions ---------------------------------------------------------------------------------------


def test_token_without_policy_is_permission_denied(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = new_tenant("perm")
    k.create_tenant(tenant)
    token = vault_client.auth.token.create(policies=["default"], ttl="10m", no_default_policy=False)
    weak = config.replace(vault_token=token["auth"]["client_token"], vault_token_file=None)
    before = snapshot(vault_client)
    with Keyops(weak) as limited:
        # keyops may refuse early (its role check, a PermissionDenied too) or Vault refuses.
        for operation in (lambda: limited.get_tenant(tenant), lambda: limited.create_tenant(new_tenant("no")),
                          lambda: limited.put_secret(tenant, "s", b"v"), lambda: limited.list_tenants()):
            with pytest.raises(PermissionDenied, match="not permitted|permission denied"):
                operation()
        # At the Vault boundary itself: Vault's 403 becomes exactly PermissionDenied.
        for request in (lambda: limited.store.read(keyring_path(tenant)),
                        lambda: limited.store.write(keyring_path(new_tenant("no")), {"x": 1}, cas=0),
                        lambda: limited.store.list("tenants")):
            with pytest.raises(PermissionDenied) as info:
                request()
            assert type(info.value) is PermissionDenied and "permission denied by Vault" in str(info.value)
    assert changed_paths(before, snapshot(vault_client)) == []


# --- not found, invalid input, usage cap --------------------------------------------------------------------


def test_missing_tenant_and_secret(k: Keyops) -> None:
    ghost = new_tenant("ghost")
    for operation in (lambda: k.get_tenant(ghost), lambda: k.encrypt(ghost, b"x"),
                      lambda: k.put_secret(ghost, "s", b"v"), lambda: k.get_secret(ghost, "s"),
                      lambda: k.list_secrets(ghost), lambda: k.status(ghost), lambda: k.tenant_status(ghost)):
        with pytest.raises(TenantNotFound) as info:
            operation()
        assert f"keyops tenant create {ghost}" in str(info.value)
    assert ghost not in k.list_tenants()
    tenant = new_tenant("nosecret")
    k.create_tenant(tenant)
    with pytest.raises(SecretNotFound, match="no secret 'nope'"):
        k.get_secret(tenant, "nope")
    assert k.delete_secret(tenant, "nope") is False


def test_invalid_input_is_refused_before_any_request(k: Keyops) -> None:
    tenant = new_tenant("inv")
    k.create_tenant(tenant)
    before = k.calls.snapshot()
    for operation in (
        lambda: k.create_tenant("Bad/Tenant"), lambda: k.create_tenant("x" * 10_000),
        lambda: k.create_tenant("\u0430cme"), lambda: k.get_tenant("../keyring"),
        lambda: k.put_secret(tenant, "../escape", b"v"), lambda: k.put_secret(tenant, "a//b", b"v"),
        lambda: k.get_secret(tenant, "a/../b"), lambda: k.delete_secret(tenant, "/abs"),
        lambda: k.encrypt("", b"x"), lambda: k.encrypt(tenant, b"x", b"c" * 5000),
        lambda: k.decrypt(tenant, "not a ciphertext"), lambda: k.decrypt(tenant, "keyops:v1:Acme:1:AAAA"),
        lambda: k.create_tenant(new_tenant("err"), Policy(dek_usage_cap=0)),
    ):
        with pytest.raises(InvalidInput):
            operation()
    assert k.calls.snapshot() == before


def test_malformed_ciphertexts(k: Keyops) -> None:
    tenant = new_tenant("mal")
    k.create_tenant(tenant)
    text = k.encrypt(tenant, b"x")
    for bad in (text[:20], text.replace("keyops:v1:", "keyops:v2:"), text + "!", "vault:v1:" + text[10:], b"\x02\x01a"):
        with pytest.raises(MalformedCiphertext):
            k.decrypt(tenant, bad)


def test_decryption_errors_are_opaque(k: Keyops) -> None:
    a, b = new_tenant("opa"), new_tenant("opb")
    k.create_tenant(a)
    k.create_tenant(b)
    text = k.encrypt(a, b"secret data", "ctx")
    messages = set()
    for tenant, ct, ctx in ((a, text, "other"), (b, text, "ctx"), (b, text.replace(f":{a}:", f":{b}:"), "ctx"),
                            (a, text[:-6] + ("A" if text[-6] != "A" else "B") + text[-5:], "ctx")):
        with pytest.raises(DecryptionError) as info:
            k.decrypt(tenant, ct, ctx)
        messages.add(str(info.value))
    assert len(messages) == 1 and "not authentic" in messages.pop()


def test_usage_cap_is_enforced(config: Config) -> None:
    tenant = new_tenant("cap")
    with Keyops(config) as k:
        k.create_tenant(tenant, Policy(dek_usage_cap=3))
        texts = [k.encrypt(tenant, b"x") for _ in range(3)]
        with pytest.raises(UsageCapReached, match="rotate"):
            k.encrypt(tenant, b"x")
    with Keyops(config) as other:  # another process cannot go past the cap either
        with pytest.raises(UsageCapReached):
            other.encrypt(tenant, b"x")
        assert [other.decrypt(tenant, t) for t in texts] == [b"x"] * 3  # decryption goes on
        assert other.read_usage(tenant)[0].get(1).reserved == 3
