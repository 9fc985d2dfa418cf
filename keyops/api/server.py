"""Running the API: one ``Service`` per worker process under uvicorn, until SIGTERM.

Why uvicorn (with httptools and uvloop) and a bare ASGI app: the work of a
request is CPU-bound crypto of a few microseconds, so what matters is the
cost per request of the server itself, and using both cores. uvicorn's
C-accelerated HTTP parser and event loop keep that cost low, its worker
processes sidestep the GIL, and it handles SIGTERM gracefully (requests in
flight finish, then lifespan shutdown ends each worker's leases). It is one
of the most used and best kept ASGI servers.

Each worker has its own ``Keyops``: its own caches and its own block
reservations of DEK uses, which the usage document in Vault adds up, as for
any keyops processes. Settings reach the workers through ``SETTINGS_ENV``
(they hold no secret; the Vault token and the PIN come from the usual
environment).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from typing import Any

from keyops.api.app import DEFAULT_MAX_BODY, Api
from keyops.config import Config
from keyops.ops.front import Keyops
from keyops.serve.access_log import AccessLog
from keyops.serve.callers import DEFAULT_TTL, Callers
from keyops.serve.service import Service

SETTINGS_ENV = "KEYOPS_SERVE_SETTINGS"
#: How often each worker adds its backend call counts to the shared metrics.
SYNC_SECONDS = 5.0
_log = logging.getLogger("keyops.serve")


@dataclasses.dataclass(frozen=True)
class Settings:
    mount: str = "transit"
    token_ttl: float = DEFAULT_TTL
    max_body: int = DEFAULT_MAX_BODY
    access_log: str | None = None
    keyring_ttl: float = 30.0
    stale_for: float = 300.0
    metrics_token: bool = True


def build(settings: Settings, config: Config | None = None) -> Api:
    """The app of one worker: a ``Keyops`` with the server's own credentials, and its service."""
    k = Keyops(config or Config.load(), keyring_ttl=settings.keyring_ttl, stale_for=settings.stale_for)
    service = Service(k, Callers(k.store, k.roles, ttl=settings.token_ttl), access_log=AccessLog(settings.access_log))
    stop = threading.Event()

    def sync() -> None:
        while not stop.wait(SYNC_SECONDS):
            service.metrics.sync_calls(k.calls.snapshot())

    def startup() -> None:
        principal = k.principal  # a bad server token fails here, before the port serves anything
        health = service.health.check()
        if health["vault"] != "ok":
            _log.warning("starting while Vault is not healthy: %s", health["vault"])
        _log.info("worker %d serving as %s", os.getpid(), principal.describe())
        threading.Thread(target=sync, name="keyops-metrics-sync", daemon=True).start()

    def shutdown() -> None:
        stop.set()
        calls = k.calls.snapshot()
        k.close()  # ends this worker's leases at once
        service.access_log.close()
        hsm = sum(n for kind, n in calls.items() if kind.startswith("hsm."))
        _log.info("worker %d stopped (HSM calls %d; Vault requests %d)", os.getpid(), hsm, sum(calls.values()) - hsm)

    return Api(service, mount=settings.mount, max_body=settings.max_body, metrics_token=settings.metrics_token,
               on_startup=startup, on_shutdown=shutdown)


def create_app() -> Api:
    """uvicorn's factory, called in each worker process."""
    logging.basicConfig(level=logging.INFO, format="keyops serve: %(levelname)s %(message)s")
    return build(Settings(**json.loads(os.environ.get(SETTINGS_ENV) or "{}")))


def run(settings: Settings, *, host: str, port: int, workers: int = 1, tls_cert: str | None = None,
        tls_key: str | None = None, grace: int = 10) -> None:
    """Serve until SIGTERM or SIGINT (requests in flight get ``grace`` seconds)."""
    import uvicorn

    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    metrics_dir = None
    if workers > 1:
        # Set before the workers start, so that their prometheus-client writes per-process files.
        metrics_dir = tempfile.mkdtemp(prefix="keyops-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    options: dict[str, Any] = {}
    if tls_cert:
        options.update(ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    # uvicorn raises a caught SIGTERM again once it has shut down, to the handler it found: this one
    # lets a clean stop end with exit code 0 rather than death by signal.
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.run("keyops.api.server:create_app", factory=True, host=host, port=port, workers=workers,
                    loop="uvloop", http="httptools", lifespan="on", access_log=False, server_header=False,
                    proxy_headers=False, timeout_graceful_shutdown=grace, log_level="info", **options)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
