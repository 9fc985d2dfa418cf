"""Rotation cost: KEK rotation time against the number of secrets, and backend calls per operation.

    .venv/bin/python benchmarks/bench_rotation.py [--secrets 100,1000,20000] [--tenants 10,100] [--rounds 5]

Starts its own OpenBao + SoftHSM2 DevStack in a temporary folder on free
ports (stopped and removed at the end) and measures, each operation run by a
fresh ``Keyops`` (cold caches: what one CLI or Ansible run costs):

* KEK rotation of a tenant with N secrets (records written straight to KV
  by several hvac clients), residences ``kv`` and ``transit``: wall time
  (best and median of ``--rounds``), and every Vault and HSM call it made. A
  KEK rotation re-wraps DEKs only, so neither figure should grow with N.
* DEK rotation (both residences) and master key rotation over T tenants
  (one KEK version each): wall time and calls.

The machine is shared: the best round counts, the median is shown too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._stack import temporary_stack  # noqa: E402
from keyops.backends.vault import make_client  # noqa: E402
from keyops.config import Config  # noqa: E402
from keyops.model.keyring import Policy  # noqa: E402
from keyops.ops.front import Keyops, secret_context, secret_path  # noqa: E402
from keyops.ops.rotation import rotate, rotate_master  # noqa: E402

FILL_WORKERS = 4


@dataclasses.dataclass(frozen=True)
class Measure:
    name: str
    seconds: list[float]
    calls: dict[str, int]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def hsm(self) -> int:
        return sum(v for k, v in self.calls.items() if k.startswith("hsm.") and k != "hsm.login")

    def vault(self) -> int:
        return sum(v for k, v in self.calls.items() if not k.startswith("hsm."))


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fill(config: Config, tenant: str, count: int) -> None:
    """``count`` real records of ``tenant`` (200 B values), encrypted here, written by several clients."""
    with Keyops(config) as k:
        dek_version = k.read_keyring(tenant)[0].dek.primary
        records = [(f"s{i:06d}", {"schema": 1, "dek_version": dek_version,
                                  "ciphertext": k.encrypt(tenant, os.urandom(100).hex().encode(),
                                                          secret_context(f"s{i:06d}"))})
                   for i in range(count)]

    def write(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        client = make_client(config, pool_size=2)
        for name, record in chunk:
            client.secrets.kv.v2.create_or_update_secret(path=secret_path(tenant, name), secret=record,
                                                         mount_point=config.kv_mount, cas=0)

    with ThreadPoolExecutor(max_workers=FILL_WORKERS) as pool:
        list(pool.map(write, [records[i::FILL_WORKERS] for i in range(FILL_WORKERS)]))


def measure(name: str, config: Config, rounds: int, op: Callable[[Keyops], Any]) -> Measure:
    seconds: list[float] = []
    calls: dict[str, int] = {}
    for _ in range(rounds):
        with Keyops(config) as k:
            started = time.perf_counter()
            op(k)
            seconds.append(time.perf_counter() - started)
            calls = k.calls.snapshot()  # the same every round: keep the last
    return Measure(name, seconds, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", default="100,1000,20000", help="secret counts for KEK rotation")
    parser.add_argument("--tenants", default="10,100", help="tenant counts for master rotation")
    parser.add_argument("--rounds", type=int, default=5, help="rotations per figure; the best counts (default 5)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.secrets.split(",")]
    tenant_counts = [int(n) for n in args.tenants.split(",")]

    results: list[Measure] = []
    progress("starting a temporary OpenBao + SoftHSM2 stack")
    with temporary_stack() as stack:
        base = stack.config()
        version = make_client(base).sys.read_health_status(method="GET").get("version")
        client = make_client(base)
        for residence in ("kv", "transit"):
            for count in counts:
                tenant = f"bench-{residence}-{count}"
                with Keyops(base) as k:
                    k.create_tenant(tenant, Policy(kek_residence=residence))
                progress(f"{residence}: storing {count:,} secrets")
                started = time.monotonic()
                fill(base, tenant, count)
                progress(f"  {count / (time.monotonic() - started):,.0f} records/s")
                results.append(measure(f"KEK rotation, {residence}, {count:,} secrets", base, args.rounds,
                                       lambda k, t=tenant: rotate(k, t, "kek")))
                progress(f"  {results[-1].name}: best {results[-1].best * 1000:.0f} ms")
            tenant = f"bench-{residence}-{counts[0]}"
            results.append(measure(f"DEK rotation, {residence}", base, args.rounds,
                                   lambda k, t=tenant: rotate(k, t, "dek")))
        for count in tenant_counts:
            mount = f"bench-master-{count}"
            client.sys.enable_secrets_engine(backend_type="kv", path=mount, options={"version": "2"})
            config = base.replace(kv_mount=mount, master_key_label=f"bench-m{count}")
            time.sleep(1.0)  # a new KV v2 mount answers "upgrading" for a moment
            progress(f"master: creating {count} tenants")
            with Keyops(config) as k:
                for i in range(count):
                    k.create_tenant(f"m{count}-t{i:04d}", Policy(kek_residence="transit" if i % 5 == 0 else "kv"))
            results.append(measure(f"master rotation, {count} tenants", config, max(1, min(args.rounds, 3)),
                                   rotate_master))
            progress(f"  {results[-1].name}: best {results[-1].best * 1000:.0f} ms")

    print(f"rotation on OpenBao {version}, {os.cpu_count()} CPUs; each operation by a fresh Keyops; "
          f"best (median) of the rounds")
    print(f"{'operation':<40} {'best ms':>9} {'median ms':>10} {'Vault calls':>12} {'HSM calls':>10}  detail")
    for m in results:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(m.calls.items()))
        print(f"{m.name:<40} {m.best * 1000:>9.0f} {m.median * 1000:>10.0f} {m.vault():>12} {m.hsm():>10}  {detail}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"openbao": version, "cpus": os.cpu_count(), "rounds": args.rounds,
             "results": [{**dataclasses.asdict(m), "best": m.best, "median": m.median} for m in results]},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
