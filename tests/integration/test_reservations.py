"""Reservations of DEK uses sized to the process, against the real OpenBao (and SoftHSM2 for the KEK).

One-shot ``keyops encrypt`` runs strand only a small first block each, a busy
process writes the usage document O(log n) times, and however many processes
race for the last uses, the cap is never passed.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import subprocess
import sys
import textwrap

import pytest
from _tenants import created_tenant

from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.errors import UsageCapReached
from keyops.model.keyring import Policy
from keyops.model.paths import usage_path
from keyops.ops.front import Keyops
from keyops.ops.reservations import FIRST_RESERVATION

pytestmark = pytest.mark.integration

PAYMENTS_CAP = 1_000_000  # inventories/dev/group_vars/keyops/tenants.yml


def cli_env(stack: DevStack) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "KEYOPS_", "BAO_"))}
    return {**env, **stack.env()}


def encrypt_once(env: dict[str, str], tenant: str, n: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", "encrypt", "--tenant", tenant, "--context",
                           f"run/{n}"], input=f"value {n}", env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def reserved(k: Keyops, tenant: str) -> int:
    return k.read_usage(tenant)[0].get(1).reserved


def test_one_shot_encrypts_reserve_a_small_block_each(stack: DevStack, k: Keyops) -> None:
    # A cap that the old first block of 4,096 uses would have exhausted at the first run.
    cap = 12 * FIRST_RESERVATION
    tenant = created_tenant(k, "resv-once", Policy(dek_usage_cap=cap))
    env = cli_env(stack)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda n: encrypt_once(env, tenant, n), range(12)))
    for n, run in enumerate(runs):
        assert run.returncode == 0, run.stderr
        assert k.decrypt(tenant, run.stdout.strip(), f"run/{n}".encode()) == f"value {n}".encode()
    assert reserved(k, tenant) == cap  # 12 runs, one first block each: nothing beyond
    refused = encrypt_once(env, tenant, 12)
    assert refused.returncode == UsageCapReached.exit_code and "usage cap" in refused.stderr


def test_one_shot_encrypts_under_the_payments_cap(stack: DevStack, k: Keyops) -> None:
    tenant = created_tenant(k, "resv-pay", Policy(dek_usage_cap=PAYMENTS_CAP))
    env = cli_env(stack)
    for n in range(3):
        run = encrypt_once(env, tenant, n)
        assert run.returncode == 0, run.stderr
    assert reserved(k, tenant) == 3 * FIRST_RESERVATION
    assert PAYMENTS_CAP // FIRST_RESERVATION >= 60_000  # single runs before the cap (246 with blocks of 4,096)


def test_a_busy_process_writes_the_usage_document_o_log_n_times(config: Config) -> None:
    n = 20_000
    with Keyops(config) as setup:
        tenant = created_tenant(setup, "resv-busy", Policy(dek_usage_cap=PAYMENTS_CAP))
    with Keyops(config, keyring_ttl=600) as busy:
        writes_before = busy.calls.snapshot().get("kv.write", 0)
        for i in range(n):
            busy.encrypt_bytes(tenant, b"x", b"ctx")
            if i == 0:
                first = busy.calls.snapshot().get("kv.write", 0) - writes_before
        writes = busy.calls.snapshot().get("kv.write", 0) - writes_before
        used = reserved(busy, tenant)
    assert first == 1
    # 16, 32, ... doubling up to 1/32 of the cap: 11 blocks for 20,000 encryptions.
    assert writes <= math.ceil(math.log2(n / FIRST_RESERVATION)) + 2, writes
    assert n <= used < 2 * n


WORKER = textwrap.dedent("""
    import sys
    from keyops.errors import UsageCapReached
    from keyops.ops.front import Keyops
    done = 0
    with Keyops() as k:
        try:
            while True:
                k.encrypt_bytes(sys.argv[1], b"x", b"ctx")
                done += 1
        except UsageCapReached:
            pass
    print(done)
""")


def test_the_cap_holds_across_processes(stack: DevStack, config: Config, k: Keyops) -> None:
    cap = 3_000
    tenant = created_tenant(k, "resv-race", Policy(dek_usage_cap=cap))
    env = cli_env(stack)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, tenant], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    with Keyops(config) as here:  # and a fourth writer in this process
        done_here = 0
        with pytest.raises(UsageCapReached):
            while True:
                here.encrypt_bytes(tenant, b"x", b"ctx")
                done_here += 1
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        counts.append(int(out))
    assert sum(counts) + done_here <= cap
    assert reserved(k, tenant) == cap  # the whole cap was granted, and not one use more
    data, _ = k.store.read(usage_path(tenant)) or ({}, 0)
    assert data["versions"]["1"]["reserved"] == cap  # as stored, not only as parsed
