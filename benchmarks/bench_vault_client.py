"""Client CPU per Vault request: hvac over requests (before) against keyops' urllib3 transport (after).

    .venv/bin/python benchmarks/bench_vault_client.py [--requests 1000] [--rounds 5] [--profile] [--json out.json]

Starts its own OpenBao + SoftHSM2 DevStack in a temporary folder on free
ports (raft storage and the file audit device on, as ``keyops dev up`` runs
it; stopped and removed at the end), writes one 200 B KV v2 document, and
then, round after round, interleaved, sends ``--requests`` requests one after
another from one thread through a ``VaultStore`` (keyops' own path: hvac, the
transport, keyops' error mapping and call counting) with each transport:

* ``kv read``: ``VaultStore.read`` of the document;
* ``kv write``: ``VaultStore.write`` of it with check-and-set on the version
  it has (each write makes the next version).

Per request it records the client's CPU (``time.process_time`` of this
process: the server is another process), the wall time, and the server's CPU
(user + system time of the bao process from ``/proc``, which also counts its
background work: raft, the audit log). The best round of each counts (the
machine is shared); the median is printed beside it. ``--profile`` adds a
breakdown of the client's CPU by package (``cProfile`` with CPU time).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import dataclasses
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._stack import temporary_stack  # noqa: E402
from keyops.backends.vault import TRANSPORTS, VaultStore, make_client  # noqa: E402
from keyops.config import Config  # noqa: E402

PATH = "bench/client-cpu"
#: Before, then after.
ORDER = ("requests", "urllib3")
LABELS = {"requests": "hvac + requests (before)", "urllib3": "hvac + keyops urllib3 transport (after)"}
_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Round:
    transport: str
    operation: str
    requests: int
    client_cpu: float
    wall: float
    server_cpu: float

    def per_request_ms(self, what: str) -> float:
        return 1000 * float(getattr(self, what)) / self.requests


def server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK  # utime + stime


def store_for(config: Config, transport: str) -> VaultStore:
    return VaultStore(config, client=make_client(config, pool_size=4, transport=transport))


def operations(store: VaultStore, transport: str) -> dict[str, Callable[[], Any]]:
    """The two requests; each transport writes a document of its own (check-and-set on its versions)."""
    path = f"{PATH}-{transport}"
    version = [store.write(path, {"value": "x" * 200}, cas=0)]

    def write() -> None:
        version[0] = store.write(path, {"value": "x" * 200}, cas=version[0])

    return {"kv read": lambda: store.read(path), "kv write": write}


def measure(store: VaultStore, transport: str, operation: str, run: Callable[[], Any], n: int, pid: int) -> Round:
    server, wall, cpu = server_cpu_seconds(pid), time.perf_counter(), time.process_time()
    for _ in range(n):
        run()
    cpu, wall, server = time.process_time() - cpu, time.perf_counter() - wall, server_cpu_seconds(pid) - server
    return Round(transport, operation, n, cpu, wall, server)


def profile(read: Callable[[], Any], n: int) -> dict[str, float]:
    """Share of the client's CPU by package over ``n`` reads."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(n):
        read()
    profiler.disable()
    shares: collections.Counter[str] = collections.Counter()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, own, _, _) in stats.items():
        shares[_package(filename)] += own
    total = sum(shares.values()) or 1.0
    return {name: round(100 * value / total, 1) for name, value in shares.most_common()}


def _package(filename: str) -> str:
    path = filename.replace("\\", "/")
    for name in ("requests", "urllib3", "hvac", "keyops", "charset_normalizer", "idna", "certifi"):
        if f"/{name}/" in path:
            return name
    if "/http/" in path or path.endswith(("/socket.py", "/ssl.py")) or "/email/" in path:
        return "http.client, socket, email (stdlib)"
    if path.startswith("~") or "{built-in" in path or path.startswith("<"):
        return "built-ins (json, socket calls, ...)"
    return "other stdlib"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per contender and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="also break the client's CPU down by package")
    parser.add_argument("--json", type=Path, help="write every round and the summary as JSON")
    args = parser.parse_args(argv)

    rounds: list[Round] = []
    profiles: dict[str, dict[str, float]] = {}
    with temporary_stack() as stack:
        config = stack.config()
        pid = stack.running_pid()
        assert pid is not None
        assert set(ORDER) == set(TRANSPORTS)
        stores = {transport: store_for(config, transport) for transport in ORDER}
        runs = {transport: operations(store, transport) for transport, store in stores.items()}
        for transport in stores:  # warm: connections open, code paths loaded
            for run in runs[transport].values():
                for _ in range(50):
                    run()
        for number in range(args.rounds):
            for operation in ("kv read", "kv write"):
                for transport in ORDER:
                    done = measure(stores[transport], transport, operation, runs[transport][operation],
                                   args.requests, pid)
                    rounds.append(done)
                    print(f"round {number + 1} {operation:<8} {transport:<8} client "
                          f"{done.per_request_ms('client_cpu'):.3f} ms  server {done.per_request_ms('server_cpu'):.3f}"
                          f" ms  wall {done.per_request_ms('wall'):.3f} ms per request", file=sys.stderr)
                time.sleep(0.5)  # let the server finish its after-work (raft, audit) before the next pair
        if args.profile:
            profiles = {transport: profile(runs[transport]["kv read"], args.requests) for transport in ORDER}

    summary = summarise(rounds)
    print_table(summary, args.requests, args.rounds)
    for transport, shares in profiles.items():
        print(f"\nclient CPU by package, {LABELS[transport]}:")
        for name, share in shares.items():
            print(f"  {share:5.1f} %  {name}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": [dataclasses.asdict(r) for r in rounds], "summary": summary,
                                         "profiles": profiles}, indent=2))
    return 0


def summarise(rounds: list[Round]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for operation in ("kv read", "kv write"):
        out[operation] = {}
        for transport in ORDER:
            mine = [r for r in rounds if r.operation == operation and r.transport == transport]
            client = [r.per_request_ms("client_cpu") for r in mine]
            out[operation][transport] = {
                "client_cpu_ms_best": round(min(client), 3),
                "client_cpu_ms_median": round(statistics.median(client), 3),
                "server_cpu_ms_median": round(statistics.median(r.per_request_ms("server_cpu") for r in mine), 3),
                "wall_ms_best": round(min(r.per_request_ms("wall") for r in mine), 3)}
    return out


def print_table(summary: dict[str, dict[str, dict[str, float]]], n: int, rounds: int) -> None:
    print(f"\n{n} requests per contender and round, {rounds} rounds; ms per request, best round (median)\n")
    print("| request | transport | client CPU | server CPU (median) | wall (best) | client CPU after/before |")
    print("|---|---|---:|---:|---:|---:|")
    for operation, by_transport in summary.items():
        before = by_transport["requests"]["client_cpu_ms_best"]
        for transport, figures in by_transport.items():
            ratio = figures["client_cpu_ms_best"] / before if before else 0.0
            print(f"| {operation} | {LABELS[transport]} | {figures['client_cpu_ms_best']:.3f} "
                  f"({figures['client_cpu_ms_median']:.3f}) | {figures['server_cpu_ms_median']:.3f} | "
                  f"{figures['wall_ms_best']:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
