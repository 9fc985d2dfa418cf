"""Re-encryption against the real OpenBao and SoftHSM2: moves, resumes, dry runs, races.

Records are checked through the root hvac client (``dek_version`` field,
ciphertext header, KV version and the job that wrote them) and decrypted
through a fresh Keyops.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from jobs_support import (
    decrypt_all,
    fill,
    header_version,
    job_docs,
    kv_write,
    raw_records,
    rotate_dek,
    run_cli,
    unique,
    values_for,
)

from keyops.config import Config
from keyops.errors import InvalidInput, JobFailed, TenantNotFound
from keyops.model.keyring import Policy
from keyops.model.usage import CLOCK_SKEW_SECONDS
from keyops.ops.front import Keyops, secret_context
from keyops.ops.progress import ProgressEvent
from keyops.ops.reencrypt import JOB_FIELD, ReencryptResult, reencrypt

NAMES = [f"app/db/user-{i:03d}" for i in range(25)] + [f"api-{i:03d}" for i in range(20)] + ["a", "a-b", "a0", "z/z"]


@pytest.fixture
def k(config: Config) -> Iterator[Keyops]:
    """A fresh Keyops for each test, not conftest's one per module: cold caches, its own request counts."""
    with Keyops(config) as keyops:
        yield keyops


def _tenant(k: Keyops, names: list[str] = NAMES, policy: Policy | None = None) -> tuple[str, dict[str, bytes]]:
    tenant = unique("re")
    k.create_tenant(tenant, policy)
    values = values_for(names)
    fill(k, tenant, values)
    return tenant, values


class _Stop(Exception):
    """Raised by a progress callback to stop a run half-way, like a crash between two batches."""


def test_reencrypt_moves_every_record_to_the_new_dek(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = _tenant(k)
    before = raw_records(vault_client, tenant, values)
    new = rotate_dek(k, tenant)
    events: list[tuple[str, dict[str, Any]]] = []

    with Keyops(config, audit=lambda op, **fields: events.append((op, fields))) as runner:
        result = reencrypt(runner, tenant, workers=4, batch_size=7)

    assert result == ReencryptResult(
        tenant=tenant, job_id=result.job_id, dek_version=new, total=len(values), rewritten=len(values),
        already_current=0, redone_after_conflict=0, references={new: len(values)}, dry_run=False, resumed=False,
        vanished=0, rewritten_late=0, unreferenced=(new - 1,), changed=True)
    after = raw_records(vault_client, tenant, values)
    for name, (data, version) in after.items():
        assert data["dek_version"] == new
        assert header_version(data["ciphertext"], tenant) == new
        assert data[JOB_FIELD] == result.job_id
        assert version == before[name][1] + 1  # exactly one rewrite
        assert data["ciphertext"] != before[name][0]["ciphertext"]
    assert decrypt_all(config, tenant, values) == values

    job = job_docs(vault_client, tenant)[result.job_id]
    assert job["state"] == "done" and job["kind"] == "reencrypt" and job["params"] == {"dek_version": new}
    assert job["cursor"] == max(values)
    assert job["result"]["rewritten"] == len(values)
    mine = [(op, fields) for op, fields in events if op.startswith("reencrypt.")]
    assert [op for op, _ in mine] == ["reencrypt.start", "reencrypt.finish"]
    assert all(fields["result"] == "ok" and fields["tenant"] == tenant for _, fields in mine)
    assert mine[1][1]["job_id"] == result.job_id and mine[1][1]["rewritten"] == len(values)
    trail = json.dumps(events, default=str) + json.dumps(job)
    assert not any(value.decode() in trail for value in values.values())


def test_dry_run_counts_and_writes_nothing(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:12])
    old = k.read_keyring(tenant)[0].dek.primary
    new = rotate_dek(k, tenant)
    fill(k, tenant, values_for(["fresh-1", "fresh-2"]))  # already under the new DEK
    names = sorted([*values, "fresh-1", "fresh-2"])
    before = raw_records(vault_client, tenant, names)
    seen: list[ProgressEvent] = []

    result = reencrypt(k, tenant, dry_run=True, batch_size=5, progress=seen.append)

    assert (result.dry_run, result.changed, result.total, result.rewritten, result.already_current) == \
        (True, False, 14, 12, 2)
    assert result.references == {old: 12, new: 2}
    assert raw_records(vault_client, tenant, names) == before
    assert job_docs(vault_client, tenant) == {}
    assert seen and seen[-1].done == seen[-1].total == 14


def test_second_run_changes_nothing(k: Keyops, vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:15])
    new = rotate_dek(k, tenant)
    first = reencrypt(k, tenant)
    before = raw_records(vault_client, tenant, values)
    jobs_before = job_docs(vault_client, tenant)

    again = reencrypt(k, tenant)

    assert (again.changed, again.rewritten, again.already_current, again.resumed) == (False, 0, 15, False)
    assert again.references == {new: 15}
    assert raw_records(vault_client, tenant, values) == before
    assert job_docs(vault_client, tenant) == jobs_before
    # The finished job, named: reported as it finished, nothing done.
    named = reencrypt(k, tenant, job_id=first.job_id)
    assert (named.changed, named.rewritten, named.total) == (False, 15, 15)


def test_resumes_from_its_checkpoint_and_does_nothing_twice(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = _tenant(k)
    new = rotate_dek(k, tenant)
    names = sorted(values)

    def stop_after_23(event: ProgressEvent) -> None:
        if event.phase == "reencrypt" and event.done == 23:
            raise _Stop

    with pytest.raises(_Stop):
        reencrypt(k, tenant, batch_size=10, workers=3, progress=stop_after_23)

    (job_id, job), = job_docs(vault_client, tenant).items()
    assert (job["state"], job["phase"], job["cursor"]) == ("running", "pass", names[19])
    assert job["counts"]["rewritten"] == 20
    assert decrypt_all(config, tenant, values) == values  # Invariant 2 at the stop

    seen: list[ProgressEvent] = []
    with Keyops(config) as fresh:
        result = reencrypt(fresh, tenant, batch_size=10, progress=seen.append)

    assert (result.job_id, result.resumed, result.dek_version) == (job_id, True, new)
    # Exact counts: the records the stopped run wrote after its checkpoint are recognised as its own.
    assert (result.total, result.rewritten, result.already_current) == (len(values), len(values), 0)
    assert seen[0].resumed_from == 20 and seen[0].done == 21
    for data, version in raw_records(vault_client, tenant, values).values():
        assert (version, data["dek_version"], data[JOB_FIELD]) == (2, new, job_id)
    assert decrypt_all(config, tenant, values) == values
    assert job_docs(vault_client, tenant)[job_id]["runs"] == 2


def test_a_rotation_between_runs_moves_the_resumed_job_to_the_newest_dek(k: Keyops, config: Config,
                                                                          vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:20])
    rotate_dek(k, tenant)

    def stop(event: ProgressEvent) -> None:
        if event.done == 10:
            raise _Stop

    with pytest.raises(_Stop):
        reencrypt(k, tenant, batch_size=5, workers=2, progress=stop)
    newest = rotate_dek(k, tenant)

    result = reencrypt(k, tenant)

    assert result.resumed and result.dek_version == newest
    assert result.references == {newest: 20}
    assert set(result.unreferenced) == {newest - 2, newest - 1}
    assert {data["dek_version"] for data, _ in raw_records(vault_client, tenant, values).values()} == {newest}
    assert decrypt_all(config, tenant, values) == values


def test_writer_during_reencryption_keeps_its_values(k: Keyops, config: Config, vault_client: Any) -> None:
    """Invariant 3: an application writes all through the re-encryption; its last values win."""
    names = [f"hot-{i:03d}" for i in range(120)]
    tenant, values = _tenant(k, names)
    new = rotate_dek(k, tenant)
    latest = dict(values)
    done = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        with Keyops(config) as app:
            round_ = 0
            while not done.is_set() or round_ < 1:
                round_ += 1
                for i, name in enumerate(reversed(names)):  # walks against the re-encryption's order
                    if i % 3 == round_ % 3:
                        value = f"app-{round_}-{name}".encode()
                        app.put_secret(tenant, name, value)
                        latest[name] = value
                        writes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = reencrypt(k, tenant, workers=4, batch_size=10)
    finally:
        done.set()
        thread.join()

    assert writes > 0
    assert result.total == len(names)
    assert result.rewritten + result.already_current == len(names)
    stored = raw_records(vault_client, tenant, names)
    assert {header_version(data["ciphertext"], tenant) for data, _ in stored.values()} == {new}
    assert decrypt_all(config, tenant, names) == latest


class _RacingKeyops(Keyops):
    """A Keyops whose decryption of one secret lets an application write that secret first.

    This places a real write (through another Keyops, to the real server)
    between the re-encryption's read and its check-and-set write.
    """

    def __init__(self, config: Config, app: Keyops, tenant: str, victim: str, value: bytes) -> None:
        super().__init__(config)
        self.app, self.tenant, self.victim, self.value = app, tenant, victim, value
        self.raced = False

    def decrypt(self, tenant: str, ciphertext: Any, context: Any = b"") -> bytes:
        if not self.raced and context == secret_context(self.victim):
            self.raced = True
            self.app.put_secret(self.tenant, self.victim, self.value)
        return super().decrypt(tenant, ciphertext, context)


def test_a_lost_race_is_redone_with_the_application_value(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:10])
    # The application reserved uses of the old DEK before the rotation and still spends them.
    with Keyops(config, keyring_ttl=3600) as app:
        app.put_secret(tenant, "warm-up", b"x")
        old = k.read_keyring(tenant)[0].dek.primary
        new = rotate_dek(k, tenant)
        victim = sorted(values)[4]
        with _RacingKeyops(config, app, tenant, victim, b"the application's value") as racing:
            result = reencrypt(racing, tenant, workers=2, batch_size=3)

        assert racing.raced
        assert result.redone_after_conflict == 1
        assert result.rewritten == len(values) + 1  # with warm-up
        data, version = raw_records(vault_client, tenant, [victim])[victim]
        assert data["dek_version"] == new and version == 3  # put, application, re-encryption
        assert app.get_secret(tenant, victim) == b"the application's value"
        assert result.references == {new: len(values) + 1}
        assert result.unreferenced == (old,)


def test_verification_moves_records_written_late_with_an_old_dek(k: Keyops, config: Config,
                                                                  vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:12])
    with Keyops(config, keyring_ttl=3600) as app:
        app.put_secret(tenant, "warm-up", b"x")  # reserves uses of the old DEK
        old = k.read_keyring(tenant)[0].dek.primary
        new = rotate_dek(k, tenant)
        late = ["late-1", "late-2", "late-3"]

        def write_late(event: ProgressEvent) -> None:
            # The pass is over; an application still spending its old reservation creates secrets now.
            if event.phase == "reencrypt" and event.done == event.total:
                for name in late:
                    assert app.put_secret(tenant, name, b"late " + name.encode()).dek_version == old

        result = reencrypt(k, tenant, batch_size=4, progress=write_late)

    assert result.rewritten_late == 3
    assert result.references == {new: len(values) + 1 + 3}
    stored = raw_records(vault_client, tenant, late)
    assert {data["dek_version"] for data, _ in stored.values()} == {new}
    assert decrypt_all(config, tenant, late) == {name: b"late " + name.encode() for name in late}


def test_transit_residence_tenant(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:10], Policy(kek_residence="transit"))
    new = rotate_dek(k, tenant)
    result = reencrypt(k, tenant)
    assert (result.rewritten, result.references) == (10, {new: 10})
    assert decrypt_all(config, tenant, values) == values


def test_a_record_that_is_not_keyops_stops_the_job_at_its_checkpoint(k: Keyops, config: Config,
                                                                      vault_client: Any) -> None:
    tenant, values = _tenant(k, [f"s-{i:02d}" for i in range(12)])
    rotate_dek(k, tenant)
    kv_write(vault_client, f"secrets/{tenant}/s-05x", {"password": "not a keyops record"})

    with pytest.raises(JobFailed) as failed:
        reencrypt(k, tenant, batch_size=4, workers=1)
    assert "stopped at secret 's-05x'" in str(failed.value)
    assert failed.value.code == "invalid_input"
    (job_id, job), = job_docs(vault_client, tenant).items()
    assert job["state"] == "running" and job["cursor"] == "s-03"  # the batch before it is kept

    vault_client.secrets.kv.v2.delete_metadata_and_all_versions(path=f"secrets/{tenant}/s-05x", mount_point="keyops")
    result = reencrypt(k, tenant, batch_size=4)
    assert (result.job_id, result.resumed, result.rewritten) == (job_id, True, 12)
    assert decrypt_all(config, tenant, values) == values


def test_bad_input_is_refused_before_anything_happens(k: Keyops, vault_client: Any) -> None:
    tenant, _ = _tenant(k, ["one"])
    with pytest.raises(InvalidInput, match="workers"):
        reencrypt(k, tenant, workers=0)
    with pytest.raises(InvalidInput, match="batch_size"):
        reencrypt(k, tenant, batch_size=100_000)
    with pytest.raises(InvalidInput, match="job id"):
        reencrypt(k, tenant, job_id="../other")
    with pytest.raises(TenantNotFound):
        reencrypt(k, unique("nobody"))
    assert job_docs(vault_client, tenant) == {}


def test_cli_reencrypt(k: Keyops, stack: Any, vault_client: Any) -> None:
    tenant, values = _tenant(k, NAMES[:8])
    new = rotate_dek(k, tenant)

    dry = run_cli(stack, "reencrypt", "--tenant", tenant, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["rewritten"] == 8 and json.loads(dry.stdout)["dry_run"] is True

    done = run_cli(stack, "reencrypt", "--tenant", tenant, "--workers", "2", "--progress")
    assert done.returncode == 0, done.stderr
    assert f"re-encrypted 8 of 8 secrets of tenant {tenant} to DEK v{new}" in done.stdout
    assert "reencrypt [" in done.stderr and "/s ETA" in done.stderr and "verify [" in done.stderr

    again = run_cli(stack, "reencrypt", "--tenant", tenant, "--json", "--detailed-exitcode")
    assert again.returncode == 3, again.stderr
    body = json.loads(again.stdout)
    assert (body["status"], body["rewritten"], body["references"]) == ("nothing_to_do", 0, {str(new): 8})

    missing = run_cli(stack, "reencrypt", "--tenant", unique("nobody"), "--json")
    assert missing.returncode == TenantNotFound.exit_code
    assert json.loads(missing.stderr)["error"] == "tenant_not_found"
    output = dry.stdout + done.stdout + done.stderr + again.stdout
    assert not any(value.decode() in output for value in values.values())


def test_a_job_after_the_writers_are_done_reads_each_record_once(config: Config) -> None:
    """No lease of an older DEK outlives the pass's start: the verification reads nothing again.

    The pass reads and writes each record once; listing, checkpoints and the job's own documents add
    a few requests per job. With a writer still holding a lease of the old DEK the verification reads
    every record again (``test_verification_moves_records_written_late_with_an_old_dek``).
    """
    count = 120
    with Keyops(config) as writer:
        tenant, values = _tenant(writer, [f"r-{i:03d}" for i in range(count)])
    # The writer closed: its lease of DEK v1 ended then; the pass starts after that, clock skew included.
    with Keyops(config) as k:
        rotate_dek(k, tenant)
        end = k.read_usage(tenant)[0].get(1).lease_end()
        assert end is not None
        wait = (end - dt.datetime.now(dt.UTC)).total_seconds() + CLOCK_SKEW_SECONDS + 0.5
        if wait > 0:
            time.sleep(wait)
        k.calls.reset()
        result = reencrypt(k, tenant, batch_size=50)
        requests = sum(n for name, n in k.calls.snapshot().items() if name.startswith(("kv.", "transit.")))
    assert result.rewritten == count and result.references == {2: count} and result.unreferenced == (1,)
    assert requests / count <= 2.2, (requests, k.calls.snapshot())
    assert decrypt_all(config, tenant, values) == values
