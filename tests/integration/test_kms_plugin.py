"""``keyops kms serve`` against the real OpenBao and SoftHSM2, called as the kube-apiserver calls it.

The client is built from the Kubernetes KMS v2 proto (``keyops/kms/v2``) and
dials the unix socket; the plugin runs in its own process, with an app
token of its tenant.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _tenants import created_tenant, new_tenant

from keyops import access
from keyops.dev.stack import DevStack
from keyops.kms.plugin import MAX_CIPHERTEXT, TAIL_ANNOTATION
from keyops.kms.v2 import api_pb2, api_pb2_grpc
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
START_TIMEOUT = 60.0


class Plugin:
    """A ``keyops kms serve`` process and a client of its socket, as the apiserver has."""

    def __init__(self, env: dict[str, str], tenant: str, socket_path: Path, *extra: str) -> None:
        self.socket = socket_path
        self.stderr: list[str] = []
        self.proc = subprocess.Popen([*KEYOPS, "kms", "serve", "--tenant", tenant, "--socket", str(socket_path),
                                      *extra], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.channel: grpc.Channel | None = None

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "serving tenant" in line:
                self._ready.set()

    def wait_ready(self) -> Any:
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"plugin did not start (exit {self.proc.poll()}): {''.join(self.stderr)}")
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        return api_pb2_grpc.KeyManagementServiceStub(self.channel)

    def log(self) -> str:
        return "".join(self.stderr)

    def stop(self) -> int:
        if self.channel is not None:
            self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def root(k: Keyops) -> Keyops:
    return k


@pytest.fixture(scope="module")
def tokens(root: Keyops) -> Callable[[str], str]:
    """An app token of a tenant (its policies applied first), as a cluster's plugin would hold."""
    def app_token(tenant: str) -> str:
        access.apply_policies(root, access.render_policies(root.roles, [tenant], access.Mounts.from_config(
            root.config)))
        return access.mint_token(root, root.roles, "app", tenant, ttl="30m").token
    return app_token


@pytest.fixture
def plugins(stack: DevStack, tmp_path: Path) -> Iterator[Callable[..., Plugin]]:
    started: list[Plugin] = []

    def start(tenant: str, token: str | None = None, *extra: str, env: dict[str, str] | None = None,
              name: str = "kms.sock") -> Plugin:
        environ = {**os.environ, **(env or stack.env())}
        if token is not None:
            environ["VAULT_TOKEN"] = token
        plugin = Plugin(environ, tenant, tmp_path / name, *extra)
        started.append(plugin)
        return plugin

    yield start
    for plugin in started:
        plugin.stop()


def status(stub: Any) -> Any:
    return stub.Status(api_pb2.StatusRequest(), timeout=10)


def encrypt(stub: Any, plaintext: bytes) -> Any:
    return stub.Encrypt(api_pb2.EncryptRequest(plaintext=plaintext, uid="enc-1"), timeout=10)


def decrypt(stub: Any, ciphertext: bytes, key_id: str, annotations: dict[str, bytes] | None = None) -> bytes:
    reply = stub.Decrypt(api_pb2.DecryptRequest(ciphertext=ciphertext, uid="dec-1", key_id=key_id,
                                                annotations=annotations or {}), timeout=10)
    return bytes(reply.plaintext)


def refused(call: Callable[[], Any]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def check_encrypt_reply(reply: Any, key_id: str) -> None:
    """What the apiserver checks of an EncryptResponse."""
    assert 0 < len(reply.ciphertext) <= MAX_CIPHERTEXT
    assert reply.key_id == key_id and 0 < len(reply.key_id) <= 1024
    assert all(DNS_SUBDOMAIN.fullmatch(name) and "." in name for name in reply.annotations)
    assert sum(len(name) + len(value) for name, value in reply.annotations.items()) < 32 * 1024


def test_the_apiserver_round_trip_with_seeds_and_payloads(root: Keyops, tokens: Callable[[str], str],
                                                          plugins: Callable[..., Plugin]) -> None:
    tenant = created_tenant(root, "kms")
    token = tokens(tenant)
    plugin = plugins(tenant, token)
    stub = plugin.wait_ready()
    assert stat.S_IMODE(plugin.socket.stat().st_mode) == 0o600 and stat.S_ISSOCK(plugin.socket.stat().st_mode)

    st = status(stub)
    assert (st.version, st.healthz) == ("v2", "ok")
    assert st.key_id.startswith(f"keyops:{tenant}:dek:v1:") and len(st.key_id) <= 1024

    seed = os.urandom(32)
    reply = encrypt(stub, seed)
    check_encrypt_reply(reply, st.key_id)
    assert not reply.annotations and seed not in reply.ciphertext
    assert decrypt(stub, reply.ciphertext, reply.key_id) == seed

    payload = os.urandom(1024)
    big = encrypt(stub, payload)
    check_encrypt_reply(big, st.key_id)
    assert set(big.annotations) == {TAIL_ANNOTATION}
    assert decrypt(stub, big.ciphertext, big.key_id, dict(big.annotations)) == payload

    # A flipped bit anywhere (ciphertext, annotation, key id) is refused, never a wrong plaintext.
    blob = bytes(reply.ciphertext)
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        code = refused(lambda bad=bytes(bad): decrypt(stub, bad, reply.key_id))
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (i, code)
    tail = bytearray(big.annotations[TAIL_ANNOTATION])
    tail[-1] ^= 1
    assert refused(lambda: decrypt(stub, big.ciphertext, big.key_id, {TAIL_ANNOTATION: bytes(tail)})) \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: decrypt(stub, big.ciphertext, big.key_id)) == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: decrypt(stub, blob, reply.key_id, {"other.example.com": b"x"})) \
        == grpc.StatusCode.INVALID_ARGUMENT
    forged = reply.key_id[:-1] + ("0" if reply.key_id[-1] != "0" else "1")
    assert refused(lambda: decrypt(stub, blob, forged)) == grpc.StatusCode.NOT_FOUND
    assert refused(lambda: decrypt(stub, blob, "")) == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(lambda: encrypt(stub, b"x" * (64 * 1024))) in (grpc.StatusCode.INVALID_ARGUMENT,
                                                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert token not in plugin.log() and seed.hex() not in plugin.log() and payload.hex()[:64] not in plugin.log()

    assert plugin.stop() == 0
    assert not plugin.socket.exists()  # SIGTERM: stopped cleanly, socket removed
    assert "stopped" in plugin.log()


def test_rotation_changes_the_key_id_and_old_ciphertexts_still_decrypt(
        root: Keyops, tokens: Callable[[str], str], plugins: Callable[..., Plugin]) -> None:
    tenant = created_tenant(root, "kmsrot")
    stub = plugins(tenant, tokens(tenant)).wait_ready()
    before = status(stub).key_id
    old = encrypt(stub, b"s" * 32)
    assert old.key_id == before

    rotate(root, tenant, "dek")
    after = status(stub).key_id
    assert after != before and after.startswith(f"keyops:{tenant}:dek:v2:")
    new = encrypt(stub, b"t" * 32)
    assert new.key_id == after  # the same key id as the Status just before
    assert decrypt(stub, old.ciphertext, old.key_id) == b"s" * 32
    assert decrypt(stub, new.ciphertext, new.key_id) == b"t" * 32
    # Each ciphertext only with its own version's key id.
    assert refused(lambda: decrypt(stub, old.ciphertext, new.key_id)) == grpc.StatusCode.INVALID_ARGUMENT

    rotate(root, tenant, "kek")  # re-wraps the DEKs: Kubernetes sees no change
    assert status(stub).key_id == after
    assert decrypt(stub, old.ciphertext, old.key_id) == b"s" * 32


def test_a_transit_tenant_serves_without_the_hsm_pin(root: Keyops, tokens: Callable[[str], str],
                                                     stack: DevStack, plugins: Callable[..., Plugin]) -> None:
    tenant = created_tenant(root, "kmstr", Policy(kek_residence="transit"))
    env = {name: value for name, value in stack.env().items() if not name.startswith("KEYOPS_PKCS11_PIN")}
    stub = plugins(tenant, tokens(tenant), env=env).wait_ready()
    st = status(stub)
    assert st.healthz == "ok"
    reply = encrypt(stub, b"k" * 32)
    assert decrypt(stub, reply.ciphertext, reply.key_id) == b"k" * 32


def test_a_token_without_rights_to_the_tenant_cannot_start_a_plugin(
        root: Keyops, tokens: Callable[[str], str], plugins: Callable[..., Plugin]) -> None:
    mine, theirs = created_tenant(root, "kmsmine"), created_tenant(root, "kmstheirs")
    plugin = plugins(theirs, tokens(mine))
    assert plugin.proc.wait(timeout=START_TIMEOUT) == 14  # permission denied
    assert theirs in plugin.log() and "Traceback" not in plugin.log()
    assert not plugin.socket.exists()


def test_a_key_id_is_not_reused_by_a_tenant_made_again(root: Keyops, tokens: Callable[[str], str],
                                                       plugins: Callable[..., Plugin]) -> None:
    tenant = new_tenant("kmsagain")
    root.create_tenant(tenant)
    first = plugins(tenant, tokens(tenant), name="first.sock")
    stub = first.wait_ready()
    old = encrypt(stub, b"o" * 32)
    first.stop()
    assert root.delete_tenant(tenant)
    root.create_tenant(tenant)
    stub = plugins(tenant, tokens(tenant), name="second.sock").wait_ready()
    assert status(stub).key_id != old.key_id  # the same tenant name and version number, another key
    assert refused(lambda: decrypt(stub, old.ciphertext, old.key_id)) == grpc.StatusCode.NOT_FOUND


@pytest.mark.slow
def test_an_outage_of_vault_is_ridden_out_and_recovered(stack_factory: Callable[..., DevStack],
                                                        plugins: Callable[..., Plugin]) -> None:
    own = stack_factory()
    own.up()
    env = {**os.environ, **own.env()}
    tenant = new_tenant("kmsout")
    made = subprocess.run([*KEYOPS, "tenant", "create", tenant], env=env, capture_output=True, timeout=120)
    assert made.returncode == 0, made.stderr
    plugin = plugins(tenant, None, "--stale-for", "600", env=own.env())
    stub = plugin.wait_ready()
    kept = [encrypt(stub, bytes([i]) * 32) for i in range(5)]
    key_id = status(stub).key_id

    own.down()
    for i, reply in enumerate(kept):  # from the keys the plugin holds
        assert decrypt(stub, reply.ciphertext, reply.key_id) == bytes([i]) * 32
    down = status(stub)
    assert down.healthz != "ok" and down.healthz.startswith("vault_unreachable") and down.key_id == key_id
    time.sleep(31)  # past the keyring's 30-second TTL: now only the stale copy serves
    assert decrypt(stub, kept[0].ciphertext, kept[0].key_id) == bytes(32)

    own.up()
    deadline = time.monotonic() + 60
    while status(stub).healthz != "ok":
        assert time.monotonic() < deadline, status(stub).healthz
        time.sleep(0.5)
    again = encrypt(stub, b"r" * 32)
    assert decrypt(stub, again.ciphertext, again.key_id) == b"r" * 32
    assert plugin.proc.poll() is None  # the same plugin process throughout
