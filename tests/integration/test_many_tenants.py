"""Operations over many tenants run them side by side and keep each tenant's outcome apart."""

from __future__ import annotations

import time

import pytest
from _tenants import new_tenant

from keyops.config import Config
from keyops.errors import InvalidInput, TenantNotFound
from keyops.model.keyring import Policy
from keyops.model.usage import CLOCK_SKEW_SECONDS
from keyops.ops.front import Keyops, secret_path
from keyops.ops.outcomes import TenantFailure
from keyops.ops.reencrypt import reencrypt_tenants
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration


def test_reencrypt_tenants_moves_each_and_reports_failures_in_place(config: Config, vault_client) -> None:
    with Keyops(config) as k:
        tenants = [new_tenant("many") for _ in range(5)]
        for i, tenant in enumerate(tenants):
            k.create_tenant(tenant, Policy(kek_residence="transit" if i % 2 else "kv"))
            for j in range(3):
                k.put_secret(tenant, f"s{j}", f"{tenant}-{j}".encode())
            rotate(k, tenant, "dek")
        missing = new_tenant("missing")
        report = reencrypt_tenants(k, tenants[:2] + [missing] + tenants[2:], tenant_workers=3)
        assert [o.tenant for o in report.outcomes] == tenants[:2] + [missing] + tenants[2:]
        by_tenant = {o.tenant: o for o in report.outcomes}
        assert by_tenant[missing].failure == TenantFailure.of(missing, "dek", TenantNotFound(missing))
        assert report.failures == (by_tenant[missing].failure,) and not by_tenant[missing].failure.retryable
        assert report.changed and report.rewritten == 15
        for tenant in tenants:
            result = by_tenant[tenant].result
            assert by_tenant[tenant].changed and result is not None
            assert result.rewritten == 3 and result.dek_version == 2
            for j in range(3):
                stored = vault_client.secrets.kv.v2.read_secret_version(
                    path=secret_path(tenant, f"s{j}"), mount_point=config.kv_mount, raise_on_deleted_version=True)
                assert stored["data"]["data"]["dek_version"] == 2
                assert k.get_secret(tenant, f"s{j}") == f"{tenant}-{j}".encode()
        with pytest.raises(InvalidInput, match="tenant_workers"):
            reencrypt_tenants(k, tenants, tenant_workers=0)


def test_finished_jobs_are_pruned_and_running_ones_kept(config: Config) -> None:
    from keyops.ops.jobs import KEEP_FINISHED_JOBS, Checkpoint, job_path, list_jobs, read_job
    from keyops.ops.reencrypt import reencrypt

    with Keyops(config) as k:
        tenant = new_tenant("jobs")
        k.create_tenant(tenant)
        k.put_secret(tenant, "s", b"v")
        # A migration that is still running, older than every re-encryption below: never pruned.
        running = Checkpoint.start("migrate-20000101T000000Z-aaaaaa", "migrate", tenant, {}, k.clock())
        k.store.write(job_path(tenant, running.job_id), running.to_dict(), cas=0)
        for _ in range(KEEP_FINISHED_JOBS + 3):
            rotate(k, tenant, "dek")
            assert reencrypt(k, tenant).rewritten == 1
        jobs = list_jobs(k, tenant)
        assert running.job_id in jobs
        finished = [j for j in jobs if j != running.job_id]
        assert len(finished) == KEEP_FINISHED_JOBS
        assert all(read_job(k, tenant, j)[0].state == "done" for j in finished)
        assert k.get_secret(tenant, "s") == b"v"


def test_provisioning_many_tenants_unwraps_each_kek_once(config: Config) -> None:
    """KEKs and DEKs are cached apart: DEKs never evict the KEKs a provisioning run still needs.

    With one shared cache of 24 entries, 20 tenants (a KEK and a DEK each) overflowed it and KEKs were
    unwrapped again; with a cache per level, each tenant's KEK is unwrapped by the HSM exactly once (to
    wrap its first DEK), and using every tenant afterwards costs no further unwrap.
    """
    tenants = [new_tenant("prov") for _ in range(20)]
    with Keyops(config, cache_size=24) as k:
        k.ensure_master()
        k.calls.reset()
        for tenant in tenants:
            k.create_tenant(tenant)
        for tenant in tenants:
            k.put_secret(tenant, "s", tenant.encode())
        for tenant in tenants:
            assert k.get_secret(tenant, "s") == tenant.encode()
        calls = k.calls.snapshot()
    assert calls.get("hsm.decrypt", 0) == len(tenants), calls
    assert calls.get("hsm.encrypt", 0) == len(tenants), calls  # one KEK wrap per tenant


def _vault_requests(k: Keyops) -> int:
    return sum(n for kind, n in k.calls.snapshot().items() if kind.startswith(("kv.", "transit.")))


def test_a_cycle_over_many_tenants_costs_a_fixed_number_of_requests_per_tenant_and_holds_none(
        config: Config) -> None:
    """Provision, rotate, re-encrypt two dozen tenants through the fan-out; count requests and what is held.

    The benchmark (benchmarks/bench_scale.py) runs the same cycle over 1,000 tenants; here the counts
    per tenant are held at a size the suite can afford. After each phase the process holds no tenant's
    keyring or reservation, and no more keys than its caches' bound: what it holds does not grow with the
    tenants.
    """
    from keyops.ops.provision import provision_tenants
    from keyops.ops.reencrypt import iter_reencrypt_tenants
    from keyops.ops.rotation import iter_rotate_tenants

    count, per_tenant, workers = 24, 5, 4
    tenants = [new_tenant("cycle") for _ in range(count)]
    values = {t: {f"app/s{i}": f"{t}-{i}".encode() for i in range(per_tenant)} for t in tenants}
    empty = {"keyrings": 0, "reservations": 0, "fast": 0, "locks": 0, "demand": 0, "primed": 0, "usage": 0}

    def held(k: Keyops) -> dict[str, int]:
        counts = k.held()
        assert counts.pop("keks") <= 8 and counts.pop("deks") <= 8  # the key caches keep their bound
        return counts

    with Keyops(config, cache_size=8) as k:
        k.ensure_master()
        k.calls.reset()
        report = provision_tenants(k, ((t, values[t].items()) for t in tenants), tenant_workers=workers)
        assert (report.tenants, report.created, report.written) == (count, count, count * per_tenant)
        assert report.failures == ()
        # Per tenant: the registry, the listing that no records are left, the keyring's absence, one keyring
        # write (KEK and DEK), KV history (2 reads, 2 writes), three usage writes (empty, reservation, release).
        # The records: one write each, no read. The registry's history is checked once per worker at most.
        assert _vault_requests(k) <= count * (12 + per_tenant) + workers, k.calls.snapshot()
        assert k.calls.snapshot().get("kv.read", 0) == 2 * count, k.calls.snapshot()
        assert held(k) == empty
        outcomes = list(iter_rotate_tenants(k, tenants, "dek", tenant_workers=workers))
        assert [o.tenant for o in outcomes] == tenants and all(o.changed for o in outcomes)
        assert held(k) == empty
        time.sleep(CLOCK_SKEW_SECONDS + 1)  # the provisioning's leases of DEK v1 ended before the pass starts
        k.calls.reset()
        outcomes = list(iter_reencrypt_tenants(k, iter(tenants), tenant_workers=workers))
        requests = _vault_requests(k)
        assert held(k) == empty
    assert [o.tenant for o in outcomes] == tenants
    assert all(o.result is not None and o.result.rewritten == per_tenant and o.result.rewritten_late == 0
               for o in outcomes), outcomes
    # Per record a read and a write; per tenant two listings of its records (a folder), one of its jobs,
    # the usage document and keyring read once, the reservation, the job's one write, the lease's release.
    assert requests == count * (2 * per_tenant + 8), requests
    with Keyops(config) as fresh:
        for t in tenants:
            for name, value in values[t].items():
                assert fresh.get_secret(t, name) == value
