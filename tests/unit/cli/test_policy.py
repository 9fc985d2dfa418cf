"""``keyops policy roles|operations|render`` need no server: pure rendering of the roles file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from keyops import access
from keyops.cli.main import main


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VAULT_ADDR", "VAULT_TOKEN", "KEYOPS_ROLES_FILE", "KEYOPS_KV_MOUNT", "KEYOPS_TRANSIT_MOUNT",
                 "KEYOPS_CONFIG", "KEYOPS_AUDIT_KV_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:9")  # nothing listens: any request would fail


def test_render_named_tenants_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "render", "--role", "app", "--tenant", "acme", "--tenant", "globex", "--json"]) == 0
    policies = json.loads(capsys.readouterr().out)
    assert sorted(policies) == ["keyops-app-acme", "keyops-app-globex"]
    assert policies["keyops-app-acme"] == access.render_policy(access.load_roles(env={}).get("app"), "acme",
                                                               access.Mounts())
    assert main(["policy", "render", "--role", "auditor", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# keyops-auditor:") and 'path "keyops/metadata/tenants/"' in out


def test_render_follows_the_configured_mounts(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEYOPS_KV_MOUNT", "kms")
    monkeypatch.setenv("KEYOPS_TRANSIT_MOUNT", "kms-transit")
    assert main(["policy", "render", "--role", "app", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    assert 'path "kms/data/tenants/acme/keyring"' in out and 'path "kms-transit/decrypt/keyops-acme"' in out


def test_roles_and_operations_listings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "roles", "--json"]) == 0
    roles = {r["name"]: r for r in json.loads(capsys.readouterr().out)["roles"]}
    assert roles["app"]["policy"] == "keyops-app-<tenant>" and roles["auditor"]["hsm_pin"] == "never"
    assert main(["policy", "operations", "--json"]) == 0
    ops = {o["name"]: o for o in json.loads(capsys.readouterr().out)}
    assert set(ops) == set(access.OPERATIONS)
    assert ops["dek.unwrap"]["paths"] == {"transit/decrypt/keyops-<tenant>": ["update"],
                                          "keyops/data/tenants/<tenant>/keyring": ["read"],
                                          "keyops/data/tenants/<tenant>/usage": ["read"]}
    assert ops["usage.reserve"]["paths"]["keyops/data/tenants/<tenant>/usage"] == ["create", "read", "update"]
    assert ops["usage.reserve"]["paths"]["keyops/data/tenants/<tenant>/keyring"] == ["read"]  # never written
    assert main(["policy", "roles"]) == 0
    assert "PIN: no" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["a/../b", "ACME", "x" * 10_000, "аcme", "a\x00b"])
def test_render_refuses_bad_tenants(capsys: pytest.CaptureFixture[str], bad: str) -> None:
    assert main(["policy", "render", "--tenant", bad]) == 2
    err = capsys.readouterr().err
    assert "tenant name" in err and "\x00" not in err and len(err) < 400


def test_render_refuses_a_bad_roles_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "roles.toml"
    path.write_text('schema = 1\n[roles.app]\nscope = "tenant"\noperations = ["secrets.read", "everything"]\n')
    assert main(["policy", "render", "--roles-file", str(path), "--tenant", "acme"]) == 2
    assert "unknown operation 'everything'" in capsys.readouterr().err
    assert main(["policy", "render", "--role", "nobody", "--tenant", "acme"]) == 2
    assert "unknown role 'nobody'" in capsys.readouterr().err


def test_root_kms_renders_the_kms_tokens_policy_offline(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KEYOPS_ROOT_TRANSIT_MOUNT", "kms-transit")
    monkeypatch.setenv("KEYOPS_ROOT_TRANSIT_KEY", "prod_root")
    assert main(["policy", "root-kms"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# keyops-root-kms:")
    paths = [line for line in out.splitlines() if line.startswith("path ")]
    assert paths == ['path "kms-transit/decrypt/prod_root" {', 'path "kms-transit/encrypt/prod_root" {']
    assert out.count('capabilities = ["update"]') == 2  # no "create": a mistyped key is not made on encrypt
    monkeypatch.setenv("KEYOPS_ROOT_TRANSIT_KEY", "a/../b")
    assert main(["policy", "root-kms"]) == 2
    assert "not one plain Transit key name" in capsys.readouterr().err
