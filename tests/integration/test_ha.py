"""Faults on purpose against a three-node OpenBao cluster (issue 13, items 1 and 2).

One cluster (``ha_cluster``, integrated raft, three voters) serves the
module. keyops is given every node's address (``KEYOPS_VAULT_ADDRS``) and
runs a job in a thread of this process, so that its ``calls`` counter shows
the transport's retries and failovers; at a point in the middle of the job
(so many KV writes after it began) the test does one thing to the cluster:

* SIGKILL of the active node, during a re-encryption, a KEK rotation (both
  residences) and a master rotation;
* a restart of the active node (SIGTERM, start, unseal), and a seal of it,
  during a re-encryption.

Each ends the same way: the job finished by its own retries, or it stopped
with a keyops error and the same call run again finished it; every secret
decrypts to its latest value (read by a fresh ``Keyops``), every record is on
the new DEK, and no version was made twice. Before each test the cluster is
brought back to three unsealed nodes (``DevCluster.up`` is idempotent).

The checks read the cluster with the root token through hvac, not through
the code under test. Failover figures (time to the new leader, retries) are
printed for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import hvac
import pytest
import requests
from _rotation_support import check_tenants, isolated_mount
from _tenants import new_tenant
from jobs_support import decrypt_all, fill, values_for

from keyops.config import Config
from keyops.dev.cluster import DevCluster
from keyops.dev.stack import DevStack
from keyops.errors import KeyopsError, VaultSealed
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops, MasterRegistry, secret_path, transit_key_name
from keyops.ops.reencrypt import reencrypt
from keyops.ops.rotation import rotate, rotate_master, stale_dek_versions, stale_kek_versions

pytestmark = [pytest.mark.integration, pytest.mark.ha, pytest.mark.slow]

SECRETS = 240
JOB_TIMEOUT = 120.0


@pytest.fixture(autouse=True)
def three_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    if "ha_cluster" in request.fixturenames:
        cluster: DevCluster = request.getfixturevalue("ha_cluster")
        cluster.up()  # restarts a killed node, unseals a sealed one; nothing when all is well
    yield


def root_client(cluster: DevCluster) -> hvac.Client:
    """hvac with the root token on the node that is active now (the checks never go through keyops)."""
    deadline = time.monotonic() + 30
    while (index := cluster.active_node()) is None:
        assert time.monotonic() < deadline, "no active node"
        time.sleep(0.1)
    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=cluster.nodes[index].addr, token=cluster.env()["VAULT_TOKEN"], session=session)


class Job:
    """``work()`` in a thread; ``result`` or ``error`` (a KeyopsError) once it ends."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: KeyopsError | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self.result = work()
        except KeyopsError as exc:
            self.error = exc

    def wait(self) -> None:
        self.thread.join(JOB_TIMEOUT)
        assert not self.thread.is_alive(), f"the job did not end within {JOB_TIMEOUT:g} s"


def in_the_middle(k: Keyops, work: Callable[[], Any], writes: int, fault: Callable[[], None]) -> Job:
    """Start ``work``; once it has made ``writes`` KV writes, and while it still runs, do ``fault``."""
    start = k.calls.snapshot().get("kv.write", 0)
    job = Job(work)
    while k.calls.snapshot().get("kv.write", 0) - start < writes:
        assert job.thread.is_alive(), "the job ended before the fault: give it more work"
        time.sleep(0.002)
    assert job.thread.is_alive(), "the job ended before the fault: give it more work"
    fault()
    job.wait()
    return job


def kill_active(cluster: DevCluster) -> Callable[[], None]:
    def fault() -> None:
        index = cluster.active_node()
        assert index is not None
        cluster.kill_node(index, signal.SIGKILL)
    return fault


def retried(k: Keyops) -> dict[str, int]:
    counts = k.calls.snapshot()
    return {kind: counts.get(kind, 0) for kind in ("vault.retry", "vault.failover", "vault.probe")}


# --- re-encryption ----------------------------------------------------------------------------------


def reencryption_survives(cluster: DevCluster, cfg: Config, fault: Callable[[], None], tag: str) -> dict[str, Any]:
    tenant = new_tenant(tag)
    names = [f"app/s{i:04d}" for i in range(SECRETS)]
    values = values_for(names)
    with Keyops(cfg) as k:
        k.create_tenant(tenant)
        fill(k, tenant, values)
        target = rotate(k, tenant, "dek").new_version
        k.calls.reset()
        started = time.monotonic()
        job = in_the_middle(k, lambda: reencrypt(k, tenant, workers=4, batch_size=20), SECRETS // 5, fault)
        took = time.monotonic() - started
        counts = retried(k)
    rerun = job.error is not None
    if rerun:  # stopped with a clear error: the same call again finishes the job
        with Keyops(cfg, keyring_ttl=0.0) as again:
            reencrypt(again, tenant)
    client = root_client(cluster)
    for name in names:
        data = client.secrets.kv.v2.read_secret_version(path=secret_path(tenant, name), mount_point=cfg.kv_mount,
                                                        raise_on_deleted_version=True)["data"]["data"]
        assert data["dek_version"] == target, name
    assert decrypt_all(cfg, tenant, names) == values
    # The fault landed while the job ran: its next requests failed at least once and were retried.
    assert counts["vault.retry"] >= 1, counts
    return {"rerun": rerun, "seconds": round(took, 2), "error": str(job.error or ""), **counts}


def test_active_node_killed_mid_reencryption(ha_cluster: DevCluster, ha_config: Config) -> None:
    outcome = reencryption_survives(ha_cluster, ha_config, kill_active(ha_cluster), "ha-kill-re")
    print(f"\nSIGKILL of the active node mid re-encryption: {outcome}")
    # Every request of a re-encryption is a read or a check-and-set write: the retries carry it through.
    assert not outcome["rerun"], outcome
    assert outcome["vault.failover"] >= 1, outcome


def test_active_node_restarted_mid_reencryption(ha_cluster: DevCluster, ha_config: Config) -> None:
    def restart() -> None:
        index = ha_cluster.active_node()
        assert index is not None
        ha_cluster.kill_node(index, signal.SIGTERM)
        ha_cluster.start_node(index)

    outcome = reencryption_survives(ha_cluster, ha_config, restart, "ha-restart-re")
    print(f"\nrestart of the active node mid re-encryption: {outcome}")
    assert not outcome["rerun"], outcome


def test_active_node_sealed_mid_reencryption(ha_cluster: DevCluster, ha_config: Config) -> None:
    def seal() -> None:
        index = ha_cluster.active_node()
        assert index is not None
        ha_cluster.seal_node(index)

    outcome = reencryption_survives(ha_cluster, ha_config, seal, "ha-seal-re")
    print(f"\nseal of the active node mid re-encryption: {outcome}")
    assert not outcome["rerun"], outcome
    assert ha_cluster.active_node() is not None


def test_single_server_restarted_then_sealed_mid_reencryption(stack_factory: Callable[..., DevStack],
                                                              config: Config) -> None:
    """One server, no other node to fail over to: the job rides out what its retry window covers, else it stops
    with a clear error and the same call again finishes it."""
    single = stack_factory()
    single.up()
    cfg = single.config().replace(pkcs11_module=config.pkcs11_module, pkcs11_token_label=config.pkcs11_token_label,
                                  pkcs11_pin_file=config.pkcs11_pin_file, pkcs11_pin=config.pkcs11_pin)

    def restart() -> None:
        single.down()
        single.up()

    outcomes = {}
    for what, fault in (("restarted", restart), ("sealed", single.seal)):
        tenant = new_tenant(f"one-{what}")
        names = [f"s{i:04d}" for i in range(SECRETS // 2)]
        values = values_for(names)
        with Keyops(cfg) as k:
            k.create_tenant(tenant)
            fill(k, tenant, values)
            target = rotate(k, tenant, "dek").new_version
            job = in_the_middle(k, lambda k=k, tenant=tenant: reencrypt(k, tenant, workers=4, batch_size=10),
                                len(names) // 5, fault)
            outcomes[what] = {"rerun": job.error is not None, "error": type(job.error).__name__, **retried(k)}
        if what == "sealed":
            assert isinstance(job.error, VaultSealed), job.error  # a sealed single server stays sealed
            assert "is sealed; unseal it" in str(job.error), job.error
            single.unseal()
        if job.error is not None:
            with Keyops(cfg, keyring_ttl=0.0) as again:
                reencrypt(again, tenant)
        with Keyops(cfg, keyring_ttl=0.0) as fresh:
            assert {name: fresh.get_secret(tenant, name) for name in names} == values
            assert all(fresh.store.read(secret_path(tenant, name))[0]["dek_version"] == target  # type: ignore[index]
                       for name in names)
    print(f"\nthe single server restarted and sealed mid re-encryption: {outcomes}")


# --- rotations --------------------------------------------------------------------------------------


@pytest.mark.parametrize("residence", ["kv", "transit"])
def test_active_node_killed_mid_kek_rotation(ha_cluster: DevCluster, ha_config: Config, residence: str) -> None:
    tenant = new_tenant(f"ha-kek-{residence}")
    values = {f"s{i}": f"{tenant} {i}".encode() for i in range(3)}
    with Keyops(ha_config) as k:
        k.create_tenant(tenant, Policy(kek_residence=residence))
        for _ in range(12):  # DEK versions for the rotation to re-wrap: more steps to land in
            rotate(k, tenant, "dek")
        for name, value in values.items():
            k.put_secret(tenant, name, value)
        start = k.read_keyring(tenant)[0].kek.primary
        k.calls.reset()
        job = in_the_middle(k, lambda: rotate(k, tenant, "kek", expect_version=start), 1,
                            kill_active(ha_cluster))
        counts = retried(k)
    if job.error is not None:
        # Transit's import of the new KEK version is not idempotent, so a failure there is not retried
        # blindly: the run stops, and the same call finishes the rotation it began.
        with Keyops(ha_config, keyring_ttl=0.0) as again:
            rotate(again, tenant, "kek", expect_version=start)
    print(f"\nSIGKILL of the active node mid KEK rotation ({residence}): re-run {job.error is not None} "
          f"({job.error}); {counts}")
    with Keyops(ha_config, keyring_ttl=0.0) as fresh:
        keyring = fresh.read_keyring(tenant)[0]
        assert keyring.kek.primary == keyring.kek.latest_version == start + 1  # one new version, not two
        assert not stale_dek_versions(keyring)
        assert {name: fresh.get_secret(tenant, name) for name in values} == values
    if residence == "transit":
        info = root_client(ha_cluster).secrets.transit.read_key(name=transit_key_name(tenant))["data"]
        assert int(info["latest_version"]) == keyring.kek.primary_key.transit_version


def test_active_node_killed_mid_master_rotation(ha_cluster: DevCluster, ha_config: Config) -> None:
    with isolated_mount(ha_cluster, ha_config, _LiveRoot(ha_cluster)) as iso:  # type: ignore[arg-type]
        cfg = iso.config
        values: dict[str, dict[str, bytes]] = {}
        with Keyops(cfg) as k:
            for i in range(8):
                tenant = new_tenant(f"ha-m{i}")
                k.create_tenant(tenant, Policy(kek_residence="transit" if i % 4 == 0 else "kv"))
                values[tenant] = {"s": f"{tenant} value".encode()}
                k.put_secret(tenant, "s", values[tenant]["s"])
            found = k.read_master()
            assert found is not None
            start = found[0].primary
            k.calls.reset()
            job = in_the_middle(k, lambda: rotate_master(k, expect_version=start), 3, kill_active(ha_cluster))
            counts = retried(k)
        if job.error is not None:
            with Keyops(cfg, keyring_ttl=0.0) as again:
                rotate_master(again, expect_version=start)
        print(f"\nSIGKILL of the active node mid master rotation: re-run {job.error is not None} ({job.error}); "
              f"{counts}")
        check_tenants(cfg, values)
        data = root_client(ha_cluster).secrets.kv.v2.read_secret_version(
            path="master", mount_point=cfg.kv_mount, raise_on_deleted_version=True)["data"]["data"]
        registry = MasterRegistry.from_dict(data)
        assert registry.primary == start + 1
        assert max(v.version for v in registry.versions) == start + 1  # nothing claimed twice
        with Keyops(cfg, keyring_ttl=0.0) as fresh:
            for tenant in values:
                assert not stale_kek_versions(fresh.read_keyring(tenant)[0], registry.primary), tenant


class _LiveRoot:
    """An hvac root client for whichever node is active when it is used (the mount outlives the kill)."""

    def __init__(self, cluster: DevCluster) -> None:
        self._cluster = cluster

    def __getattr__(self, name: str) -> Any:
        return getattr(root_client(self._cluster), name)


# --- failover, measured -----------------------------------------------------------------------------


def test_reads_follow_the_new_leader_and_report_their_retries(ha_cluster: DevCluster, ha_config: Config) -> None:
    """One read loop across a SIGKILL of the active node: no error, and the time to the first answer after."""
    tenant = new_tenant("ha-read")
    with Keyops(ha_config, keyring_ttl=0.0) as k:
        k.create_tenant(tenant)
        k.put_secret(tenant, "s", b"kept")
        assert k.store.client.session.active == ha_cluster.nodes[ha_cluster.active_node() or 0].addr
        k.calls.reset()
        kill_active(ha_cluster)()
        killed = time.monotonic()
        assert k.get_secret(tenant, "s") == b"kept"
        recovered = time.monotonic() - killed
        counts = retried(k)
        new_active = ha_cluster.active_node()
        assert new_active is not None and k.store.client.session.active == ha_cluster.nodes[new_active].addr
    print(f"\nfailover: first answer {recovered:.2f} s after SIGKILL of the active node; {counts}")
    assert counts["vault.retry"] >= 1 and counts["vault.failover"] >= 1, counts
    assert recovered < ha_config.retry_window + ha_config.vault_timeout


# --- keyops dev on the HA stack ---------------------------------------------------------------------


def dev(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", "dev", *args], capture_output=True, text=True,
                          timeout=180, env={k: v for k, v in os.environ.items() if not k.startswith("KEYOPS_")})


def test_dev_commands_handle_the_ha_stack(ha_cluster: DevCluster, stack: DevStack) -> None:
    where = ("--state-dir", str(ha_cluster.state_dir))
    status = dev("status", *where, "--json")
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)["nodes"]
    assert [n["role"] for n in nodes].count("active") == 1 and [n["role"] for n in nodes].count("standby") == 2
    assert [n["addr"] for n in nodes] == list(ha_cluster.addrs)

    exports = dev("env", *where).stdout
    assert f"export KEYOPS_VAULT_ADDRS={','.join(ha_cluster.addrs)}\n" in exports
    assert f"export VAULT_ADDR={ha_cluster.addrs[0]}\n" in exports and ha_cluster.env()["VAULT_TOKEN"] not in exports

    # --ha on a folder that holds the single server is refused, and changes nothing there.
    before = stack.stack_file.read_bytes()
    refused = dev("up", "--ha", "--state-dir", str(stack.state_dir))
    assert refused.returncode == 30 and "holds a single-server dev stack" in refused.stderr, refused.stderr
    assert stack.stack_file.read_bytes() == before and stack.status().up

    # Down stops every node; up restarts them on their raft data, unseals them all so that they elect a
    # leader again, and the data is still there. (The restart is this process's, so that the nodes die with
    # it; `keyops dev up` runs the same code, as its second call below shows, with no --ha: the folder says.)
    tenant = new_tenant("ha-dev")
    with Keyops(ha_cluster.config()) as k:  # a KV write through the store: no HSM needed
        k.store.write(f"probe/{tenant}", {"kept": True}, cas=0)
    down = dev("down", *where, "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"], down.stderr
    assert all(node.running_pid() is None for node in ha_cluster.nodes)
    info = ha_cluster.up()
    assert info.nodes == ha_cluster.addrs and info.unsealed_now and not info.initialized_now
    assert ha_cluster.active_node() is not None and ha_cluster.voters() == 3
    up = dev("up", *where, "--json")
    assert up.returncode == 0, up.stderr
    answer = json.loads(up.stdout)
    assert answer["nodes"] == list(ha_cluster.addrs) and answer["already_running"] and not answer["unsealed_now"]
    assert root_client(ha_cluster).secrets.kv.v2.read_secret_version(
        path=f"probe/{tenant}", mount_point="keyops", raise_on_deleted_version=True)["data"]["data"] == {"kept": True}
