"""``keyops serve`` against OpenBao's own Transit on the same machine, with the same load generator.

    .venv/bin/python benchmarks/bench_http.py [--seconds 10] [--concurrency 16] [--workers 2]

Starts its own OpenBao + SoftHSM2 DevStack in a temporary folder (OpenBao with
its file audit device on, as `keyops dev up` makes it), a tenant of residence
kv, a Transit key ``bench-aes`` (aes256-gcm96) on the same OpenBao, and
``keyops serve`` in its own process with its access log on (its audit). Each
side gets a token limited to its key. Debian's ``hey`` sends the same
requests to both, one case after the other:

* single-item encrypt of 1 KiB, and decrypt of that ciphertext;
* a batch of 100 items of 1 KiB, encrypt and decrypt.

Requests/s and p50/p99 latency for both, and the ratio keyops/OpenBao (the
goal: >= 1x the rate at equal or better p99). Nothing is asserted: the
figures go to docs/benchmarks.md with the machine's load.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from benchmarks._stack import temporary_stack  # noqa: E402
from keyops import access  # noqa: E402
from keyops.dev.stack import free_port  # noqa: E402
from keyops.ops.front import Keyops  # noqa: E402

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
TRANSIT_KEY = "bench-aes"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hey(url: str, token: str, body: dict[str, Any], seconds: float, concurrency: int, folder: str) -> dict[str, float]:
    path = os.path.join(folder, "body.json")
    with open(path, "w") as f:
        json.dump(body, f)
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
                          "-H", f"X-Vault-Token: {token}", "-D", path, url],
                         capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    codes = dict(re.findall(r"\[(\d{3})\]\s+(\d+) responses", out))
    return {"rps": rate, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000,
            "non_200": sum(int(n) for code, n in codes.items() if code != "200")}


def post(url: str, token: str, body: dict[str, Any]) -> Any:
    resp = requests.post(url, json=body, headers={"X-Vault-Token": token}, timeout=30)
    resp.raise_for_status()
    return resp.json()["data"]


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"keyops serve exited with {proc.returncode}")
        try:
            if requests.get(url + "/v1/sys/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise SystemExit("keyops serve did not become healthy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        raise SystemExit("hey is not installed: apt-get install -y hey")
    with temporary_stack() as stack, tempfile.TemporaryDirectory(prefix="keyops-bench-http-") as folder:
        root_env = stack.env()
        root = root_env["VAULT_TOKEN"]
        with Keyops(stack.config()) as k:
            tenant = "bench-http"
            k.create_tenant(tenant)
            access.apply_policies(k, access.render_policies(k.roles, [tenant], access.Mounts.from_config(k.config)))
            app = access.mint_token(k, k.roles, "app", tenant, ttl="2h").token
            rotation = access.mint_token(k, k.roles, "rotation", ttl="2h").token
        vault = {"X-Vault-Token": root}
        requests.post(f"{stack.addr}/v1/transit/keys/{TRANSIT_KEY}", json={"type": "aes256-gcm96"}, headers=vault,
                      timeout=30).raise_for_status()
        policy = (f'path "transit/encrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n'
                  f'path "transit/decrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n')
        requests.put(f"{stack.addr}/v1/sys/policies/acl/bench-transit", json={"policy": policy}, headers=vault,
                     timeout=30).raise_for_status()
        bao_token = requests.post(f"{stack.addr}/v1/auth/token/create", headers=vault, timeout=30,
                                  json={"policies": ["bench-transit"], "ttl": "2h"}).json()["auth"]["client_token"]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([*KEYOPS, "serve", "--listen", f"127.0.0.1:{port}", "--workers", str(args.workers),
                                 "--access-log", os.path.join(folder, "access.jsonl")],
                                env={**os.environ, **root_env, "VAULT_TOKEN": rotation},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(url, proc)
            sides = {"keyops": (f"{url}/v1/transit", tenant, app), "openbao": (f"{stack.addr}/v1/transit",
                                                                              TRANSIT_KEY, bao_token)}
            one = b64(os.urandom(1024))
            batch = [{"plaintext": b64(os.urandom(1024))} for _ in range(100)]
            results: dict[str, dict[str, dict[str, float]]] = {}
            for side, (base, key, token) in sides.items():
                ct = post(f"{base}/encrypt/{key}", token, {"plaintext": one})["ciphertext"]
                cts = post(f"{base}/encrypt/{key}", token, {"batch_input": batch})["batch_results"]
                cases = {
                    "encrypt 1 KiB": (f"{base}/encrypt/{key}", {"plaintext": one}),
                    "decrypt 1 KiB": (f"{base}/decrypt/{key}", {"ciphertext": ct}),
                    "encrypt batch 100 x 1 KiB": (f"{base}/encrypt/{key}", {"batch_input": batch}),
                    "decrypt batch 100 x 1 KiB": (f"{base}/decrypt/{key}",
                                                  {"batch_input": [{"ciphertext": c["ciphertext"]} for c in cts]}),
                }
                hey(cases["encrypt 1 KiB"][0], token, cases["encrypt 1 KiB"][1], 2, args.concurrency, folder)  # warm
                for name, (target, body) in cases.items():
                    results.setdefault(name, {})[side] = hey(target, token, body, args.seconds, args.concurrency,
                                                             folder)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    load = os.getloadavg()
    print(f"hey -z {args.seconds:g}s -c {args.concurrency}; keyops serve --workers {args.workers}; "
          f"load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores")
    print("| case | keyops req/s | p50 ms | p99 ms | OpenBao req/s | p50 ms | p99 ms | rate ratio | p99 ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, pair in results.items():
        ko, ob = pair["keyops"], pair["openbao"]
        print(f"| {name} | {ko['rps']:.0f} | {ko['p50_ms']:.2f} | {ko['p99_ms']:.2f} | {ob['rps']:.0f} | "
              f"{ob['p50_ms']:.2f} | {ob['p99_ms']:.2f} | {ko['rps'] / ob['rps']:.2f}x | "
              f"{ko['p99_ms'] / ob['p99_ms']:.2f}x |")
        if ko["non_200"] or ob["non_200"]:
            print(f"  (non-200 answers: keyops {ko['non_200']:.0f}, OpenBao {ob['non_200']:.0f})")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
