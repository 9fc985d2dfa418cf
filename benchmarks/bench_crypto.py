"""keyops encrypt+decrypt against raw AES-GCM and Vault Transit, same data, same run, same server.

Contenders, each measured as encrypt+decrypt *pairs* per second of one item
of 64 B, 1 KiB and 64 KiB:

* ``raw``: ``cryptography``'s ``AESGCM`` with a fresh ``os.urandom(12)`` nonce
  and the caller's context as associated data: the floor of any AES-GCM
  envelope in Python.
* ``keyops``: ``Keyops.encrypt_bytes`` + ``Keyops.decrypt`` (binary form) with a
  warm key cache, the form for throughput; ``keyops-text``: ``encrypt`` +
  ``decrypt`` of the text form ``keyops:v1:...`` (adds base64 both ways).
* ``transit-1``: Transit ``encrypt`` + ``decrypt`` through hvac, one item per
  request (two requests per pair); ``transit-batch``: ``batch_input`` of 499
  one-field items per request (OpenBao's default listener refuses 500 or more),
  fewer for 64 KiB items so that a request stays under the listener's default
  32 MiB ``max_request_size``. Both on keyops' own stack, whose file audit
  device logs every request, as a production server would.
* ``transit-1-dev``, ``transit-batch-dev``: the same on an in-memory dev-mode
  OpenBao without any audit device: Transit at its fastest, the conditions
  in which issue 2's reference figures were taken.

Machines are noisy (two cores shared with the server and with other work), so
every contender runs in short chunks, interleaved round by round, and the best
chunk of each counts (the median is printed too).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyops.backends.vault import make_client
from keyops.config import Config
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops

SIZES = (64, 1024, 64 * 1024)
CONTEXT = b"secret:bench/item"
TRANSIT_KEY = "keyops-bench"
#: OpenBao's default listener refuses a request with 500 or more one-field batch items.
TRANSIT_MAX_BATCH = 499
#: OpenBao's default listener ``max_request_size`` (32 MiB).
MAX_REQUEST_BYTES = 32 * 1024 * 1024
CALLS_OPS = 10_000

#: Goals of issue 2 (keyops pairs/s against each reference).
GOAL_RAW_RATIO = 0.5
GOAL_BATCH_RATIO = 4.0
GOAL_SINGLE_RATIO = 100.0
GOAL_RAW_SIZE = 1024

Chunk = Callable[[int], float]  # run n pairs, return the seconds they took


@dataclasses.dataclass(frozen=True)
class Rate:
    """Pairs per second of one contender at one size: best and median chunk."""

    contender: str
    size: int
    best: float
    median: float
    chunks: int
    pairs_per_chunk: int


@dataclasses.dataclass(frozen=True)
class Goal:
    name: str
    size: int
    ratio: float
    target: float

    @property
    def passed(self) -> bool:
        return self.ratio >= self.target


@dataclasses.dataclass(frozen=True)
class CryptoResults:
    rates: tuple[Rate, ...]
    goals: tuple[Goal, ...]
    calls: dict[str, dict[str, dict[str, int]]]  # residence -> "encrypt"/"decrypt" -> counts per CALLS_OPS
    transit_batch: dict[int, int]  # size -> items per batch request
    rounds: int
    local_repeats: int
    remote_repeats: int
    p90_ratios: dict[str, float]  # "keyops/raw 1 KiB" -> ratio of the 90th-percentile chunk rates (a noise check)

    def rate(self, contender: str, size: int) -> Rate:
        for r in self.rates:
            if r.contender == contender and r.size == size:
                return r
        raise KeyError((contender, size))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["goals"] = [dict(dataclasses.asdict(g), passed=g.passed) for g in self.goals]
        return out


# --- the contenders ---------------------------------------------------------------------


def raw_chunk(data: bytes) -> Chunk:
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    assert aead.decrypt(nonce, aead.encrypt(nonce, data, CONTEXT), CONTEXT) == data

    def run(n: int) -> float:
        urandom, enc, dec, ctx = os.urandom, aead.encrypt, aead.decrypt, CONTEXT
        start = time.perf_counter()
        for _ in range(n):
            nonce = urandom(12)
            dec(nonce, enc(nonce, data, ctx), ctx)
        return time.perf_counter() - start

    return run


def keyops_chunk(k: Keyops, tenant: str, data: bytes, text: bool) -> Chunk:
    enc = k.encrypt if text else k.encrypt_bytes
    dec = k.decrypt
    assert dec(tenant, enc(tenant, data, CONTEXT), CONTEXT) == data

    def run(n: int) -> float:
        ctx = CONTEXT
        start = time.perf_counter()
        for _ in range(n):
            dec(tenant, enc(tenant, data, ctx), ctx)
        return time.perf_counter() - start

    return run


def transit_single_chunk(client: Any, mount: str, data: bytes) -> Chunk:
    transit = client.secrets.transit
    plaintext = base64.b64encode(data).decode("ascii")
    ct = transit.encrypt_data(name=TRANSIT_KEY, plaintext=plaintext, mount_point=mount)["data"]["ciphertext"]
    out = transit.decrypt_data(name=TRANSIT_KEY, ciphertext=ct, mount_point=mount)["data"]["plaintext"]
    assert base64.b64decode(out) == data

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            ct = transit.encrypt_data(name=TRANSIT_KEY, plaintext=plaintext, mount_point=mount)["data"]["ciphertext"]
            transit.decrypt_data(name=TRANSIT_KEY, ciphertext=ct, mount_point=mount)
        return time.perf_counter() - start

    return run


def transit_batch_size(size: int) -> int:
    """499 items, or fewer when 499 would pass the listener's request size limit."""
    # A decrypt item is the larger one: {"ciphertext": "vault:v1:" + base64(nonce + data + tag)}.
    item = len('{"ciphertext":"vault:v1:"},') + 4 * ((12 + size + 16 + 2) // 3)
    return max(1, min(TRANSIT_MAX_BATCH, int(MAX_REQUEST_BYTES * 0.9) // item))


def transit_batch_chunk(client: Any, mount: str, data: bytes, items: int) -> Chunk:
    """One chunk is one encrypt request and one decrypt request of ``items`` items."""
    transit = client.secrets.transit
    batch = [{"plaintext": base64.b64encode(data).decode("ascii")}] * items

    def once() -> list[dict[str, Any]]:
        enc = transit.encrypt_data(name=TRANSIT_KEY, batch_input=batch, mount_point=mount)
        cts = [{"ciphertext": r["ciphertext"]} for r in enc["data"]["batch_results"]]
        return transit.decrypt_data(name=TRANSIT_KEY, batch_input=cts, mount_point=mount)["data"]["batch_results"]

    results = once()
    assert len(results) == items and base64.b64decode(results[-1]["plaintext"]) == data

    def run(n: int) -> float:
        assert n == items
        start = time.perf_counter()
        once()
        return time.perf_counter() - start

    return run


# --- measuring ----------------------------------------------------------------------------


def calibrate(chunk: Chunk, seconds: float, start: int = 16, cap: int = 10**7) -> int:
    """Pairs per chunk so that one chunk takes about ``seconds``."""
    n = start
    while True:
        elapsed = chunk(n)
        if elapsed >= seconds / 4 or n >= cap:
            return max(1, min(cap, int(n * seconds / max(elapsed, 1e-9))))
        n *= 4


Contenders = dict[tuple[str, int], tuple[Chunk, int]]  # (contender, size) -> (chunk, pairs per chunk)


def interleaved(local: Contenders, remote: Contenders, rounds: int, local_repeats: int = 50, remote_repeats: int = 2,
                settle: float = 0.5, progress: Callable[[str], None] = lambda _: None,
                ) -> dict[tuple[str, int], list[float]]:
    """Alternate all contenders, round by round; returns every chunk's pairs per second, in order.

    A round runs every local contender ``local_repeats`` times in turn (short
    chunks, so that raw and keyops both meet the machine's quiet moments),
    then every remote (Transit) contender ``remote_repeats`` times, then pauses ``settle`` seconds
    so that work the server does after answering (audit log writes, garbage
    collection) is over before the local contenders run again.
    """
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in (*local, *remote)}
    for i in range(rounds):
        for _ in range(local_repeats):
            for key, (chunk, n) in local.items():
                samples[key].append(n / chunk(n))
        for _ in range(remote_repeats):
            for key, (chunk, n) in remote.items():
                samples[key].append(n / chunk(n))
        progress(f"round {i + 1}/{rounds} done")
        time.sleep(settle)
    return samples


def p90(values: list[float]) -> float:
    """The rate that the best tenth of the chunks reach: like the best, but not a single outlier."""
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) >= 2 else values[0]


def count_calls(config: Config, tenant: str, ops: int = CALLS_OPS) -> dict[str, dict[str, int]]:
    """Backend calls of ``ops`` encryptions, then of ``ops`` decryptions, each by a fresh process cache."""
    data = os.urandom(1024)
    out: dict[str, dict[str, int]] = {}
    with Keyops(config) as k:
        cts = [k.encrypt_bytes(tenant, data, CONTEXT) for _ in range(ops)]
        out["encrypt"] = k.calls.snapshot()
    with Keyops(config) as k:
        for ct in cts:
            k.decrypt(tenant, ct, CONTEXT)
        out["decrypt"] = k.calls.snapshot()
    return out


def run_crypto(config: Config, dev_config: Config | None = None, rounds: int = 7, local_repeats: int = 50,
               remote_repeats: int = 2, chunk_seconds: float = 0.002, transit_seconds: float = 0.25,
               progress: Callable[[str], None] = print) -> CryptoResults:
    """``config``: keyops' stack; ``dev_config``: an audit-less dev-mode server for Transit, or None."""
    tag = uuid.uuid4().hex[:8]
    transits = {"": config} if dev_config is None else {"": config, "-dev": dev_config}
    clients = {}
    for suffix, server in transits.items():
        clients[suffix] = make_client(server)
        clients[suffix].secrets.transit.create_key(name=TRANSIT_KEY, key_type="aes256-gcm96",
                                                   mount_point=server.transit_mount)

    with Keyops(config) as k:
        tenants = {}
        for residence in ("kv", "transit"):
            tenants[residence] = f"bench-{residence}-{tag}"
            k.create_tenant(tenants[residence], Policy(kek_residence=residence))
        tenant = tenants["kv"]

        progress("calibrating")
        local: Contenders = {}
        remote: Contenders = {}
        batch_items: dict[int, int] = {}
        for size in SIZES:
            data = os.urandom(size)
            chunks = {"raw": raw_chunk(data), "keyops": keyops_chunk(k, tenant, data, text=False),
                      "keyops-text": keyops_chunk(k, tenant, data, text=True)}
            for name, chunk in chunks.items():
                local[(name, size)] = (chunk, calibrate(chunk, chunk_seconds))
            batch_items[size] = transit_batch_size(size)
            for suffix, client in clients.items():
                mount = transits[suffix].transit_mount
                single = transit_single_chunk(client, mount, data)
                remote[(f"transit-1{suffix}", size)] = (single, calibrate(single, transit_seconds, start=4))
                remote[(f"transit-batch{suffix}", size)] = (
                    transit_batch_chunk(client, mount, data, batch_items[size]), batch_items[size])

        progress(f"measuring: {rounds} interleaved rounds")
        samples = interleaved(local, remote, rounds, local_repeats, remote_repeats, progress=progress)
        every = {**local, **remote}
        rates = [Rate(name, size, max(s), statistics.median(s), len(s), every[(name, size)][1])
                 for (name, size), s in samples.items()]
        p90_ratios = {f"{name}/raw {_size(size)}": p90(samples[(name, size)]) / p90(samples[("raw", size)])
                      for size in SIZES for name in ("keyops", "keyops-text")}

    progress(f"counting backend calls of {CALLS_OPS} operations")
    calls = {residence: count_calls(config, t) for residence, t in tenants.items()}

    def best(name: str, size: int) -> float:
        return next(r.best for r in rates if r.contender == name and r.size == size)

    goals = [Goal("keyops >= 0.5x raw AES-GCM (warm cache)", GOAL_RAW_SIZE,
                  best("keyops", GOAL_RAW_SIZE) / best("raw", GOAL_RAW_SIZE), GOAL_RAW_RATIO)]
    for suffix, where in (("", "keyops stack"), ("-dev", "dev mode, no audit")):
        if suffix and dev_config is None:
            continue
        for size in SIZES:
            goals.append(Goal(f"keyops >= 4x Transit batched, per item ({where})", size,
                              best("keyops", size) / best(f"transit-batch{suffix}", size), GOAL_BATCH_RATIO))
        for size in SIZES:
            goals.append(Goal(f"keyops >= 100x Transit one item per request ({where})", size,
                              best("keyops", size) / best(f"transit-1{suffix}", size), GOAL_SINGLE_RATIO))
    return CryptoResults(tuple(rates), tuple(goals), calls, batch_items, rounds, local_repeats, remote_repeats,
                         p90_ratios)


# --- report -------------------------------------------------------------------------------


def _size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def _rate(value: float) -> str:
    return f"{value / 1000:,.1f}k" if value >= 10_000 else f"{value:,.0f}"


def report(results: CryptoResults) -> str:
    names = [n for n in ("raw", "keyops", "keyops-text", "transit-1", "transit-batch", "transit-1-dev",
                         "transit-batch-dev") if any(r.contender == n for r in results.rates)]
    lines = ["encrypt+decrypt pairs per second, best chunk (median chunk): "
             f"{results.rounds} interleaved rounds of {results.local_repeats} local chunks per contender "
             f"and {results.remote_repeats} Transit chunks", ""]
    width = max(len(n) for n in names)
    header = f"| {'contender':<{width}} | " + " | ".join(f"{_size(s):>20}" for s in SIZES) + " |"
    lines += [header, "|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|"]
    for name in names:
        cells = []
        for size in SIZES:
            r = results.rate(name, size)
            cells.append(f"{_rate(r.best)} ({_rate(r.median)})".rjust(20))
        lines.append(f"| {name:<{width}} | " + " | ".join(cells) + " |")
    lines += ["", "transit-batch items per request: "
              + ", ".join(f"{_size(s)}: {n}" for s, n in results.transit_batch.items()), ""]
    lines.append("ratios of keyops (binary form) | keyops-text, best against best:")
    for size in SIZES:
        kb, kt = results.rate("keyops", size).best, results.rate("keyops-text", size).best
        parts = [f"{ref} {kb / results.rate(ref, size).best:,.2f}x | {kt / results.rate(ref, size).best:,.2f}x"
                 for ref in names if ref not in ("keyops", "keyops-text")]
        lines.append(f"  {_size(size):>6}: vs " + "; vs ".join(parts))
    lines.append("noise check, ratios of the 90th-percentile chunks instead of the best: "
                 + ", ".join(f"{key} {value:.2f}x" for key, value in results.p90_ratios.items()))
    lines += ["", "goals:"]
    for g in results.goals:
        lines.append(f"  {'PASS' if g.passed else 'FAIL'}  {g.name} at {_size(g.size)}: "
                     f"{g.ratio:,.2f}x (goal {g.target:g}x)")
    lines += ["", f"backend calls per {CALLS_OPS:,} operations (fresh process cache, 1 KiB):"]
    for residence, phases in results.calls.items():
        for phase, counts in phases.items():
            hsm = sum(v for key, v in counts.items() if key.startswith("hsm."))
            vault = sum(v for key, v in counts.items() if not key.startswith("hsm."))
            detail = ", ".join(f"{key} {v}" for key, v in sorted(counts.items()))
            lines.append(f"  residence {residence:<7} {phase:<7}: HSM {hsm}, Vault {vault}  ({detail})")
    return "\n".join(lines)
