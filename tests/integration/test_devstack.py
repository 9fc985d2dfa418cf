"""The embedded local stack against the real bao binary and SoftHSM2.

Checks go through independent clients (hvac, python-pkcs11, /proc, the
shell), not through DevStack's own reporting, wherever that is possible.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pkcs11
import pytest
import requests

from keyops.cli import dev as dev_cli
from keyops.dev import stack as devstack_module
from keyops.dev.stack import MASTER_KEY_PREFIX, DevStack
from keyops.errors import DevStackError

pytestmark = pytest.mark.integration

StackFactory = Callable[..., DevStack]


def _health(addr: str) -> dict[str, Any]:
    session = requests.Session()
    session.trust_env = False
    return dict(session.get(f"{addr}/v1/sys/health", timeout=5,
                            params={"sealedcode": "200", "uninitcode": "200", "standbycode": "200"}).json())


def _in_child(stack: DevStack, code: str, *args: str) -> str:
    """Python code in a child process with the stack's environment (SoftHSM2 binds one token folder per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "KEYOPS_"))}
    env.update(stack.env())
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


_KEYOPS = ("import sys\nfrom keyops.config import Config\nfrom keyops.ops.front import Keyops\n"
           "k = Keyops(Config.load())\n")


def _ensure_master(stack: DevStack) -> str:
    """The stack's master key, made through its registry as the first tenant would; its label."""
    return _in_child(stack, _KEYOPS + "registry, _ = k.ensure_master()\nprint(registry.get(registry.primary).label)\n")


def _hsm_call(stack: DevStack, op: str, data: bytes) -> bytes:
    """AES-GCM with the stack's primary master key in a child process (its own SOFTHSM2_CONF)."""
    code = _KEYOPS + (
        "k.ensure_master()\n"
        "_, master = k.master_wrapper()\n"
        "op, data = sys.argv[1], bytes.fromhex(sys.argv[2])\n"
        "print((master.wrap(data, b'ctx') if op == 'enc' else master.unwrap(data, b'ctx')).hex())\n")
    return bytes.fromhex(_in_child(stack, code, op, data.hex()))


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="keyops")
    dev_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


# --- the session stack -------------------------------------------------------------------


def test_up_serves_unsealed_openbao_with_mounts_and_audit(stack: DevStack, vault_client: Any) -> None:
    health = _health(stack.addr or "")
    assert health["initialized"] is True
    assert health["sealed"] is False
    assert health["standby"] is False

    mounts = vault_client.sys.list_mounted_secrets_engines()["data"]
    assert mounts["keyops/"]["type"] == "kv"
    assert mounts["keyops/"]["options"]["version"] == "2"
    assert mounts["transit/"]["type"] == "transit"

    devices = vault_client.sys.list_enabled_audit_devices()["data"]
    assert devices["file/"]["type"] == "file"
    assert devices["file/"]["options"]["file_path"] == str(stack.bao_audit_log)

    value = "plain-value-that-must-not-reach-the-audit-log"
    vault_client.secrets.kv.v2.create_or_update_secret(path="devstack/probe", secret={"v": value},
                                                       mount_point="keyops")
    read = vault_client.secrets.kv.v2.read_secret_version(path="devstack/probe", mount_point="keyops",
                                                          raise_on_deleted_version=True)
    assert read["data"]["data"]["v"] == value
    audit = stack.bao_audit_log.read_text()
    assert "devstack/probe" in audit
    assert value not in audit


def test_up_makes_the_audit_key_and_turns_the_anchor_on(stack: DevStack, vault_client: Any) -> None:
    key = vault_client.secrets.transit.read_key(name="keyops_audit", mount_point="transit")["data"]
    assert key["type"] == "hmac" and key["exportable"] is False and key["allow_plaintext_backup"] is False
    assert key["deletion_allowed"] is False
    env = stack.env()
    assert env["KEYOPS_AUDIT_ANCHOR"] == "auto" and env["KEYOPS_AUDIT_KEY"] == "keyops_audit"
    config = stack.config()
    assert (config.audit_anchor, config.audit_key, config.audit_log) == ("auto", "keyops_audit",
                                                                         str(stack.keyops_audit_log))


def test_server_listens_on_loopback_with_raft_storage_on_disk(stack: DevStack, vault_client: Any) -> None:
    cfg = stack.bao_config.read_text()
    assert 'storage "raft"' in cfg
    assert "tls_disable     = true" in cfg
    assert (stack.raft_dir / "vault.db").is_file() and (stack.raft_dir / "raft" / "raft.db").is_file()
    args = Path(f"/proc/{stack.running_pid()}/cmdline").read_bytes().split(b"\0")
    assert os.path.basename(args[0]) == b"bao"
    assert b"-dev" not in args
    peers = vault_client.sys.read_raft_config()["data"]["config"]["servers"]
    assert [p["node_id"] for p in peers] == ["keyops-dev"]


def test_master_key_is_sensitive_and_never_extractable(stack: DevStack, hsm_env: dict[str, str],
                                                       vault_client: Any) -> None:
    # Made through the registry (by the first tenant): named and identified by its random id.
    _ensure_master(stack)
    registry = vault_client.secrets.kv.v2.read_secret_version(path="master", mount_point="keyops",
                                                              raise_on_deleted_version=True)["data"]["data"]
    rid = registry["registry_id"]
    label = f"{MASTER_KEY_PREFIX}-{rid}-v1"
    assert registry["versions"][0]["label"] == label == stack.status().master_key_label
    lib = pkcs11.lib(hsm_env["KEYOPS_PKCS11_MODULE"])
    token = lib.get_token(token_label="keyops")
    pin = Path(hsm_env["KEYOPS_PKCS11_PIN_FILE"]).read_text().strip()
    try:
        session = token.open(user_pin=pin)
    except pkcs11.exceptions.UserAlreadyLoggedIn:  # an Hsm of this test process holds the (per-process) login
        session = token.open()
    with session:
        keys = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                                         pkcs11.Attribute.LABEL: label}))
        assert len(keys) == 1
        key = keys[0]
        assert key[pkcs11.Attribute.ID] == bytes.fromhex(rid) + (1).to_bytes(4, "big")
        assert key[pkcs11.Attribute.DESTROYABLE] is False and key[pkcs11.Attribute.MODIFIABLE] is False
        assert key[pkcs11.Attribute.KEY_TYPE] == pkcs11.KeyType.AES
        assert key[pkcs11.Attribute.VALUE_LEN] == 32
        assert key[pkcs11.Attribute.TOKEN] is True
        assert key[pkcs11.Attribute.SENSITIVE] is True
        assert key[pkcs11.Attribute.EXTRACTABLE] is False
        assert key[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
        assert key[pkcs11.Attribute.ENCRYPT] is True
        assert key[pkcs11.Attribute.DECRYPT] is True
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[pkcs11.Attribute.VALUE]
        nonce = os.urandom(12)
        params = pkcs11.mechanisms.GCMParams(nonce, b"aad", 128)
        ciphertext = key.encrypt(b"k" * 32, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
        assert key.decrypt(ciphertext, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params) == b"k" * 32


def test_secrets_are_owner_only_files(stack: DevStack) -> None:
    assert stat.S_IMODE(stack.state_dir.stat().st_mode) == 0o700
    for path in (stack.root_token_file, stack.unseal_key_file, stack.pin_file, stack.so_pin_file,
                 stack.bao_config, stack.bao_audit_log, stack.stack_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for folder in (stack.bao_dir, stack.raft_dir, stack.audit_dir, stack.softhsm_dir, stack.token_dir):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_up_twice_is_idempotent(stack: DevStack, vault_client: Any) -> None:
    pid = stack.running_pid()
    mounts_before = set(vault_client.sys.list_mounted_secrets_engines()["data"])
    info = stack.up()
    assert info.already_running is True
    assert info.pid == pid
    assert (info.initialized_now, info.unsealed_now, info.token_created, info.key_created) == (False,) * 4
    assert set(vault_client.sys.list_mounted_secrets_engines()["data"]) == mounts_before


def test_env_prints_no_secret_and_evaluates_to_the_stack(stack: DevStack,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli("dev", "env", "--state-dir", str(stack.state_dir))
    out = capsys.readouterr().out
    assert code == 0
    secrets = [stack.root_token_file, stack.unseal_key_file, stack.pin_file, stack.so_pin_file]
    for path in secrets:
        assert path.read_text().strip() not in out
    assert f'export VAULT_TOKEN="$(cat {stack.root_token_file})"' in out
    assert f"export KEYOPS_AUDIT_LOG={stack.keyops_audit_log}" in out

    check = ('eval "$1"; [ -n "$VAULT_TOKEN" ] && [ "$VAULT_TOKEN" = "$(cat "$KEYOPS_VAULT_TOKEN_FILE")" ] '
             '&& env | grep -E "^(VAULT_ADDR|SOFTHSM2_CONF|KEYOPS_[A-Z0-9_]+)="')
    proc = subprocess.run(["bash", "-c", check, "bash", out], capture_output=True, text=True, check=False,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert proc.returncode == 0, proc.stderr
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    expected = stack.env()
    expected.pop("VAULT_TOKEN")
    assert env == expected
    assert env["KEYOPS_PKCS11_TOKEN"] == "keyops"


def test_env_quotes_paths(tmp_path: Path) -> None:
    odd = DevStack(tmp_path / "with space; $(x)")
    odd.state_dir.mkdir()
    odd.stack_file.write_text(json.dumps({"port": 8200, "cluster_port": 8201}))
    odd.root_token_file.write_text("t\n")
    out = odd.shell_exports()
    proc = subprocess.run(["bash", "-c", 'eval "$1"; printf %s "$SOFTHSM2_CONF"', "bash", out],
                          capture_output=True, text=True, check=True)
    assert proc.stdout == str(odd.softhsm_conf)


def test_status_of_the_running_stack(stack: DevStack, capsys: pytest.CaptureFixture[str]) -> None:
    label = _ensure_master(stack)
    st = stack.status()
    assert st.up and st.running and st.initialized and st.sealed is False
    assert st.hsm_token_present and st.master_key_present and st.master_key_label == label
    assert st.pid == stack.running_pid()
    code = _cli("dev", "status", "--json", "--state-dir", str(stack.state_dir))
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["up"] is True and data["addr"] == stack.addr and data["version"] == 1


def test_config_talks_to_the_stack(stack: DevStack, config: Any) -> None:
    assert config.vault_addr == stack.addr
    assert config.resolve_vault_token() == stack.root_token_file.read_text().strip()
    assert config.resolve_pkcs11_pin() == stack.pin_file.read_text().strip()
    assert config.pkcs11_token_label == "keyops"
    assert config.kv_mount == "keyops" and config.transit_mount == "transit"
    assert stack.root_token_file.read_text().strip() not in repr(config)


# --- stacks of their own -----------------------------------------------------------------


def test_down_then_up_keeps_data_keys_and_port(stack_factory: StackFactory,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # The wanted default port is busy at the first up: another one is chosen and remembered.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        monkeypatch.setenv("KEYOPS_DEV_PORT", str(blocker.getsockname()[1]))
        own = stack_factory()
        first = own.up()
        assert first.port != blocker.getsockname()[1]
    assert first.initialized_now and first.token_created
    assert not first.key_created and first.master_key_label == ""  # made with its registry, not by dev up

    import hvac

    client = hvac.Client(url=first.addr, token=own.env()["VAULT_TOKEN"])
    client.secrets.kv.v2.create_or_update_secret(path="restart/probe", secret={"v": "kept"}, mount_point="keyops")
    client.secrets.transit.create_key(name="probe", mount_point="transit")
    wrapped = _hsm_call(own, "enc", b"\x01" * 32)

    stopped = own.down()
    assert stopped.stopped and stopped.pid == first.pid and not stopped.killed
    assert not Path(f"/proc/{first.pid}").exists()
    assert own.status().running is False
    code = _cli("dev", "status", "--state-dir", str(own.state_dir))
    capsys.readouterr()
    assert code == dev_cli.EXIT_NOT_RUNNING

    monkeypatch.delenv("KEYOPS_DEV_PORT")
    again = own.up()
    assert (again.port, again.cluster_port) == (first.port, first.cluster_port)
    assert not again.already_running and not again.initialized_now and again.unsealed_now
    assert not again.token_created and not again.key_created and again.master_key_label.endswith("-v1")
    client = hvac.Client(url=again.addr, token=own.env()["VAULT_TOKEN"])
    read = client.secrets.kv.v2.read_secret_version(path="restart/probe", mount_point="keyops",
                                                    raise_on_deleted_version=True)
    assert read["data"]["data"]["v"] == "kept"
    assert "probe" in client.secrets.transit.list_keys(mount_point="transit")["data"]["keys"]
    assert _hsm_call(own, "dec", wrapped) == b"\x01" * 32

    own.seal()
    assert own.status().sealed is True
    resumed = own.up()
    assert resumed.already_running and resumed.unsealed_now
    assert _health(again.addr)["sealed"] is False


def test_down_leaves_foreign_processes_alone(stack: DevStack, stack_factory: StackFactory) -> None:
    other = stack_factory()
    other.bao_dir.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        other.pid_file.write_text(f"{sleeper.pid}\n")
        result = other.down()
        assert result == devstack_module.StopInfo(stopped=False, pid=sleeper.pid, stale_pid_file=True)
        assert sleeper.poll() is None
        assert not other.pid_file.exists()
    finally:
        sleeper.kill()
        sleeper.wait()

    # A PID file naming the bao of another stack (the session's) does not stop it either.
    session_pid = stack.running_pid()
    assert session_pid is not None
    other.pid_file.write_text(f"{session_pid}\n")
    assert other.down().stale_pid_file is True
    assert stack.running_pid() == session_pid
    assert _health(stack.addr or "")["sealed"] is False

    assert other.down() == devstack_module.StopInfo(stopped=False, pid=None, stale_pid_file=False)


def test_missing_softhsm2_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack_module, "find_softhsm_module", lambda: None)
    fresh = DevStack(tmp_path / "state")
    with pytest.raises(DevStackError, match=r"apt-get install softhsm2"):
        fresh.up()
    assert fresh.running_pid() is None


def test_remembered_port_taken_by_someone_else_is_a_clear_error(tmp_path: Path) -> None:
    fresh = DevStack(tmp_path / "state")
    fresh.state_dir.mkdir()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        fresh.stack_file.write_text(json.dumps({"port": port, "cluster_port": port + 1}))
        with pytest.raises(DevStackError, match=rf"port {port} .* taken"):
            fresh.up()
    assert fresh.running_pid() is None
