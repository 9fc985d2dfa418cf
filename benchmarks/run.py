"""Run keyops' benchmarks against a local stack that this command starts and stops itself.

    .venv/bin/python -m benchmarks.run [--rounds N] [--json FILE]

The stack (OpenBao + SoftHSM2) lives in a temporary folder on free ports, so a
running ``keyops dev up`` stack or a test session is never touched. Figures and
how to read them: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from typing import Any

import cryptography

from benchmarks._stack import dev_mode_openbao, temporary_stack
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
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

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    info = machine()
    started = time.monotonic()
    progress("starting a temporary OpenBao + SoftHSM2 stack")
    with contextlib.ExitStack() as servers:
        stack = servers.enter_context(temporary_stack())
        config = stack.config()
        info["openbao"] = make_client(config).sys.read_health_status(method="GET").get("version")
        dev_config = None
        if not args.no_dev_server:
            progress("starting an in-memory dev-mode OpenBao without audit device")
            dev_config = servers.enter_context(dev_mode_openbao())
        results = run_crypto(config, dev_config, rounds=args.rounds, local_repeats=args.local_repeats,
                             remote_repeats=args.remote_repeats,
                             chunk_seconds=args.chunk_seconds, transit_seconds=args.transit_seconds,
                             progress=progress)
    info["seconds"] = round(time.monotonic() - started, 1)

    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['implementation']} {info['python']}, "
          f"cryptography {info['cryptography']}, OpenBao {info['openbao']}")
    print(report(results))
    print(f"\n(run took {info['seconds']} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"machine": info, "crypto": results.to_dict()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
