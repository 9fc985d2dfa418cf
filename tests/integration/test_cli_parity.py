"""The commands a user expects of the CLI (issue 9, item 4), run as the real program against the real stack."""

from __future__ import annotations

import base64
import json
import os
import pty
import subprocess
import sys
import tomllib
from pathlib import Path

import hvac
import pytest
from _rotation_support import cli_env
from _tenants import new_tenant

from keyops.dev.stack import DevStack
from keyops.model.paths import keyring_path, secret_path, transit_key_name, usage_path

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(env: dict[str, str], *args: str, data: bytes = b"", code: int = 0) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], input=data, env=env,
                          capture_output=True, timeout=180)
    assert proc.returncode == code, (args, proc.returncode, proc.stderr.decode(errors="replace"))
    assert b"Traceback" not in proc.stderr
    return proc


@pytest.fixture(scope="module")
def env(stack: DevStack) -> dict[str, str]:
    return cli_env(stack)


def kv_exists(client: hvac.Client, path: str) -> bool:
    try:
        client.secrets.kv.v2.read_secret_metadata(path=path, mount_point="keyops")
    except hvac.exceptions.InvalidPath:
        return False
    return True


def test_version_is_the_packages(env: dict[str, str]) -> None:
    import keyops

    assert "version" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dynamic"]
    assert run(env, "--version").stdout.decode() == f"keyops {keyops.__version__}\n"


def test_tenant_update_changes_the_policy_idempotently(env: dict[str, str], vault_client: hvac.Client) -> None:
    tenant = new_tenant("upd")
    run(env, "tenant", "create", tenant)
    clash = run(env, "tenant", "create", tenant, "--dek-period-days", "7", code=6)
    assert b"keyops tenant update" in clash.stderr  # the command the message names exists
    dry = run(env, "tenant", "update", tenant, "--dek-period-days", "7", "--dry-run")
    assert dry.stdout.decode().startswith(f"would update tenant {tenant}: dek_period_days 30 -> 7")
    raw = vault_client.secrets.kv.v2.read_secret_version(path=keyring_path(tenant), mount_point="keyops",
                                                         raise_on_deleted_version=True)["data"]
    assert raw["data"]["policy"]["dek_period_days"] == 30
    out = json.loads(run(env, "tenant", "update", tenant, "--dek-period-days", "7", "--json").stdout)
    assert out["changed"] and out["after"]["dek_period_days"] == 7 and out["after"]["kek_period_days"] == 90
    raw = vault_client.secrets.kv.v2.read_secret_version(path=keyring_path(tenant), mount_point="keyops",
                                                         raise_on_deleted_version=True)["data"]
    assert raw["data"]["policy"]["dek_period_days"] == 7
    run(env, "tenant", "update", tenant, "--dek-period-days", "7", "--detailed-exitcode", code=3)
    run(env, "tenant", "update", tenant, "--dek-usage-cap", "0", code=2)  # bad input changes nothing
    assert json.loads(run(env, "tenant", "show", tenant, "--json").stdout)["dek_usage_cap"] > 0


@pytest.mark.parametrize("residence", ["kv", "transit"])
def test_tenant_delete_shreds_everything_and_a_new_tenant_starts_afresh(
        env: dict[str, str], vault_client: hvac.Client, residence: str) -> None:
    tenant = new_tenant("del")
    run(env, "tenant", "create", tenant, "--residence", residence)
    run(env, "secret", "put", tenant, "db/password", data=b"old value")
    ciphertext = run(env, "encrypt", "--tenant", tenant, "--context", "c", data=b"kept by an app").stdout
    run(env, "rotate", "--tenant", tenant, "--level", "dek")

    plan = run(env, "tenant", "delete", tenant, code=2).stderr.decode()
    assert "--yes" in plan and "DEK versions 1, 2" in plan and "1 secret record" in plan
    dry = run(env, "tenant", "delete", tenant, "--dry-run").stdout.decode()
    assert dry.startswith(f"would destroy tenant {tenant}")
    assert kv_exists(vault_client, keyring_path(tenant)) and kv_exists(vault_client, secret_path(tenant, "db/password"))

    done = json.loads(run(env, "tenant", "delete", tenant, "--yes", "--json").stdout)
    assert done["changed"] and done["result"]["dek_versions"] == [1, 2]
    for path in (keyring_path(tenant), usage_path(tenant), secret_path(tenant, "db/password")):
        assert not kv_exists(vault_client, path), path
    transit_keys = vault_client.secrets.transit.list_keys()["data"]["keys"] if residence == "transit" else []
    assert transit_key_name(tenant) not in transit_keys
    run(env, "tenant", "delete", tenant, "--yes")  # re-run: nothing left, a success
    run(env, "tenant", "delete", tenant, "--yes", "--detailed-exitcode", code=3)
    events = run(env, "audit", "show", "--tenant", tenant, "--operation", "tenant.delete", "--json").stdout
    assert [json.loads(e)["result"] for e in events.splitlines()] == ["ok"]

    # The same name again: a new key history, under which nothing of the old tenant decrypts.
    run(env, "tenant", "create", tenant, "--residence", residence)
    shown = json.loads(run(env, "tenant", "show", tenant, "--json").stdout)
    assert shown["dek"]["primary"] == 1 and shown["kek"]["primary"] == 1
    run(env, "decrypt", "--tenant", tenant, "--context", "c", data=ciphertext, code=4)
    run(env, "secret", "get", tenant, "db/password", code=5)


def test_an_interrupted_delete_is_finished_and_blocks_a_new_tenant_until_then(
        env: dict[str, str], vault_client: hvac.Client) -> None:
    tenant = new_tenant("del-crash")
    run(env, "tenant", "create", tenant)
    run(env, "secret", "put", tenant, "s", data=b"v")
    # As if killed right after the shred: the keyring is gone, the records are not.
    vault_client.secrets.kv.v2.delete_metadata_and_all_versions(path=keyring_path(tenant), mount_point="keyops")
    refused = run(env, "tenant", "create", tenant, code=8).stderr.decode()
    assert f"keyops tenant delete {tenant} --yes" in refused
    assert "no keyring" in run(env, "tenant", "delete", tenant, "--dry-run").stdout.decode()
    run(env, "tenant", "delete", tenant, "--yes")
    assert not kv_exists(vault_client, secret_path(tenant, "s"))
    run(env, "tenant", "create", tenant)


def test_only_a_security_admin_deletes_a_tenant(env: dict[str, str], vault_client: hvac.Client,
                                                 tmp_path: Path) -> None:
    tenant = new_tenant("del-role")
    run(env, "tenant", "create", tenant)
    run(env, "policy", "apply", "--role", "rotation")
    run(env, "policy", "mint", "--role", "rotation", "--output", str(tmp_path / "rot.token"))
    rotation = {k: v for k, v in env.items() if k != "KEYOPS_VAULT_TOKEN_FILE"}
    rotation["VAULT_TOKEN"] = (tmp_path / "rot.token").read_text().strip()
    run(rotation, "tenant", "delete", tenant, "--yes", code=14)
    assert kv_exists(vault_client, keyring_path(tenant))


def test_master_status_and_create(env: dict[str, str], vault_client: hvac.Client) -> None:
    run(env, "tenant", "create", new_tenant("mst"))  # the master key exists from here on
    status = json.loads(run(env, "master", "status", "--json").stdout)
    assert status["exists"] and status["missing_from_token"] == []
    primary = [v for v in status["versions"] if v["version"] == status["primary"]][0]
    assert primary["state"] == "active" and primary["on_token"] is True and status["registry_id"] in primary["label"]
    raw = vault_client.secrets.kv.v2.read_secret_version(path="master", mount_point="keyops",
                                                         raise_on_deleted_version=True)["data"]["data"]
    assert raw["primary"] == status["primary"]
    assert "on token" in run(env, "master", "status").stdout.decode()
    assert run(env, "master", "create").stdout.decode().startswith("nothing to do")
    run(env, "master", "create", "--detailed-exitcode", code=3)


def test_secret_get_json_and_output_file(env: dict[str, str], tmp_path: Path) -> None:
    tenant = new_tenant("get")
    run(env, "tenant", "create", tenant)
    run(env, "secret", "put", tenant, "text", data="grüße\n".encode())
    run(env, "secret", "put", tenant, "binary", data=b"\xff\x00\x01")
    text = json.loads(run(env, "secret", "get", tenant, "text", "--json").stdout)
    assert text == {"tenant": tenant, "name": "text", "encoding": "utf-8", "value": "grüße\n"}
    binary = json.loads(run(env, "secret", "get", tenant, "binary", "--json").stdout)
    assert binary["encoding"] == "base64" and base64.b64decode(binary["value"]) == b"\xff\x00\x01"

    out = tmp_path / "value"
    out.write_text("stale, and readable by others")
    out.chmod(0o644)
    proc = run(env, "secret", "get", tenant, "binary", "--output", str(out))
    assert proc.stdout == b"" and out.read_bytes() == b"\xff\x00\x01" and out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["value"]  # no temporary file left behind
    run(env, "secret", "get", tenant, "missing", "--output", str(tmp_path / "nothing"), code=5)
    assert not (tmp_path / "nothing").exists()


def test_quiet_keeps_results_and_verbose_logs_no_secret(env: dict[str, str]) -> None:
    tenant = new_tenant("quiet")
    assert run(env, "-q", "tenant", "create", tenant).stdout == b""
    put = run(env, "secret", "put", tenant, "s", "--quiet", data=b"quiet value")
    assert put.stdout == b"" and put.stderr == b""
    assert run(env, "-q", "secret", "get", tenant, "s").stdout == b"quiet value"
    assert tenant in run(env, "tenant", "list", "-q").stdout.decode()
    loud = run(env, "-v", "secret", "get", tenant, "s")
    assert loud.stdout == b"quiet value" and b"keyops: INFO: keyops.cli: Vault at" in loud.stderr
    assert b"quiet value" not in loud.stderr and env["VAULT_TOKEN"].encode() not in loud.stderr
    run(env, "-q", "-v", "tenant", "list", code=2)  # one or the other


def _on_a_terminal(env: dict[str, str], *args: str) -> bytes:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], env=env, stdout=follower,
                              stderr=follower, timeout=180)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.returncode == 0
        return b"".join(chunks)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_colour_only_on_a_terminal_and_never_with_no_color(env: dict[str, str]) -> None:
    tenant = new_tenant("colour")
    run(env, "tenant", "create", tenant)
    assert b"\033[" in _on_a_terminal({**env, "TERM": "xterm"}, "tenant", "show", tenant)
    assert b"\033[" not in _on_a_terminal({**env, "TERM": "xterm", "NO_COLOR": "1"}, "tenant", "show", tenant)
    assert b"\033[" not in run({**env, "TERM": "xterm"}, "tenant", "show", tenant).stdout  # a pipe


def test_bash_completion_loads_and_completes(env: dict[str, str]) -> None:
    script = run(env, "completion", "bash").stdout.decode()

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in ("keyops", *words))
        probe = (f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words)}; _keyops; "
                 'printf "%s\\n" "${COMPREPLY[@]}"; complete -p keyops')
        proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", probe], capture_output=True, text=True,
                              timeout=30, check=True)
        assert proc.stderr == "", proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[-1] == "complete -o default -F _keyops keyops"
        return lines[:-1]

    assert complete("ten") == ["tenant"]
    assert set(complete("tenant", "")) == {"create", "update", "delete", "list", "show", "--help"}
    assert complete("-q", "tenant", "delete", "acme", "--y") == ["--yes"]
    assert complete("completion", "") == ["--detailed-exitcode", "--help", "--quiet", "--verbose", "bash", "zsh"]
    zsh = run(env, "completion", "zsh").stdout.decode()
    assert zsh.startswith("#compdef keyops\n") and "bashcompinit" in zsh and "_keyops()" in zsh
