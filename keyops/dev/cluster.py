"""The local HA stack: three OpenBao nodes with integrated raft storage, and one SoftHSM2 token.

``DevCluster(state_dir).up()`` (``keyops dev up --ha``) does what
``DevStack.up()`` does, with three ``bao`` servers on 127.0.0.1, each on its
own API and cluster ports: node 1 is initialised (one key share) and
unsealed, nodes 2 and 3 join it (``sys/storage/raft/join``) and are unsealed
with the same key, and ``up`` waits until all three are raft voters, so that
the cluster survives the loss of any one node. The mounts, audit device and
key, tokens and HSM token are those of the single-server stack; keyops
reaches the cluster through every node's address (``KEYOPS_VAULT_ADDRS``,
which ``env`` exports) and follows the active one.

State folder layout (beside the single stack's shared files)::

    stack.json              {"ha": true, "nodes": [{"port", "cluster_port"}, ...], "port": node 1's}
    root-token  unseal-key  audit/  softhsm/   as for the single stack
    nodes/<n>/stack.json    nodes/<n>/bao/{bao.hcl,bao.pid,bao.log,raft/}
    audit/bao-audit.log     the one file audit device every node declares (the active node writes)

Every step is idempotent, as for the single stack: ``up`` on a running
cluster only unseals what is sealed and restarts what is down; after
``down`` (or a reboot) it restarts the nodes on their raft data and unseals
them all, which lets them elect a leader again. The methods ``kill_node``,
``start_node``, ``seal_node``, ``unseal_node`` and ``active_node`` are for
fault tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import hvac.exceptions
import requests

from keyops.dev.stack import (
    HOST,
    NODE_ID,
    START_TIMEOUT,
    STOP_TIMEOUT,
    DevStack,
    StackInfo,
    StackStatus,
    StopInfo,
    _port_is_free,
    free_port,
)
from keyops.errors import DevStackError, KeyopsError
from keyops.files import write_file_atomic

__all__ = ["NODES", "DevCluster", "open_stack"]

NODES = 3
#: Autopilot promotes a joined node to voter once it has been healthy this long (its default is 10 s).
_STABILIZATION = "1s"
_VOTERS_TIMEOUT = 60.0


def open_stack(state_dir: str | os.PathLike[str] | None = None, port: int | None = None, *, ha: bool = False,
               die_with_parent: bool = False) -> DevStack:
    """The stack of ``state_dir``: an HA stack when it holds one (or ``ha`` asks for one), else the single server.

    ``ha`` on a folder that holds a single server's data is refused: the two
    cannot share a raft store.
    """
    single = DevStack(state_dir, port=port, die_with_parent=die_with_parent)
    remembered = single._read_state()
    if remembered.get("ha"):
        return DevCluster(single.state_dir, port=port, die_with_parent=die_with_parent)
    if ha:
        if remembered or single.raft_dir.exists():
            raise DevStackError(f"{single.state_dir} holds a single-server dev stack; an HA stack needs a folder of "
                                "its own: give another --state-dir (or stop and remove this one)")
        return DevCluster(single.state_dir, port=port, die_with_parent=die_with_parent)
    return single


class _Node(DevStack):
    """One node of the cluster: its own bao process, config, ports and raft data; the cluster's secrets."""

    def __init__(self, cluster: DevCluster, index: int) -> None:
        super().__init__(cluster.state_dir / "nodes" / str(index), die_with_parent=cluster.die_with_parent)
        self.cluster = cluster
        self.index = index

    @property
    def node_id(self) -> str:
        return f"{NODE_ID}-{self.index}"

    @property
    def root_token_file(self) -> Path:
        return self.cluster.root_token_file

    @property
    def unseal_key_file(self) -> Path:
        return self.cluster.unseal_key_file

    @property
    def audit_dir(self) -> Path:
        return self.cluster.audit_dir

    @property
    def bao_audit_log(self) -> Path:
        # One file for the cluster: the audit table is replicated, so every node must declare the same device.
        return self.cluster.bao_audit_log

    def _prepare_dirs(self) -> None:
        for d in (self.state_dir.parent, self.state_dir, self.bao_dir, self.raft_dir, self.audit_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)

    def remember_ports(self, port: int, cluster_port: int) -> None:
        self._prepare_dirs()
        write_file_atomic(self.stack_file, json.dumps({"port": port, "cluster_port": cluster_port,
                                                       "node_id": self.node_id}, indent=2) + "\n", mode=0o600)

    def start(self) -> int:
        """Start this node's bao on its remembered ports (a no-op when it runs); its PID."""
        pid = self.running_pid()
        if pid is not None:
            return pid
        ports = self._ports()
        if ports is None:
            raise DevStackError(f"node {self.index} of {self.cluster.state_dir} has no ports; run 'keyops dev up --ha'")
        for p in ports:
            if not _port_is_free(p):
                raise DevStackError(f"port {p} on {HOST}, remembered in {self.stack_file}, is taken by another "
                                    "process; stop that process and run 'keyops dev up' again")
        self._prepare_dirs()
        return self._start_bao(*ports)

    def health(self) -> dict[str, Any] | None:
        return self._health()

    def wait_for(self, what: str, ready: Any, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        pid = self.running_pid()
        if pid is None:
            raise DevStackError(f"node {self.index} ({self.addr}) is not running; the end of {self.bao_log}:\n"
                                f"{self._log_tail()}")
        return self._wait_until(pid, what, ready, timeout)

    def submit_unseal_key(self) -> None:
        self._submit_unseal_key()

    def join(self, leader: str) -> None:
        try:
            self._client().sys.join_raft_cluster(leader_api_addr=leader)
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise DevStackError(f"node {self.index} could not join the raft cluster at {leader}: "
                                f"{type(exc).__name__}") from exc


class DevCluster(DevStack):
    """Three local OpenBao nodes with integrated raft storage, plus one SoftHSM2 token, under ``state_dir``.

    ``port`` is node 1's API port at the first ``up`` (as for ``DevStack``);
    the other ports are free ones, remembered for later starts.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None, port: int | None = None, *,
                 die_with_parent: bool = False) -> None:
        super().__init__(state_dir, port=port, die_with_parent=die_with_parent)
        self.die_with_parent = die_with_parent
        self.nodes = tuple(_Node(self, i) for i in range(1, NODES + 1))

    def __repr__(self) -> str:
        return f"<DevCluster state_dir={str(self.state_dir)!r}>"

    # --- addresses ---------------------------------------------------------------------------

    @property
    def addrs(self) -> tuple[str, ...]:
        """Every node's address (empty before the first ``up``)."""
        found = tuple(node.addr for node in self.nodes)
        return tuple(a for a in found if a) if all(found) else ()

    def _keyops_addr(self) -> str:
        self._require_addr()
        return ",".join(self.addrs)

    def _env_paths(self) -> dict[str, str]:
        values = super()._env_paths()
        values["KEYOPS_VAULT_ADDRS"] = ",".join(self.addrs)
        return values

    def running_pid(self) -> int | None:
        """The PID of the first node that runs (each node has its own: ``nodes[i].running_pid()``)."""
        for node in self.nodes:
            pid = node.running_pid()
            if pid is not None:
                return pid
        return None

    def active_node(self) -> int | None:
        """The index (0-based) of the node that answers as active, or None while none does."""
        for i, node in enumerate(self.nodes):
            health = node.health()
            if health and health.get("initialized") and health.get("sealed") is False and not health.get("standby"):
                return i
        return None

    def _health(self, addr: str | None = None) -> dict[str, Any] | None:
        """The active node's health, else the first answering node's (for the base class's checks)."""
        if addr is not None:
            return super()._health(addr)
        answers = [node.health() for node in self.nodes]
        for health in answers:
            if health and health.get("sealed") is False and not health.get("standby"):
                return health
        return next((h for h in answers if h), None)

    # --- ports -------------------------------------------------------------------------------

    def _choose_cluster_ports(self) -> None:
        """At the first ``up``: node 1 on the wanted (or default) port, every other port a free one."""
        if self.addrs:
            return
        taken: set[int] = set()

        def pick(preferred: int | None = None) -> int:
            if preferred is not None and preferred not in taken and _port_is_free(preferred):
                taken.add(preferred)
                return preferred
            while True:
                candidate = free_port()
                if candidate not in taken:
                    taken.add(candidate)
                    return candidate

        first, _ = self._choose_ports()  # the single stack's rules for node 1's API port (and its file)
        chosen = []
        for i, node in enumerate(self.nodes):
            port = pick(first if i == 0 else None)
            cluster_port = pick(port + 1 if i == 0 else None)
            node.remember_ports(port, cluster_port)
            chosen.append({"port": port, "cluster_port": cluster_port})
        state = self._read_state()
        state.update({"ha": True, "port": chosen[0]["port"], "cluster_port": chosen[0]["cluster_port"],
                      "nodes": chosen, "node_id": f"{NODE_ID}-1"})
        write_file_atomic(self.stack_file, json.dumps(state, indent=2) + "\n", mode=0o600)

    # --- public operations -------------------------------------------------------------------

    def up(self) -> StackInfo:
        """Start, initialise, join, unseal and provision the cluster; idempotent."""
        started_at = time.monotonic()
        self._softhsm_module()
        already_running = all(node.running_pid() is not None for node in self.nodes)
        with self._locked():
            self._choose_cluster_ports()
            for node in self.nodes:
                node.start()
            healths = [node.wait_for("answering", lambda h: True) for node in self.nodes]
            first = self.nodes[0]
            initialized_now = first._ensure_initialized(healths[0])
            first.wait_for("initialised", lambda h: bool(h.get("initialized")))
            unsealed_now = self._unseal_members()
            active = self._wait_for_active()
            if initialized_now:
                self._tune_autopilot(active)
            joined = self._join_the_rest(active)
            self._wait_for_voters(active)
            try:
                store = self._store()
                self._ensure_mounts(store)
                self._ensure_audit(store)
                self._ensure_audit_key(store)
            except DevStackError:
                raise
            except KeyopsError as exc:
                raise DevStackError(f"configuring OpenBao mounts or audit failed: {exc}") from exc
            hsm = self._ensure_hsm()
        port, cluster_port = self._ports() or (0, 0)
        return StackInfo(
            state_dir=self.state_dir, addr=self.addrs[0], pid=self.running_pid() or 0, port=port,
            cluster_port=cluster_port, already_running=already_running, initialized_now=initialized_now,
            unsealed_now=unsealed_now or joined, token_created=bool(hsm.get("token_created")), key_created=False,
            master_key_label=str(hsm.get("key_label", "")), seconds=round(time.monotonic() - started_at, 3),
            nodes=self.addrs)

    def _unseal_members(self) -> bool:
        """Unseal every node that is already a member (initialised): a restarted cluster needs a quorum."""
        unsealed = False
        for node in self.nodes:
            health = node.health() or {}
            if health.get("initialized") and health.get("sealed"):
                node.submit_unseal_key()
                unsealed = True
        return unsealed

    def _wait_for_active(self, timeout: float = START_TIMEOUT) -> _Node:
        deadline = time.monotonic() + timeout
        while True:
            index = self.active_node()
            if index is not None:
                return self.nodes[index]
            for node in self.nodes:
                node.wait_for("running", lambda h: True)  # fails at once, with its log, if a node died
            if time.monotonic() > deadline:
                raise DevStackError(f"no node of {self.state_dir} became active within {timeout:.0f} s; the end of "
                                    f"{self.nodes[0].bao_log}:\n{self.nodes[0]._log_tail()}")
            time.sleep(0.1)

    def _tune_autopilot(self, active: _Node) -> None:
        """Promote joined nodes to voters after a second of health, not ten (a fresh cluster only)."""
        try:
            active._client(self._root_token()).adapter.post(
                "/v1/sys/storage/raft/autopilot/configuration",
                json={"server_stabilization_time": _STABILIZATION, "cleanup_dead_servers": False})
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise DevStackError(f"configuring raft autopilot failed: {type(exc).__name__}") from exc

    def _join_the_rest(self, active: _Node) -> bool:
        joined = False
        for node in self.nodes:
            health = node.health() or {}
            if not health.get("initialized"):
                node.join(str(active.addr))
                joined = True
            if health.get("sealed", True):
                node.submit_unseal_key()
            node.wait_for("unsealed", lambda h: h.get("initialized") and h.get("sealed") is False)
        return joined

    def voters(self) -> int:
        """How many nodes the raft configuration counts as voters (0 when it cannot be read)."""
        index = self.active_node()
        if index is None:
            return 0
        try:
            resp = self.nodes[index]._client(self._root_token()).adapter.get("/v1/sys/storage/raft/configuration")
        except (hvac.exceptions.VaultError, requests.RequestException):
            return 0
        servers = ((resp or {}).get("data") or {}).get("config", {}).get("servers") or []
        return sum(1 for server in servers if server.get("voter"))

    def _wait_for_voters(self, active: _Node, timeout: float = _VOTERS_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.voters() < NODES:
            if time.monotonic() > deadline:
                raise DevStackError(f"the {NODES} nodes of {self.state_dir} did not all become raft voters within "
                                    f"{timeout:.0f} s; the end of {active.bao_log}:\n{active._log_tail()}")
            time.sleep(0.25)

    def down(self, timeout: float = STOP_TIMEOUT) -> StopInfo:
        """Stop every node this stack started; the first node's PID is reported (each node's own check applies)."""
        with self._locked():
            results = [node.down(timeout) for node in self.nodes]
        stopped = [r for r in results if r.stopped]
        first = stopped[0] if stopped else results[0]
        return StopInfo(stopped=bool(stopped), pid=first.pid, stale_pid_file=any(r.stale_pid_file for r in results),
                        killed=any(r.killed for r in results))

    def status(self) -> StackStatus:
        base = super().status()
        nodes = []
        for i, node in enumerate(self.nodes):
            pid = node.running_pid()
            health = node.health() if pid is not None else None
            if health is None:
                role = "down"
            elif not health.get("initialized"):
                role = "uninitialised"
            elif health.get("sealed"):
                role = "sealed"
            else:
                role = "standby" if health.get("standby") else "active"
            nodes.append({"node": i + 1, "addr": node.addr, "pid": pid, "running": health is not None,
                          "sealed": None if health is None else bool(health.get("sealed")), "role": role})
        return StackStatus(
            state_dir=base.state_dir, addr=base.addr, pid=base.pid, running=base.running,
            initialized=base.initialized, sealed=base.sealed, hsm_token_present=base.hsm_token_present,
            master_key_present=base.master_key_present, master_key_label=base.master_key_label, nodes=tuple(nodes))

    def seal(self) -> None:
        """Seal every node."""
        for i in range(NODES):
            self.seal_node(i)

    def unseal(self) -> None:
        """Unseal every node and wait until one is active."""
        for i in range(NODES):
            self.unseal_node(i)
        self._wait_for_active()

    # --- one node, for fault tests -------------------------------------------------------------

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to node ``index`` (0-based) and wait until it is gone; its PID."""
        node = self.nodes[index]
        pid = node.running_pid()
        if pid is None:
            raise DevStackError(f"node {index + 1} of {self.state_dir} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if not node._wait_gone(pid, STOP_TIMEOUT):
            raise DevStackError(f"node {index + 1} (pid {pid}) did not stop after signal {sig}")
        return pid

    def start_node(self, index: int, unseal: bool = True) -> int:
        """Start node ``index`` again on its raft data (and unseal it); its PID."""
        node = self.nodes[index]
        pid = node.start()
        node.wait_for("answering", lambda h: True)
        if unseal:
            self.unseal_node(index)
        return pid

    def seal_node(self, index: int) -> None:
        node = self.nodes[index]
        try:
            node._client(self._root_token()).sys.seal()
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise DevStackError(f"sealing node {index + 1} failed: {type(exc).__name__}") from exc
        node.wait_for("sealed", lambda h: bool(h.get("sealed")))

    def unseal_node(self, index: int) -> None:
        node = self.nodes[index]
        if (node.health() or {}).get("sealed"):
            node.submit_unseal_key()
        node.wait_for("unsealed", lambda h: h.get("sealed") is False)
