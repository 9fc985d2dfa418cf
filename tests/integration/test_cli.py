"""The ``keyops`` command line, run as a program against the shared stack (and a stack of its own for ``dev``).

The forms tested here are the ones scripts and docs rely on (issue 2, item 8):
values travel by stdin and stdout only, messages and errors go to stderr,
errors exit non-zero with the error's own code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _tenants import new_tenant

from keyops.cli.main import build_parser, main
from keyops.dev.stack import DevStack, free_port
from keyops.errors import ConfigError, DecryptionError, InvalidInput, SecretNotFound, TenantExists, TenantNotFound

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]


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


Many = Callable[..., list[subprocess.CompletedProcess[bytes]]]


@pytest.fixture(scope="module")
def many(run: Run) -> Many:
    """Independent commands side by side (the suite would wait on each child): ``many((args, stdin, code), ...)``."""
    def _many(*commands: tuple[tuple[str, ...], bytes, int]) -> list[subprocess.CompletedProcess[bytes]]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            return list(pool.map(lambda c: run(*c[0], data=c[1], code=c[2]), commands))
    return _many


@pytest.fixture(scope="module")
def tenant(run: Run) -> str:
    name = new_tenant("cli")
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
    proc = subprocess.run([str(program), "tenant", "create", "--help"], capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(b"usage: keyops tenant create"), proc.stderr
    assert b"--residence {kv,transit}" in proc.stdout and b"--dek-usage-cap" in proc.stdout


@pytest.mark.parametrize("args", [[], ["secret", "get"]])
def test_usage_errors_exit_2_on_stderr(run: Run, args: list[str]) -> None:
    proc = run(*args, code=2)
    assert proc.stdout == b"" and b"usage: keyops" in proc.stderr


# --- tenant --------------------------------------------------------------------------------------------


def test_tenant_create_list_show(many: Many) -> None:
    kv, transit = new_tenant("clikv"), new_tenant("clitr")
    transit_args = ("tenant", "create", transit, "--residence", "transit", "--kek-period-days", "60",
                    "--dek-period-days", "7", "--dek-usage-cap", "1000", "--json")
    planned, _ = many((("tenant", "create", kv, "--dry-run"), b"", 0),
                      (("tenant", "show", kv), b"", TenantNotFound.exit_code))
    assert f"would create tenant {kv}".encode() in planned.stdout

    created_kv, created_transit = many((("tenant", "create", kv), b"", 0), (transit_args, b"", 0))
    assert created_kv.stdout.decode() == f"created tenant {kv}: KEK v1 (kv), DEK v1\n"
    assert json.loads(created_transit.stdout) == {"tenant": transit, "changed": True, "dry_run": False,
                                                  "kek_version": 1, "dek_version": 1}

    again, again_json, clash, listed, listed_json, table, shown = many(
        (("tenant", "create", kv), b"", 0), (transit_args, b"", 0),
        (("tenant", "create", kv, "--dek-period-days", "5"), b"", TenantExists.exit_code),
        (("tenant", "list"), b"", 0), (("tenant", "list", "--json"), b"", 0),
        (("tenant", "show", transit), b"", 0), (("tenant", "show", transit, "--json"), b"", 0))
    assert b"already exists" in again.stdout
    assert json.loads(again_json.stdout)["changed"] is False
    assert clash.stdout == b"" and b"another policy" in clash.stderr
    assert {kv, transit} <= set(listed.stdout.decode().splitlines())
    assert {kv, transit} <= set(json.loads(listed_json.stdout))
    lines = table.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["TENANT", "LEVEL", "VER"]
    rows = [line.split() for line in lines[1:]]
    assert [tuple(r[:4]) for r in rows] == [(transit, "kek", "1*", "active"), (transit, "dek", "1*", "active")]
    doc = json.loads(shown.stdout)
    assert doc["tenant"] == transit and doc["residence"] == "transit"
    assert doc["policy"] == {"kek_residence": "transit", "kek_period_days": 60, "dek_period_days": 7,
                             "dek_usage_cap": 1000}


@pytest.mark.parametrize("name", ["\u0430cme"])  # Cyrillic a; the others are unit-tested
def test_tenant_create_refuses_bad_names(run: Run, name: str) -> None:
    proc = run("tenant", "create", name, code=InvalidInput.exit_code)
    assert proc.stdout == b"" and proc.stderr.startswith(b"keyops: error: ") and b"tenant name" in proc.stderr


def test_tenant_create_refuses_bad_policy(run: Run) -> None:
    proc = run("tenant", "create", new_tenant("cli"), "--dek-usage-cap", "0", code=InvalidInput.exit_code)
    assert b"dek_usage_cap" in proc.stderr


# --- secret --------------------------------------------------------------------------------------------------


def test_secret_put_get_list_delete(many: Many, tenant: str) -> None:
    binary = b"\x00\x01binary\x00value\xff\xfe\n\r\x00"  # NULs, invalid UTF-8, no trailing newline added
    put, _, _ = many((("secret", "put", tenant, "app/blob"), binary, 0),
                     (("secret", "put", tenant, "app/no-newline"), b"abc", 0),
                     (("secret", "put", tenant, "empty"), b"", 0))
    assert put.stdout == b"" and f"{tenant}/app/blob: stored".encode() in put.stderr

    got_blob, got_abc, got_empty, unchanged, planned = many(
        (("secret", "get", tenant, "app/blob"), b"", 0), (("secret", "get", tenant, "app/no-newline"), b"", 0),
        (("secret", "get", tenant, "empty"), b"", 0), (("secret", "put", tenant, "app/blob"), binary, 0),
        (("secret", "put", tenant, "planned", "--dry-run", "--json"), b"x", 0))
    assert (got_blob.stdout, got_abc.stdout, got_empty.stdout) == (binary, b"abc", b"")
    assert b"unchanged" in unchanged.stderr
    planned_doc = json.loads(planned.stdout)
    assert planned_doc["changed"] is True and planned_doc["dry_run"] is True

    changed, _, listed, listed_json = many(
        (("secret", "put", tenant, "app/blob", "--json"), b"v2", 0),
        (("secret", "get", tenant, "planned"), b"", SecretNotFound.exit_code),
        (("secret", "list", tenant), b"", 0), (("secret", "list", tenant, "--json", "--prefix", "app"), b"", 0))
    result = json.loads(changed.stdout)
    assert result["changed"] is True and result["version"] == 2 and result["dek_version"] == 1
    assert listed.stdout.decode().splitlines() == ["app/blob", "app/no-newline", "empty"]
    assert json.loads(listed_json.stdout) == ["app/blob", "app/no-newline"]

    deleted, dry = many((("secret", "delete", tenant, "app/no-newline"), b"", 0),
                        (("secret", "delete", tenant, "empty", "--dry-run", "--json"), b"", 0))
    assert f"{tenant}/app/no-newline: deleted".encode() in deleted.stderr
    assert json.loads(dry.stdout)["changed"] is True

    missing, again, after = many((("secret", "get", tenant, "app/no-newline"), b"", SecretNotFound.exit_code),
                                 (("secret", "delete", tenant, "app/no-newline"), b"", 0),
                                 (("secret", "list", tenant, "--json"), b"", 0))
    assert missing.stdout == b"" and b"has no secret 'app/no-newline'" in missing.stderr
    assert b"not present" in again.stderr
    assert json.loads(after.stdout) == ["app/blob", "empty"]


def test_secret_errors(run: Run, tenant: str) -> None:
    ghost = new_tenant("ghost")
    proc = run("secret", "list", ghost, code=TenantNotFound.exit_code)
    assert proc.stdout == b"" and f"keyops tenant create {ghost}".encode() in proc.stderr
    proc = run("secret", "put", tenant, "../escape", data=b"v", code=InvalidInput.exit_code)
    assert b"invalid secret name" in proc.stderr and proc.stdout == b""


# --- encrypt / decrypt -----------------------------------------------------------------------------------


def test_encrypt_decrypt(many: Many, tenant: str) -> None:
    data = b"\x00line one\nline two\n\xff"
    big = os.urandom(1 << 20)
    text, binary, big_text = (p.stdout for p in many(
        (("encrypt", "--tenant", tenant, "--context", "orders/7"), data, 0),
        (("encrypt", "--tenant", tenant, "--context", "orders/7", "--binary"), data, 0),
        (("encrypt", "--tenant", tenant), big, 0)))  # and without --context
    assert text.startswith(f"keyops:v1:{tenant}:1:".encode()) and text.endswith(b"\n") and text.count(b"\n") == 1
    assert binary[:1] == b"\x01" and binary[2:2 + len(tenant)] == tenant.encode()
    decrypted = many((("decrypt", "--tenant", tenant, "--context", "orders/7"), text, 0),
                     (("decrypt", "--tenant", tenant, "--context", "orders/7"), binary, 0),
                     (("decrypt", "--tenant", tenant), big_text, 0))
    assert [p.stdout for p in decrypted] == [data, data, big]


def test_decrypt_errors(run: Run, many: Many, tenant: str) -> None:
    other = new_tenant("other")
    run("tenant", "create", other)
    text = run("encrypt", "--tenant", tenant, "--context", "c", data=b"secret data").stdout
    relabelled = text.replace(tenant.encode(), other.encode())
    not_authentic = many((("decrypt", "--tenant", tenant, "--context", "d"), text, DecryptionError.exit_code),
                         (("decrypt", "--tenant", other, "--context", "c"), text, DecryptionError.exit_code),
                         (("decrypt", "--tenant", other, "--context", "c"), relabelled, DecryptionError.exit_code))
    for proc in not_authentic:
        assert proc.stdout == b""
        assert proc.stderr == (b"keyops: error: decryption failed: the ciphertext is not authentic for this "
                               b"tenant, key version and context\n")
    malformed, long_context = many(
        (("decrypt", "--tenant", tenant, "--context", "c"), b"keyops:v2:" + text[10:], InvalidInput.exit_code),
        (("encrypt", "--tenant", tenant, "--context", "c" * 5000), b"x", InvalidInput.exit_code))
    assert malformed.stdout == b"" and malformed.stderr.startswith(b"keyops: error: unknown ciphertext format")
    assert b"context" in long_context.stderr


# --- status ------------------------------------------------------------------------------------------------------


def test_status(many: Many, tenant: str) -> None:
    ghost = new_tenant("ghost")
    everything, only, as_json, single, missing = many(
        (("status",), b"", 0), (("status", "--tenant", tenant), b"", 0), (("status", "--json"), b"", 0),
        (("status", "--tenant", tenant, "--json"), b"", 0),
        (("status", "--tenant", ghost, "--json"), b"", TenantNotFound.exit_code))
    table = everything.stdout.decode().splitlines()
    assert table[0].split() == ["TENANT", "LEVEL", "VER", "STATE", "AGE(d)", "USES", "DUE"]
    assert any(line.startswith(tenant) for line in table)
    rows = only.stdout.decode().splitlines()[1:]
    assert len(rows) == 2 and all(line.split()[0] == tenant for line in rows)

    doc = json.loads(as_json.stdout)
    assert doc["schema"] == 1 and isinstance(doc["tenants"], list)
    (mine,) = [t for t in doc["tenants"] if t["tenant"] == tenant]
    assert set(mine) >= {"tenant", "residence", "policy", "created_at", "kek", "dek", "dek_usage", "dek_usage_cap",
                         "due"}
    assert mine["residence"] == "kv" and mine["due"] == []
    for level in ("kek", "dek"):
        assert set(mine[level]) >= {"level", "primary", "period_days", "next_due", "versions"}
        assert mine[level]["primary"] == 1
        (version,) = mine[level]["versions"]
        assert set(version) >= {"version", "state", "created_at", "age_days", "parent_version", "uses"}
        assert version["state"] == "active" and version["age_days"] >= 0
    assert isinstance(mine["dek_usage"], int) and mine["dek_usage_cap"] == mine["policy"]["dek_usage_cap"]

    assert [t["tenant"] for t in json.loads(single.stdout)["tenants"]] == [tenant]
    assert missing.stdout == b"" and json.loads(missing.stderr)["error"] == "tenant_not_found"


def test_configuration_errors(run: Run, env: dict[str, str], tmp_path: Path) -> None:
    bare = {k: v for k, v in env.items() if k not in ("VAULT_TOKEN", "BAO_TOKEN", "KEYOPS_VAULT_TOKEN_FILE")}
    bare["HOME"] = str(tmp_path)  # no ~/.vault-token either
    proc = run("tenant", "list", code=ConfigError.exit_code, environ=bare)
    assert b"no Vault token" in proc.stderr and b"VAULT_TOKEN" in proc.stderr


# --- dev -----------------------------------------------------------------------------------------------------


def test_dev_up_status_env_down(stack_factory: Callable[..., DevStack], env: dict[str, str], run: Run) -> None:
    state = stack_factory().state_dir  # the factory stops it at the end, should anything below fail
    port = free_port()
    base = {k: v for k, v in env.items() if not k.startswith(("VAULT_", "BAO_", "KEYOPS_", "SOFTHSM2"))}
    up = run("dev", "up", "--state-dir", str(state), "--port", str(port), environ=base)
    assert f"at http://127.0.0.1:{port}".encode() in up.stdout and b'eval "$(keyops dev env' in up.stdout

    status = json.loads(run("dev", "status", "--state-dir", str(state), "--json", environ=base).stdout)
    assert status["running"] is True and status["sealed"] is False and status["hsm_token_present"] is True

    exports = run("dev", "env", "--state-dir", str(state), environ=base).stdout.decode()
    token = (state / "root-token").read_text().strip()
    assert token not in exports and "export VAULT_ADDR=" in exports
    # The printed environment works for a shell: Vault and the HSM token are both reached through it.
    tenant = new_tenant("devenv")
    script = f'eval "$({" ".join(KEYOPS)} dev env --state-dir {state})" && {" ".join(KEYOPS)} tenant create {tenant}'
    proc = subprocess.run(["bash", "-c", script], env=base, capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.decode() == f"created tenant {tenant}: KEK v1 (kv), DEK v1\n", \
        proc.stderr

    down = run("dev", "down", "--state-dir", str(state), environ=base)
    assert b"stopped bao" in down.stdout
    stopped = run("dev", "status", "--state-dir", str(state), code=3, environ=base)
    assert b"not running" in stopped.stdout
