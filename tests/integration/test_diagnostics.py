"""Errors that say what happened (issue 9, items 5 and 6), against the real OpenBao and SoftHSM2.

Each message is checked as a user reads it: from the ``keyops`` program, on
stderr, with its exit code; and each refusal changes nothing. Fresh Vaults
are OpenBao namespaces made here (``sys/namespaces``), without mounts until
``keyops init`` makes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest
from _tenants import new_tenant

from keyops.config import Config
from keyops.dev.stack import DevStack, free_port
from keyops.errors import InvalidInput, MountMissing, VaultError
from keyops.ops.front import Keyops
from keyops.ops.mounts import init_mounts
from keyops.ops.rotation import _leased
from keyops.ops.secrets import MAX_SECRET_SIZE

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
#: A keyed audit trail needs its Transit key in each namespace; these tests look at other things.
NO_AUDIT = ("KEYOPS_AUDIT_LOG", "KEYOPS_AUDIT_ANCHOR", "KEYOPS_AUDIT_KEY")


def run(env: dict[str, str], *args: str, data: bytes = b"", code: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KEYOPS, *args], input=data, env=env, capture_output=True, timeout=120)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                      proc.stderr.decode(errors="replace"))
    assert proc.returncode == code, (args, proc.returncode, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.fixture(scope="module")
def env(stack: DevStack) -> dict[str, str]:
    return {**os.environ, **stack.env()}


def mounts_of(client: hvac.Client) -> dict[str, Any]:
    return {path: (m["type"], (m.get("options") or {}).get("version"))
            for path, m in client.sys.list_mounted_secrets_engines()["data"].items()}


@contextlib.contextmanager
def namespace(stack: DevStack, vault_client: hvac.Client) -> Iterator[tuple[str, hvac.Client]]:
    """A new, empty OpenBao namespace and a root client in it; removed afterwards."""
    name = f"ns-{uuid.uuid4().hex[:8]}"
    vault_client.adapter.post(f"/v1/sys/namespaces/{name}")
    client = hvac.Client(url=stack.addr, token=stack.env()["VAULT_TOKEN"], namespace=name)
    try:
        yield name, client
    finally:
        with contextlib.suppress(hvac.exceptions.VaultError):
            for path in mounts_of(client):
                if path in ("keyops/", "transit/") or path.startswith("other-"):
                    client.sys.disable_secrets_engine(path=path)
            vault_client.adapter.delete(f"/v1/sys/namespaces/{name}")


# --- connection, namespace, mounts ------------------------------------------------------------


def test_a_stopped_dev_stack_says_run_keyops_dev_up_and_its_status_names_the_primary_master_key(
        stack_factory: Callable[..., DevStack]) -> None:
    extra = stack_factory(port=free_port())
    extra.up()
    stack_env = {**os.environ, **extra.env()}
    tenant = new_tenant("dev")
    run(stack_env, "tenant", "create", tenant)
    run(stack_env, "rotate", "--level", "master")
    run(stack_env, "destroy", "--level", "master", "--version", "1", "--yes")
    status = run(stack_env, "dev", "status")
    master = [line for line in status.stdout.splitlines() if line.startswith("master key:")]
    assert len(master) == 1 and master[0].endswith("-v2 present"), status.stdout
    extra.down()

    stopped = run(stack_env, "status", code=11)
    assert stopped.stderr.startswith(f"keyops: error: Vault at {extra.addr} cannot be reached: connection refused")
    assert "`keyops dev up`" in stopped.stderr, stopped.stderr
    assert "token's policies" not in stopped.stderr

    # The same refusal at an address that is no dev stack's: no dev advice.
    elsewhere = {k: v for k, v in stack_env.items() if k not in ("KEYOPS_STATE_DIR", "KEYOPS_DEV_PORT")}
    elsewhere["VAULT_ADDR"] = f"http://127.0.0.1:{free_port()}"
    other = run(elsewhere, "secret", "get", tenant, "x", code=11)
    assert other.stderr.startswith(f"keyops: error: Vault at {elsewhere['VAULT_ADDR']} cannot be reached: "
                                   "connection refused"), other.stderr
    assert "keyops dev up" not in other.stderr and "check VAULT_ADDR" in other.stderr


def test_a_wrong_namespace_says_the_namespace_does_not_exist(env: dict[str, str]) -> None:
    proc = run({**env, "VAULT_NAMESPACE": "no-such-ns"}, "status", code=15)
    assert "namespace 'no-such-ns' does not exist" in proc.stderr and "VAULT_NAMESPACE" in proc.stderr
    assert "not found in Vault" not in proc.stderr


def test_a_missing_kv_mount_is_named_with_the_command_that_makes_it(env: dict[str, str], k: Keyops) -> None:
    tenant = new_tenant("mnt")
    k.create_tenant(tenant)
    proc = run({**env, "KEYOPS_KV_MOUNT": "nosuch"}, "secret", "get", tenant, "x", code=15)
    assert "the KV v2 mount 'nosuch' that keyops uses (KEYOPS_KV_MOUNT) does not exist" in proc.stderr
    assert "`keyops init`" in proc.stderr and "has no keyring" not in proc.stderr
    bad = run({**env, "KEYOPS_KV_MOUNT": "keyops/../sys"}, "secret", "get", tenant, "x", code=15)
    assert "invalid kv_mount name 'keyops/../sys'" in bad.stderr and "KEYOPS_KV_MOUNT" in bad.stderr


def test_migrate_from_a_missing_or_malformed_mount_is_an_error(env: dict[str, str], k: Keyops) -> None:
    tenant = new_tenant("mig")
    k.create_tenant(tenant)
    missing = run(env, "migrate", "--from", "app", "--mount", "no-such-mount", "--tenant", tenant, code=15)
    assert "the mount 'no-such-mount' does not exist" in missing.stderr, missing.stderr
    assert "nothing to do" not in missing.stdout + missing.stderr
    for mount in ("keyops/../sys", "sys", "a//b"):
        bad = run(env, "migrate", "--from", "app", "--mount", mount, "--tenant", tenant, code=2)
        assert f"invalid source mount name {mount!r}" in bad.stderr, bad.stderr
    assert k.list_secrets(tenant) == []


# --- data -------------------------------------------------------------------------------------


def test_garbage_into_decrypt_is_not_a_keyops_ciphertext(env: dict[str, str], k: Keyops) -> None:
    tenant = new_tenant("dec")
    k.create_tenant(tenant)
    proc = run(env, "decrypt", "--tenant", tenant, data=b"garbage\n", code=2)
    assert proc.stderr.strip() == ("keyops: error: not a keyops ciphertext: expected text starting with "
                                   "'keyops:v1:' or the binary form (first byte 1)"), proc.stderr
    assert proc.stdout == ""


def test_a_value_over_the_limit_is_refused_up_front_and_the_limit_fits(env: dict[str, str], k: Keyops,
                                                                         vault_client: hvac.Client) -> None:
    tenant = new_tenant("big")
    k.create_tenant(tenant)
    at_limit = os.urandom(MAX_SECRET_SIZE)  # random: what Vault stores of it does not compress
    run(env, "secret", "put", tenant, "at-limit", data=at_limit)
    assert k.get_secret(tenant, "at-limit") == at_limit
    before = k.calls.snapshot()
    proc = run(env, "secret", "put", tenant, "over", data=at_limit + b"x", code=2)
    assert f"is {MAX_SECRET_SIZE + 1:,} bytes; keyops stores at most {MAX_SECRET_SIZE:,} bytes" in proc.stderr
    with pytest.raises(InvalidInput, match="at most 768,000 bytes"):
        k.put_secret(tenant, "over", at_limit + b"x")
    assert k.calls.snapshot() == before  # refused before any request
    assert k.list_secrets(tenant) == ["at-limit"]
    # Past the check (a record written directly), Vault's own reason is kept, not "1 error occurred:".
    with pytest.raises(VaultError, match="value being too large.*max 1048576 bytes") as caught:
        k.store.write(f"secrets/{tenant}/raw", {"ciphertext": os.urandom(800_000).hex()}, cas=0)
    assert "error occurred" not in str(caught.value)


# --- fresh namespace: keyops init -------------------------------------------------------------


def test_init_makes_the_mounts_of_a_fresh_namespace(stack: DevStack, env: dict[str, str],
                                                    vault_client: hvac.Client) -> None:
    with namespace(stack, vault_client) as (name, client):
        ns_env = {**{k: v for k, v in env.items() if k not in NO_AUDIT}, "VAULT_NAMESPACE": name}
        tenant = new_tenant("init")
        before = run(ns_env, "tenant", "create", tenant, code=15)
        assert "the KV v2 mount 'keyops' that keyops uses (KEYOPS_KV_MOUNT) does not exist" in before.stderr
        assert f"namespace {name!r}" in before.stderr and "`keyops init`" in before.stderr
        mounts = mounts_of(client)

        plan = run(ns_env, "init", "--dry-run")
        assert plan.stdout.strip() == "would create kv mount 'keyops', transit mount 'transit'"
        assert mounts_of(client) == mounts

        made = run(ns_env, "init")
        assert made.stdout.startswith("created kv mount 'keyops', transit mount 'transit'"), made.stdout
        found = mounts_of(client)
        assert found["keyops/"] == ("kv", "2") and found["transit/"] == ("transit", None)
        assert client.secrets.kv.v2.read_configuration(mount_point="keyops")["data"]["max_versions"] == 100

        again = run(ns_env, "init", "--json")
        assert '"changed": false' in again.stdout and mounts_of(client) == found
        run(ns_env, "init", "--detailed-exitcode", code=3)  # nothing to do, told apart on request

        run(ns_env, "tenant", "create", tenant)
        run(ns_env, "secret", "put", tenant, "s", data=b"in a namespace")
        assert run(ns_env, "secret", "get", tenant, "s").stdout == "in a namespace"
        meta = client.secrets.kv.v2.read_secret_metadata(path="master", mount_point="keyops")["data"]
        assert meta["cas_required"] and meta["max_versions"] >= 1000


def test_init_in_a_fresh_namespace_with_a_keyed_audit_trail(stack: DevStack, env: dict[str, str],
                                                            vault_client: hvac.Client, tmp_path: Any) -> None:
    """The trail's head and key live in the mounts init makes: it makes them, then records what it made."""
    with namespace(stack, vault_client) as (name, client):
        log = tmp_path / "audit.jsonl"
        ns_env = {**env, "VAULT_NAMESPACE": name, "KEYOPS_AUDIT_LOG": str(log), "KEYOPS_AUDIT_ANCHOR": "auto",
                  "KEYOPS_AUDIT_KEY": "keyops_audit"}
        tenant = new_tenant("initaudit")
        before = run(ns_env, "tenant", "create", tenant, code=15)  # nothing half-made: refused up front
        assert "`keyops init`" in before.stderr and before.stderr.count("could not be written") <= 1
        made = run(ns_env, "init")
        assert "created the audit chain's Transit key transit/keyops_audit" in made.stdout
        assert client.secrets.transit.read_key(name="keyops_audit")["data"]["type"] == "hmac"
        run(ns_env, "tenant", "create", tenant)
        run(ns_env, "secret", "put", tenant, "s", data=b"audited")
        assert run(ns_env, "secret", "get", tenant, "s").stdout == "audited"
        verified = run(ns_env, "audit", "verify")
        assert "keyed chain intact" in verified.stdout
        operations = [json.loads(line)["operation"] for line in log.read_text().splitlines()]
        assert operations[:3] == ["mount.enable", "mount.enable", "audit.init"] and "tenant.create" in operations


def test_init_refuses_a_mount_of_the_wrong_kind(stack: DevStack, config: Config, vault_client: hvac.Client) -> None:
    with namespace(stack, vault_client) as (name, client):
        client.sys.enable_secrets_engine(backend_type="kv", path="other-kv1", options={"version": "1"})
        cfg = config.replace(vault_namespace=name, kv_mount="other-kv1", audit_log=None, audit_anchor=None)
        with Keyops(cfg) as k:
            with pytest.raises(Exception, match="mount 'other-kv1' is KV version 1, not the KV version 2") as caught:
                init_mounts(k)
            assert getattr(caught.value, "exit_code", None) == 15
        assert "transit/" not in mounts_of(client)  # nothing made


# --- a failed step is reported before a failed lease release -------------------------------------


def test_a_failed_step_is_reported_before_the_lease_release_that_failed_after_it(
        stack: DevStack, config: Config, vault_client: hvac.Client, caplog: pytest.LogCaptureFixture) -> None:
    with namespace(stack, vault_client) as (name, client):
        cfg = config.replace(vault_namespace=name, audit_log=None, audit_anchor=None)
        with Keyops(cfg) as k:
            init_mounts(k)
            # The block's step fails (its mount is gone), and so does the release after it (same mount).
            with pytest.raises(MountMissing) as caught, _leased(k, "master", "master key rotation"):
                client.sys.disable_secrets_engine(path="keyops")
                k.store.read("tenants/x/keyring")
            text = str(caught.value)
            assert text.startswith("reading keyops/tenants/x/keyring: the KV v2 mount 'keyops'"), text
            assert "; then releasing the lease of the master key rotation failed too (reading keyops/locks/master" \
                in text, text

            # A block that succeeds stays a success when only the release fails: the lease runs out.
            init_mounts(k)
            with caplog.at_level(logging.WARNING, logger="keyops.ops.rotation"), \
                    _leased(k, "master", "master key rotation"):
                client.sys.disable_secrets_engine(path="keyops")
            assert any("could not be released" in r.getMessage() for r in caplog.records), caplog.records
