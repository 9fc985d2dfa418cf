"""Servers for one benchmark run: started here, always stopped, nothing left behind.

* ``temporary_stack()``: keyops' own DevStack (OpenBao with raft storage and
  its file audit device, plus SoftHSM2) in a temporary folder on free ports.
* ``dev_mode_openbao()``: a second, in-memory ``bao server -dev`` with *no*
  audit device, only to show what Transit does without audit logging (the
  conditions of the reference figures in issue 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import requests

from keyops.config import Config
from keyops.dev.stack import HOST, DevStack, bao_binary, free_port

START_TIMEOUT = 30.0


@contextlib.contextmanager
def temporary_stack() -> Iterator[DevStack]:
    """A DevStack on a free port in a temporary folder; stopped and removed on exit.

    ``SOFTHSM2_CONF`` is set for this process before anything opens the
    PKCS#11 module (SoftHSM2 reads it once per process).
    """
    with tempfile.TemporaryDirectory(prefix="keyops-bench-") as folder:
        stack = DevStack(os.path.join(folder, "stack"), port=free_port(), die_with_parent=True)
        try:
            stack.up()
            os.environ["SOFTHSM2_CONF"] = str(stack.softhsm_conf)
            yield stack
        finally:
            stack.down()


def _stop_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _two_free_ports() -> int:
    """A port p with p + 1 free too: dev mode puts its cluster listener on p + 1."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("found no two adjacent free ports for the dev-mode OpenBao")


@contextlib.contextmanager
def dev_mode_openbao() -> Iterator[Config]:
    """An in-memory dev-mode OpenBao with Transit enabled and no audit device; a Config for it.

    Its root token is random, passed through the environment (never the
    command line) and its output, which prints the token, goes nowhere.
    """
    port = _two_free_ports()
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(BAO_DEV_ROOT_TOKEN_ID=token, BAO_DEV_LISTEN_ADDRESS=f"{HOST}:{port}")
    proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
        [bao_binary(), "server", "-dev"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=env, start_new_session=True, preexec_fn=_stop_with_parent)
    try:
        addr = f"http://{HOST}:{port}"
        session = requests.Session()
        session.trust_env = False
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(requests.RequestException):
                if session.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dev-mode OpenBao did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        headers = {"X-Vault-Token": token}
        session.post(f"{addr}/v1/sys/mounts/transit", json={"type": "transit"}, headers=headers,
                     timeout=10).raise_for_status()
        yield Config(vault_addr=addr, vault_token=token)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
