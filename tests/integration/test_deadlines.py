"""Deadlines (issue 9, item 7; issue 13, item 2): a Vault that drips or stalls cannot hold keyops up.

A small threading TCP proxy in front of the real OpenBao forwards requests
as they are, and answers, once told to, one byte every two seconds: every
read gets a byte well within any per-read timeout, so only a deadline over
the whole request ends it. ``keyops secret get`` and ``keyops reencrypt``
run through it as programs and must end within a bound with a clear error;
nothing is lost, and the same re-encryption run again without the proxy
finishes the job.

The proxy can also pause (``mode="pause"``): past a number of requests it
forwards nothing more in either direction, as a network that stalls. A KEK
rotation of a Transit tenant (several steps) stalled in its middle ends
within a bound set by ``KEYOPS_VAULT_TIMEOUT`` (a request past its deadline
is not retried, so the retries do not stretch it), and the same command
without the proxy finishes the rotation with exactly one new version.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from _tenants import new_tenant

from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops, secret_path
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
DEADLINE = 3.0  # KEYOPS_VAULT_TIMEOUT for the runs through the proxy
DRIP_EVERY = 2.0
METHODS = (b"GET ", b"POST ", b"PUT ", b"LIST ", b"DELETE ", b"HEAD ")


class DripProxy:
    """127.0.0.1:port -> the upstream; answers drip once more than ``after`` requests went through."""

    def __init__(self, upstream: str, after: int, mode: str = "drip") -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.after = after
        self.mode = mode
        self.requests = 0
        self.closing = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.addr = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def dripping(self) -> bool:
        return self.requests > self.after

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            up = socket.create_connection(self.upstream, timeout=10)
            with self.lock:
                self.sockets += [client, up]
            threading.Thread(target=self._requests, args=(client, up), daemon=True).start()
            threading.Thread(target=self._answers, args=(up, client), daemon=True).start()

    def _requests(self, client: socket.socket, up: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self.closing.is_set() and (data := client.recv(65536)):
                if data.startswith(METHODS):
                    with self.lock:
                        self.requests += 1
                if self.mode == "pause" and self.dripping:
                    self.closing.wait()  # the network stalls: nothing more goes through
                    return
                up.sendall(data)

    def _answers(self, up: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self.closing.is_set() and (data := up.recv(65536)):
                if not self.dripping:
                    client.sendall(data)
                    continue
                if self.mode == "pause":
                    self.closing.wait()
                    return
                for i in range(len(data)):
                    if self.closing.wait(DRIP_EVERY):
                        return
                    client.sendall(data[i:i + 1])

    def close(self) -> None:
        self.closing.set()
        with self.lock:
            for s in [self.server, *self.sockets]:
                with contextlib.suppress(OSError):
                    s.close()


@contextlib.contextmanager
def drip_proxy(stack: DevStack, after: int = 0, mode: str = "drip") -> Iterator[DripProxy]:
    proxy = DripProxy(str(stack.addr), after, mode)
    try:
        yield proxy
    finally:
        proxy.close()


def keyops(env: dict[str, str], *args: str, data: bytes = b"") -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run([*KEYOPS, *args], input=data, env=env, capture_output=True, timeout=180)
    text = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))
    assert "Traceback" not in text.stderr, text.stderr
    return text, time.monotonic() - started


@pytest.fixture(scope="module")
def env(stack: DevStack) -> dict[str, str]:
    return {**os.environ, **stack.env(), "KEYOPS_VAULT_TIMEOUT": str(DEADLINE), "KEYOPS_JOB_STALL_TIMEOUT": "20"}


def test_secret_get_behind_a_dripping_proxy_ends_at_the_deadline(stack: DevStack, env: dict[str, str],
                                                                  k: Keyops) -> None:
    tenant = new_tenant("drip")
    k.create_tenant(tenant)
    k.put_secret(tenant, "s", b"the value")
    with drip_proxy(stack) as proxy:
        proc, took = keyops({**env, "VAULT_ADDR": proxy.addr}, "secret", "get", tenant, "s")
    assert proc.returncode == 11, proc.stderr
    assert proc.stderr.startswith(f"keyops: error: Vault at {proxy.addr} cannot be reached: no complete answer "
                                  f"within {DEADLINE:g} s (KEYOPS_VAULT_TIMEOUT)"), proc.stderr
    assert proc.stdout == ""
    # The first request is cut at the deadline; closing the leases costs a few more at most.
    assert took < 8 * DEADLINE, took
    proc, _ = keyops(env, "secret", "get", tenant, "s")
    assert (proc.returncode, proc.stdout) == (0, "the value")


def test_reencrypt_behind_a_dripping_proxy_stops_in_time_and_a_rerun_finishes(
        stack: DevStack, env: dict[str, str], config: Config, k: Keyops, vault_client: Any) -> None:
    tenant = new_tenant("drip-re")
    k.create_tenant(tenant)
    values = {f"s{i:03d}": f"value {i}".encode() for i in range(60)}
    for name, value in values.items():
        k.put_secret(tenant, name, value)
    target = rotate(k, tenant, "dek").new_version

    def on_target() -> int:
        return sum(vault_client.secrets.kv.v2.read_secret_version(
            path=secret_path(tenant, name), mount_point="keyops",
            raise_on_deleted_version=True)["data"]["data"]["dek_version"] == target for name in values)

    # Past the start-up requests and some records, every answer drips.
    with drip_proxy(stack, after=40) as proxy:
        proc, took = keyops({**env, "VAULT_ADDR": proxy.addr}, "reencrypt", "--tenant", tenant, "--workers", "2",
                            "--batch-size", "5")
        assert proxy.dripping, proxy.requests
    assert proc.returncode in (9, 11), (proc.returncode, proc.stderr)
    assert "cannot be reached: no complete answer within 3 s (KEYOPS_VAULT_TIMEOUT)" in proc.stderr, proc.stderr
    assert took < 60, took
    moved = on_target()
    assert moved < len(values), "the job was meant to stop part-way"

    # Nothing lost: every secret decrypts, and the same command without the proxy finishes the job.
    with Keyops(config, keyring_ttl=0.0) as fresh:
        assert {name: fresh.get_secret(tenant, name) for name in values} == values
    proc, _ = keyops(env, "reencrypt", "--tenant", tenant)
    assert proc.returncode == 0, proc.stderr
    assert on_target() == len(values)
    with Keyops(config, keyring_ttl=0.0) as fresh:
        assert {name: fresh.get_secret(tenant, name) for name in values} == values


def test_kek_rotation_through_a_stalled_network_ends_in_time_and_a_rerun_finishes(
        stack: DevStack, env: dict[str, str], config: Config, k: Keyops) -> None:
    def transit_tenant() -> tuple[str, dict[str, bytes], int]:
        tenant = new_tenant("stall-kek")
        k.create_tenant(tenant, Policy(kek_residence="transit"))
        for _ in range(6):
            rotate(k, tenant, "dek")
        values = {f"s{i}": f"{tenant} {i}".encode() for i in range(3)}
        for name, value in values.items():
            k.put_secret(tenant, name, value)
        return tenant, values, k.read_keyring(tenant)[0].kek.primary

    def command(tenant: str, start: int) -> tuple[str, ...]:
        return ("rotate", "--tenant", tenant, "--level", "kek", "--expect-version", str(start))

    twin, _, twin_start = transit_tenant()
    with drip_proxy(stack, after=10**6) as counting:  # how many requests a whole run sends
        proc, _ = keyops({**env, "VAULT_ADDR": counting.addr}, *command(twin, twin_start))
        assert proc.returncode == 0, proc.stderr
        whole = counting.requests
    tenant, values, start = transit_tenant()
    with drip_proxy(stack, after=whole // 2, mode="pause") as proxy:
        proc, took = keyops({**env, "VAULT_ADDR": proxy.addr}, *command(tenant, start))
        assert proxy.dripping, (proxy.requests, whole)
    assert proc.returncode == 11, (proc.returncode, proc.stderr)
    assert f"cannot be reached: no complete answer within {DEADLINE:g} s (KEYOPS_VAULT_TIMEOUT)" in proc.stderr
    # The stalled request, and the lease's release and the failure's audit event, each cut at the deadline.
    assert took < 4 * DEADLINE + 10, took

    with Keyops(config, keyring_ttl=0.0) as fresh:
        assert {name: fresh.get_secret(tenant, name) for name in values} == values
        begun = fresh.read_keyring(tenant)[0].kek.latest_version > start
    print(f"\nstalled after {whole // 2} of {whole} requests: ended in {took:.1f} s, the rotation begun: {begun}")
    proc, _ = keyops(env, *command(tenant, start))
    assert proc.returncode == 0, proc.stderr
    with Keyops(config, keyring_ttl=0.0) as fresh:
        keyring = fresh.read_keyring(tenant)[0]
        assert keyring.kek.primary == keyring.kek.latest_version == start + 1
        assert {name: fresh.get_secret(tenant, name) for name in values} == values
