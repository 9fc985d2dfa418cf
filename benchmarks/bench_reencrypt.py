"""Re-encryption throughput next to the raw KV v2 rate and Transit's batch rewrap, same run, same server.

    .venv/bin/python benchmarks/bench_reencrypt.py [--secrets 10000] [--size 200] [--workers 4] [--rounds 2]

Starts its own OpenBao + SoftHSM2 DevStack in a temporary folder on free
ports (stopped and removed at the end), stores ``--secrets`` keyops records of
``--size`` bytes for one tenant, and measures, with the same number of
workers (threads), round after round, interleaved:

* ``raw``: the ceiling: hvac reads a KV v2 document and writes it back with
  check-and-set on the version read (one read + one CAS write per document),
  over as many 200 B documents, with an hvac client set up as keyops' own
  (``keyops.backends.vault.make_client``: pooled connections through keyops'
  urllib3 transport since issue 14; a ``requests.Session`` before). No
  listing, no crypto, no checkpoint.
* ``reencrypt``: ``keyops.ops.reencrypt.reencrypt`` after a DEK rotation, with its
  paginated listing, decryption, encryption, CAS write and checkpoints;
  ``pass`` is the re-encryption pass alone, ``total`` adds the verification
  pass (one more read of every record).
* ``rewrap``: Transit's batch ``rewrap`` of as many ciphertexts after a
  Transit key rotation (499 items per request, the most OpenBao's default
  listener accepts), with the same number of parallel requests: what Vault
  offers to move data to a new key version when Vault keeps the data.

The best round of each counts (the machine is shared); all rounds are printed.
Client CPU (this process) per item is shown too: the server runs on the same
two cores, so client CPU is throughput taken from the server.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from keyops import crypto  # noqa: E402
from keyops.backends.vault import make_client  # noqa: E402
from keyops.config import Config  # noqa: E402
from keyops.dev.stack import DevStack, free_port  # noqa: E402
from keyops.ops.front import Keyops, b64e  # noqa: E402
from keyops.ops.progress import ProgressEvent  # noqa: E402
from keyops.ops.reencrypt import reencrypt  # noqa: E402

GOAL = 0.7
TENANT = "bench-reencrypt"
RAW_PREFIX = "bench/raw"
TRANSIT_KEY = "bench-rewrap"
TRANSIT_BATCH = 499


@dataclasses.dataclass(frozen=True)
class Measure:
    name: str
    items: int
    seconds: float
    cpu_seconds: float
    calls: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_item(self) -> float:
        return 1000 * self.cpu_seconds / self.items if self.items else 0.0


@contextlib.contextmanager
def temporary_stack() -> Iterator[DevStack]:
    with tempfile.TemporaryDirectory(prefix="keyops-bench-reencrypt-") as folder:
        stack = DevStack(Path(folder) / "stack", port=free_port(), die_with_parent=True)
        try:
            stack.up()
            os.environ["SOFTHSM2_CONF"] = str(stack.softhsm_conf)  # before anything loads SoftHSM2
            yield stack
        finally:
            stack.down()


def timed(name: str, items: int, body: Callable[[], dict[str, int] | None]) -> Measure:
    wall, cpu = time.perf_counter(), time.process_time()
    calls = body() or {}
    return Measure(name, items, time.perf_counter() - wall, time.process_time() - cpu, calls)


def rotate_dek(k: Keyops, tenant: str) -> int:
    try:
        from keyops.ops.rotation import rotate
    except ImportError:  # before the rotation module existed: a new primary DEK by hand
        def change(keyring: Any) -> Any:
            version = keyring.dek.latest_version + 1
            wrapped = k.hierarchy.kek_wrapper(keyring, keyring.kek.primary).wrap(
                crypto.generate_key(), crypto.key_context(tenant, "dek", version))
            return keyring.add_version("dek", b64e(wrapped), keyring.kek.primary, k.clock())

        k.update_keyring(tenant, change)
    else:
        rotate(k, tenant, "dek")
    return k.read_keyring(tenant)[0].dek.primary


def fill(config: Config, secrets: int, size: int, workers: int, progress: Callable[[str], None]) -> list[str]:
    """The tenant's records (through keyops) and as many raw documents of the same size."""
    names = [f"app-{i % 10}/secret-{i:06d}" for i in range(secrets)]
    payload = os.urandom(size // 2).hex().encode()[:size]
    client = make_client(config, pool_size=16)
    with Keyops(config) as k, ThreadPoolExecutor(max(8, workers)) as pool:
        k.create_tenant(TENANT)
        progress(f"storing {secrets} keyops records and {secrets} raw documents of {size} B")
        list(pool.map(lambda n: k.put_secret(TENANT, n, payload), names))
        list(pool.map(lambda n: client.secrets.kv.v2.create_or_update_secret(
            path=f"{RAW_PREFIX}/{n}", secret={"value": payload.decode()}, mount_point=config.kv_mount), names))
    return names


def raw_pass(config: Config, names: list[str], workers: int) -> Measure:
    client = make_client(config, pool_size=16)
    kv = client.secrets.kv.v2

    def pair(name: str) -> None:
        path = f"{RAW_PREFIX}/{name}"
        data = kv.read_secret_version(path=path, mount_point=config.kv_mount, raise_on_deleted_version=True)["data"]
        kv.create_or_update_secret(path=path, secret=data["data"], cas=data["metadata"]["version"],
                                   mount_point=config.kv_mount)

    def body() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(pair, names))

    return timed("raw KV read + CAS write", len(names), body)


def reencrypt_pass(config: Config, secrets: int, workers: int) -> tuple[Measure, Measure]:
    with Keyops(config) as k:
        rotate_dek(k, TENANT)
    with Keyops(config) as k:
        marks: dict[str, float] = {}
        cpu_marks: dict[str, float] = {}

        def progress(event: ProgressEvent) -> None:
            if event.phase == "verify" and "verify" not in marks:
                marks["verify"], cpu_marks["verify"] = time.perf_counter(), time.process_time()

        wall, cpu = time.perf_counter(), time.process_time()
        result = reencrypt(k, TENANT, workers=workers, progress=progress)
        end, cpu_end = time.perf_counter(), time.process_time()
        assert result.rewritten == secrets and result.references == {result.dek_version: secrets}, result
        calls = k.calls.snapshot()
    # The progress callback makes the pass count its names first (listing only); the pass is timed
    # from the start, so that listing counts against it.
    # A job that needs no verification (no lease of the old DEK outlived the pass's start) has no
    # verify phase: its pass ends with the job.
    passed = Measure("keyops reencrypt (pass)", secrets, marks.get("verify", end) - wall,
                     cpu_marks.get("verify", cpu_end) - cpu)
    total = Measure("keyops reencrypt (pass + verification)", secrets, end - wall, cpu_end - cpu, calls)
    return passed, total


def prepare_transit(config: Config, secrets: int, workers: int) -> list[str]:
    client = make_client(config, pool_size=16)
    transit = client.secrets.transit
    transit.create_key(name=TRANSIT_KEY, mount_point=config.transit_mount)
    item = base64.b64encode(os.urandom(100).hex().encode()).decode()
    chunks = [min(TRANSIT_BATCH, secrets - start) for start in range(0, secrets, TRANSIT_BATCH)]

    def encrypt(count: int) -> list[str]:
        resp = transit.encrypt_data(name=TRANSIT_KEY, batch_input=[{"plaintext": item}] * count,
                                    mount_point=config.transit_mount)
        return [r["ciphertext"] for r in resp["data"]["batch_results"]]

    with ThreadPoolExecutor(workers) as pool:
        return [ct for batch in pool.map(encrypt, chunks) for ct in batch]


def rewrap_pass(config: Config, ciphertexts: list[str], workers: int) -> Measure:
    client = make_client(config, pool_size=16)
    transit = client.secrets.transit
    transit.rotate_key(name=TRANSIT_KEY, mount_point=config.transit_mount)
    batches = [ciphertexts[i:i + TRANSIT_BATCH] for i in range(0, len(ciphertexts), TRANSIT_BATCH)]
    out: list[str] = []

    def rewrap(batch: list[str]) -> list[str]:
        # hvac's rewrap_data always sends a single "ciphertext" too; batch_input alone is the API's form.
        resp = client.adapter.post(f"/v1/{config.transit_mount}/rewrap/{TRANSIT_KEY}",
                                   json={"batch_input": [{"ciphertext": ct} for ct in batch]})
        return [r["ciphertext"] for r in resp["data"]["batch_results"]]

    def body() -> None:
        with ThreadPoolExecutor(workers) as pool:
            out.extend(ct for batch in pool.map(rewrap, batches) for ct in batch)

    measure = timed(f"Transit batch rewrap ({TRANSIT_BATCH}/request)", len(ciphertexts), body)
    ciphertexts[:] = out
    return measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=200, help="bytes per secret (default 200)")
    parser.add_argument("--workers", type=int, default=4, help="threads for every contender (keyops' default: 4)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best counts (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    rounds: list[dict[str, Measure]] = []
    progress("starting a temporary OpenBao + SoftHSM2 stack")
    with temporary_stack() as stack:
        config = stack.config()
        version = make_client(config).sys.read_health_status(method="GET").get("version")
        names = fill(config, args.secrets, args.size, args.workers, progress)
        ciphertexts = prepare_transit(config, args.secrets, args.workers)
        for i in range(args.rounds):
            progress(f"round {i + 1}/{args.rounds}: raw KV pairs")
            raw = raw_pass(config, names, args.workers)
            progress(f"round {i + 1}/{args.rounds}: keyops reencrypt")
            passed, total = reencrypt_pass(config, args.secrets, args.workers)
            progress(f"round {i + 1}/{args.rounds}: Transit batch rewrap")
            rewrap = rewrap_pass(config, ciphertexts, args.workers)
            rounds.append({"raw": raw, "pass": passed, "total": total, "rewrap": rewrap})
            for m in rounds[-1].values():
                progress(f"  {m.name}: {m.rate:,.0f}/s ({m.seconds:.1f} s, client CPU {m.cpu_ms_per_item:.2f} ms/item)")

    best = {key: max((r[key] for r in rounds), key=lambda m: m.rate) for key in rounds[0]}
    print(f"re-encryption of {args.secrets:,} secrets of {args.size} B, {args.workers} workers, "
          f"OpenBao {version}, {os.cpu_count()} CPUs; best of {args.rounds} rounds")
    print(f"{'contender':<44} {'items/s':>9} {'vs raw':>7} {'client CPU ms/item':>19}")
    for key in ("raw", "pass", "total", "rewrap"):
        m = best[key]
        print(f"{m.name:<44} {m.rate:>9,.0f} {m.rate / best['raw'].rate:>6.2f}x {m.cpu_ms_per_item:>19.2f}")
    ratio = best["pass"].rate / best["raw"].rate
    print(f"goal: re-encryption pass >= {GOAL}x the raw rate: {ratio:.2f}x -> {'met' if ratio >= GOAL else 'NOT met'}")
    calls = best["total"].calls
    print("Vault/HSM calls of one re-encryption job: " + ", ".join(f"{k} {v}" for k, v in sorted(calls.items())))
    print(f"(run took {time.monotonic() - started:.0f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"secrets": args.secrets, "size": args.size, "workers": args.workers, "openbao": version,
                       "rounds": [{k: dataclasses.asdict(m) | {"rate": m.rate} for k, m in r.items()}
                                  for r in rounds]}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
