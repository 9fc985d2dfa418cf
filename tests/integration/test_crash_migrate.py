"""A migration killed with SIGKILL at random points loses nothing and finishes (Invariant 2).

``keyops migrate`` runs as a subprocess over plaintext and Transit-encrypted
sources and is killed after a delay drawn between 0 and the measured
duration of an unkilled run. After every kill, each secret's latest value is
still there: either its source is untouched, or the source holds a marker
and the keyops record decrypts to the original. Re-running the same command
then finishes the job; every source gained exactly one version (the marker)
and every record was written exactly once. KEYOPS_CRASH_SEED replays delays.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from jobs_support import (
    cli_command,
    cli_env,
    decrypt_all,
    job_docs,
    kv_read,
    kv_versions,
    kv_write,
    run_cli,
    transit_encrypt,
    unique,
)
from softhsm_guard import token_object_kept

from keyops.config import Config
from keyops.ops.front import Keyops
from keyops.ops.migrate import MARKER_FIELD

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRETS = 150
# Few kills per round: a resumed run has little left to do, so later kills of a round mostly hit a
# finished job; more rounds put more of the 24 kill points in the middle of one.
ROUNDS = 7  # 21 kill points
KILLS_PER_ROUND = 3


def _make_sources(vault_client: Any, key: str) -> tuple[str, dict[str, dict[str, Any]], dict[str, bytes]]:
    """Sources below a new prefix: mostly plaintext, every fifth a Transit ciphertext."""
    prefix = f"legacy/{unique('crash')}"
    docs: dict[str, dict[str, Any]] = {}
    plain: dict[str, bytes] = {}
    for i in range(SECRETS):
        name = f"svc-{i % 3}/s-{i:04d}"
        value = f"value {i} {os.urandom(8).hex()}".encode()
        plain[name] = value
        docs[name] = {"v": transit_encrypt(vault_client, key, value) if i % 5 == 0 else value.decode()}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: kv_write(vault_client, f"{prefix}/{item[0]}", item[1]), docs.items()))
    return prefix, docs, plain


def _check_latest_values(config: Config, vault_client: Any, tenant: str, prefix: str,
                         docs: dict[str, dict[str, Any]], plain: dict[str, bytes], context: str) -> int:
    """Invariant 2 mid-migration; returns how many sources are migrated so far."""
    with ThreadPoolExecutor(8) as pool:
        sources = dict(zip(docs, pool.map(lambda n: kv_read(vault_client, f"{prefix}/{n}")[0], docs), strict=True))
    migrated = [name for name, data in sources.items() if MARKER_FIELD in data]
    for name, data in sources.items():
        if name not in migrated:
            assert data == docs[name], (name, context)
    assert decrypt_all(config, tenant, migrated) == {name: plain[name] for name in migrated}, context
    return len(migrated)


def test_migration_killed_at_random_points_loses_nothing(config: Config, stack: Any, vault_client: Any) -> None:
    seed = int(os.environ.get("KEYOPS_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    key = unique("crash-key")
    vault_client.secrets.transit.create_key(name=key, mount_point="transit")

    def new_tenant() -> str:
        with Keyops(config) as k:
            tenant = unique("crash-mig")
            k.create_tenant(tenant)
        return tenant

    def command(prefix: str, tenant: str) -> list[str]:
        return cli_command("migrate", "--move", "--from", prefix, "--tenant", tenant, "--transit-key", key, "--json")

    prefix, _, _ = _make_sources(vault_client, key)
    started = time.monotonic()
    calibration = run_cli(stack, *command(prefix, new_tenant())[3:])
    duration = time.monotonic() - started
    assert calibration.returncode == 0, calibration.stderr

    kills: list[tuple[float, int | None]] = []
    for round_ in range(ROUNDS):
        tenant = new_tenant()
        prefix, docs, plain = _make_sources(vault_client, key)
        progress: list[int] = []
        for _ in range(KILLS_PER_ROUND):
            delay = rng.uniform(0, duration)
            with token_object_kept(cli_env(stack)):
                proc = subprocess.Popen(command(prefix, tenant), env=cli_env(stack), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                time.sleep(delay)
                proc.kill()  # SIGKILL
                kills.append((round(delay, 3), proc.wait()))
            context = f"seed {seed}, round {round_}, kills so far {kills}"
            progress.append(_check_latest_values(config, vault_client, tenant, prefix, docs, plain, context))

        final = run_cli(stack, *command(prefix, tenant)[3:])
        assert final.returncode in (0, 3), final.stderr
        assert set(kv_versions(vault_client, [f"{prefix}/{n}" for n in docs]).values()) == {2}, context
        assert set(kv_versions(vault_client, [f"secrets/{tenant}/{n}" for n in docs]).values()) == {1}, context
        assert decrypt_all(config, tenant, docs) == plain, context
        for name in sorted(docs)[::10]:
            assert kv_read(vault_client, f"{prefix}/{name}", version=1)[0] == docs[name]  # original in history
        jobs = [job for job in job_docs(vault_client, tenant).values() if job["params"]["source"] == prefix]
        assert len(jobs) <= 1 and all(job["state"] == "done" for job in jobs), (jobs, context)
        print(f"round {round_}: migrated after each kill: {progress}")

    assert len(kills) >= 20
    killed = sum(1 for _, code in kills if code == -9)
    print(f"migrate crash test: seed {seed}, unkilled run {duration:.2f} s, {len(kills)} kill points, "
          f"{killed} landed while running: {kills}")
