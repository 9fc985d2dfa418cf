"""A ``keyops serve`` process for the tests (internal to the tests, not a test module).

It runs in its own process on a free loopback port, against the session's
real OpenBao and SoftHSM2, with the token the test gives it; ``stop`` sends
SIGTERM, as an init system would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

from keyops.dev.stack import DevStack, free_port

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
START_TIMEOUT = 60.0


class Server:
    def __init__(self, stack: DevStack, token: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = log_dir / f"access-{self.port}.jsonl"
        environ = {**os.environ, **stack.env(), **(env or {}), "VAULT_TOKEN": token}
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            [*KEYOPS, "serve", "--listen", f"127.0.0.1:{self.port}", "--access-log", str(self.access_log), *extra],
            env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.session = requests.Session()
        self.session.trust_env = False

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"keyops serve exited with {self.proc.returncode}: {self.log()}")
            try:
                if self.session.get(self.url + "/v1/sys/health", timeout=5).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"keyops serve did not become healthy: {self.log()}")

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["X-Vault-Token"] = token
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def log(self) -> str:
        return "".join(self.stderr)

    def records(self) -> list[dict[str, Any]]:
        import json

        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self) -> int:
        self.session.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)
