"""DEK and KEK rotation of both residences, against the real OpenBao and SoftHSM2 of the fixtures.

What is stored is checked around keyops (root hvac client, KV metadata,
Transit's own key description) wherever the property is about the server's
state rather than what keyops reports.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from typing import Any

import hvac.exceptions
import pytest
from _rotation_support import (
    PathCountingStore,
    check_secrets,
    cli_env,
    escrow_unwraps,
    fresh,
    keyops_cli,
    keyops_main,
    kv_version,
    raw_doc,
    seed_records,
    write_doc,
)
from _tenants import new_tenant

from keyops import crypto
from keyops.config import Config
from keyops.errors import Conflict, InvalidInput, TenantNotFound
from keyops.model.keyring import Policy, utcnow
from keyops.ops.front import Keyops, keyring_path, secret_path, transit_key_name
from keyops.ops.rotation import LOCKS_PATH, RotationResult, rotate

pytestmark = pytest.mark.integration

RESIDENCES = ["kv", "transit"]
LEVELS = ["dek", "kek"]


def make_tenant(k: Keyops, residence: str, secrets: int = 3, prefix: str = "rot") -> tuple[str, dict[str, bytes]]:
    tenant = new_tenant(f"{prefix}-{residence}")
    k.create_tenant(tenant, Policy(kek_residence=residence))
    values = {f"app/s{i}": f"value {i} of {tenant}".encode() for i in range(secrets)}
    for name, value in values.items():
        k.put_secret(tenant, name, value)
    return tenant, values


def secret_versions(vault_client: Any, tenant: str, names: Any) -> dict[str, int]:
    return {name: kv_version(vault_client, secret_path(tenant, name)) for name in names}


def transit_key(vault_client: Any, tenant: str) -> dict[str, Any]:
    return vault_client.secrets.transit.read_key(name=transit_key_name(tenant))["data"]


def assert_consistent(k: Keyops, vault_client: Any, tenant: str) -> None:
    """One primary per level, every DEK under the primary KEK, Transit in step with the keyring."""
    keyring = fresh(k.config).read_keyring(tenant)[0]
    for level in LEVELS:
        chain = keyring.chain(level)
        assert [v.version for v in chain.versions if v.state == "active"] == [chain.primary]
    assert {d.parent_version for d in keyring.dek.versions} == {keyring.kek.primary}
    if keyring.policy.kek_residence == "transit":
        info = transit_key(vault_client, tenant)
        tv = keyring.kek.primary_key.transit_version
        assert int(info["latest_version"]) == tv
        assert int(info["min_decryption_version"]) == tv
    assert kv_version(vault_client, f"{LOCKS_PATH}/tenants/{tenant}") == 0  # the lease was released


# --- DEK -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_dek_rotation_new_primary_old_decrypt_only(k: Keyops, config: Config, vault_client: Any,
                                                   residence: str) -> None:
    tenant, values = make_tenant(k, residence)
    before = secret_versions(vault_client, tenant, values)

    result = rotate(k, tenant, "dek")

    assert result == RotationResult(tenant, "dek", True, 1, 2, "on demand", False, detail=result.detail)
    keyring = raw_doc(vault_client, keyring_path(tenant))
    states = {v["version"]: v["state"] for v in keyring["dek"]["versions"]}
    assert keyring["dek"]["primary"] == 2 and states == {1: "decrypt_only", 2: "active"}
    assert {v["parent_version"] for v in keyring["dek"]["versions"]} == {keyring["kek"]["primary"]}
    assert secret_versions(vault_client, tenant, values) == before  # no secret touched
    check_secrets(config, tenant, values)
    with fresh(config) as other:  # a new process encrypts under the new DEK
        other.put_secret(tenant, "app/new", b"after rotation")
    assert raw_doc(vault_client, secret_path(tenant, "app/new"))["ciphertext"].startswith(f"keyops:v1:{tenant}:2:")
    assert_consistent(k, vault_client, tenant)


# --- KEK -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", RESIDENCES)
def test_kek_rotation_rewraps_every_dek_and_touches_no_secret(config: Config, vault_client: Any,
                                                              residence: str) -> None:
    store = PathCountingStore(config)
    with Keyops(config, store=store) as k:
        tenant, values = make_tenant(k, residence)
        rotate(k, tenant, "dek")
        rotate(k, tenant, "dek")  # three DEK versions to re-wrap
        k.put_secret(tenant, "app/s0", b"under DEK v3")
        values["app/s0"] = b"under DEK v3"
        before = secret_versions(vault_client, tenant, values)
        old_doc = raw_doc(vault_client, keyring_path(tenant))
        store.touched.clear()
        k.calls.reset()

        result = rotate(k, tenant, "kek")

        calls = k.calls.snapshot()
        touched = {path for _, path in store.touched}  # the rotation's own (closing ends the put's lease)
    assert (result.changed, result.old_version, result.new_version, result.rewrapped) == (True, 1, 2, 3)
    assert not result.resumed
    assert touched <= {keyring_path(tenant), "master", f"{LOCKS_PATH}/tenants/{tenant}"}, touched
    assert calls.get("kv.list", 0) == 0
    assert secret_versions(vault_client, tenant, values) == before

    doc = raw_doc(vault_client, keyring_path(tenant))
    kek_states = {v["version"]: v["state"] for v in doc["kek"]["versions"]}
    assert doc["kek"]["primary"] == 2 and kek_states == {1: "decrypt_only", 2: "active"}
    old_wrapped = {v["version"]: v["wrapped"] for v in old_doc["dek"]["versions"]}
    for dek in doc["dek"]["versions"]:
        assert dek["parent_version"] == 2
        assert dek["wrapped"] != old_wrapped[dek["version"]]
    check_secrets(config, tenant, values)
    with fresh(config) as k2:
        assert_consistent(k2, vault_client, tenant)


def test_transit_kek_rotation_imports_and_raises_min_decryption(k: Keyops, config: Config,
                                                               vault_client: Any) -> None:
    tenant, values = make_tenant(k, "transit")
    assert int(transit_key(vault_client, tenant)["latest_version"]) == 1
    under_v1 = vault_client.secrets.transit.encrypt_data(name=transit_key_name(tenant),
                                                         plaintext="eA==")["data"]["ciphertext"]
    assert under_v1.startswith("vault:v1:")

    rotate(k, tenant, "kek")

    info = transit_key(vault_client, tenant)
    assert int(info["latest_version"]) == 2
    assert int(info["min_decryption_version"]) == 2
    assert info["imported_key"] and not info["exportable"]
    with fresh(config) as cold:
        keyring = cold.read_keyring(tenant)[0]
        assert keyring.kek.primary_key.transit_version == 2
        # The escrow copy, unwrapped by the HSM master key, is the key Transit holds: it opens
        # the DEK that Transit wrapped (Transit's ciphertext is nonce || ciphertext || tag).
        kek = escrow_unwraps(cold, tenant)
        dek = keyring.dek.primary_key
        assert dek.parent_version == 2
        transit_ct = base64.b64decode(dek.wrapped).decode()
        assert transit_ct.startswith("vault:v2:")
        raw = crypto.AeadKey(kek).open(base64.b64decode(transit_ct.split(":", 2)[2]),
                                       crypto.key_context(tenant, "dek", dek.version))
        assert len(raw) == 32
    # The old Transit version no longer decrypts: nothing needs it.
    with pytest.raises(hvac.exceptions.InvalidRequest, match="too old"):
        vault_client.secrets.transit.decrypt_data(name=transit_key_name(tenant), ciphertext=under_v1)
    check_secrets(config, tenant, values)


# --- expect_version, dry runs ----------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
def test_expect_version_rotates_once(k: Keyops, vault_client: Any, level: str) -> None:
    tenant, _ = make_tenant(k, "kv", secrets=1)
    first = rotate(k, tenant, level, expect_version=1)
    version = kv_version(vault_client, keyring_path(tenant))
    again = rotate(k, tenant, level, expect_version=1)
    assert first.changed and first.new_version == 2
    assert not again.changed and again.new_version == 2 and "v2, not v1" in again.detail
    assert kv_version(vault_client, keyring_path(tenant)) == version
    with pytest.raises(InvalidInput):
        rotate(k, tenant, level, expect_version=0)
    with pytest.raises(InvalidInput):
        rotate(k, tenant, "master")  # type: ignore[arg-type]
    with pytest.raises(TenantNotFound):
        rotate(k, new_tenant("missing"), level)


@pytest.mark.parametrize("residence", RESIDENCES)
@pytest.mark.parametrize("level", LEVELS)
def test_dry_run_changes_nothing(k: Keyops, vault_client: Any, residence: str, level: str) -> None:
    tenant, _ = make_tenant(k, residence, secrets=1)
    keyring_version = kv_version(vault_client, keyring_path(tenant))
    transit_before = transit_key(vault_client, tenant) if residence == "transit" else None

    plan = rotate(k, tenant, level, dry_run=True)

    assert plan.dry_run and plan.changed and (plan.old_version, plan.new_version) == (1, 2)
    assert plan.detail.startswith("would ")
    assert kv_version(vault_client, keyring_path(tenant)) == keyring_version
    if transit_before is not None:
        assert transit_key(vault_client, tenant) == transit_before
    nothing = rotate(k, tenant, level, dry_run=True, expect_version=5)
    assert not nothing.changed and nothing.dry_run


# --- races -----------------------------------------------------------------------------------------


class RacingClock:
    """A clock whose first reading, taken between a rotation's read and its write, runs ``action``."""

    def __init__(self, action: Any) -> None:
        self.action = action
        self.fired = False

    def __call__(self) -> Any:
        if not self.fired:
            self.fired = True
            self.action()
        return utcnow()


@pytest.mark.parametrize("residence", RESIDENCES)
@pytest.mark.parametrize("level", LEVELS)
def test_rotation_that_loses_the_cas_race_reports_it(config: Config, vault_client: Any, residence: str,
                                                     level: str) -> None:
    """A rotation whose lease expired while it was paused loses its write to the one that took over."""
    with Keyops(config) as setup:
        tenant, values = make_tenant(setup, residence, secrets=2)
    lock = f"{LOCKS_PATH}/tenants/{tenant}"

    def rival_rotation() -> None:
        doc = raw_doc(vault_client, lock)
        write_doc(vault_client, lock, {**doc, "expires_at": 0})  # our lease expired meanwhile
        with Keyops(config) as rival:
            assert rotate(rival, tenant, level).changed

    with (Keyops(config, clock=RacingClock(rival_rotation)) as slow,
          pytest.raises(Conflict, match="won the race: its primary .* is now v2.*--expect-version 2")):
        rotate(slow, tenant, level)
    with Keyops(config, clock=RacingClock(rival_rotation)) as slow:
        assert fresh(config).read_keyring(tenant)[0].chain(level).primary == 2
        lost = rotate(slow, tenant, level, expect_version=2)
    assert not lost.changed and "another rotation won" in lost.detail
    keyring = fresh(config).read_keyring(tenant)[0]
    assert keyring.chain(level).primary == 3 and keyring.chain(level).latest_version == 3
    assert_consistent(fresh(config), vault_client, tenant)
    check_secrets(config, tenant, values)


@pytest.mark.parametrize("residence", RESIDENCES)
@pytest.mark.parametrize("level", LEVELS)
def test_two_rotations_started_at_once(config: Config, vault_client: Any, residence: str, level: str) -> None:
    with Keyops(config) as setup:
        tenant, values = make_tenant(setup, residence, secrets=2)
    barrier = threading.Barrier(2)
    outcomes: list[Any] = [None, None]

    def run(i: int) -> None:
        with Keyops(config) as k:
            barrier.wait()
            try:
                outcomes[i] = rotate(k, tenant, level, expect_version=1)
            except Conflict as exc:
                outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    won = [o for o in outcomes if isinstance(o, RotationResult) and o.changed]
    assert len(won) == 1, outcomes
    other = next(o for o in outcomes if o is not won[0])
    if isinstance(other, Conflict):
        assert "in progress" in str(other) or "won the race" in str(other)
    else:
        assert not other.changed
    keyring = fresh(config).read_keyring(tenant)[0]
    assert keyring.chain(level).primary == 2 and keyring.chain(level).latest_version == 2
    assert_consistent(fresh(config), vault_client, tenant)
    check_secrets(config, tenant, values)


def test_two_cli_rotations_started_at_once(stack: Any, config: Config, vault_client: Any) -> None:
    with Keyops(config) as setup:
        tenant, values = make_tenant(setup, "transit", secrets=2)
    env = cli_env(stack)
    cmd = [sys.executable, "-m", "keyops.cli.main", "rotate", "--tenant", tenant, "--level", "kek",
           "--expect-version", "1", "--detailed-exitcode"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    # The loser either found the winner's lease (7, conflict) or came after it (3, nothing to do).
    assert codes in ([0, 3], [0, 7]), results
    loser = next(out + err for code, out, err in results if code != 0)
    assert "in progress" in loser or "nothing to do" in loser or "won the race" in loser
    assert fresh(config).read_keyring(tenant)[0].kek.primary == 2
    assert_consistent(fresh(config), vault_client, tenant)
    check_secrets(config, tenant, values)


# --- scale: a KEK rotation reads and writes no secret ------------------------------------------------


@pytest.mark.slow
def test_kek_rotation_of_2000_secrets_costs_what_100_cost(stack: Any, config: Config, vault_client: Any) -> None:
    """The Vault calls of a KEK rotation do not depend on how many secrets the tenant has.

    (20,000 secrets and the timings are in benchmarks/bench_rotation.py.)
    """
    costs = {}
    for count in (100, 2000):
        store = PathCountingStore(config)
        with Keyops(config, store=store) as k:
            tenant = new_tenant(f"scale{count}")
            k.create_tenant(tenant, Policy(kek_residence="kv"))
            env = stack.env()
            values = seed_records(k, env["VAULT_ADDR"], env["VAULT_TOKEN"], tenant, count)
            store.touched.clear()
            k.calls.reset()
            result = rotate(k, tenant, "kek")
            costs[count] = (sorted(store.touched), k.calls.snapshot())
        assert result.changed and result.rewrapped == 1
        assert all(not path.startswith("secrets/") for _, path in store.touched)
        sample = {name: values[name] for name in list(values)[:: max(1, count // 50)]}
        check_secrets(config, tenant, sample)
    paths = {n: [(op, path.split("/")[0]) for op, path in touched] for n, (touched, _) in costs.items()}
    assert paths[100] == paths[2000]
    assert costs[100][1] == costs[2000][1]


# --- audit and CLI ---------------------------------------------------------------------------------


def test_rotation_emits_one_audit_event_without_key_material(config: Config) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with Keyops(config, audit=lambda op, **fields: events.append((op, fields))) as k:
        tenant, _ = make_tenant(k, "kv", secrets=1)
        events.clear()
        rotate(k, tenant, "kek", reason="test")
        rotate(k, tenant, "kek", dry_run=True)  # a dry run is no key operation: no event
        seen = list(events)
        keyring = k.read_keyring(tenant)[0]
        kek = k.hierarchy._kek(keyring, 2)
    rotations = [fields for op, fields in seen if op == "rotate"]
    assert len(rotations) == 1
    fields = rotations[0]
    assert fields["tenant"] == tenant and fields["level"] == "kek" and fields["result"] == "ok"
    assert fields["versions"] == {"old": 1, "new": 2} and fields["reason"] == "test"
    text = json.dumps([fields for _, fields in seen])
    assert base64.b64encode(kek).decode() not in text and kek.hex() not in text


def test_cli_rotate_exit_codes_and_json(stack: Any, k: Keyops, vault_client: Any) -> None:
    tenant, _ = make_tenant(k, "kv", secrets=1)
    env = cli_env(stack)

    dry = keyops_cli(env, "rotate", "--tenant", tenant, "--level", "dek", "--dry-run")  # the real program once
    assert dry.returncode == 0 and dry.stdout.startswith("would create DEK v2"), dry
    done = keyops_main(env, "rotate", "--tenant", tenant, "--level", "dek", "--expect-version", "1", "--json")
    assert done.returncode == 0, done
    out = json.loads(done.stdout)
    assert out["changed"] and out["result"]["new_version"] == 2 and out["result"]["level"] == "dek"
    again = keyops_main(env, "rotate", "--tenant", tenant, "--level", "dek", "--expect-version", "1")
    assert again.returncode == 0 and again.stdout.startswith("nothing to do"), again  # a success for a scheduler
    detailed = keyops_main(env, "rotate", "--tenant", tenant, "--level", "dek", "--expect-version", "1",
                           "--detailed-exitcode")
    assert detailed.returncode == 3 and detailed.stdout.startswith("nothing to do"), detailed

    missing = keyops_main(env, "rotate", "--tenant", new_tenant("missing"), "--level", "kek", "--json")
    assert missing.returncode == 5 and json.loads(missing.stderr)["error"] == "tenant_not_found"
    for bad in (["--level", "dek"], ["--due", "--level", "dek"], ["--tenant", tenant],
                ["--level", "master", "--tenant", tenant]):
        proc = keyops_main(env, "rotate", *bad)
        assert proc.returncode == 2 and "keyops: error:" in proc.stderr, (bad, proc)
    assert kv_version(vault_client, keyring_path(tenant)) > 0
