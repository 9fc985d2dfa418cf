"""Run every benchmark of benchmarks/ and write one table of their figures to docs/benchmarks.md.

    bash benchmarks/run.sh                 # everything (about 40 minutes on 2 cores); writes the table
    bash benchmarks/run.sh --quick         # a smoke run of every benchmark (a few minutes); writes no table
    bash benchmarks/run.sh --only crypto,scale --json out.json

The runner measures the baselines itself, on a stack it starts and stops (a
temporary folder, free ports, so a running ``keyops dev up`` stack or a test
session is never touched): raw AES-GCM and Transit per item and in batches
(``bench_crypto``), and a raw KV read plus check-and-set write. Every other
benchmark runs in its own process with its own stack (``benchmarks._suites``),
and the table (``benchmarks._table``) sets each figure beside its baseline.
Figures and how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cryptography

from benchmarks._stack import dev_mode_openbao, temporary_stack
from benchmarks._suites import NAMES, REPO, SUITES, run_suite
from benchmarks._table import render, replace_block
from benchmarks.bench_crypto import report, run_crypto
from keyops.backends.vault import make_client


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "cryptography": cryptography.__version__,
            "platform": platform.platform()}


KV_PAIRS = 300


def kv_baseline(config: Any, pairs: int, rounds: int = 3) -> dict[str, float]:
    """Raw KV v2 read + check-and-set write of a 200 B document, one thread, keyops' HTTP client: best of ``rounds``."""
    from keyops.backends.vault import VaultStore

    store = VaultStore(config)
    path = f"bench/kv-baseline-{os.getpid()}"
    store.write(path, {"v": "x" * 200}, cas=0)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(pairs):
            found = store.read(path)
            assert found is not None
            store.write(path, found[0], cas=found[1])
        best = min(best, (time.perf_counter() - start) / pairs)
        time.sleep(0.3)
    return {"pair_ms": round(best * 1000, 3), "pairs": pairs, "rounds": rounds}


def _versions(info: dict[str, Any]) -> None:
    import importlib.metadata as md

    for name, dist in (("hvac", "hvac"), ("ansible", "ansible-core")):
        try:
            info[name] = md.version(dist)
        except md.PackageNotFoundError:
            info[name] = None


def _names(text: str | None) -> list[str]:
    chosen = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = sorted(set(chosen) - {"crypto", *NAMES})
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; known: crypto, {', '.join(NAMES)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: every benchmark with tiny sizes; no table written unless --docs is given")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated: crypto, {', '.join(NAMES)}")
    parser.add_argument("--skip", metavar="NAMES", help="comma-separated benchmarks to leave out")
    parser.add_argument("--docs", metavar="FILE", help="write the table into FILE (default for a full run: "
                        "docs/benchmarks.md)")
    parser.add_argument("--no-docs", action="store_true", help="write no table")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; best of N counts (default 7)")
    parser.add_argument("--local-repeats", type=int, default=50,
                        help="chunks of each local contender per round (default 50)")
    parser.add_argument("--chunk-seconds", type=float, default=0.002,
                        help="length of one local chunk (default 0.002: shorter than a scheduler time "
                             "slice, so that some chunks run undisturbed on a busy machine)")
    parser.add_argument("--remote-repeats", type=int, default=2,
                        help="chunks of each Transit contender per round (default 2)")
    parser.add_argument("--transit-seconds", type=float, default=0.25,
                        help="length of one Transit single-item chunk (default 0.25); a batch chunk is "
                             "one encrypt and one decrypt request")
    parser.add_argument("--no-dev-server", action="store_true",
                        help="skip Transit on an audit-less dev-mode OpenBao (measured by default)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)
    only, skip = _names(args.only), _names(args.skip)
    wanted = [n for n in ("crypto", *NAMES) if (not only or n in only) and n not in skip]
    if args.quick:
        args.rounds, args.local_repeats, args.remote_repeats, args.transit_seconds = 1, 3, 1, 0.05
        args.no_dev_server = True

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    info = machine()
    _versions(info)
    info.update(quick=args.quick, date=time.strftime("%Y-%m-%d %H:%M"), load_before=round(os.getloadavg()[0], 2))
    started = time.monotonic()
    crypto = None
    kv = None
    progress("starting a temporary OpenBao + SoftHSM2 stack for the baselines")
    with contextlib.ExitStack() as servers:
        stack = servers.enter_context(temporary_stack())
        config = stack.config()
        info["openbao"] = make_client(config).sys.read_health_status(method="GET").get("version")
        kv = kv_baseline(config, 30 if args.quick else KV_PAIRS, 1 if args.quick else 3)
        progress(f"raw KV read + CAS write: {kv['pair_ms']} ms per pair")
        if "crypto" in wanted:
            dev_config = None
            if not args.no_dev_server:
                progress("starting an in-memory dev-mode OpenBao without audit device")
                dev_config = servers.enter_context(dev_mode_openbao())
            results = run_crypto(config, dev_config, rounds=args.rounds, local_repeats=args.local_repeats,
                                 remote_repeats=args.remote_repeats,
                                 chunk_seconds=args.chunk_seconds, transit_seconds=args.transit_seconds,
                                 progress=progress)
            print(report(results))
            crypto = results.to_dict()
    suites: dict[str, dict[str, Any]] = {}
    for suite in SUITES:
        if suite.name in wanted:
            suites[suite.name] = run_suite(suite, args.quick, progress)
            progress(f"{suite.name}: {'done' if 'figures' in suites[suite.name] else suites[suite.name]}"[:300])
    info["seconds"] = round(time.monotonic() - started, 1)
    info["load_after"] = round(os.getloadavg()[0], 2)

    table = render(info, crypto, kv, suites)
    print(table)
    docs = args.docs or (None if args.quick else str(REPO / "docs" / "benchmarks.md"))
    if docs and not args.no_docs:
        path = Path(docs)
        path.write_text(replace_block(path.read_text(encoding="utf-8") if path.exists() else "", table),
                        encoding="utf-8")
        progress(f"table written to {path}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": info, "kv_baseline": kv, "crypto": crypto, "suites": suites}, fh, indent=2)
    failed = [name for name, out in suites.items() if "error" in out]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
