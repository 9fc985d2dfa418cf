"""The load run: provision many tenants with secrets, rotate every DEK, re-encrypt everything.

    .venv/bin/python benchmarks/bench_scale.py                       # 1,000 tenants x 20 secrets
    .venv/bin/python benchmarks/bench_scale.py --tenants 50 --secrets 20
    .venv/bin/python benchmarks/bench_scale.py --memory               # peak RSS: 1,000 and 10,000 tenants x 1 secret
    .venv/bin/python benchmarks/bench_scale.py --quick                # a smoke test: 20 tenants x 3 secrets

Each cycle runs in a child process of its own on a fresh stack (OpenBao with
raft storage and its file audit device, SoftHSM2), so that its peak RSS
(``ru_maxrss`` of the child: the client only, not the server) belongs to that
cycle alone. Phases, all through the library's fan-out over tenants:

* ``provision``: ``provision_tenants``: each tenant's keyring (KEK, DEK) and
  its secrets;
* ``rotate``: ``iter_rotate_tenants(level="dek")`` over every tenant;
* ``reencrypt``: ``iter_reencrypt_tenants`` over every tenant (the streaming
  forms of ``rotate_tenants`` and ``reencrypt_tenants``: outcomes are counted
  as they come, not kept).

Tenant names are generated as the phases go (never a list of all of them),
as an operator's inventory or ``list_tenants`` pages would give them.
Vault requests and HSM calls are keyops' own counts (``Keyops.calls``); the
server's CPU is read from ``/proc`` of the bao process. Checked afterwards,
with a sample of tenants read through a fresh ``Keyops``: every record is
under DEK version 2 and decrypts to the value written.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def tenant_names(prefix: str, n: int) -> Iterator[str]:
    return (f"{prefix}-{i:05d}" for i in range(n))


def value_of(tenant: str, i: int) -> bytes:
    return f"{tenant}/{i}/value".encode()


def secrets_of(tenant: str, n: int) -> Iterator[tuple[str, bytes]]:
    return ((f"app/secret-{i:02d}", value_of(tenant, i)) for i in range(n))


def server_cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cycle(tenants: int, secrets: int, tenant_workers: int, workers: int, serial: bool = False) -> dict[str, Any]:
    """One whole cycle on a fresh stack, in this process.

    ``serial``: the baseline, as keyops did it before the fan-out: one tenant
    after the other through the API every version has (``create_tenant``,
    ``put_secret``, ``rotate``, ``reencrypt``), so that it runs against an
    older checkout too (``--code``).
    """
    from benchmarks._stack import temporary_stack

    with temporary_stack() as stack:
        from keyops.ops.front import Keyops
        from keyops.ops.reencrypt import reencrypt
        from keyops.ops.rotation import rotate

        pid = stack.running_pid()
        prefix = f"s{os.getpid()}"
        phases: dict[str, dict[str, Any]] = {}
        k = Keyops(stack.config())
        k.ensure_master()
        rss_start = peak_rss_mib()

        def phase(name: str, run: Callable[[], Any]) -> Any:
            k.calls.reset()
            cpu, wall, server = time.process_time(), time.perf_counter(), server_cpu_seconds(pid)
            out = run()
            phases[name] = {"seconds": round(time.perf_counter() - wall, 2),
                            "client_cpu_s": round(time.process_time() - cpu, 2),
                            "server_cpu_s": round(server_cpu_seconds(pid) - server, 2),
                            "calls": k.calls.snapshot(), "load": os.getloadavg()[0]}
            return out

        def provision() -> int:
            if serial:
                for t in tenant_names(prefix, tenants):
                    k.create_tenant(t)
                    for name, value in secrets_of(t, secrets):
                        k.put_secret(t, name, value)
                return tenants
            from keyops.ops.provision import provision_tenants

            report = provision_tenants(k, ((t, secrets_of(t, secrets)) for t in tenant_names(prefix, tenants)),
                                       tenant_workers=tenant_workers)
            if report.failures:
                raise SystemExit(f"provisioning failed: {report.failures[0]}")
            return report.tenants

        def rotate_all() -> int:
            if serial:
                return sum(rotate(k, t, "dek").changed for t in tenant_names(prefix, tenants))
            from keyops.ops.rotation import iter_rotate_tenants

            # The streaming form: outcomes counted as they come, never held (rotate_tenants keeps them all).
            rotated = 0
            for outcome in iter_rotate_tenants(k, tenant_names(prefix, tenants), "dek",
                                               tenant_workers=tenant_workers):
                if outcome.failure is not None:
                    raise SystemExit(f"rotation failed: {outcome.failure}")
                rotated += outcome.changed
            return rotated

        def reencrypt_all() -> int:
            if serial:
                return sum(reencrypt(k, t, workers=workers).rewritten for t in tenant_names(prefix, tenants))
            from keyops.ops.reencrypt import iter_reencrypt_tenants

            rewritten = 0
            for outcome in iter_reencrypt_tenants(k, tenant_names(prefix, tenants), tenant_workers=tenant_workers,
                                                  workers=workers):
                if outcome.result is None:
                    raise SystemExit(f"re-encryption failed: {outcome.failure}")
                rewritten += outcome.result.rewritten
            return rewritten

        started = time.perf_counter()
        phase("provision", provision)
        phase("rotate", rotate_all)
        rewritten = phase("reencrypt", reencrypt_all)
        total = time.perf_counter() - started
        k.close()
        peak = peak_rss_mib()  # the cycle's own: the check below reads a sample of tenants with another Keyops
        _check(stack.config(), prefix, tenants, secrets)
    records = tenants * secrets
    if rewritten != records:
        raise SystemExit(f"re-encrypted {rewritten} records, expected {records}")
    re_calls = phases["reencrypt"]["calls"]
    vault = sum(n for kind, n in re_calls.items() if not kind.startswith("hsm."))
    hsm = {name: sum(n for kind, n in p["calls"].items() if kind.startswith("hsm.")) for name, p in phases.items()}
    return {"tenants": tenants, "secrets": secrets, "records": records, "serial": serial,
            "tenant_workers": tenant_workers,
            "workers": workers, "seconds": round(total, 2), "phases": phases,
            "vault_requests_per_record": round(vault / records, 3), "hsm_calls": hsm,
            "peak_rss_mib": round(peak, 1), "rss_before_mib": round(rss_start, 1),
            "load_after": os.getloadavg()}


def _check(config: Any, prefix: str, tenants: int, secrets: int) -> None:
    """Every tenth tenant (and the last) read back by a fresh process-like Keyops: DEK v2, the value written."""
    from keyops.model.paths import secret_path
    from keyops.ops.front import Keyops

    with Keyops(config) as k:
        for j in sorted({*range(0, tenants, 10), tenants - 1}):
            tenant = f"{prefix}-{j:05d}"
            for i in range(secrets):
                found = k.store.read(secret_path(tenant, f"app/secret-{i:02d}"))
                if found is None or found[0]["dek_version"] != 2:
                    raise SystemExit(f"tenant {tenant}: secret {i} is not under DEK v2: {found and found[0]}")
                if k.get_secret(tenant, f"app/secret-{i:02d}") != value_of(tenant, i):
                    raise SystemExit(f"tenant {tenant}: secret {i} does not decrypt to its value")
            if hasattr(k, "done_with"):  # a baseline checkout (--code) may predate it
                k.done_with(tenant)


def run_child(tenants: int, secrets: int, tenant_workers: int, workers: int, serial: bool = False,
              code: Path = REPO) -> dict[str, Any]:
    """A cycle in a fresh interpreter: its peak RSS is the cycle's own. ``code``: the keyops checkout it runs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(code), str(REPO)]))}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--tenants", str(tenants),
                           "--secrets", str(secrets), "--tenant-workers", str(tenant_workers),
                           "--workers", str(workers), *(["--serial"] if serial else [])], cwd=code, env=env,
                          capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"the cycle of {tenants} tenants failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def describe(r: dict[str, Any]) -> str:
    p = r["phases"]
    parts = ", ".join(f"{name} {v['seconds']} s (client CPU {v['client_cpu_s']} s, server {v['server_cpu_s']} s)"
                      for name, v in p.items())
    return (f"{r['tenants']} tenants x {r['secrets']} secrets: {r['seconds']} s ({parts}); "
            f"{r['vault_requests_per_record']} Vault requests per re-encrypted record; HSM calls {r['hsm_calls']}; "
            f"peak RSS {r['peak_rss_mib']} MiB; load {r['load_after'][0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--secrets", type=int, default=20, help="secrets per tenant (default 20)")
    parser.add_argument("--tenant-workers", type=int, default=16, help="tenants at once (default 16)")
    parser.add_argument("--workers", type=int, default=4, help="workers within one tenant's job (default 4)")
    parser.add_argument("--memory", action="store_true",
                        help="peak RSS of 1,000 and of 10,000 tenants (1 secret each), each in its own process")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 20 tenants x 3 secrets")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the cycle one tenant after the other (the way before the fan-out), first")
    parser.add_argument("--code", type=Path, default=REPO,
                        help="the keyops checkout the baseline runs (default this one), e.g. a worktree of main")
    parser.add_argument("--serial", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(cycle(args.tenants, args.secrets, args.tenant_workers, args.workers, args.serial)))
        return 0
    if args.quick:
        args.tenants, args.secrets = 20, 3
    results: dict[str, Any] = {}
    if args.memory:
        small = run_child(1000, 1, args.tenant_workers, args.workers)
        print(describe(small), flush=True)
        large = run_child(10000, 1, args.tenant_workers, args.workers)
        print(describe(large), flush=True)
        results["memory"] = {"small": small, "large": large,
                             "ratio": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)}
        print(f"peak RSS, 10,000 / 1,000 tenants: {results['memory']['ratio']}x (goal <= 1.2x)")
    else:
        if args.baseline:
            results["baseline"] = run_child(args.tenants, args.secrets, args.tenant_workers, args.workers,
                                            serial=True, code=args.code.resolve())
            print("baseline, one tenant after the other: " + describe(results["baseline"]), flush=True)
        results["cycle"] = run_child(args.tenants, args.secrets, args.tenant_workers, args.workers)
        print(describe(results["cycle"]))
        if args.baseline:
            ratio = results["cycle"]["seconds"] / results["baseline"]["seconds"]
            results["ratio"] = round(ratio, 3)
            print(f"whole cycle against the baseline of the same run: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
