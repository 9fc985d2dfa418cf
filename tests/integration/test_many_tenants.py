"""Operations over many tenants run them side by side and keep each tenant's outcome apart."""

from __future__ import annotations

import pytest
from _tenants import new_tenant

from keyops.config import Config
from keyops.errors import InvalidInput, TenantNotFound
from keyops.model.keyring import Policy
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
