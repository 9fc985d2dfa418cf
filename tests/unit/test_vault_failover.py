"""keyops' Vault transport with several nodes: which node it sends to, what it retries, and what it counts.

Small local HTTP servers play the nodes: each answers ``/v1/sys/health``
with the code of its role (200 active, 429 standby, 503 sealed), and KV
paths as Vault would, or with the failure the test gives it (503 sealed, 500,
a dropped connection), and records what it was sent. keyops talks to them
through the real ``VaultStore``, and the tests read its ``calls`` counter.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from keyops.backends.vault import VaultStore
from keyops.config import RETRY_WINDOW_CLUSTER, RETRY_WINDOW_SINGLE, Config
from keyops.errors import CheckAndSetFailed, ConfigError, VaultError, VaultSealed, VaultUnreachable

TOKEN = "s.unit-test-token-never-shown"
KV_OK = {"data": {"data": {"v": 1}, "metadata": {"version": 3}}}


class Node:
    """One fake node: ``role`` for its health, ``fail`` (status code or "drop") for its next ``failures`` answers."""

    def __init__(self, role: str = "active") -> None:
        self.role = role
        self.fail: int | str | None = None
        self.failures = 0
        self.seen: list[tuple[str, str]] = []
        self.documents: dict[str, tuple[dict[str, Any], int]] = {}
        self.active_after = 0  # health answers 503 (sealed) this many times before it answers for ``role``
        node = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path = urllib.parse.urlsplit(self.path).path
                if path == "/v1/sys/health":
                    if node.active_after > 0:
                        node.active_after -= 1
                        self._answer(503, {})
                        return
                    self._answer({"active": 200, "standby": 429, "sealed": 503}[node.role], {})
                    return
                node.seen.append((self.command, path))
                if node.failures > 0:
                    node.failures -= 1
                    if node.fail == "drop":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if node.fail == "applied-then-drop":  # commits the write, then dies before answering
                        node.apply(path, body)
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if isinstance(node.fail, int):
                        self._answer(node.fail, {"errors": ["Vault is sealed" if node.fail == 503 else "boom"]})
                        return
                if node.role == "standby" and isinstance(node.fail, str) and node.fail.startswith("http"):
                    self._answer(307, None, {"Location": node.fail + self.path})
                    return
                if self.command == "GET":
                    found = node.documents.get(path)
                    self._answer(200, {"data": {"data": found[0], "metadata": {"version": found[1]}}} if found
                                 else KV_OK)
                elif self.command == "POST" and "/data/" in path:
                    current = node.documents.get(path, ({}, 0))[1]
                    if body["options"]["cas"] != current:
                        self._answer(400, {"errors": ["check-and-set parameter did not match the current version"]})
                        return
                    self._answer(200, {"data": {"version": node.apply(path, body)}})
                else:
                    self._answer(200, {"data": {}})

            do_GET = do_POST = do_PUT = do_LIST = do_DELETE = _handle  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def apply(self, path: str, body: dict[str, Any]) -> int:
        version = self.documents.get(path, ({}, 0))[1] + 1
        self.documents[path] = (body["data"], version)
        return version

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made = [Node("active"), Node("standby"), Node("standby")]
    try:
        yield made
    finally:
        for node in made:
            node.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def store_for(addrs: list[str], **settings: Any) -> VaultStore:
    config = Config(vault_addrs=tuple(addrs), vault_token=TOKEN, **{"vault_timeout": 2.0, **settings})
    return VaultStore(config, pool_size=2)


def kv_requests(node: Node) -> int:
    return sum(1 for _, path in node.seen if path.startswith("/v1/keyops/"))


# --- which node -----------------------------------------------------------------------------------


def test_requests_go_to_the_active_node_whichever_is_listed_first(nodes: list[Node]) -> None:
    active, standby, _ = nodes
    store = store_for([standby.addr, nodes[2].addr, active.addr])
    assert store.read("ok") == ({"v": 1}, 3)
    assert kv_requests(active) == 1 and kv_requests(standby) == 0
    assert store.client.session.active == active.addr
    calls = store.calls.snapshot()
    assert calls["vault.failover"] == 1 and calls["vault.probe"] == 3  # the first two said standby


def test_a_killed_active_node_is_left_for_the_new_one(nodes: list[Node]) -> None:
    active, standby, other = nodes
    store = store_for([n.addr for n in nodes])
    store.read("ok")
    active.close()
    standby.role = "active"
    assert store.read("ok") == ({"v": 1}, 3)
    assert store.client.session.active == standby.addr and kv_requests(other) == 0
    calls = store.calls.snapshot()
    assert calls["vault.retry"] == 1 and calls["vault.failover"] == 1, calls  # the first node was active


def test_a_standby_redirect_names_the_leader(nodes: list[Node]) -> None:
    active, standby, _ = nodes
    standby.role, active.role = "standby", "standby"  # nobody says active yet: the first node is tried
    standby.fail = active.addr  # standby answers 307 to the leader
    store = store_for([standby.addr, active.addr])
    assert store.read("ok") == ({"v": 1}, 3)
    assert store.client.session.active == active.addr
    assert kv_requests(active) == 1


# --- what is retried ------------------------------------------------------------------------------


def test_a_read_is_retried_while_a_node_is_sealed_then_answers(nodes: list[Node]) -> None:
    active = nodes[0]
    active.fail, active.failures = 503, 3
    store = store_for([active.addr])
    assert store.read("ok") == ({"v": 1}, 3)
    assert store.calls.snapshot()["vault.retry"] == 3 and kv_requests(active) == 4


@pytest.mark.parametrize("failure", [500, "drop"])
def test_an_idempotent_write_is_retried_after_a_5xx_or_a_dropped_connection(nodes: list[Node],
                                                                            failure: int | str) -> None:
    active = nodes[0]
    active.fail, active.failures = failure, 1
    store = store_for([active.addr])
    assert store.write("doc", {"a": 1}, cas=0) == 1
    assert store.calls.snapshot()["vault.retry"] == 1


@pytest.mark.parametrize("failure", [500, "drop"])
def test_a_write_that_is_not_idempotent_is_sent_once(nodes: list[Node], failure: int | str) -> None:
    active = nodes[0]
    active.fail, active.failures = failure, 1
    store = store_for([active.addr])
    with pytest.raises((VaultError, VaultUnreachable)):
        store.transit_rotate_key("k")  # a repeat would make a second version
    assert kv_requests(active) == 0 and len(active.seen) == 1
    assert store.calls.snapshot().get("vault.retry", 0) == 0


def test_any_request_is_retried_when_a_node_refused_it_unread(nodes: list[Node]) -> None:
    active = nodes[0]
    active.fail, active.failures = 503, 1  # "Vault is sealed": it did nothing with it
    store = store_for([active.addr])
    store.transit_rotate_key("k")
    assert len(active.seen) == 2 and store.calls.snapshot()["vault.retry"] == 1


def test_a_request_nobody_received_is_retried_on_the_next_node(nodes: list[Node]) -> None:
    active = nodes[0]
    active.active_after = 1  # still sealed when first asked: the request goes to the first node listed
    dead = f"http://127.0.0.1:{free_port()}"
    store = store_for([dead, active.addr])
    store.transit_rotate_key("k")  # connection refused at the first node: never sent, safe to send again
    assert len(active.seen) == 1 and store.client.session.active == active.addr
    assert store.calls.snapshot()["vault.retry"] == 1


def test_a_landed_write_whose_answer_was_lost_is_confirmed_not_a_conflict(nodes: list[Node]) -> None:
    active = nodes[0]
    active.fail, active.failures = "applied-then-drop", 1
    store = store_for([active.addr])
    assert store.write("doc", {"a": 1}, cas=0) == 1  # the repeat's check-and-set fails: the document is ours
    assert store.calls.snapshot()["kv.write_confirmed"] == 1


def test_another_writers_change_stays_a_conflict_after_a_retry(nodes: list[Node]) -> None:
    active = nodes[0]
    active.documents["/v1/keyops/data/doc"] = ({"someone": "else"}, 1)
    active.fail, active.failures = 500, 1
    store = store_for([active.addr])
    with pytest.raises(CheckAndSetFailed):
        store.write("doc", {"a": 1}, cas=0)


# --- bounds ---------------------------------------------------------------------------------------


def test_retries_stop_at_the_window_with_the_last_answer(nodes: list[Node]) -> None:
    active = nodes[0]
    active.fail, active.failures = 503, 10_000
    store = store_for([active.addr], vault_retry_window=0.6)
    started = time.monotonic()
    with pytest.raises(VaultSealed, match="is sealed"):
        store.read("ok")
    took = time.monotonic() - started
    # No pause is begun that would end past the window (jittered pauses of up to 0.5 s), so the
    # loop may stop early; what matters is that it retried and then stopped, near the window.
    assert took < 0.6 + 2.0, took
    assert 2 <= store.calls.snapshot()["vault.retry"] <= 12


def test_a_window_of_zero_turns_retries_off(nodes: list[Node]) -> None:
    active = nodes[0]
    active.fail, active.failures = 503, 1
    store = store_for([active.addr], vault_retry_window=0)
    with pytest.raises(VaultSealed):
        store.read("ok")
    assert kv_requests(active) == 1


def test_a_request_past_its_deadline_is_not_sent_again() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        store = store_for([f"http://127.0.0.1:{listener.getsockname()[1]}"], vault_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(VaultUnreachable, match="no complete answer within 0.3 s"):
            store.read("ok")
        assert time.monotonic() - started < 1.5
        assert store.calls.snapshot().get("vault.retry", 0) == 0
    finally:
        listener.close()


def test_unreachable_everywhere_names_every_node() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    store = store_for(dead, vault_retry_window=0.2)
    with pytest.raises(VaultUnreachable, match=rf"^Vault at any of {dead[0]}, {dead[1]} cannot be reached: "
                                               "connection refused") as info:
        store.read("ok")
    assert TOKEN not in str(info.value)


# --- configuration --------------------------------------------------------------------------------


def test_the_nodes_come_from_keyops_vault_addrs_or_a_comma_separated_vault_addr() -> None:
    listed = Config.load(env={"KEYOPS_VAULT_ADDRS": "http://a:8200, http://b:8200/,http://c:8200"})
    inline = Config.load(env={"VAULT_ADDR": "http://a:8200,http://b:8200,http://c:8200"})
    assert listed.vault_nodes == inline.vault_nodes == ("http://a:8200", "http://b:8200", "http://c:8200")
    assert listed.vault_addr == "http://a:8200"
    assert listed.retry_window == RETRY_WINDOW_CLUSTER
    one = Config.load(env={"VAULT_ADDR": "http://a:8200"})
    assert one.vault_nodes == ("http://a:8200",) and one.vault_addrs == () and one.retry_window == RETRY_WINDOW_SINGLE
    assert Config.load(env={"KEYOPS_VAULT_RETRY_WINDOW": "4"}).retry_window == 4.0


@pytest.mark.parametrize(("env", "says"), [
    ({"VAULT_ADDR": "http://a:1,http://b:1", "KEYOPS_VAULT_ADDRS": "http://c:1,http://d:1"}, "in one of them"),
    ({"KEYOPS_VAULT_ADDRS": "http://a:1,http://a:1"}, "names a node twice"),
    ({"KEYOPS_VAULT_RETRY_WINDOW": "-1"}, "KEYOPS_VAULT_RETRY_WINDOW"),
    ({"KEYOPS_VAULT_RETRY_WINDOW": "soon"}, "KEYOPS_VAULT_RETRY_WINDOW"),
])
def test_bad_node_settings_are_refused_by_name(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Config.load(env=env)


def test_an_address_without_a_scheme_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="'b:8200' must start with http:// or https://"):
        VaultStore(Config(vault_addrs=("http://a:8200", "b:8200"), vault_token=TOKEN))
