"""Access control against the real OpenBao: tokens minted from the generated policies.

Every role is tried with a real token bound to its generated policy. Refusals
are shown twice: keyops refuses first (``NotPermitted``, from the token's own
policies) and, with that check out of the way, the server refuses the same
request (403 -> ``PermissionDenied``). OpenBao's own audit log is read to see
the server's record of the same operations.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
from _tenants import new_tenant

from keyops import access, crypto
from keyops.audit import AuditLog, AuditTrail, read_events, verify_log
from keyops.cli.main import main
from keyops.config import Config
from keyops.dev.stack import DevStack, bao_binary
from keyops.errors import ConfigError, InvalidInput, KeyringCorrupt, NotPermitted, PermissionDenied
from keyops.model.keyring import Policy
from keyops.ops import lifecycle, reencrypt, rotation
from keyops.ops.front import Keyops, keyring_path, secret_path, transit_key_name
from keyops.wrappers import AeadWrapper

pytestmark = pytest.mark.integration

KV = "keyops"
BAD_TENANTS = ["..", "a/../b", "a/b", "/", "a\x00b", "x" * 10_000, "аcme", "acm\u0435", "acme\u200b"]


@dataclasses.dataclass
class World:
    config: Config
    root: Keyops
    log: Path
    a: str  # residence transit: its app never needs the PIN
    b: str  # residence transit
    c: str  # residence kv
    values: dict[tuple[str, str], bytes]
    tokens: dict[str, access.MintedToken]
    opened: list[Keyops]
    secrets_seen: list[str]  # tokens, secret ids: must never reach a log

    def keyops(self, token: str | None, *, pin: bool = True, **changes: Any) -> Keyops:
        """A Keyops acting with ``token``; without ``pin`` it has no way to open the HSM."""
        config = self.config.replace(vault_token=token, vault_token_file=None, **changes)
        if not pin:
            config = config.replace(pkcs11_pin_file=None, pkcs11_pin=None)
        k = Keyops(config, audit=AuditTrail(AuditLog(self.log)))
        self.opened.append(k)
        return k

    def role(self, name: str, *, pin: bool = True) -> Keyops:
        return self.keyops(self.tokens[name].token, pin=pin)

    def events(self) -> list[dict[str, Any]]:
        return list(read_events(self.log))


@pytest.fixture(scope="module")
def w(config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    log = tmp_path_factory.mktemp("access-audit") / "keyops-audit.jsonl"
    root = Keyops(config, audit=AuditTrail(AuditLog(log)))
    a, b, c = new_tenant("acc-a"), new_tenant("acc-b"), new_tenant("acc-c")
    root.create_tenant(a, Policy(kek_residence="transit"))
    root.create_tenant(b, Policy(kek_residence="transit"))
    root.create_tenant(c, Policy(kek_residence="kv"))
    values = {}
    for tenant in (a, b, c):
        for name in ("db/password", "api-key"):
            values[(tenant, name)] = f"plaintext-{tenant}-{name}-{uuid.uuid4().hex}".encode()
            root.put_secret(tenant, name, values[(tenant, name)])
    access.apply_policies(root, access.render_policies(root.roles, [a, b, c], access.Mounts.from_config(config)))
    tokens = {"app-a": access.mint_token(root, root.roles, "app", a, ttl="30m"),
              "app-c": access.mint_token(root, root.roles, "app", c, ttl="30m"),
              "rotation": access.mint_token(root, root.roles, "rotation", ttl="30m"),
              "auditor": access.mint_token(root, root.roles, "auditor", ttl="30m")}
    w = World(config, root, log, a, b, c, values, tokens, [root],
              [t.token for t in tokens.values()] + [config.vault_token or ""])
    yield w
    for k in w.opened:
        k.close()


def kv_version(vault_client: Any, path: str) -> int:
    meta = vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=KV)
    return int(meta["data"]["current_version"])


def snapshot(vault_client: Any, w: World) -> dict[str, Any]:
    """What a refused or read-only role must leave exactly as it was."""
    paths = [keyring_path(t) for t in (w.a, w.b, w.c)] + [secret_path(t, n) for (t, n) in w.values]
    state: dict[str, Any] = {p: kv_version(vault_client, p) for p in paths}
    state["policies"] = sorted(vault_client.sys.list_policies()["data"]["policies"])
    for t in (w.a, w.b):
        state[f"transit:{t}"] = vault_client.secrets.transit.read_key(name=transit_key_name(t))["data"][
            "latest_version"]
    return state


def new_events(w: World, since: int) -> list[dict[str, Any]]:
    return w.events()[since:]


def refused_by_keyops(w: World, k: Keyops, attempt: Callable[[], Any], operation: str, tenant: str | None) -> None:
    """keyops refuses before asking Vault, and records the denial."""
    mark = len(w.events())
    with pytest.raises(NotPermitted) as info:
        attempt()
    assert info.value.code == "not_permitted" and "not permitted" in str(info.value)
    assert operation in str(info.value)
    denied = [e for e in new_events(w, mark) if e["operation"] == "access.denied"]
    assert denied and denied[0]["attempted"] == operation and denied[0]["tenant"] == tenant
    assert denied[0]["result"] == "error:not_permitted" and denied[0]["actor"] == k.principal.actor


def refused_by_server(attempt: Callable[[], Any]) -> PermissionDenied:
    with pytest.raises(PermissionDenied) as info:
        attempt()
    assert type(info.value) is PermissionDenied, "expected Vault's own 403, not keyops' check"
    assert "permission denied by Vault" in str(info.value)
    assert isinstance(info.value.__cause__, Exception) and "Forbidden" in type(info.value.__cause__).__name__
    return info.value


def server_only(k: Keyops) -> Keyops:
    """The same token with keyops' own check switched off, so that only the server decides."""
    k._principal = dataclasses.replace(k.principal, complete=False)
    return k


# --- app ---------------------------------------------------------------------------------------------


def test_app_uses_its_own_transit_tenant_without_the_hsm_pin(w: World) -> None:
    app = w.role("app-a", pin=False)
    assert app.config.pkcs11_pin is None and app.config.pkcs11_pin_file is None
    mark = len(w.events())
    assert app.get_secret(w.a, "db/password") == w.values[(w.a, "db/password")]
    assert app.list_secrets(w.a) == ["api-key", "db/password"]
    text = app.encrypt(w.a, b"app data", "ctx")
    assert app.decrypt(w.a, text, "ctx") == b"app data"
    assert app.put_secret(w.a, "app/new", b"made by the app").changed
    # Deleting a secret with its whole history is the security-admin's: an app cannot lose its data.
    refused_by_keyops(w, app, lambda: app.delete_secret(w.a, "app/new"), "secrets.delete", w.a)
    assert app._hsm is None, "an app of a transit tenant never opens the HSM"
    assert app.calls.snapshot().get("transit.decrypt", 0) >= 1  # DEKs unwrapped by Transit
    events = new_events(w, mark)
    actor = f"token:{w.tokens['app-a'].accessor}"
    assert [(e["operation"], e["result"]) for e in events] == [
        ("dek.unwrap", "ok"), ("secret.write", "ok"), ("access.denied", "error:not_permitted")]
    assert all(e["actor"] == actor and e["tenant"] == w.a for e in events)
    assert w.root.delete_secret(w.a, "app/new")


def test_app_of_a_kv_tenant_needs_the_pin(w: World) -> None:
    with_pin = w.role("app-c")
    assert with_pin.get_secret(w.c, "api-key") == w.values[(w.c, "api-key")]
    without = w.role("app-c", pin=False)
    with pytest.raises(ConfigError, match="no HSM PIN configured"):
        without.get_secret(w.c, "api-key")


def test_app_is_refused_everything_of_another_tenant_and_any_rotation(w: World, vault_client: Any) -> None:
    app = w.role("app-a", pin=False)
    ct_b = w.root.encrypt(w.b, b"b data")
    before = snapshot(vault_client, w)
    b, x = w.b, new_tenant("acc-x")
    for attempt, operation, tenant in [
        (lambda: app.get_secret(b, "db/password"), "secrets.read", b),
        (lambda: app.put_secret(b, "db/password", b"overwrite"), "secrets.write", b),
        (lambda: app.list_secrets(b), "secrets.read", b),
        (lambda: app.delete_secret(b, "db/password"), "secrets.delete", b),
        (lambda: app.read_keyring(b), "keyring.read", b),
        (lambda: app.encrypt(b, b"x"), "usage.reserve", b),
        (lambda: app.decrypt(b, ct_b), "keyring.read", b),
        (lambda: app.tenant_status(b), "keyring.read", b),
        (lambda: rotation.rotate(app, b, "dek"), "rotate", b),
        (lambda: rotation.rotate(app, w.a, "dek"), "rotate", w.a),
        (lambda: rotation.rotate(app, w.a, "kek"), "rotate", w.a),
        (lambda: reencrypt.reencrypt(app, w.a), "reencrypt", w.a),
        (lambda: lifecycle.retire(app, w.a, "dek", 1), "retire", w.a),
        (lambda: app.create_tenant(x), "tenant.create", x),
        (lambda: app.list_tenants(), "tenants.list", None),
        (lambda: access.apply_policies(app, {"keyops-app-x": "# nothing"}), "policy.write", None),
    ]:
        refused_by_keyops(w, app, attempt, operation, tenant)
    assert snapshot(vault_client, w) == before


def test_the_server_refuses_app_a_on_tenant_b(w: World, vault_client: Any) -> None:
    app = server_only(w.role("app-a", pin=False))
    store, b = app.store, w.b
    wrapped_dek_b = w.root.read_keyring(b)[0].dek.primary_key.wrapped
    before = snapshot(vault_client, w)
    refused_by_server(lambda: store.read(keyring_path(b)))
    refused_by_server(lambda: store.read(secret_path(b, "db/password")))
    refused_by_server(lambda: store.write(secret_path(b, "db/password"), {"ciphertext": "x"}, cas=1))
    refused_by_server(lambda: store.list(f"secrets/{b}"))
    refused_by_server(lambda: store.transit_decrypt(transit_key_name(b), base64.b64decode(wrapped_dek_b).decode(),
                                                    crypto.key_context(b, "dek", 1)))
    refused_by_server(lambda: store.transit_encrypt(transit_key_name(b), b"x", b"ctx"))
    refused_by_server(lambda: store.transit_read_key(transit_key_name(b)))
    # Through the library, with its own check out of the way, the same refusals:
    refused_by_server(lambda: app.get_secret(b, "db/password"))
    refused_by_server(lambda: app.tenant_status(b))
    # Rotation, even of its own tenant: the lease, the Transit import and the listing are not the app's.
    refused_by_server(lambda: rotation.rotate(app, w.a, "dek"))
    refused_by_server(lambda: store.transit_import(transit_key_name(w.a), "AAAA", new_version=True))
    refused_by_server(lambda: app.list_tenants())
    assert snapshot(vault_client, w) == before


# --- rotation ----------------------------------------------------------------------------------------


def test_rotation_rotates_and_reencrypts_every_tenant(w: World, vault_client: Any) -> None:
    rot = w.role("rotation")
    mark = len(w.events())
    for tenant in (w.a, w.b, w.c):
        dek = rotation.rotate(rot, tenant, "dek", reason="test")
        assert dek.changed and dek.new_version == dek.old_version + 1
        done = reencrypt.reencrypt(rot, tenant, workers=2)
        assert done.rewritten == 2 and done.references == {dek.new_version: 2}
        kek = rotation.rotate(rot, tenant, "kek", reason="test")
        assert kek.changed
        # acknowledge_external: the ciphertexts `keyops encrypt` handed out earlier in this module are not kept.
        retired = lifecycle.retire(rot, tenant, "dek", dek.old_version, acknowledge_external=True)
        assert retired.changed and retired.state_after == "retired"
        for (t, name), value in w.values.items():
            if t == tenant:
                assert w.root.get_secret(t, name) == value
                record = vault_client.secrets.kv.v2.read_secret_version(path=secret_path(t, name), mount_point=KV,
                                                                     raise_on_deleted_version=True)
                assert record["data"]["data"]["dek_version"] == dek.new_version
    events = [e for e in new_events(w, mark) if e["actor"] == f"token:{w.tokens['rotation'].accessor}"]
    done_ops = {(e["operation"], e["tenant"]) for e in events if e["result"] == "ok"}
    for tenant in (w.a, w.b, w.c):
        for op in ("rotate", "reencrypt.start", "reencrypt.finish", "retire"):
            assert (op, tenant) in done_ops
    assert not [e for e in events if e["result"] != "ok"]


def test_rotation_has_no_policy_or_destroy_rights(w: World, vault_client: Any) -> None:
    rot = w.role("rotation")
    before = snapshot(vault_client, w)
    refused_by_keyops(w, rot, lambda: lifecycle.destroy(rot, w.a, "dek", 1, confirm=True), "destroy", w.a)
    refused_by_keyops(w, rot, lambda: access.apply_policies(rot, {"keyops-rotation": "# all"}), "policy.write", None)
    refused_by_keyops(w, rot, lambda: rot.delete_secret(w.a, "api-key"), "secrets.delete", w.a)
    x = new_tenant("acc-x")
    refused_by_keyops(w, rot, lambda: rot.create_tenant(x), "tenant.create", x)
    server = server_only(w.role("rotation")).store
    refused_by_server(lambda: server.delete_all_versions(keyring_path(w.a)))
    refused_by_server(lambda: server.delete_all_versions(secret_path(w.a, "api-key")))
    refused_by_server(lambda: _as_keyops(lambda: server.client.sys.create_or_update_policy(
        name="keyops-rotation", policy='path "*" { capabilities = ["sudo"] }')))
    refused_by_server(lambda: _as_keyops(lambda: server.client.secrets.transit.delete_key(
        name=transit_key_name(w.a))))
    refused_by_server(lambda: _as_keyops(lambda: server.client.auth.token.create(policies=["keyops-security-admin"])))
    assert snapshot(vault_client, w) == before


def _as_keyops(call: Callable[[], Any]) -> Any:
    from keyops.backends.vault import vault_errors

    with vault_errors("direct request"):
        return call()


# --- history: no token short of security-admin can make a tenant unrecoverable -------------------------


def token_client(stack: DevStack, token: str) -> hvac.Client:
    """A plain hvac client with ``token``: what any program holding the token could send."""
    session = requests.Session()
    session.trust_env = False
    return hvac.Client(url=stack.addr, token=token, session=session, timeout=30)


def bao(stack: DevStack, token: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``bao`` CLI with ``token`` (no proxy, no token helper)."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(stack.state_dir), "BAO_ADDR": stack.addr,
            "BAO_TOKEN": token, **(env or {})}
    return subprocess.run([bao_binary(), *args], env=base, capture_output=True, text=True, timeout=60, check=False)


def forbidden(call: Callable[[], Any], what: str) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        call()
        pytest.fail(f"{what} was allowed")


def history_attacks(kv: Any, path: str, versions: list[int]) -> dict[str, Callable[[], Any]]:
    """Every KV v2 request that removes versions or shortens the history of ``path``."""
    return {
        f"DELETE {path}": lambda: kv.delete_latest_version_of_secret(path=path, mount_point=KV),
        f"delete versions of {path}": lambda: kv.delete_secret_versions(path=path, versions=versions, mount_point=KV),
        f"undelete versions of {path}": lambda: kv.undelete_secret_versions(path=path, versions=versions,
                                                                            mount_point=KV),
        f"destroy versions of {path}": lambda: kv.destroy_secret_versions(path=path, versions=versions,
                                                                          mount_point=KV),
        f"delete metadata of {path}": lambda: kv.delete_metadata_and_all_versions(path=path, mount_point=KV),
        f"max_versions=1 on {path}": lambda: kv.update_metadata(path=path, max_versions=1, cas_required=False,
                                                                mount_point=KV),
    }


def read_version(vault_client: Any, path: str, version: int) -> dict[str, Any]:
    resp = vault_client.secrets.kv.v2.read_secret_version(path=path, version=version, mount_point=KV,
                                                          raise_on_deleted_version=True)
    return dict(resp["data"]["data"])


def test_an_app_token_cannot_write_delete_or_destroy_its_keyring(w: World, stack: DevStack,
                                                                  vault_client: Any) -> None:
    tenant, token = w.a, w.tokens["app-a"].token
    path = keyring_path(tenant)
    before = kv_version(vault_client, path)
    # The reproduction: `bao kv put keyops/tenants/<t>/keyring garbage=1` with the app's token.
    for attempt in (["kv", "put", f"-mount={KV}", f"-cas={before}", path, "garbage=1"],
                    ["kv", "put", f"-mount={KV}", path, "garbage=1"]):
        proc = bao(stack, token, *attempt)
        assert proc.returncode != 0 and "permission denied" in proc.stderr, proc.stderr
    kv = token_client(stack, token).secrets.kv.v2
    forbidden(lambda: kv.create_or_update_secret(path=path, secret={"garbage": "1"}, cas=before, mount_point=KV),
              "an app's keyring write")
    for doc in (path, f"tenants/{tenant}/usage", "master", secret_path(tenant, "db/password")):
        for what, attack in history_attacks(kv, doc, [1]).items():
            forbidden(attack, what)
    forbidden(lambda: kv.configure(max_versions=1, mount_point=KV), "max_versions=1 on the mount")
    # keyops' own path for the same write is refused by the server too; the app still reads its keyring.
    app = server_only(w.role("app-a", pin=False))
    refused_by_server(lambda: app.store.write(path, {"garbage": "1"}, cas=before))
    assert app.read_keyring(tenant)[1] == before == kv_version(vault_client, path)
    assert read_version(vault_client, path, 1)["tenant"] == tenant


def test_a_rotation_token_cannot_push_a_keyring_or_the_registry_out_of_history(
        w: World, stack: DevStack, vault_client: Any) -> None:
    tenant = new_tenant("acc-hist")
    w.root.create_tenant(tenant, Policy(kek_residence="kv"))
    w.root.put_secret(tenant, "db/password", b"kept through it all")
    rot = token_client(stack, w.tokens["rotation"].token).secrets.kv.v2
    path, record = keyring_path(tenant), secret_path(tenant, "db/password")
    good_doc, good = read_version(vault_client, path, kv_version(vault_client, path)), kv_version(vault_client, path)
    registry, registry_version = read_version(vault_client, "master", kv_version(vault_client, "master")), \
        kv_version(vault_client, "master")
    record_doc, record_version = read_version(vault_client, record, kv_version(vault_client, record)), \
        kv_version(vault_client, record)
    try:
        # The rotation role writes keyrings, the registry and secret records (it must, to rotate and
        # re-encrypt). Eleven writes pushed the last good version out of KV's default 10-version history.
        for i in range(11):
            rot.create_or_update_secret(path=path, secret={"garbage": str(i)}, cas=good + i, mount_point=KV)
            rot.create_or_update_secret(path="master", secret=registry, cas=registry_version + i, mount_point=KV)
            rot.create_or_update_secret(path=record, secret=record_doc, cas=record_version + i, mount_point=KV)
        assert read_version(vault_client, path, good) == good_doc
        assert read_version(vault_client, path, 1)["tenant"] == tenant
        assert read_version(vault_client, "master", registry_version) == registry
        assert read_version(vault_client, record, record_version) == record_doc
        # ... and it can neither remove versions nor shorten the history that keeps them.
        for doc, versions in ((path, [good]), (f"tenants/{tenant}/usage", [1]), ("master", [registry_version]),
                              (record, [record_version])):
            for what, attack in history_attacks(rot, doc, versions).items():
                forbidden(attack, what)
        forbidden(lambda: rot.configure(max_versions=1, mount_point=KV), "max_versions=1 on the mount")
        meta = vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=KV)["data"]
        assert meta["max_versions"] >= access.DOCUMENT_HISTORY and meta["cas_required"] is True
        with pytest.raises(KeyringCorrupt, match=f"keyring of tenant '{tenant}' has no schema"):
            w.root.read_keyring(tenant)
    finally:
        current = kv_version(vault_client, path)
        if read_version(vault_client, path, current) != good_doc:
            vault_client.secrets.kv.v2.create_or_update_secret(path=path, secret=good_doc, cas=current,
                                                               mount_point=KV)
    assert w.root.get_secret(tenant, "db/password") == b"kept through it all"


def restore_runbook() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "access.md").read_text()
    match = re.search(r"<!-- restore-keyring -->\n```sh\n(.*?)```", text, re.S)
    assert match, "docs/access.md lost its keyring restore runbook"
    return match.group(1)


def test_an_admin_restores_an_overwritten_keyring_by_the_runbook(w: World, stack: DevStack,
                                                                vault_client: Any, config: Config) -> None:
    tenant = new_tenant("acc-restore")
    w.root.create_tenant(tenant, Policy(kek_residence="kv"))
    w.root.put_secret(tenant, "db/password", b"restored")
    path = keyring_path(tenant)
    good = kv_version(vault_client, path)
    doc = read_version(vault_client, path, good)
    rot = token_client(stack, w.tokens["rotation"].token).secrets.kv.v2
    # A bad write by a token that may write keyrings: a string "1" for the schema, then another tenant's name.
    rot.create_or_update_secret(path=path, secret={**doc, "schema": "1"}, cas=good, mount_point=KV)
    rot.create_or_update_secret(path=path, secret={**doc, "tenant": w.b}, cas=good + 1, mount_point=KV)
    with Keyops(config) as fresh, pytest.raises(KeyringCorrupt) as info:
        fresh.get_secret(tenant, "db/password")
    assert f"names tenant '{w.b}'" in str(info.value) and "Restoring a keyring" in str(info.value)
    proc = subprocess.run(["sh", "-c", restore_runbook()], capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": f"{Path(bao_binary()).parent}:{os.environ.get('PATH', '')}",
                               "HOME": str(stack.state_dir), "BAO_ADDR": stack.addr,
                               "BAO_TOKEN": stack.env()["VAULT_TOKEN"], "TENANT": tenant})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert kv_version(vault_client, path) == good + 3  # restored as a new version: history keeps the bad ones
    assert read_version(vault_client, path, good + 3) == doc
    with Keyops(config) as fresh:
        assert fresh.get_secret(tenant, "db/password") == b"restored"


def test_policy_apply_gives_an_existing_stack_its_history(w: World, stack: DevStack, vault_client: Any,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    tenant = new_tenant("acc-old")
    w.root.create_tenant(tenant, Policy(kek_residence="kv"))
    w.root.put_secret(tenant, "s", b"v")  # reserves DEK uses: the tenant's usage document exists from here on
    kv = vault_client.secrets.kv.v2

    def exists(doc: str) -> bool:
        try:
            return int(kv.read_secret_metadata(path=doc, mount_point=KV)["data"]["current_version"]) > 0
        except hvac.exceptions.InvalidPath:
            return False

    docs = [doc for doc in (keyring_path(tenant), f"tenants/{tenant}/usage") if exists(doc)]
    assert keyring_path(tenant) in docs
    for doc in docs:  # as a stack made before keyops kept history
        kv.update_metadata(path=doc, max_versions=0, cas_required=False, mount_point=KV)
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    log = tmp_path / "keyops-audit.jsonl"  # this module's log stays unkeyed (its last test verifies it)
    monkeypatch.setenv("KEYOPS_AUDIT_LOG", str(log))
    monkeypatch.delenv("KEYOPS_AUDIT_ANCHOR", raising=False)
    args = ["policy", "apply", "--role", "app", "--tenant", tenant]
    kept = rf"\s+{access.DOCUMENT_HISTORY} versions of {KV}/{keyring_path(tenant)} \(was the mount's default; "
    assert main([*args, "--dry-run"]) == 0
    assert re.search("would keep" + kept, capsys.readouterr().out)
    assert kv.read_secret_metadata(path=keyring_path(tenant), mount_point=KV)["data"]["max_versions"] == 0
    assert main(args) == 0
    assert re.search("kept" + kept, capsys.readouterr().out)
    for doc in [*docs, "master"]:
        meta = kv.read_secret_metadata(path=doc, mount_point=KV)["data"]
        assert meta["max_versions"] >= access.DOCUMENT_HISTORY and meta["cas_required"] is True, doc
    assert int(kv.read_configuration(mount_point=KV)["data"]["max_versions"]) >= access.SECRETS_HISTORY
    assert main([*args, "--json"]) == 0  # idempotent: nothing left to change
    again = json.loads(capsys.readouterr().out)
    assert again["changed"] is False and {c["action"] for c in again["history"]} == {"unchanged"}
    assert any(e["operation"] == "history.tenant" and e["tenant"] == tenant and e["result"] == "ok"
               for e in read_events(log))


# --- auditor -----------------------------------------------------------------------------------------


def test_auditor_reads_status_and_changes_nothing(w: World, vault_client: Any) -> None:
    aud = w.role("auditor", pin=False)
    before = snapshot(vault_client, w)
    statuses = {s.tenant: s for s in aud.status()}
    assert {w.a, w.b, w.c} <= set(statuses)
    st = statuses[w.a]
    assert st.dek.seconds_until_due > 0 and 0 <= st.dek_usage_ratio < 1 and st.kek.primary_age_days >= 0
    a = w.a
    for attempt, operation, tenant in [
        (lambda: aud.put_secret(a, "x", b"y"), "secrets.write", a),
        (lambda: aud.get_secret(a, "db/password"), "secrets.read", a),
        (lambda: aud.encrypt(a, b"x"), "usage.reserve", a),
        (lambda: rotation.rotate(aud, a, "dek"), "rotate", a),
        (lambda: reencrypt.reencrypt(aud, a), "reencrypt", a),
        (lambda: lifecycle.retire(aud, a, "dek", 1), "retire", a),
        (lambda: aud.update_policy(a, Policy(kek_residence="transit", dek_period_days=7)), "tenant.update", a),
        (lambda: access.apply_policies(aud, {"keyops-auditor": "# more"}), "policy.write", None),
    ]:
        refused_by_keyops(w, aud, attempt, operation, tenant)
    server = server_only(w.role("auditor", pin=False))
    refused_by_server(lambda: server.store.write(keyring_path(a), {"schema": 1}, cas=before[keyring_path(a)]))
    refused_by_server(lambda: server.store.read(secret_path(a, "db/password")))
    refused_by_server(lambda: server.store.transit_decrypt(transit_key_name(a), "vault:v1:AAAA", b"c"))
    refused_by_server(lambda: server.encrypt(a, b"x"))
    assert server.status(a)[0].tenant == a
    assert snapshot(vault_client, w) == before


# --- AppRole -----------------------------------------------------------------------------------------


def test_approle_credentials_bound_to_the_app_policy(w: World) -> None:
    creds = access.ensure_approle(w.root, w.root.roles, "app", w.a, token_ttl="10m")
    again = access.ensure_approle(w.root, w.root.roles, "app", w.a, token_ttl="10m")
    assert again.changed is False and again.role_id == creds.role_id and again.secret_id != creds.secret_id
    assert creds.role_name == f"keyops-app-{w.a}" and creds.policies == (f"keyops-app-{w.a}",)
    assert creds.secret_id and again.secret_id
    w.secrets_seen.extend([creds.secret_id, again.secret_id])
    config = w.config.replace(vault_token=None, vault_token_file=None, approle_role_id=creds.role_id,
                              approle_secret_id=creds.secret_id, pkcs11_pin_file=None)
    mark = len(w.events())
    with Keyops(config, audit=AuditTrail(AuditLog(w.log))) as app:
        assert app.principal.actor == f"approle:keyops-app-{w.a}"
        assert app.principal.roles == [f"app:{w.a}"]
        assert app.put_secret(w.a, "approle/check", b"via approle").changed
        with pytest.raises(NotPermitted):
            app.get_secret(w.b, "db/password")
    events = new_events(w, mark)
    assert {e["actor"] for e in events} == {f"approle:keyops-app-{w.a}"}
    assert {e["operation"] for e in events} >= {"secret.write", "access.denied"}


# --- the server's own record -------------------------------------------------------------------------


def test_openbao_audit_log_shows_the_same_operations(w: World, stack: DevStack, vault_client: Any) -> None:
    app = w.role("app-a", pin=False)
    assert app.get_secret(w.a, "api-key") == w.values[(w.a, "api-key")]
    refused_by_server(lambda: server_only(w.role("app-a", pin=False)).store.read(secret_path(w.b, "api-key")))
    rot = w.role("rotation")
    result = rotation.rotate(rot, w.b, "dek", reason="audit check")

    def hmac_of(value: str) -> str:
        resp = vault_client.adapter.post("/v1/sys/audit-hash/file", json={"input": value})
        return str((resp.get("data") or resp)["hash"])

    app_accessor, rot_accessor = hmac_of(w.tokens["app-a"].accessor), hmac_of(w.tokens["rotation"].accessor)
    entries = [json.loads(line) for line in stack.bao_audit_log.read_text().splitlines() if line.strip()]
    responses = [e for e in entries if e.get("type") == "response"]

    def seen(accessor: str, path: str, *, denied: bool) -> list[dict[str, Any]]:
        return [e for e in responses if e.get("auth", {}).get("accessor") == accessor
                and e["request"]["path"] == path and bool(e.get("error")) == denied]

    assert seen(app_accessor, f"{KV}/data/{secret_path(w.a, 'api-key')}", denied=False)
    refused = seen(app_accessor, f"{KV}/data/{secret_path(w.b, 'api-key')}", denied=True)
    assert refused and "permission denied" in refused[-1]["error"]
    assert f"keyops-app-{w.a}" in refused[-1]["auth"]["policies"]
    writes = seen(rot_accessor, f"{KV}/data/{keyring_path(w.b)}", denied=False)
    assert any(e["request"]["operation"] == "update" for e in writes)
    # ... and keyops' own trail names the same actors for the same operations.
    ours = w.events()
    assert any(e["operation"] == "rotate" and e["tenant"] == w.b and e["result"] == "ok"
               and e["actor"] == f"token:{w.tokens['rotation'].accessor}"
               and e["versions"] == {"old": result.old_version, "new": result.new_version} for e in ours)
    # The server's log carries no plaintext either (strings are HMACed).
    text = stack.bao_audit_log.read_text()
    assert w.values[(w.a, "api-key")].decode() not in text


# --- bad input ---------------------------------------------------------------------------------------


def _server_state(vault_client: Any) -> dict[str, Any]:
    state = {"policies": sorted(vault_client.sys.list_policies()["data"]["policies"]),
             "tenants": sorted(vault_client.secrets.kv.v2.list_secrets(path="tenants", mount_point=KV)["data"]["keys"])}
    try:
        state["approles"] = sorted(vault_client.auth.approle.list_roles()["data"]["keys"])
    except Exception:  # noqa: BLE001 - the AppRole mount may not exist yet; then there is nothing to compare
        state["approles"] = None
    return state


@pytest.mark.parametrize("bad", BAD_TENANTS, ids=lambda s: repr(s)[:20])
def test_bad_tenant_names_are_refused_without_change(w: World, vault_client: Any, bad: str) -> None:
    before, lines = _server_state(vault_client), len(w.events())
    roles = w.root.roles
    for attempt in (lambda: w.root.create_tenant(bad, Policy(kek_residence="transit")),
                    lambda: w.root.get_secret(bad, "db/password"),
                    lambda: w.root.put_secret(bad, "x", b"y"),
                    lambda: access.render_policies(roles, [bad], access.Mounts()),
                    lambda: access.mint_token(w.root, roles, "app", bad),
                    lambda: access.ensure_approle(w.root, roles, "app", bad),
                    lambda: rotation.rotate(w.root, bad, "dek")):
        with pytest.raises(InvalidInput) as info:
            attempt()
        message = str(info.value)
        assert "tenant" in message and "\x00" not in message and len(message) < 400
    assert _server_state(vault_client) == before
    assert len(w.events()) == lines  # refused before anything happened, so nothing to record


@pytest.mark.parametrize(("roles_toml", "named"), [
    ('[roles.app]\nscope = "tenant"\noperations = ["secrets.read", "keys.exfiltrate"]\n', "'keys.exfiltrate'"),
    ('[roles.app]\nscope = "tenant"\nincludes = ["superuser"]\n', "'superuser'"),
])
def test_a_roles_file_with_an_unknown_role_or_operation_applies_nothing(
        w: World, stack: DevStack, vault_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], roles_toml: str, named: str) -> None:
    path = tmp_path / "roles.toml"
    path.write_text("schema = 1\n" + roles_toml)
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KEYOPS_AUDIT_LOG", str(w.log))
    before = {name: vault_client.sys.read_policy(name=name)["data"]["rules"]
              for name in (f"keyops-app-{w.a}", "keyops-rotation")}
    before_state = _server_state(vault_client)
    assert main(["policy", "apply", "--roles-file", str(path), "--tenant", w.a]) == InvalidInput.exit_code
    err = capsys.readouterr().err
    assert named in err and "keyops: error:" in err and "Traceback" not in err
    assert main(["policy", "render", "--roles-file", str(path), "--tenant", w.a]) == InvalidInput.exit_code
    assert named in capsys.readouterr().err
    after = {name: vault_client.sys.read_policy(name=name)["data"]["rules"] for name in before}
    assert after == before and _server_state(vault_client) == before_state


def test_a_pin_file_readable_by_others_is_refused(w: World, stack: DevStack, tmp_path: Path,
                                                   vault_client: Any) -> None:
    loose = tmp_path / "pin"
    shutil.copy(stack.pin_file, loose)
    os.chmod(loose, 0o644)
    tenant = new_tenant("acc-pin")
    k = w.keyops(w.config.vault_token, pkcs11_pin_file=str(loose))
    with pytest.raises(ConfigError, match=r"accessible by group or others \(mode 0644\).*chmod 600"):
        k.create_tenant(tenant, Policy(kek_residence="kv"))
    assert tenant not in str(vault_client.secrets.kv.v2.list_secrets(path="tenants", mount_point=KV))
    rot = w.keyops(w.tokens["rotation"].token, pkcs11_pin_file=str(loose))
    version = kv_version(vault_client, keyring_path(w.c))
    with pytest.raises(ConfigError, match="mode 0644"):
        rotation.rotate(rot, w.c, "kek")
    assert kv_version(vault_client, keyring_path(w.c)) == version
    # An app of a transit tenant never reads the PIN: the loose file does not matter to it.
    app = w.keyops(w.tokens["app-a"].token, pkcs11_pin_file=str(loose))
    assert app.get_secret(w.a, "db/password") == w.values[(w.a, "db/password")]
    os.chmod(loose, 0o600)
    assert Config(pkcs11_pin_file=str(loose)).resolve_pkcs11_pin() == stack.pin_file.read_text().strip()


# --- the trail of this module ------------------------------------------------------------------------


def test_every_operation_left_its_event_and_none_holds_secrets(w: World, stack: DevStack) -> None:
    result = verify_log(w.log)
    assert result.ok, result.problem
    operations = {e["operation"] for e in w.events()}
    assert {"tenant.create", "kek.unwrap", "dek.unwrap", "secret.write", "secret.delete", "policy.create",
            "policy.mint_token", "policy.secret_id", "access.denied", "rotate", "reencrypt.start",
            "reencrypt.finish", "retire"} <= operations
    text = w.log.read_text()
    needles = [v.decode() for v in w.values.values()] + [s for s in w.secrets_seen if s]
    needles.append(stack.pin_file.read_text().strip())
    for tenant in (w.c,):
        keyring = w.root.read_keyring(tenant)[0]
        for kv in keyring.kek.versions:
            kek = w.root.hierarchy._kek(keyring, kv.version)
            needles += [base64.b64encode(kek).decode(), kek.hex()]
            for dv in keyring.dek.versions:
                if dv.parent_version == kv.version and dv.usable_for_decrypt:
                    dek = AeadWrapper(kek).unwrap(base64.b64decode(dv.wrapped),
                                                  crypto.key_context(tenant, "dek", dv.version))
                    needles += [base64.b64encode(dek).decode(), dek.hex()]
    for tenant in (w.a, w.b):
        keyring = w.root.read_keyring(tenant)[0]
        for dv in keyring.dek.versions:
            if dv.usable_for_decrypt:
                dek = w.root.store.transit_decrypt(transit_key_name(tenant), base64.b64decode(dv.wrapped).decode(),
                                                   crypto.key_context(tenant, "dek", dv.version))
                needles += [base64.b64encode(dek).decode(), dek.hex()]
        needles += [kv.wrapped for kv in keyring.dek.versions]
    leaked = [n[:12] + "..." for n in needles if n and n in text]
    assert not leaked
    assert "keyops:v1:" not in text and "vault:v" not in text  # no ciphertext or wrapped key either
