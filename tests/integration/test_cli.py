"""The ``keyops`` command line, run as a program against the shared stack (and a stack of its own for ``dev``).

The forms tested here are the ones scripts and docs rely on (issue 2, item 8):
values travel by stdin and stdout only, messages and errors go to stderr,
errors exit non-zero with the error's own code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyops.cli.main import build_parser, main
from keyops.devstack import DevStack, free_port
from keyops.errors import ConfigError, DecryptionError, InvalidInput, SecretNotFound, TenantExists, TenantNotFound

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]


def new_tenant(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def env(stack: DevStack) -> dict[str, str]:
    return {**os.environ, **stack.env()}


Run = Callable[..., subprocess.CompletedProcess[bytes]]


@pytest.fixture(scope="module")
def run(env: dict[str, str]) -> Run:
    def _run(*args: str, data: bytes = b"", code: int = 0, environ: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run([*KEYOPS, *args], input=data, env=environ or env, capture_output=True, timeout=120)
        assert proc.returncode == code, (args, proc.returncode, proc.stderr.decode(errors="replace"))
        assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
        return proc
    return _run


@pytest.fixture(scope="module")
def tenant(run: Run) -> str:
    name = new_tenant()
    run("tenant", "create", name)
    return name


# --- help ----------------------------------------------------------------------------------------------


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, (*path, name))


def test_help_on_every_command_and_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    paths = list(command_paths(build_parser()))
    required = {(), ("dev",), ("dev", "up"), ("dev", "down"), ("dev", "status"), ("dev", "env"), ("tenant",),
                ("tenant", "create"), ("tenant", "list"), ("tenant", "show"), ("secret",), ("secret", "put"),
                ("secret", "get"), ("secret", "list"), ("secret", "delete"), ("encrypt",), ("decrypt",), ("status",)}
    assert required <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as info:
            main([*path, "--help"])
        assert info.value.code == 0, path
        out = capsys.readouterr().out
        assert out.startswith("usage: keyops" + "".join(f" {p}" for p in path)), (path, out[:200])


def test_help_through_the_installed_program() -> None:
    program = Path(sys.executable).parent / "keyops"
    assert program.is_file(), "the keyops entry point of pyproject.toml is not installed"
    for args in (["--help"], ["secret", "get", "--help"], ["tenant", "create", "--help"]):
        proc = subprocess.run([str(program), *args], capture_output=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith(b"usage: keyops"), proc.stderr
    assert b"--residence {kv,transit}" in proc.stdout and b"--dek-usage-cap" in proc.stdout


@pytest.mark.parametrize("args", [[], ["tenant"], ["secret", "get"], ["bogus"]])
def test_usage_errors_exit_2_on_stderr(run: Run, args: list[str]) -> None:
    proc = run(*args, code=2)
    assert proc.stdout == b"" and b"usage: keyops" in proc.stderr


# --- tenant --------------------------------------------------------------------------------------------


def test_tenant_create_list_show(run: Run) -> None:
    kv, transit = new_tenant("clikv"), new_tenant("clitr")
    planned = run("tenant", "create", kv, "--dry-run")
    assert f"would create tenant {kv}".encode() in planned.stdout
    run("tenant", "show", kv, code=TenantNotFound.exit_code)

    created = run("tenant", "create", kv)
    assert created.stdout.decode() == f"created tenant {kv}: KEK v1 (kv), DEK v1\n"
    created = run("tenant", "create", transit, "--residence", "transit", "--kek-period-days", "60",
                  "--dek-period-days", "7", "--dek-usage-cap", "1000", "--json")
    assert json.loads(created.stdout) == {"tenant": transit, "changed": True, "dry_run": False,
                                          "kek_version": 1, "dek_version": 1}
    again = run("tenant", "create", kv)
    assert b"already exists" in again.stdout
    again = json.loads(run("tenant", "create", transit, "--residence", "transit", "--kek-period-days", "60",
                           "--dek-period-days", "7", "--dek-usage-cap", "1000", "--json").stdout)
    assert again["changed"] is False
    clash = run("tenant", "create", kv, "--dek-period-days", "5", code=TenantExists.exit_code)
    assert clash.stdout == b"" and b"another policy" in clash.stderr

    listed = run("tenant", "list").stdout.decode().splitlines()
    assert kv in listed and transit in listed
    assert {kv, transit} <= set(json.loads(run("tenant", "list", "--json").stdout))

    table = run("tenant", "show", transit).stdout.decode()
    assert table.splitlines()[0].split()[:3] == ["TENANT", "LEVEL", "VER"]
    rows = [line.split() for line in table.splitlines()[1:]]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(transit, "kek", "1*", "active"), (transit, "dek", "1*", "active")]
    shown = json.loads(run("tenant", "show", transit, "--json").stdout)
    assert shown["tenant"] == transit and shown["residence"] == "transit"
    assert shown["policy"] == {"kek_residence": "transit", "kek_period_days": 60, "dek_period_days": 7,
                               "dek_usage_cap": 1000}


@pytest.mark.parametrize("name", ["a/b", "x" * 100, "\u0430cme"])
def test_tenant_create_refuses_bad_names(run: Run, name: str) -> None:
    proc = run("tenant", "create", name, code=InvalidInput.exit_code)
    assert proc.stdout == b"" and proc.stderr.startswith(b"keyops: error: ") and b"tenant name" in proc.stderr


def test_tenant_create_refuses_bad_policy(run: Run) -> None:
    proc = run("tenant", "create", new_tenant(), "--dek-usage-cap", "0", code=InvalidInput.exit_code)
    assert b"dek_usage_cap" in proc.stderr
    proc = run("tenant", "create", new_tenant(), "--residence", "s3", code=2)
    assert b"invalid choice" in proc.stderr


# --- secret --------------------------------------------------------------------------------------------------


def test_secret_put_get_list_delete(run: Run, tenant: str) -> None:
    binary = b"\x00\x01binary\x00value\xff\xfe\n\r\x00"  # NULs, invalid UTF-8, no trailing newline added
    put = run("secret", "put", tenant, "app/blob", data=binary)
    assert put.stdout == b"" and f"{tenant}/app/blob: stored".encode() in put.stderr
    assert run("secret", "get", tenant, "app/blob").stdout == binary
    run("secret", "put", tenant, "app/no-newline", data=b"abc")
    assert run("secret", "get", tenant, "app/no-newline").stdout == b"abc"
    run("secret", "put", tenant, "empty", data=b"")
    assert run("secret", "get", tenant, "empty").stdout == b""
    unchanged = run("secret", "put", tenant, "app/blob", data=binary)
    assert b"unchanged" in unchanged.stderr
    result = json.loads(run("secret", "put", tenant, "app/blob", "--json", data=b"v2").stdout)
    assert result["changed"] is True and result["version"] == 2 and result["dek_version"] == 1
    planned = json.loads(run("secret", "put", tenant, "planned", "--dry-run", "--json", data=b"x").stdout)
    assert planned["changed"] is True and planned["dry_run"] is True
    run("secret", "get", tenant, "planned", code=SecretNotFound.exit_code)

    assert run("secret", "list", tenant).stdout.decode().splitlines() == ["app/blob", "app/no-newline", "empty"]
    assert json.loads(run("secret", "list", tenant, "--json", "--prefix", "app").stdout) == \
        ["app/blob", "app/no-newline"]

    deleted = run("secret", "delete", tenant, "app/no-newline")
    assert f"{tenant}/app/no-newline: deleted".encode() in deleted.stderr
    missing = run("secret", "get", tenant, "app/no-newline", code=SecretNotFound.exit_code)
    assert missing.stdout == b"" and b"has no secret 'app/no-newline'" in missing.stderr
    again = run("secret", "delete", tenant, "app/no-newline")
    assert b"not present" in again.stderr
    assert json.loads(run("secret", "delete", tenant, "empty", "--dry-run", "--json").stdout)["changed"] is True
    assert run("secret", "list", tenant, "--json").stdout.count(b"empty") == 1


def test_secret_errors(run: Run, tenant: str) -> None:
    ghost = new_tenant("ghost")
    for args in (("secret", "get", ghost, "s"), ("secret", "list", ghost)):
        proc = run(*args, code=TenantNotFound.exit_code)
        assert proc.stdout == b"" and f"keyops tenant create {ghost}".encode() in proc.stderr
    proc = run("secret", "put", tenant, "../escape", data=b"v", code=InvalidInput.exit_code)
    assert b"invalid secret name" in proc.stderr and proc.stdout == b""
    proc = run("secret", "get", tenant, "a//b", code=InvalidInput.exit_code)
    assert b"invalid secret name" in proc.stderr


# --- encrypt / decrypt -----------------------------------------------------------------------------------


def test_encrypt_decrypt(run: Run, tenant: str) -> None:
    data = b"\x00line one\nline two\n\xff"
    text = run("encrypt", "--tenant", tenant, "--context", "orders/7", data=data).stdout
    assert text.startswith(f"keyops:v1:{tenant}:1:".encode()) and text.endswith(b"\n") and text.count(b"\n") == 1
    assert run("decrypt", "--tenant", tenant, "--context", "orders/7", data=text).stdout == data
    binary = run("encrypt", "--tenant", tenant, "--context", "orders/7", "--binary", data=data).stdout
    assert binary[:1] == b"\x01" and binary[2:2 + len(tenant)] == tenant.encode()
    assert run("decrypt", "--tenant", tenant, "--context", "orders/7", data=binary).stdout == data
    big = os.urandom(1 << 20)  # and without --context
    assert run("decrypt", "--tenant", tenant, data=run("encrypt", "--tenant", tenant, data=big).stdout).stdout == big


def test_decrypt_errors(run: Run, tenant: str) -> None:
    other = new_tenant("other")
    run("tenant", "create", other)
    text = run("encrypt", "--tenant", tenant, "--context", "c", data=b"secret data").stdout
    for args, data in ((("--tenant", tenant, "--context", "d"), text), (("--tenant", tenant), text),
                       (("--tenant", other, "--context", "c"), text),
                       (("--tenant", other, "--context", "c"), text.replace(tenant.encode(), other.encode()))):
        proc = run("decrypt", *args, data=data, code=DecryptionError.exit_code)
        assert proc.stdout == b""
        assert proc.stderr == (b"keyops: error: decryption failed: the ciphertext is not authentic for this "
                               b"tenant, key version and context\n")
    for garbage in (b"hello", b"keyops:v2:" + text[10:]):
        proc = run("decrypt", "--tenant", tenant, "--context", "c", data=garbage, code=InvalidInput.exit_code)
        assert proc.stdout == b"" and proc.stderr.startswith(b"keyops: error: ")
    proc = run("encrypt", "--tenant", tenant, "--context", "c" * 5000, data=b"x", code=InvalidInput.exit_code)
    assert b"context" in proc.stderr


# --- status ------------------------------------------------------------------------------------------------------


def test_status(run: Run, tenant: str) -> None:
    table = run("status").stdout.decode()
    assert table.splitlines()[0].split() == ["TENANT", "LEVEL", "VER", "STATE", "AGE(d)", "USES", "DUE"]
    assert any(line.startswith(tenant) for line in table.splitlines())
    only = run("status", "--tenant", tenant).stdout.decode().splitlines()[1:]
    assert len(only) == 2 and all(line.split()[0] == tenant for line in only)

    doc = json.loads(run("status", "--json").stdout)
    assert doc["schema"] == 1 and isinstance(doc["tenants"], list)
    (mine,) = [t for t in doc["tenants"] if t["tenant"] == tenant]
    assert set(mine) >= {"tenant", "residence", "policy", "created_at", "kek", "dek", "dek_usage", "dek_usage_cap", "due"}
    assert mine["residence"] == "kv" and mine["due"] == []
    for level in ("kek", "dek"):
        assert set(mine[level]) >= {"level", "primary", "period_days", "next_due", "versions"}
        assert mine[level]["primary"] == 1
        (version,) = mine[level]["versions"]
        assert set(version) >= {"version", "state", "created_at", "age_days", "parent_version", "uses"}
        assert version["state"] == "active" and version["age_days"] >= 0
    assert isinstance(mine["dek_usage"], int) and mine["dek_usage_cap"] == mine["policy"]["dek_usage_cap"]

    single = json.loads(run("status", "--tenant", tenant, "--json").stdout)
    assert [t["tenant"] for t in single["tenants"]] == [tenant]
    ghost = run("status", "--tenant", new_tenant("ghost"), "--json", code=TenantNotFound.exit_code)
    assert ghost.stdout == b"" and json.loads(ghost.stderr)["error"] == "tenant_not_found"


def test_configuration_errors(run: Run, env: dict[str, str], tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k not in ("VAULT_TOKEN", "BAO_TOKEN", "KEYOPS_VAULT_TOKEN_FILE")}
    bare["HOME"] = str(tmp_path)  # no ~/.vault-token either
    proc = run("tenant", "list", code=ConfigError.exit_code, environ=bare)
    assert b"no Vault token" in proc.stderr and b"VAULT_TOKEN" in proc.stderr
    bad_addr = {**env, "VAULT_ADDR": "127.0.0.1:8200"}
    proc = run("tenant", "list", code=ConfigError.exit_code, environ=bad_addr)
    assert b"must start with http" in proc.stderr


# --- dev -----------------------------------------------------------------------------------------------------


def test_dev_up_status_env_down(stack_factory: Callable[..., DevStack], env: dict[str, str], run: Run) -> None:
    state = stack_factory().state_dir  # the factory stops it at the end, should anything below fail
    port = free_port()
    base = {k: v for k, v in env.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_", "SOFTHSM2"))}
    up = run("dev", "up", "--state-dir", str(state), "--port", str(port), environ=base)
    assert f"at http://127.0.0.1:{port}".encode() in up.stdout and b'eval "$(keyops dev env' in up.stdout
    again = json.loads(run("dev", "up", "--state-dir", str(state), "--json", environ=base).stdout)
    assert again["already_running"] is True and again["port"] == port and again["initialized_now"] is False

    status = json.loads(run("dev", "status", "--state-dir", str(state), "--json", environ=base).stdout)
    assert status["running"] is True and status["sealed"] is False and status["hsm_token_present"] is True

    exports = run("dev", "env", "--state-dir", str(state), environ=base).stdout.decode()
    token = (state / "root-token").read_text().strip()
    assert token not in exports and "export VAULT_ADDR=" in exports
    # The printed environment works for a shell: create a tenant and round-trip a secret through it.
    tenant = new_tenant("devenv")
    script = (f'eval "$({" ".join(KEYOPS)} dev env --state-dir {state})" && '
              f"{' '.join(KEYOPS)} tenant create {tenant} >/dev/null && "
              f"printf 'dev value' | {' '.join(KEYOPS)} secret put {tenant} s 2>/dev/null && "
              f"{' '.join(KEYOPS)} secret get {tenant} s")
    proc = subprocess.run(["bash", "-c", script], env=base, capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == b"dev value", proc.stderr

    down = run("dev", "down", "--state-dir", str(state), environ=base)
    assert b"stopped bao" in down.stdout
    stopped = run("dev", "status", "--state-dir", str(state), code=3, environ=base)
    assert b"not running" in stopped.stdout
    assert b"not running" in run("dev", "down", "--state-dir", str(state), environ=base).stdout
