"""The role keyops_kms_plugin through real ansible-playbook, and the unit it renders run for real.

The test machine has no systemd, so the role runs with ``service_manager:
none`` (it writes the environment file and the unit and starts nothing); the
test then starts the unit's own ``ExecStart`` with its ``EnvironmentFile``,
as systemd would, and calls the socket with the KMS v2 client.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from keyops import access
from keyops.config import Config
from keyops.kms.v2 import api_pb2, api_pb2_grpc
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name: value for name, value in pairs}


def test_the_role_renders_a_unit_that_serves_the_tenant(ansible_playbook: Any, config: Config, stack: Any,
                                                         tenant_name: str, tmp_path: Path, find_leaks: Any) -> None:
    with Keyops(config) as root:
        root.create_tenant(tenant_name)
        access.apply_policies(root, access.render_policies(root.roles, [tenant_name],
                                                           access.Mounts.from_config(config)))
        token = access.mint_token(root, root.roles, "app", tenant_name, ttl="30m").token
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    settings = {name: value for name, value in stack.env().items()
                if name in ("VAULT_ADDR", "SOFTHSM2_CONF", "KEYOPS_PKCS11_MODULE", "KEYOPS_PKCS11_TOKEN",
                            "KEYOPS_PKCS11_PIN_FILE")}
    role_vars = {"keyops_kms_plugin_tenant": tenant_name, "keyops_kms_plugin_socket": str(tmp_path / "run/kms.sock"),
                 "keyops_kms_plugin_config_dir": str(tmp_path / "etc"), "keyops_kms_plugin_install": False,
                 "keyops_kms_plugin_python": sys.executable, "keyops_kms_plugin_environment": settings,
                 "keyops_kms_plugin_token_file": str(token_file), "keyops_kms_plugin_service_manager": "none",
                 "keyops_kms_plugin_unit_dir": str(tmp_path / "units"),
                 "keyops_kms_plugin_user": os.environ.get("USER", "root")}
    (tmp_path / "units").mkdir()
    playbook = json.dumps([{"name": "kms plugin", "hosts": "localhost", "gather_facts": False,
                            "roles": [{"role": "keyops_kms_plugin", **role_vars}]}]) + "\n"
    env = {"ANSIBLE_ROLES_PATH": str(ROLES)}
    first = ansible_playbook(playbook, env=env)
    first.assert_ok()
    assert first.recap["localhost"]["changed"] >= 3
    again = ansible_playbook(playbook, env=env)
    again.assert_ok()
    assert again.recap["localhost"]["changed"] == 0  # idempotent
    assert not find_leaks(first.output + again.output, [token])

    env_file = tmp_path / "etc" / "keyops-kms.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "etc").stat().st_mode) == 0o700
    unit = (tmp_path / "units" / "keyops-kms.service").read_text()
    lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert lines["EnvironmentFile"] == str(env_file)
    argv = shlex.split(lines["ExecStart"])
    assert argv[:5] == [sys.executable, "-m", "keyops.cli.main", "kms", "serve"]

    # Start it as systemd would: the unit's command with only the environment file's settings.
    plugin_env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **read_env_file(env_file)}
    plugin_env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    proc = subprocess.Popen(argv, env=plugin_env, stderr=subprocess.PIPE, text=True)
    socket_path = tmp_path / "run" / "kms.sock"
    try:
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = api_pb2_grpc.KeyManagementServiceStub(channel)
            status = stub.Status(api_pb2.StatusRequest(), timeout=20)
            assert status.healthz == "ok" and status.key_id.startswith(f"keyops:{tenant_name}:dek:v1:")
            reply = stub.Encrypt(api_pb2.EncryptRequest(plaintext=b"z" * 32, uid="u"), timeout=10)
            assert stub.Decrypt(api_pb2.DecryptRequest(ciphertext=reply.ciphertext, key_id=reply.key_id),
                                timeout=10).plaintext == b"z" * 32
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not socket_path.exists()
