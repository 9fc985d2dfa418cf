"""Time to recover after a failover: keyops against a three-node OpenBao cluster whose active node is killed.

    .venv/bin/python benchmarks/bench_failover.py [--rounds 5] [--json out.json]

Starts its own HA stack (``keyops.dev.cluster.DevCluster``: three nodes with
integrated raft, as ``keyops dev up --ha`` runs them) in a temporary folder
on free ports, stopped and removed at the end. One ``Keyops`` with every
node's address (and no keyring cache, so that each read goes to Vault)
writes one secret; then, round after round, the active node is killed with
SIGKILL and the same process reads the secret and writes it again at once.
Per round it records the seconds from the kill to the read's answer (the
election of a new leader, and keyops finding it) and to the write's, and the
transport's retries, health probes and failovers those two calls made. The
killed node is started again and the cluster brought back to three voters
before the next round.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keyops.dev.cluster import DevCluster  # noqa: E402
from keyops.dev.stack import free_port  # noqa: E402
from keyops.ops.front import Keyops  # noqa: E402

TENANT = "bench-failover"


def one_round(cluster: DevCluster, k: Keyops, value: bytes) -> dict[str, Any]:
    index = cluster.active_node()
    if index is None:
        raise RuntimeError("no active node before the kill")
    before = k.calls.snapshot()
    cluster.kill_node(index, signal.SIGKILL)
    killed = time.monotonic()
    if k.get_secret(TENANT, "s") != value:
        raise RuntimeError("the secret read back differs")
    read = time.monotonic() - killed
    k.put_secret(TENANT, "s", value)
    written = time.monotonic() - killed
    after = k.calls.snapshot()
    counts = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in ("vault.retry", "vault.probe",
                                                                         "vault.failover")}
    cluster.start_node(index)
    cluster.up()  # three voters again
    return {"read_seconds": round(read, 3), "write_seconds": round(written, 3), **counts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="keyops-bench-ha-") as folder:
        cluster = DevCluster(os.path.join(folder, "ha"), port=free_port(), die_with_parent=True)
        try:
            started = time.monotonic()
            cluster.up()
            start_seconds = time.monotonic() - started
            os.environ["SOFTHSM2_CONF"] = str(cluster.softhsm_conf)
            config = cluster.config()
            rounds = []
            with Keyops(config, keyring_ttl=0.0) as k:
                k.create_tenant(TENANT)
                value = b"survives every failover"
                k.put_secret(TENANT, "s", value)
                for _ in range(args.rounds):
                    rounds.append(one_round(cluster, k, value))
        finally:
            cluster.down()
    print(f"HA stack up in {start_seconds:.1f} s; retry window {config.retry_window:g} s, "
          f"request deadline {config.vault_timeout:g} s")
    print(f"{'round':>5}  {'read after kill':>15}  {'write after kill':>16}  {'retries':>7}  {'probes':>6}  "
          f"{'failovers':>9}")
    for i, r in enumerate(rounds, 1):
        print(f"{i:>5}  {r['read_seconds']:>13.2f} s  {r['write_seconds']:>14.2f} s  {r['vault.retry']:>7}  "
              f"{r['vault.probe']:>6}  {r['vault.failover']:>9}")
    reads = [r["read_seconds"] for r in rounds]
    print(f"read after kill: median {statistics.median(reads):.2f} s, max {max(reads):.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"start_seconds": round(start_seconds, 2), "rounds": rounds,
                                               "retry_window": config.retry_window}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
