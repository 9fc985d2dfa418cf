"""keyops' Vault transport against a small local HTTP(S) server, side by side with hvac's requests transport.

The server answers like Vault for a handful of paths (a KV read, 403, 503, a
slow answer, a redirect, a LIST, a write) and records what it was sent, so
the tests can check what goes over the wire: the token, namespace and
request headers, TLS verification, the timeout, and how failures map to
keyops errors (with no token in any message). Both transports must behave
the same; ``urllib3`` is keyops' default.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keyops.backends.vault import TRANSPORTS, VaultStore, make_client
from keyops.config import Config
from keyops.errors import KeyopsError, NotFound, PermissionDenied, VaultError, VaultSealed, VaultUnreachable

TOKEN = "s.unit-test-token-never-shown"
KV_OK = {"data": {"data": {"v": 1}, "metadata": {"version": 3}}}


class _Vault(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        url = urllib.parse.urlsplit(self.path)
        self.seen.append({"method": self.command, "path": url.path, "query": urllib.parse.parse_qs(url.query),
                          "headers": dict(self.headers), "body": self.rfile.read(length) if length else b""})
        routes = {
            "/v1/keyops/data/ok": lambda: self._answer(200, KV_OK),
            "/v1/keyops/data/forbidden": lambda: self._answer(403, {"errors": ["permission denied"]}),
            "/v1/keyops/data/sealed": lambda: self._answer(503, {"errors": ["Vault is sealed"]}),
            "/v1/keyops/data/missing": lambda: self._answer(404, {"errors": []}),
            "/v1/keyops/data/moved": lambda: self._answer(307, None, {"Location": "/v1/keyops/data/ok"}),
            "/v1/keyops/data/written": lambda: self._answer(200, {"data": {"version": 4}}),
            "/v1/keyops/metadata/folder": lambda: self._answer(200, {"data": {"keys": ["a", "b/"]}}),
        }
        if url.path == "/v1/keyops/data/slow":
            time.sleep(1.5)
            self._answer(200, KV_OK)
        elif url.path == "/v1/keyops/data/drip":
            self._drip(json.dumps(KV_OK).encode())
        else:
            routes.get(url.path, lambda: self._answer(404, {"errors": []}))()

    def _drip(self, data: bytes) -> None:
        """The whole answer, headers included, a byte every 0.1 s: each read gets a byte well in time."""
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                .encode())
        try:
            for i in range(len(head + data)):
                self.wfile.write((head + data)[i:i + 1])
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up, as it should
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_LIST = do_DELETE = _handle  # noqa: N815 - http.server's naming


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses the certificate (as the TLS tests intend) drops the connection: not news."""


def _serve(context: ssl.SSLContext | None) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Vault,), {"seen": seen})
    server = _QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    scheme = "https" if context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyops test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vault")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def http_vault() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    yield from _serve(None)


@pytest.fixture(scope="module")
def https_vault(tls_files: tuple[Path, Path, Path]) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files[1], tls_files[2])
    yield from _serve(context)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def store_for(addr: str, transport: str, **settings: Any) -> VaultStore:
    config = Config(vault_addr=addr, vault_token=TOKEN, **settings)
    return VaultStore(config, client=make_client(config, pool_size=3, transport=transport))


def no_token_in(exc: BaseException) -> None:
    """Neither the error nor anything it was raised from names the token."""
    seen: BaseException | None = exc
    while seen is not None:
        assert TOKEN not in str(seen) and TOKEN not in repr(seen), type(seen)
        seen = seen.__cause__ or seen.__context__


def test_a_read_sends_the_token_namespace_and_request_headers(http_vault: Any, transport: str) -> None:
    addr, seen = http_vault
    store = store_for(addr, transport, vault_namespace="team-a")
    seen.clear()
    assert store.read("ok") == ({"v": 1}, 3)
    (request,) = seen
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert request["method"] == "GET" and request["path"] == "/v1/keyops/data/ok"
    assert headers["x-vault-token"] == TOKEN and headers["x-vault-namespace"] == "team-a"
    assert headers["x-vault-request"] == "true"


def test_writes_send_json_and_lists_send_their_parameters(http_vault: Any, transport: str) -> None:
    addr, seen = http_vault
    store = store_for(addr, transport)
    seen.clear()
    assert store.write("written", {"a": "b"}, cas=3) == 4
    assert store.list("folder", limit=10, after="a") == ["a", "b/"]
    write, listing = seen
    assert write["method"] == "POST" and json.loads(write["body"]) == {"data": {"a": "b"}, "options": {"cas": 3}}
    assert {k.lower(): v for k, v in write["headers"].items()}["content-type"] == "application/json"
    assert listing["method"] == "LIST" and listing["query"] == {"limit": ["10"], "after": ["a"]}


def test_url_segments_are_escaped(http_vault: Any, transport: str) -> None:
    addr, seen = http_vault
    store = store_for(addr, transport)
    seen.clear()
    store.list("a b?c", limit=1)
    assert seen[0]["path"] == "/v1/keyops/metadata/a%20b%3Fc" and seen[0]["query"] == {"limit": ["1"]}


def test_redirects_are_followed(http_vault: Any, transport: str) -> None:
    addr, _ = http_vault
    assert store_for(addr, transport).read("moved") == ({"v": 1}, 3)


@pytest.mark.parametrize(("path", "error", "words"), [
    ("forbidden", PermissionDenied, "permission denied"),
    ("sealed", VaultSealed, "is sealed"),
])
def test_http_errors_map_to_keyops_errors(http_vault: Any, transport: str, path: str, error: type[KeyopsError],
                                          words: str) -> None:
    addr, _ = http_vault
    with pytest.raises(error, match=words) as info:
        store_for(addr, transport).read(path)
    assert type(info.value) is error
    no_token_in(info.value)


def test_a_missing_document_is_none(http_vault: Any, transport: str) -> None:
    addr, _ = http_vault
    assert store_for(addr, transport).read("missing") is None
    with pytest.raises(NotFound):
        store_for(addr, transport).delete_all_versions("missing")  # 404 on a write: an error


def test_the_timeout_applies_to_every_request(http_vault: Any, transport: str) -> None:
    addr, _ = http_vault
    store = store_for(addr, transport, vault_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(VaultUnreachable, match=r"no complete answer within 0.3 s \(KEYOPS_VAULT_TIMEOUT\)") as info:
        store.read("slow")
    assert time.monotonic() - started < 1.2
    no_token_in(info.value)
    assert store.read("ok") == ({"v": 1}, 3)  # the pool recovers


def test_a_dripping_answer_is_cut_at_the_deadline(http_vault: Any) -> None:
    # Each read gets a byte every 0.1 s, well within a per-read timeout of 0.6 s; only a deadline over
    # the whole request ends it (the answer would take about 25 s).
    addr, _ = http_vault
    store = store_for(addr, "urllib3", vault_timeout=0.6)
    started = time.monotonic()
    with pytest.raises(VaultUnreachable, match=r"no complete answer within 0.6 s \(KEYOPS_VAULT_TIMEOUT\)"):
        store.read("drip")
    assert time.monotonic() - started < 1.5
    assert store.read("ok") == ({"v": 1}, 3)  # the next request gets a fresh connection


def test_nobody_listening_is_unreachable(transport: str) -> None:
    refused = r"^Vault at http://127.0.0.1:9 cannot be reached: connection refused \(while reading keyops/ok\); check"
    with pytest.raises(VaultUnreachable, match=refused) as info:
        store_for("http://127.0.0.1:9", transport).read("ok")
    no_token_in(info.value)


def test_tls_is_verified_by_default(https_vault: Any, transport: str) -> None:
    addr, _ = https_vault
    with pytest.raises(VaultUnreachable, match="reached: TLS verification failed .*; set VAULT_CACERT") as info:
        store_for(addr, transport).read("ok")
    no_token_in(info.value)


def test_the_configured_ca_verifies_the_server(https_vault: Any, transport: str,
                                               tls_files: tuple[Path, Path, Path]) -> None:
    addr, _ = https_vault
    assert store_for(addr, transport, vault_cacert=str(tls_files[0])).read("ok") == ({"v": 1}, 3)
    # A folder of CA files works as VAULT_CACERT too (OpenSSL's hashed names, as c_rehash makes).
    folder = tls_files[0].parent / "cas"
    folder.mkdir(exist_ok=True)
    (folder / f"{_subject_hash(tls_files[0])}.0").write_bytes(tls_files[0].read_bytes())
    assert store_for(addr, transport, vault_cacert=str(folder)).read("ok") == ({"v": 1}, 3)


def test_skip_verify_turns_verification_off(https_vault: Any, transport: str) -> None:
    addr, _ = https_vault
    with pytest.warns(Warning):  # urllib3's InsecureRequestWarning, under either transport
        assert store_for(addr, transport, vault_skip_verify=True).read("ok") == ({"v": 1}, 3)


def test_a_pool_of_the_given_size_serves_many_threads(http_vault: Any) -> None:
    addr, _ = http_vault
    store = store_for(addr, "urllib3")
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(store.read("ok"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [({"v": 1}, 3)] * 8
    pool, _ = store.client.session._pool(f"{addr}/v1/x")
    assert pool.pool is not None and pool.pool.maxsize == 3


def test_unsupported_settings_are_refused_not_ignored(http_vault: Any) -> None:
    addr, _ = http_vault
    session = make_client(Config(vault_addr=addr, vault_token=TOKEN)).session
    with pytest.raises(Exception, match="proxies are not supported"):
        session.request("GET", f"{addr}/v1/keyops/data/ok", proxies={"https": "http://proxy:3128"})
    with pytest.raises(Exception, match="TLS verification is set once"):
        session.request("GET", f"{addr}/v1/keyops/data/ok", verify=False)


def test_the_transport_is_chosen_by_name() -> None:
    with pytest.raises(KeyopsError, match="unknown Vault transport"):
        make_client(Config(vault_addr="http://127.0.0.1:9", vault_token=TOKEN), transport="curl")
    assert issubclass(VaultUnreachable, VaultError)


def _subject_hash(ca: Path) -> str:
    """OpenSSL's subject hash of a CA file (what ``openssl x509 -hash`` prints), for a CA folder."""
    import subprocess

    return subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca)], capture_output=True, text=True,
                          check=True).stdout.strip()
