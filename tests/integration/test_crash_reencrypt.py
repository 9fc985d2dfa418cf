"""A re-encryption killed with SIGKILL at random points loses nothing and finishes (Invariant 2).

``keyops reencrypt`` runs as a subprocess and is killed after a delay drawn
between 0 and the measured duration of an unkilled run; after every kill each
secret still decrypts to its value. Each round (a new DEK) then re-runs the
same command to completion and checks through the root client that every
record moved to the new DEK with exactly one new KV version: nothing lost,
nothing rewritten twice, one job per round. Set KEYOPS_CRASH_SEED to replay
a sequence of delays.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from typing import Any

import pytest
from jobs_support import (
    cli_command,
    cli_env,
    decrypt_all,
    fill,
    job_docs,
    raw_records,
    rotate_dek,
    run_cli,
    unique,
    values_for,
)
from softhsm_guard import token_object_kept

from keyops.config import Config
from keyops.ops.front import Keyops
from keyops.ops.reencrypt import JOB_FIELD

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRETS = 160
ROUNDS = 4
KILLS_PER_ROUND = 5  # 20 kill points


def test_reencryption_killed_at_random_points_loses_nothing(config: Config, stack: Any, vault_client: Any) -> None:
    seed = int(os.environ.get("KEYOPS_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    names = [f"app-{i % 4}/secret-{i:04d}" for i in range(SECRETS)]
    values = values_for(names)
    command = cli_command("reencrypt", "--tenant", "?", "--json")
    with Keyops(config) as k:
        tenant = unique("crash-re")
        command[command.index("?")] = tenant
        k.create_tenant(tenant)
        fill(k, tenant, values)

        rotate_dek(k, tenant)
        started = time.monotonic()
        calibration = run_cli(stack, *command[3:])
        duration = time.monotonic() - started
        assert calibration.returncode == 0, calibration.stderr

        kills: list[tuple[float, int | None]] = []
        for round_ in range(ROUNDS):
            target = rotate_dek(k, tenant)
            before = {name: version for name, (_, version) in raw_records(vault_client, tenant, names).items()}
            for _ in range(KILLS_PER_ROUND):
                delay = rng.uniform(0, duration)
                with token_object_kept(cli_env(stack)):
                    proc = subprocess.Popen(command, env=cli_env(stack), stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                    time.sleep(delay)
                    proc.kill()  # SIGKILL: no cleanup, no finally
                    kills.append((round(delay, 3), proc.wait()))
                context = f"seed {seed}, round {round_}, kills so far {kills}"
                assert decrypt_all(config, tenant, names) == values, context

            final = run_cli(stack, *command[3:])
            assert final.returncode in (0, 3), final.stderr
            after = raw_records(vault_client, tenant, names)
            for name, (data, version) in after.items():
                assert data["dek_version"] == target, (name, context)
                assert version == before[name] + 1, (name, "rewritten more than once", context)
            assert decrypt_all(config, tenant, names) == values, context
            jobs = [job for job in job_docs(vault_client, tenant).values()
                    if job["params"] == {"dek_version": target}]
            assert len(jobs) <= 1 and all(job["state"] == "done" for job in jobs), (jobs, context)
            # Every record of the round was written by the one job that the runs kept resuming, or
            # (killed before its first checkpoint) by a run whose job left no document.
            writers = {data[JOB_FIELD] for data, _ in after.values()}
            assert not jobs or jobs[0]["job_id"] in writers

    assert len(kills) >= 20
    killed = sum(1 for _, code in kills if code == -9)
    print(f"\nreencrypt crash test: seed {seed}, unkilled run {duration:.2f} s, {len(kills)} kill points, "
          f"{killed} landed while running: {kills}")
