"""The Kubernetes KMS v2 plugin: latency, a start-up burst, and Decrypt against a Transit round trip.

    .venv/bin/python benchmarks/bench_kms.py [--calls 2000] [--burst 10000] [--threads 8]

Starts its own OpenBao + SoftHSM2 DevStack in a temporary folder (stopped and
removed at the end), a tenant of residence kv, and ``keyops kms serve`` in
its own process; the client is the gRPC stub generated from the KMS v2 proto,
as the kube-apiserver's is.

* ``Encrypt`` and ``Decrypt`` latency, one call at a time, at 32 B (what the
  apiserver sends: a DEK seed) and 1 KiB: p50 and p99.
* A start-up burst: a fresh plugin process, then ``--burst`` Decrypt calls
  from ``--threads`` threads over ciphertexts of three DEK versions; wall
  time, and the HSM calls the plugin made from start to stop (its own count).
* Throughput of Decrypt against Transit ``decrypt`` on the same server, which
  is what a Transit-backed plugin pays per call: the same number of threads,
  a Python client each way, so client costs are alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402
import urllib3  # noqa: E402

from benchmarks._stack import temporary_stack  # noqa: E402
from keyops.kms.v2 import api_pb2, api_pb2_grpc  # noqa: E402
from keyops.ops.front import Keyops  # noqa: E402
from keyops.ops.rotation import rotate  # noqa: E402

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]


class PluginProcess:
    def __init__(self, env: dict[str, str], tenant: str, sock: Path) -> None:
        self.proc = subprocess.Popen([*KEYOPS, "kms", "serve", "--tenant", tenant, "--socket", str(sock)],
                                     env=env, stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL)
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line)
                if "serving tenant" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            raise SystemExit("plugin did not start:\n" + "".join(self.lines))
        self.channel = grpc.insecure_channel(f"unix:{sock}")
        self.stub = api_pb2_grpc.KeyManagementServiceStub(self.channel)

    def stop(self) -> dict[str, int]:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        time.sleep(0.2)
        found = re.search(r"HSM calls (\d+), of them unwraps (\d+); Vault requests (\d+)", "".join(self.lines))
        assert found, "".join(self.lines)
        return {"hsm_calls": int(found[1]), "hsm_unwraps": int(found[2]), "vault_requests": int(found[3])}


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3)}


def timed(call: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(100, n)):  # warm-up
        call()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return out


def rate(call: Callable[[int], Any], total: int, threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(call, range(total)))
    return total / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--burst", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    results: dict[str, Any] = {"calls": args.calls, "burst": args.burst, "threads": args.threads}

    with temporary_stack() as stack, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, **stack.env()}
        tenant = "bench-kms"
        with Keyops(stack.config()) as k:
            k.create_tenant(tenant)
        plugin = PluginProcess(env, tenant, Path(tmp) / "a.sock")
        stub = plugin.stub
        for size in (32, 1024):
            plaintext = os.urandom(size)
            reply = stub.Encrypt(api_pb2.EncryptRequest(plaintext=plaintext, uid="b"))
            request = api_pb2.DecryptRequest(ciphertext=reply.ciphertext, key_id=reply.key_id, uid="b",
                                             annotations=dict(reply.annotations))
            results[f"encrypt_{size}B"] = percentiles(timed(
                lambda p=plaintext: stub.Encrypt(api_pb2.EncryptRequest(plaintext=p, uid="b")), args.calls))
            results[f"decrypt_{size}B"] = percentiles(timed(lambda r=request: stub.Decrypt(r), args.calls))

        # Ciphertexts under three DEK versions, then a fresh plugin and a burst of Decrypt.
        requests = []
        with Keyops(stack.config()) as k:
            for round_ in range(3):
                for _ in range(10):
                    reply = stub.Encrypt(api_pb2.EncryptRequest(plaintext=os.urandom(32), uid="b"))
                    requests.append(api_pb2.DecryptRequest(ciphertext=reply.ciphertext, key_id=reply.key_id))
                if round_ < 2:
                    rotate(k, tenant, "dek")
                    stub.Status(api_pb2.StatusRequest())  # the plugin notices the new primary
        results["steady"] = plugin.stop()

        fresh = PluginProcess(env, tenant, Path(tmp) / "b.sock")
        burst_rate = rate(lambda i: fresh.stub.Decrypt(requests[i % len(requests)]), args.burst, args.threads)
        results["burst_seconds"] = round(args.burst / burst_rate, 3)
        results["burst_key_versions"] = len({r.key_id for r in requests})
        decrypt_rate = rate(lambda i: fresh.stub.Decrypt(requests[i % len(requests)]), args.burst, args.threads)
        results["burst_plugin"] = fresh.stop()

        # Transit decrypt on the same server, the same threads, a pooled HTTP client.
        http = urllib3.PoolManager(maxsize=args.threads)
        headers = {"X-Vault-Token": env["VAULT_TOKEN"], "Content-Type": "application/json"}
        http.request("POST", f"{stack.addr}/v1/transit/keys/bench-kms-transit", headers=headers)
        sealed = json.loads(http.request(
            "POST", f"{stack.addr}/v1/transit/encrypt/bench-kms-transit", headers=headers,
            body=json.dumps({"plaintext": "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="})).data)["data"]["ciphertext"]
        body = json.dumps({"ciphertext": sealed})

        def transit_decrypt(_: int) -> None:
            reply = http.request("POST", f"{stack.addr}/v1/transit/decrypt/bench-kms-transit", headers=headers,
                                 body=body)
            assert reply.status == 200, reply.data

        transit_rate = rate(transit_decrypt, min(args.burst, 3000), args.threads)
        results["decrypt_per_s"] = round(decrypt_rate)
        results["transit_decrypt_per_s"] = round(transit_rate)
        results["decrypt_vs_transit"] = round(decrypt_rate / transit_rate, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
