"""Prometheus metrics of a keyops server (``prometheus-client``), for the HTTP API and the KMS plugin alike.

Two kinds:

- counted as requests come (requests and latency by operation and status,
  token-cache hits and misses, backend calls by kind). With several worker
  processes these go through prometheus-client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before any worker starts),
  so a scrape of any worker sums every worker's;
- read when scraped (``StateCollector``): DEK uses against the cap, days
  until each level is due, Vault and HSM health. They come from Vault, are
  the same in every worker, and are cached for ``STATE_TTL`` seconds.

Labels are operation names, status codes, tenant names and levels: never a
token, accessor, plaintext or key.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from keyops.errors import KeyopsError
from keyops.model.keyring import parse_time
from keyops.ops.front import Keyops
from keyops.ops.status import tenant_status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATE_TTL = 15.0
#: Latency buckets from 100 µs (a cached encryption) to 10 s (a rotation through the HSM).
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.requests = Counter("keyops_requests", "Requests by operation and HTTP (or gRPC) status",
                                ("operation", "status"), registry=self.registry)
        self.latency = Histogram("keyops_request_duration_seconds", "Request latency by operation",
                                 ("operation",), buckets=BUCKETS, registry=self.registry)
        self.token_cache = Counter("keyops_token_cache", "Caller token look-ups: served from the cache "
                                   "(hit) or asked of Vault (miss)", ("result",), registry=self.registry)
        self.backend_calls = Counter("keyops_backend_calls", "Calls to Vault and the HSM by kind (what the "
                                     "key and keyring caches did not spare)", ("kind",), registry=self.registry)
        self._synced: dict[str, int] = {}
        self._sync_lock = threading.Lock()

    def observe(self, operation: str, status: int | str, seconds: float) -> None:
        self.requests.labels(operation, str(status)).inc()
        self.latency.labels(operation).observe(seconds)

    def sync_calls(self, snapshot: dict[str, int]) -> None:
        """Add what a ``CallCounter`` counted since the last sync (the counter itself is per process)."""
        with self._sync_lock:
            for kind, count in snapshot.items():
                delta = count - self._synced.get(kind, 0)
                if delta > 0:
                    self.backend_calls.labels(kind).inc(delta)
                self._synced[kind] = count

    def exposition(self, state: StateCollector | None = None) -> bytes:
        """The text a scrape gets: this process's metrics (every worker's, in multiprocess mode) and the state."""
        path = multiprocess_dir()
        registry = self.registry
        if path is not None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
        if state is not None:
            scratch = CollectorRegistry()
            scratch.register(state)
            text += generate_latest(scratch)
        return text


class StateCollector:
    """Gauges read from Vault at scrape time, for the tenants ``tenants()`` names; cached ``STATE_TTL`` s."""

    def __init__(self, k: Keyops, tenants: Callable[[], Iterable[str]],
                 health: Callable[[], dict[str, Any]], clock: Callable[[], float] = time.monotonic) -> None:
        self.k = k
        self.tenants = tenants
        self.health = health
        self.clock = clock
        self._cached: tuple[float, list[Metric]] | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if self._cached is None or self.clock() >= self._cached[0]:
                self._cached = (self.clock() + STATE_TTL, self._read())
            yield from self._cached[1]

    def _read(self) -> list[Metric]:
        uses = GaugeMetricFamily("keyops_dek_uses", "Encryptions reserved under the primary DEK (an upper "
                                 "bound of those done)", labels=["tenant"])
        cap = GaugeMetricFamily("keyops_dek_usage_cap", "The primary DEK's usage cap", labels=["tenant"])
        ratio = GaugeMetricFamily("keyops_dek_usage_ratio", "Primary DEK uses / cap (rotation is due at 0.9)",
                                  labels=["tenant"])
        days = GaugeMetricFamily("keyops_days_until_due", "Days until the level's primary version is due for "
                                 "rotation by age (negative: overdue)", labels=["tenant", "level"])
        errors = GaugeMetricFamily("keyops_tenant_state_readable", "1 when the tenant's state could be read "
                                   "for these metrics", labels=["tenant"])
        for tenant in sorted(self.tenants()):
            try:
                st = tenant_status(self.k, tenant)
            except KeyopsError:
                errors.add_metric([tenant], 0)
                continue
            errors.add_metric([tenant], 1)
            uses.add_metric([tenant], st.dek_usage)
            cap.add_metric([tenant], st.dek_usage_cap)
            ratio.add_metric([tenant], st.dek_usage_ratio)
            days.add_metric([tenant, "dek"], st.dek.seconds_until_due / 86400)
            days.add_metric([tenant, "kek"], st.kek.seconds_until_due / 86400)
        try:
            found = self.k.read_master()
        except KeyopsError:
            found = None
        if found is not None and found[0].versions:
            registry = found[0]
            created = parse_time(registry.get(registry.primary).created_at)
            due = created + dt.timedelta(days=registry.period_days)
            days.add_metric(["", "master"], (due - self.k.clock()).total_seconds() / 86400)
        health = self.health()
        vault = GaugeMetricFamily("keyops_vault_up", "1 when Vault answers, unsealed", value=health["vault"] == "ok")
        hsm = GaugeMetricFamily("keyops_hsm_up", "1 when the HSM master key wraps and unwraps (absent when "
                                "this server does not use the HSM)", labels=[])
        if health["hsm"] != "not used":
            hsm.add_metric([], health["hsm"] == "ok")
        return [uses, cap, ratio, days, errors, vault, hsm]
