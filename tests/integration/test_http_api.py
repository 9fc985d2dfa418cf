"""``keyops serve`` against the real OpenBao and SoftHSM2, called by clients nobody here wrote.

hvac's ``secrets.transit`` and the ``bao`` CLI (``VAULT_ADDR`` pointed at
keyops) are used unchanged; the server runs in its own process with a
rotation-role token, and each caller sends its own token, minted from the
generated policies.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from _http_server import KEYOPS as _KEYOPS
from _http_server import Server
from _tenants import created_tenant

from keyops import access
from keyops.dev.stack import DevStack, bao_binary
from keyops.model.keyring import Policy, parse_time
from keyops.model.paths import keyring_path, usage_path
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclasses.dataclass
class World:
    a: str
    b: str
    t: str  # residence transit
    tokens: dict[str, str]
    accessors: dict[str, str]
    server: Server


@pytest.fixture(scope="module")
def world(k: Keyops, stack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    a, b = created_tenant(k, "http-a"), created_tenant(k, "http-b")
    t = created_tenant(k, "http-t", Policy(kek_residence="transit"))
    access.apply_policies(k, access.render_policies(k.roles, [a, b, t], access.Mounts.from_config(k.config)))
    minted = {"app-a": access.mint_token(k, k.roles, "app", a, ttl="30m"),
              "app-b": access.mint_token(k, k.roles, "app", b, ttl="30m"),
              "app-t": access.mint_token(k, k.roles, "app", t, ttl="30m"),
              "rotation": access.mint_token(k, k.roles, "rotation", ttl="30m"),
              "auditor": access.mint_token(k, k.roles, "auditor", ttl="30m")}
    tokens = {name: m.token for name, m in minted.items()}
    tokens["admin"] = stack.env()["VAULT_TOKEN"]
    server = Server(stack, tokens["rotation"], tmp_path_factory.mktemp("http-api")).wait_ready()
    yield World(a, b, t, tokens, {name: m.accessor for name, m in minted.items()}, server)
    code = server.stop()
    assert code == 0, (code, server.log())


def client(world: World, token: str) -> hvac.Client:
    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=world.server.url, token=token, session=session, timeout=30)


def vault_shaped_error(resp: requests.Response, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert isinstance(body["errors"], list) and body["errors"] and all(isinstance(e, str) for e in body["errors"])
    assert "Traceback" not in resp.text
    return str(body["errors"][0])


# --- real clients ------------------------------------------------------------------------------------


def test_hvac_transit_encrypt_decrypt_batch_rewrap_and_read_key(world: World, k: Keyops) -> None:
    app = client(world, world.tokens["app-a"]).secrets.transit
    secret = os.urandom(1024)
    aad = b64(b"orders/42")
    ct = app.encrypt_data(world.a, b64(secret), associated_data=aad)["data"]
    assert ct["ciphertext"].startswith(f"keyops:v1:{world.a}:") and ct["key_version"] >= 1
    plain = app.decrypt_data(world.a, ct["ciphertext"], associated_data=aad)["data"]["plaintext"]
    assert base64.b64decode(plain) == secret
    # The same library decrypts what the server encrypted: it is keyops' own format, nothing else.
    assert k.decrypt(world.a, ct["ciphertext"], b"orders/42") == secret

    items = [{"plaintext": b64(f"item {i}".encode()), "reference": f"ref-{i}"} for i in range(100)]
    batch = app.encrypt_data(world.a, batch_input=items)["data"]["batch_results"]
    assert [r["reference"] for r in batch] == [f"ref-{i}" for i in range(100)]
    assert all("error" not in r for r in batch)
    back = app.decrypt_data(world.a, batch_input=[{"ciphertext": r["ciphertext"], "reference": r["reference"]}
                                                  for r in batch])["data"]["batch_results"]
    assert [base64.b64decode(r["plaintext"]) for r in back] == [f"item {i}".encode() for i in range(100)]

    key = app.read_key(world.a)["data"]
    before = key["latest_version"]
    assert key["name"] == world.a and key["type"] == "aes256-gcm96" and str(before) in key["keys"]
    assert key["min_decryption_version"] <= before and key["exportable"] is False
    assert not any(field in json.dumps(key) for field in ("wrapped", "material"))

    old = app.encrypt_data(world.a, b64(b"before rotation"))["data"]["ciphertext"]
    with pytest.raises(hvac.exceptions.Forbidden):
        app.rotate_key(world.a)  # an app may not rotate
    rotated = client(world, world.tokens["rotation"]).secrets.transit.rotate_key(world.a)
    assert rotated["data"]["latest_version"] == before + 1

    new = app.rewrap_data(world.a, old)["data"]
    assert new["key_version"] == before + 1 and new["ciphertext"] != old
    for text in (old, new["ciphertext"]):
        assert base64.b64decode(app.decrypt_data(world.a, text)["data"]["plaintext"]) == b"before rotation"
    assert app.encrypt_data(world.a, b64(b"x"))["data"]["key_version"] == before + 1
    assert app.read_key(world.a)["data"]["latest_version"] == before + 1


def test_rewrap_keeps_associated_data_and_datakeys(world: World) -> None:
    hv = client(world, world.tokens["app-b"])
    aad = b64(b"invoices/7")
    ct = hv.secrets.transit.encrypt_data(world.b, b64(b"bound"), associated_data=aad)["data"]["ciphertext"]
    client(world, world.tokens["rotation"]).secrets.transit.rotate_key(world.b)
    # hvac's rewrap_data has no associated_data argument (Transit's rewrap drops it): send the raw body.
    new = hv.adapter.post(f"/v1/transit/rewrap/{world.b}", json={"ciphertext": ct, "associated_data": aad})["data"]
    assert new["ciphertext"] != ct
    assert base64.b64decode(hv.secrets.transit.decrypt_data(world.b, new["ciphertext"], associated_data=aad)
                            ["data"]["plaintext"]) == b"bound"
    with pytest.raises(hvac.exceptions.InvalidRequest):
        hv.secrets.transit.decrypt_data(world.b, new["ciphertext"])  # the associated data is still bound

    made = hv.secrets.transit.generate_data_key(world.b, "plaintext", bits=256)["data"]
    key = base64.b64decode(made["plaintext"])
    assert len(key) == 32
    assert base64.b64decode(hv.secrets.transit.decrypt_data(world.b, made["ciphertext"])["data"]["plaintext"]) == key
    wrapped = hv.secrets.transit.generate_data_key(world.b, "wrapped", bits=128)["data"]
    assert "plaintext" not in wrapped
    assert len(base64.b64decode(hv.secrets.transit.decrypt_data(world.b, wrapped["ciphertext"])
                                ["data"]["plaintext"])) == 16


def test_the_bao_cli_writes_and_reads_through_keyops(world: World) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(Path(world.server.access_log).parent),
           "VAULT_ADDR": world.server.url, "VAULT_TOKEN": world.tokens["app-t"]}

    def bao(*args: str) -> Any:
        done = subprocess.run([bao_binary(), *args, "-format=json"], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)["data"]

    ct = bao("write", f"transit/encrypt/{world.t}", f"plaintext={b64(b'from the bao cli')}")["ciphertext"]
    assert ct.startswith(f"keyops:v1:{world.t}:")
    plain = bao("write", f"transit/decrypt/{world.t}", f"ciphertext={ct}")["plaintext"]
    assert base64.b64decode(plain) == b"from the bao cli"
    key = bao("read", f"transit/keys/{world.t}")
    assert key["name"] == world.t and key["latest_version"] >= 1 and key["keyops"]["kek_residence"] == "transit"

    env["VAULT_TOKEN"] = world.tokens["app-a"]  # another tenant's app: refused
    done = subprocess.run([bao_binary(), "write", f"transit/encrypt/{world.t}", "plaintext=eA=="], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "403" in done.stderr and "permission denied" in done.stderr


# --- authentication, authorisation, isolation --------------------------------------------------------


def _every_endpoint(tenant: str, ct: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [("POST", f"/v1/transit/encrypt/{tenant}", {"plaintext": b64(b"x")}),
            ("PUT", f"/v1/transit/decrypt/{tenant}", {"ciphertext": ct}),
            ("POST", f"/v1/transit/rewrap/{tenant}", {"ciphertext": ct}),
            ("POST", f"/v1/transit/datakey/plaintext/{tenant}", {}),
            ("POST", f"/v1/transit/datakey/wrapped/{tenant}", {}),
            ("GET", f"/v1/transit/keys/{tenant}", None),
            ("POST", f"/v1/transit/keys/{tenant}/rotate", None),
            ("POST", "/api/v1/kek/rotate", {"tenant": tenant}),
            ("POST", "/api/v1/kek/generate", {"tenant": tenant}),
            ("GET", f"/api/v1/kek/status?tenant={tenant}", None)]


def _state(k: Keyops, tenant: str) -> tuple[Any, ...]:
    return k.store.read(keyring_path(tenant)), k.store.read(usage_path(tenant))


def test_a_token_of_tenant_a_gets_403_on_tenant_b_everywhere_and_changes_nothing(world: World, k: Keyops) -> None:
    srv = world.server
    ct_b = srv.call("POST", f"/v1/transit/encrypt/{world.b}", world.tokens["app-b"],
                    json={"plaintext": b64(b"b's")}).json()["data"]["ciphertext"]
    before = _state(k, world.b)
    for method, path, body in _every_endpoint(world.b, ct_b):
        for name in ("app-a", "app-t"):
            resp = srv.call(method, path, world.tokens[name], json=body)
            assert "permission denied" in vault_shaped_error(resp, 403), (name, method, path)
        for token in (None, "", "hvs.not-a-token", world.tokens["app-a"] + "x"):
            vault_shaped_error(srv.call(method, path, token, json=body), 403)
    assert _state(k, world.b) == before


def test_an_auditor_reads_but_cannot_encrypt_decrypt_or_rotate(world: World, k: Keyops) -> None:
    srv, token = world.server, world.tokens["auditor"]
    ct = srv.call("POST", f"/v1/transit/encrypt/{world.a}", world.tokens["app-a"],
                  json={"plaintext": b64(b"a's")}).json()["data"]["ciphertext"]
    before = _state(k, world.a)
    for method, path, body in _every_endpoint(world.a, ct)[:7] + [("POST", "/api/v1/kek/rotate",
                                                                   {"tenant": world.a})]:
        expected = 200 if path.startswith("/v1/transit/keys/") and method == "GET" else 403
        resp = srv.call(method, path, token, json=body)
        if expected == 403:
            vault_shaped_error(resp, 403)
        else:
            assert resp.status_code == 200 and resp.json()["data"]["name"] == world.a
    assert srv.call("GET", f"/api/v1/kek/status?tenant={world.a}", token).json()["tenant"] == world.a
    assert _state(k, world.a) == before


# --- bad input -------------------------------------------------------------------------------------


def test_tampering_and_bad_input_get_vault_shaped_errors_and_change_nothing(world: World, k: Keyops) -> None:
    srv, token = world.server, world.tokens["app-a"]
    enc, dec = f"/v1/transit/encrypt/{world.a}", f"/v1/transit/decrypt/{world.a}"
    aad = b64(b"ctx")
    ct = srv.call("POST", enc, token, json={"plaintext": b64(b"p" * 64), "associated_data": aad}).json()
    ct = ct["data"]["ciphertext"]
    ct_b = srv.call("POST", f"/v1/transit/encrypt/{world.b}", world.tokens["app-b"],
                    json={"plaintext": b64(b"p" * 64)}).json()["data"]["ciphertext"]
    before = _state(k, world.a)
    body = base64.b64decode(ct.rsplit(":", 1)[1])
    for i in (0, 12, len(body) - 1):  # nonce, ciphertext, tag
        bad = bytearray(body)
        bad[i] ^= 1
        tampered = ct.rsplit(":", 1)[0] + ":" + b64(bytes(bad))
        assert "decryption failed" in vault_shaped_error(
            srv.call("POST", dec, token, json={"ciphertext": tampered, "associated_data": aad}), 400)
    moved = ct_b.replace(f":{world.b}:", f":{world.a}:", 1)  # b's ciphertext presented as a's
    for text in (ct_b, moved):
        vault_shaped_error(srv.call("POST", dec, token, json={"ciphertext": text}), 400)
    assert "decryption failed" in vault_shaped_error(
        srv.call("POST", dec, token, json={"ciphertext": ct, "associated_data": b64(b"other")}), 400)
    assert "not a keyops ciphertext" in vault_shaped_error(
        srv.call("POST", dec, token, json={"ciphertext": "vault:v1:abc"}), 400)
    assert "JSON" in vault_shaped_error(srv.call("POST", enc, token, data=b"{not json"), 400)
    assert "JSON object" in vault_shaped_error(srv.call("POST", enc, token, data=b"[1, 2]"), 400)
    assert "base64" in vault_shaped_error(srv.call("POST", enc, token, json={"plaintext": "***"}), 400)
    assert "plaintext" in vault_shaped_error(srv.call("POST", enc, token, json={}), 400)
    assert "too large" in vault_shaped_error(srv.call("POST", enc, token, data=b"x" * (1024 * 1024 + 1)), 413)
    vault_shaped_error(srv.call("POST", "/v1/transit/sign/" + world.a, token, json={}), 404)
    vault_shaped_error(srv.call("GET", "/v1/secret/data/x", token), 404)
    vault_shaped_error(srv.call("DELETE", f"/v1/transit/keys/{world.a}", token), 405)
    assert "tenant" in vault_shaped_error(srv.call("POST", "/v1/transit/encrypt/Not-A-Tenant", world.tokens["admin"],
                                                   json={"plaintext": "eA=="}), 400)

    # A batch with bad items: those fail in place, the others are answered, order and references kept.
    resp = srv.call("POST", enc, token, json={"batch_input": [
        {"plaintext": b64(b"ok"), "reference": "1"}, {"plaintext": "***", "reference": "2"},
        {"reference": "3"}, {"plaintext": b64(b"ok too"), "reference": "4"}]})
    assert resp.status_code == 400
    results = resp.json()["data"]["batch_results"]
    assert [r["reference"] for r in results] == ["1", "2", "3", "4"]
    assert ["error" in r for r in results] == [False, True, True, False] and "base64" in results[1]["error"]
    resp = srv.call("POST", dec, token, json={"partial_failure_response_code": 207, "batch_input": [
        {"ciphertext": results[0]["ciphertext"]}, {"ciphertext": ct}]})
    assert resp.status_code == 207 and "decryption failed" in resp.json()["data"]["batch_results"][1]["error"]
    assert _state(k, world.a)[0] == before[0]  # no keyring change (uses may be reserved: never fewer)


# --- operations, records, leaks ----------------------------------------------------------------------


def test_health_metrics_and_access_records(world: World) -> None:
    srv = world.server
    health = srv.call("GET", "/v1/sys/health")
    assert health.status_code == 200
    assert health.json()["sealed"] is False and health.json()["vault"] == "ok" and health.json()["hsm"] == "ok"
    srv.call("POST", f"/v1/transit/encrypt/{world.a}", world.tokens["app-a"], json={"plaintext": b64(b"m")})
    vault_shaped_error(srv.call("GET", "/metrics", world.tokens["app-a"]), 403)
    vault_shaped_error(srv.call("GET", "/metrics"), 403)
    text = srv.call("GET", "/metrics", world.tokens["auditor"]).text
    for needle in ('keyops_requests_total{operation="encrypt",status="200"}',
                   'keyops_request_duration_seconds_bucket{le="0.001",operation="encrypt"}',
                   f'keyops_dek_usage_ratio{{tenant="{world.a}"}}',
                   f'keyops_days_until_due{{level="dek",tenant="{world.a}"}}',
                   'keyops_days_until_due{level="master",tenant=""}', 'keyops_token_cache_total{result="hit"}',
                   "keyops_vault_up 1.0", "keyops_hsm_up 1.0"):
        assert needle in text, needle

    records = srv.records()
    mine = [r for r in records if r.get("accessor") == world.accessors["app-a"] and r["operation"] == "encrypt"]
    assert mine and mine[-1]["tenant"] == world.a and mine[-1]["result"] == "ok" and mine[-1]["versions"]
    denied = [r for r in records if r.get("accessor") == world.accessors["app-t"] and r["status"] == 403]
    assert denied and all(r["result"].startswith("error:") for r in denied)


def test_no_plaintext_or_token_in_logs_or_metrics(world: World) -> None:
    srv = world.server
    marker = b"plaintext-marker-" + os.urandom(8).hex().encode()
    srv.call("POST", f"/v1/transit/encrypt/{world.a}", world.tokens["app-a"], json={"plaintext": b64(marker)})
    srv.call("POST", f"/v1/transit/encrypt/{world.a}", world.tokens["app-b"], json={"plaintext": b64(marker)})
    srv.call("POST", f"/v1/transit/decrypt/{world.a}", world.tokens["app-a"], json={"ciphertext": b64(marker)})
    outputs = [srv.log(), srv.access_log.read_text(), srv.call("GET", "/metrics", world.tokens["auditor"]).text]
    for out in outputs:
        assert marker.decode() not in out and b64(marker) not in out
        for token in world.tokens.values():
            assert token not in out


def test_the_seed_api_generates_rotates_and_reports(world: World, k: Keyops) -> None:
    srv = world.server
    tenant = "http-seed-" + os.urandom(4).hex()
    body = {"tenant": tenant, "kek_residence": "kv", "dek_period_days": 7}
    vault_shaped_error(srv.call("POST", "/api/v1/kek/generate", world.tokens["rotation"], json=body), 403)
    made = srv.call("POST", "/api/v1/kek/generate", world.tokens["admin"], json=body)
    assert made.status_code == 201 and made.json() == {"tenant": tenant, "changed": True, "kek_version": 1,
                                                       "dek_version": 1, "kek_residence": "kv"}
    again = srv.call("POST", "/api/v1/kek/generate", world.tokens["admin"], json=body)
    assert again.status_code == 200 and again.json()["changed"] is False
    assert "unknown field" in vault_shaped_error(
        srv.call("POST", "/api/v1/kek/generate", world.tokens["admin"], json={"tenant": tenant, "x": 1}), 400)
    rotated = srv.call("POST", "/api/v1/kek/rotate", world.tokens["rotation"], json={"tenant": tenant})
    assert rotated.status_code == 200, rotated.text
    assert (rotated.json()["old_version"], rotated.json()["new_version"]) == (1, 2)
    assert k.read_keyring(tenant)[0].kek.primary == 2
    status = srv.call("GET", f"/api/v1/kek/status?tenant={tenant}", world.tokens["auditor"]).json()
    assert status["tenant"] == tenant and status["kek"]["primary"] == 2 and status["policy"]["dek_period_days"] == 7
    every = srv.call("GET", "/api/v1/kek/status", world.tokens["auditor"]).json()
    assert tenant in {t["tenant"] for t in every["tenants"]}
    vault_shaped_error(srv.call("GET", "/api/v1/kek/status", world.tokens["app-a"]), 403)


def _leases(k: Keyops, tenant: str) -> dict[str, dict[str, str]]:
    found = k.store.read(usage_path(tenant))
    return {v: dict(doc.get("leases") or {}) for v, doc in (found[0]["versions"] if found else {}).items()}


def test_worker_processes_share_the_usage_accounting_and_stop_on_sigterm(world: World, k: Keyops,
                                                                        stack: DevStack, tmp_path: Path) -> None:
    before = _leases(k, world.a)
    server = Server(stack, world.tokens["rotation"], tmp_path, "--workers", "2").wait_ready()
    try:
        texts: list[str] = []
        new: set[str] = set()
        # A new connection each, so that both workers get some; which worker accepts is the kernel's
        # choice, so keep going (in rounds) until both have reserved, within a bound.
        while len(new) < 2 and len(texts) < 600:
            for _ in range(30):
                i = len(texts)
                resp = requests.post(f"{server.url}/v1/transit/encrypt/{world.a}", timeout=30,
                                     headers={"X-Vault-Token": world.tokens["app-a"], "Connection": "close"},
                                     json={"plaintext": b64(f"w{i}".encode())})
                assert resp.status_code == 200, resp.text
                texts.append(resp.json()["data"]["ciphertext"])
            version = texts[-1].split(":")[3]
            new = set(_leases(k, world.a)[version]) - set(before.get(version, {}))
        assert len(new) == 2, new  # each worker reserved its own block, in the one usage document
        metrics = server.call("GET", "/metrics", world.tokens["auditor"]).text
        line = next(x for x in metrics.splitlines()
                    if x.startswith('keyops_requests_total{operation="encrypt",status="200"}'))
        assert float(line.split()[-1]) == len(texts)  # counted across both workers, whichever answers the scrape
        assert all(k.decrypt(world.a, text) == f"w{i}".encode() for i, text in enumerate(texts))
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert server.log().count("stopped (HSM calls") == 2  # both workers shut down cleanly
    # ... and ended their leases at once, instead of leaving them to run out.
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    ended = _leases(k, world.a)[version]
    assert all(parse_time(ended[holder]) <= now for holder in new), ended


# --- clients in another language -------------------------------------------------------------------

NODE_EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "node"


def node(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["node", str(NODE_EXAMPLES / script), *args], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=60)


def test_a_node_client_encrypts_decrypts_and_rewraps_with_fetch(world: World, k: Keyops) -> None:
    done = node("transit-client.mjs", world.t, env={"KEYOPS_ADDR": world.server.url,
                                                     "VAULT_TOKEN": world.tokens["app-t"]})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["decrypted"] and out["wrong_associated_data_refused"] and out["batch_references"] == "r0,r1,r2"
    assert out["ciphertext"].startswith(f"keyops:v1:{world.t}:") and out["rewrapped_version"] >= 1
    assert k.decrypt(world.t, out["rewrapped"], b"node/orders/1") == b"hello from node"
    refused = node("transit-client.mjs", world.t, env={"KEYOPS_ADDR": world.server.url,
                                                        "VAULT_TOKEN": world.tokens["app-a"]})
    assert refused.returncode == 1 and "HTTP 403" in refused.stderr


def test_an_independent_node_reader_decrypts_from_the_format_spec_alone(world: World, stack: DevStack) -> None:
    ct = world.server.call("POST", f"/v1/transit/encrypt/{world.t}", world.tokens["app-t"],
                           json={"plaintext": b64(b"read me in node"), "associated_data": b64(b"docs/1")})
    text = ct.json()["data"]["ciphertext"]
    # The reader talks to OpenBao itself (not to keyops serve), with the tenant's app token.
    env = {"VAULT_ADDR": stack.addr, "VAULT_TOKEN": world.tokens["app-t"]}
    done = node("format-reader.mjs", text, "docs/1", env=env)
    assert done.returncode == 0, done.stderr
    assert base64.b64decode(done.stdout.strip()) == b"read me in node"
    wrong = node("format-reader.mjs", text, "docs/2", env=env)
    assert wrong.returncode == 1 and "authenticate" in wrong.stderr and "read me" not in wrong.stdout
    other = node("format-reader.mjs", text, "docs/1", env={**env, "VAULT_TOKEN": world.tokens["app-a"]})
    assert other.returncode == 1 and "403" in other.stderr


# --- tokens revoked, TLS, plain HTTP off loopback ------------------------------------------------------


def test_a_revoked_token_is_refused_once_its_cached_lookup_expires(world: World, k: Keyops, stack: DevStack,
                                                                   tmp_path: Path, vault_client: Any) -> None:
    import time

    server = Server(stack, world.tokens["rotation"], tmp_path, "--token-ttl", "1").wait_ready()
    try:
        token = access.mint_token(k, k.roles, "app", world.a, ttl="10m").token
        enc = f"/v1/transit/encrypt/{world.a}"
        assert server.call("POST", enc, token, json={"plaintext": "eA=="}).status_code == 200
        vault_client.auth.token.revoke(token)
        time.sleep(1.5)  # past --token-ttl: the next request looks the token up again
        assert "not valid" in vault_shaped_error(server.call("POST", enc, token, json={"plaintext": "eA=="}), 403)
    finally:
        assert server.stop() == 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_serves_hvac_and_plain_http_off_loopback_is_refused(world: World, stack: DevStack,
                                                                tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = Server(stack, world.tokens["rotation"], tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    server.url = server.url.replace("http://", "https://")
    server.session.verify = str(cert)
    try:
        server.wait_ready()
        session = requests.Session()
        session.trust_env = False
        session.verify = str(cert)  # hvac's adapter prefers the session's verify to its own
        hv = hvac.Client(url=server.url, token=world.tokens["app-a"], verify=str(cert), session=session)
        ct = hv.secrets.transit.encrypt_data(world.a, b64(b"over tls"))["data"]["ciphertext"]
        assert base64.b64decode(hv.secrets.transit.decrypt_data(world.a, ct)["data"]["plaintext"]) == b"over tls"
        session.close()  # an idle keep-alive connection would hold the graceful stop for its grace time
    finally:
        assert server.stop() == 0
    env = {**os.environ, **stack.env(), "VAULT_TOKEN": world.tokens["rotation"]}
    done = subprocess.run([*_KEYOPS, "serve", "--listen", "0.0.0.0:1"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "not a loopback address" in done.stderr and "Traceback" not in done.stderr
