"""A cold ``keyops secret get`` against ``bao kv get`` of the same record, same stack, same run.

    .venv/bin/python -m benchmarks.bench_startup [--rounds N] [--git-ref REF]

Both are whole processes started from scratch, interleaved round by round on
a stack of their own; the best round of each counts (the median is printed
too), and the goal is a ratio: keyops at most 1.3x bao. ``bao kv get`` reads
the stored record (the ciphertext); ``keyops secret get`` reads the keyring
and the record, unwraps the DEK (HSM for residence kv) and decrypts, so it
does more work by design. With ``--git-ref`` the same measurement runs a
second keyops, from that commit (checked out in a temporary folder), side by
side: the before and after of a change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks._stack import temporary_stack
from keyops.dev.stack import bao_binary
from keyops.ops.front import Keyops

REPO = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - start


def _checkout(ref: str, folder: str) -> str:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", folder, ref], check=True,
                   capture_output=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_startup", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--git-ref", help="also measure keyops at this commit (before/after)")
    args = parser.parse_args(argv)
    with temporary_stack() as stack, tempfile.TemporaryDirectory(prefix="keyops-startup-") as tmp:
        env = {**os.environ, **stack.env()}
        env.pop("PYTHONPATH", None)
        # As an installed keyops runs: from compiled bytecode (written by the warm-up run below).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        tenant = f"start-{uuid.uuid4().hex[:6]}"
        with Keyops(stack.config()) as k:
            k.create_tenant(tenant)
            k.put_secret(tenant, "db/password", b"s3cret")
        contenders = {
            "bao kv get": ([bao_binary(), "kv", "get", "-format=json", f"{stack.config().kv_mount}/secrets/"
                            f"{tenant}/db/password"], env),
            "keyops secret get": ([sys.executable, "-m", "keyops.cli.main", "secret", "get", tenant, "db/password"],
                                  {**env, "PYTHONPATH": str(REPO)}),
        }
        if args.git_ref:
            old = _checkout(args.git_ref, os.path.join(tmp, "old"))
            contenders[f"keyops secret get @{args.git_ref}"] = (
                [sys.executable, "-m", "keyops.cli.main", "secret", "get", tenant, "db/password"],
                {**env, "PYTHONPATH": old})
        try:
            times: dict[str, list[float]] = {name: [] for name in contenders}
            for cmd, cenv in contenders.values():
                _timed(cmd, cenv)  # warm the page cache once; every measured run is a fresh process
            for _ in range(args.rounds):
                for name, (cmd, cenv) in contenders.items():
                    times[name].append(_timed(cmd, cenv))
        finally:
            if args.git_ref:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", os.path.join(tmp, "old")],
                               check=False, capture_output=True)
    bao = min(times["bao kv get"])
    for name, values in times.items():
        best, median = min(values), statistics.median(values)
        print(f"{name:32s} best {best * 1000:6.0f} ms  median {median * 1000:6.0f} ms  "
              f"best/bao {best / bao:4.2f}x")
    ratio = min(times["keyops secret get"]) / bao
    print(f"goal: keyops secret get <= 1.3x bao kv get: {ratio:.2f}x -> {'PASS' if ratio <= 1.3 else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
