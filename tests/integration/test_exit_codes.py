"""The README's exit-code table, row by row, against the real OpenBao and SoftHSM2.

The table is read from README.md: each code it lists must have a scenario
here that makes the ``keyops`` program exit with it, so a row added without
a test fails ``test_every_row_of_the_table_has_a_scenario``. Every scenario
runs the real program in a child process (PKCS#11 logins and SoftHSM2's
configuration are per process). Servers that must be sealed, and an HSM
token that lacks the master key, come from one spare stack of this module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pkcs11
import pytest
import requests
from _rotation_support import cli_env, isolated_mount
from _tenants import new_tenant
from pkcs11 import Attribute, KeyType

from keyops.config import Config
from keyops.dev.stack import DevStack, free_port
from keyops.model.paths import MASTER_PATH, keyring_path, secret_path
from keyops.ops.front import Keyops

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def table_codes() -> dict[int, str]:
    """Every exit code of the README's table (``10–14`` is five codes), with the row's meaning."""
    text = README.read_text()
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    codes: dict[int, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"(\d+)(?:[–-](\d+))?", cells[0]) if len(cells) == 2 else None
        if match:
            first, last = int(match[1]), int(match[2] or match[1])
            for code in range(first, last + 1):
                codes[code] = cells[1]
    return codes


def run(env: dict[str, str], *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "keyops.cli.main", *args], input=data, env=env,
                          capture_output=True, timeout=180)


@dataclass
class World:
    stack: DevStack
    config: Config
    k: Keyops
    vault: hvac.Client
    env: dict[str, str]
    tmp: Path
    spare: DevStack

    def expect(self, code: int, *args: str, env: dict[str, str] | None = None, data: bytes = b"",
               says: str = "") -> subprocess.CompletedProcess[bytes]:
        proc = run(env or self.env, *args, data=data)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == code, (args, proc.returncode, err, proc.stdout[:500])
        assert "Traceback" not in err, err
        assert says in err + proc.stdout.decode(errors="replace"), (says, err)
        return proc

    def without_token(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k not in ("VAULT_TOKEN", "BAO_TOKEN", "KEYOPS_VAULT_TOKEN_FILE")}
        env["HOME"] = str(self.tmp)  # no ~/.vault-token either
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def spare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """A second stack (its own bao and SoftHSM2 token), to seal and to stand for a token without our keys."""
    devstack = DevStack(tmp_path_factory.mktemp("keyops-exit-codes"), port=free_port(), die_with_parent=True)
    try:
        devstack.up()
        yield devstack
    finally:
        devstack.down()


@pytest.fixture(scope="module")
def world(stack: DevStack, config: Config, k: Keyops, vault_client: hvac.Client, spare: DevStack,
          tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(stack, config, k, vault_client, cli_env(stack), tmp_path_factory.mktemp("exit-codes"), spare)


def _tenant(w: World, prefix: str, *args: str) -> str:
    tenant = new_tenant(prefix)
    w.expect(0, "tenant", "create", tenant, *args)
    return tenant


# --- the scenarios, one per code -------------------------------------------------------------------


def done_or_nothing_to_do(w: World) -> None:
    tenant = _tenant(w, "x0")
    w.expect(0, "secret", "put", tenant, "s", data=b"v", says="stored")
    # Nothing to do is a success by default: a scheduled job needs no "|| [ $? -eq 3 ]".
    w.expect(0, "tenant", "create", tenant, says="nothing to do")
    w.expect(0, "rotate", "--due", "--tenant", tenant, "--no-master")
    w.expect(0, "rotate", "--tenant", tenant, "--level", "dek", "--dry-run", says="would create DEK v2")


def nothing_to_do_detailed(w: World) -> None:
    tenant = _tenant(w, "x3")
    w.expect(3, "--detailed-exitcode", "tenant", "create", tenant, says="nothing to do")  # same policy
    w.expect(3, "tenant", "create", tenant, "--dry-run", "--detailed-exitcode")
    w.expect(3, "tenant", "update", tenant, "--dek-period-days", "30", "--detailed-exitcode")
    w.expect(3, "rotate", "--due", "--tenant", tenant, "--no-master", "--detailed-exitcode")
    w.expect(0, "rotate", "--tenant", tenant, "--level", "dek", "--expect-version", "1", "--detailed-exitcode")
    w.expect(3, "-q", "--detailed-exitcode", "rotate", "--tenant", tenant, "--level", "dek", "--expect-version", "1")
    w.expect(3, "--detailed-exitcode", "reencrypt", "--tenant", tenant)  # no secrets: nothing left to re-encrypt
    w.expect(0, "retire", "--tenant", tenant, "--level", "dek", "--version", "1", "--detailed-exitcode")
    w.expect(3, "retire", "--tenant", tenant, "--level", "dek", "--version", "1", "--detailed-exitcode",
             says="already retired")
    w.expect(3, "secret", "delete", tenant, "nothing-here", "--detailed-exitcode")


def partly_failed(w: World) -> None:
    good = _tenant(w, "x1")
    bad = new_tenant("x1-bad")
    w.vault.secrets.kv.v2.create_or_update_secret(path=keyring_path(bad), secret={"not": "a keyring"},
                                                  mount_point=w.config.kv_mount)
    try:
        proc = w.expect(1, "rotate", "--due", "--tenant", good, "--tenant", bad, "--no-master")
        assert f"FAILED tenant {bad}" in proc.stdout.decode()
    finally:
        w.vault.secrets.kv.v2.delete_metadata_and_all_versions(path=keyring_path(bad), mount_point=w.config.kv_mount)


def invalid_input(w: World) -> None:
    tenant = _tenant(w, "x2")
    w.expect(2, "destroy", "--tenant", tenant, "--level", "dek", "--version", "1", says="--yes")
    w.expect(2, "tenant", "delete", tenant, says="--yes")
    w.expect(2, "decrypt", "--tenant", tenant, data=b"garbage")
    w.expect(2, "tenant", "create", "../escape")


def decryption_failed(w: World) -> None:
    tenant = _tenant(w, "x4")
    ct = w.expect(0, "encrypt", "--tenant", tenant, "--context", "a", data=b"hello").stdout
    w.expect(4, "decrypt", "--tenant", tenant, "--context", "b", data=ct, says="decryption failed")


def not_found(w: World) -> None:
    tenant = _tenant(w, "x5")
    w.expect(5, "secret", "get", tenant, "no-such-secret")
    w.expect(5, "tenant", "show", new_tenant("x5-none"))
    w.expect(5, "tenant", "update", new_tenant("x5-none"), "--dek-period-days", "9")


def tenant_exists_with_another_policy(w: World) -> None:
    tenant = _tenant(w, "x6")
    w.expect(6, "tenant", "create", tenant, "--dek-period-days", "5", says="keyops tenant update")


def conflict(w: World) -> None:
    tenant = _tenant(w, "x7")
    prefix = f"legacy/x7-{uuid.uuid4().hex[:8]}"
    w.vault.secrets.kv.v2.create_or_update_secret(path=f"{prefix}/one", secret={"other": "v"},
                                                  mount_point=w.config.kv_mount)
    w.expect(7, "migrate", "--from", prefix, "--tenant", tenant, "--field", "token", says="skipped one")


def refused_by_key_state(w: World) -> None:
    tenant = _tenant(w, "x8")
    w.expect(8, "retire", "--tenant", tenant, "--level", "dek", "--version", "1", says="primary")


def job_stopped(w: World) -> None:
    # A failing record reports its own cause's code (here: not authentic, 4) instead of 9, and the job
    # stays resumable; 9 itself is what a job reports for a stop that has no such cause.
    from keyops.errors import DecryptionError, JobFailed

    assert JobFailed("stopped").exit_code == 9
    tenant = _tenant(w, "x9")
    w.expect(0, "secret", "put", tenant, "good", data=b"v")
    w.expect(0, "secret", "put", tenant, "bad", data=b"v")
    record = w.vault.secrets.kv.v2.read_secret_version(path=secret_path(tenant, "good"),
                                                       mount_point=w.config.kv_mount,
                                                       raise_on_deleted_version=True)["data"]["data"]
    other = w.vault.secrets.kv.v2.read_secret_version(path=secret_path(tenant, "bad"), mount_point=w.config.kv_mount,
                                                      raise_on_deleted_version=True)["data"]["data"]
    # good's ciphertext under bad's name: authentic nowhere but at its own path.
    w.vault.secrets.kv.v2.create_or_update_secret(path=secret_path(tenant, "bad"), secret={**other, **record},
                                                  mount_point=w.config.kv_mount)
    w.expect(0, "rotate", "--tenant", tenant, "--level", "dek")
    proc = w.expect(DecryptionError.exit_code, "reencrypt", "--tenant", tenant, "--workers", "1")
    assert b"bad" in proc.stderr


def vault_error(w: World) -> None:
    # A TTL only Vault parses: Vault refuses the request itself, and nothing is written to FILE.
    tenant = _tenant(w, "x10")
    w.expect(0, "policy", "apply", "--role", "app", "--tenant", tenant)
    out = w.tmp / "x10.token"
    w.expect(10, "policy", "mint", "--role", "app", "--tenant", tenant, "--ttl", "bogus", "--output", str(out),
             says="Vault refused the request")
    assert not out.exists()


def vault_unreachable(w: World) -> None:
    w.expect(11, "tenant", "list", env={**w.env, "VAULT_ADDR": f"http://127.0.0.1:{free_port()}"},
             says="cannot be reached: connection refused")


def vault_sealed(w: World) -> None:
    session = requests.Session()
    session.trust_env = False
    env = cli_env(w.spare)
    hvac.Client(url=w.spare.addr, token=env["VAULT_TOKEN"], session=session).sys.seal()
    w.expect(12, "tenant", "list", env=env, says="sealed")


def authentication_failed(w: World) -> None:
    w.expect(13, "tenant", "list", env=w.without_token(VAULT_TOKEN="hvs.not-a-token-" + uuid.uuid4().hex),
             says="rejected the token")
    tenant = _tenant(w, "x13")
    w.expect(0, "policy", "apply", "--role", "app", "--tenant", tenant)
    minted = w.expect(0, "policy", "mint", "--role", "app", "--tenant", tenant, "--approle", "--output",
                      str(w.tmp / "x13.secret-id"), "--json")
    role_id = json.loads(minted.stdout)["role_id"]
    w.expect(13, "secret", "list", tenant, env=w.without_token(VAULT_ROLE_ID=role_id,
                                                                VAULT_SECRET_ID=str(uuid.uuid4())),
             says="Vault refused the login")


def permission_denied(w: World) -> None:
    mine, theirs = _tenant(w, "x14a"), _tenant(w, "x14b")
    w.expect(0, "secret", "put", theirs, "s", data=b"v")
    w.expect(0, "policy", "apply", "--role", "app", "--tenant", mine)
    out = w.tmp / "x14.token"
    w.expect(0, "policy", "mint", "--role", "app", "--tenant", mine, "--output", str(out))
    app = w.without_token(VAULT_TOKEN=out.read_text().strip())
    w.expect(14, "secret", "get", theirs, "s", env=app)
    w.expect(14, "tenant", "list", env=app)


def configuration(w: World) -> None:
    w.expect(15, "tenant", "list", env=w.without_token(), says="no Vault token")


def _hsm_env(w: World, **extra: str) -> dict[str, str]:
    return {**w.env, **extra}


def hsm_error(w: World) -> None:
    # Two usable keys under the master key's label and CKA_ID: keyops refuses to pick one.
    with isolated_mount(w.stack, w.config, w.vault) as iso:
        tenant = new_tenant("x20")
        w.expect(0, "tenant", "create", tenant, env=iso.env)
        w.expect(0, "secret", "put", tenant, "s", data=b"v", env=iso.env)
        registry = w.vault.secrets.kv.v2.read_secret_version(path=MASTER_PATH, mount_point=iso.mount,
                                                             raise_on_deleted_version=True)["data"]["data"]
        first = registry["versions"][0]
        with Keyops(iso.config) as k, k.hsm._open() as session:
            session.generate_key(KeyType.AES, 256, label=first["label"], id=bytes.fromhex(first["key_id"]),
                                 store=True, capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT,
                                 template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                           Attribute.TOKEN: True, Attribute.PRIVATE: True})
        w.expect(20, "secret", "get", tenant, "s", env=iso.env, says="several usable keys")


def hsm_unavailable(w: World) -> None:
    not_a_module = w.tmp / "not-pkcs11.so"
    not_a_module.write_bytes(b"not a shared library")
    w.expect(21, "tenant", "create", new_tenant("x21"), env=_hsm_env(w, KEYOPS_PKCS11_MODULE=str(not_a_module)),
             says="cannot load the PKCS#11 module")
    # The token the registry names is not there (an HSM partition gone): SoftHSM2 with an empty token folder.
    empty = w.tmp / "no-tokens"
    empty.mkdir(exist_ok=True)
    conf = w.tmp / "no-tokens.conf"
    conf.write_text(f"directories.tokendir = {empty}\nobjectstore.backend = file\n")
    w.expect(21, "tenant", "create", new_tenant("x21"), env=_hsm_env(w, SOFTHSM2_CONF=str(conf)))


def hsm_wrong_pin(w: World) -> None:
    env = {k: v for k, v in w.env.items() if k != "KEYOPS_PKCS11_PIN_FILE"}
    w.expect(22, "tenant", "create", new_tenant("x22"), env={**env, "KEYOPS_PKCS11_PIN": "wrong-" + uuid.uuid4().hex},
             says="wrong PIN")


def hsm_key_not_found(w: World) -> None:
    # The spare stack's token: a real token with the right label and PIN, but without our master key.
    tenant = _tenant(w, "x23")
    w.expect(0, "secret", "put", tenant, "s", data=b"v")
    hsm = {k: v for k, v in w.spare.env().items() if k.startswith(("KEYOPS_PKCS11", "SOFTHSM2"))}
    w.expect(23, "secret", "get", tenant, "s", env={**w.env, **hsm}, says="has no AES key")


def hsm_key_not_owned(w: World) -> None:
    with isolated_mount(w.stack, w.config, w.vault) as iso:
        w.expect(0, "tenant", "create", new_tenant("x24"), env=iso.env)
        registry = w.vault.secrets.kv.v2.read_secret_version(path=MASTER_PATH, mount_point=iso.mount,
                                                             raise_on_deleted_version=True)["data"]["data"]
        rid = registry["registry_id"]
        with Keyops(iso.config) as k:  # made by something else than this registry's rotation
            k.hsm.ensure_key(f"{iso.config.master_key_label}-{rid}-v2", key_id=bytes.fromhex(f"{rid}00000002"))
        w.expect(24, "rotate", "--level", "master", env=iso.env, says="did not create")


def dev_stack(w: World) -> None:
    empty = w.tmp / "no-stack-here"
    empty.mkdir(exist_ok=True)
    w.expect(30, "dev", "env", "--state-dir", str(empty), says="keyops dev up")
    # 'dev status' answers "not running" with 3, a status like systemctl's, with or without the flag.
    w.expect(3, "dev", "status", "--state-dir", str(empty))


def audit_error(w: World) -> None:
    folder = w.tmp / "x40-not-a-file"
    folder.mkdir(exist_ok=True)
    w.expect(40, "tenant", "create", new_tenant("x40"), env={**w.env, "KEYOPS_AUDIT_LOG": str(folder)})


def audit_chain_broken(w: World) -> None:
    log = w.tmp / "x41.jsonl"
    env = {**w.env, "KEYOPS_AUDIT_LOG": str(log)}
    env.pop("KEYOPS_AUDIT_ANCHOR", None)
    for _ in range(3):
        w.expect(0, "tenant", "create", new_tenant("x41"), env=env)
    lines = log.read_text().splitlines()
    del lines[1]
    log.write_text("\n".join(lines) + "\n")
    w.expect(41, "audit", "verify", "--log", str(log), env=env)


SCENARIOS: dict[int, Callable[[World], None]] = {
    0: done_or_nothing_to_do, 3: nothing_to_do_detailed, 1: partly_failed, 2: invalid_input, 4: decryption_failed,
    5: not_found, 6: tenant_exists_with_another_policy, 7: conflict, 8: refused_by_key_state, 9: job_stopped,
    10: vault_error, 11: vault_unreachable, 12: vault_sealed, 13: authentication_failed, 14: permission_denied,
    15: configuration, 20: hsm_error, 21: hsm_unavailable, 22: hsm_wrong_pin, 23: hsm_key_not_found,
    24: hsm_key_not_owned, 30: dev_stack, 40: audit_error, 41: audit_chain_broken,
}


def test_every_row_of_the_table_has_a_scenario() -> None:
    codes = table_codes()
    assert len(codes) > 20, codes  # the table was found and read
    assert set(codes) == set(SCENARIOS), {"untested rows": sorted(set(codes) - set(SCENARIOS)),
                                          "scenarios without a row": sorted(set(SCENARIOS) - set(codes))}


@pytest.mark.parametrize("code", sorted(SCENARIOS))
def test_the_row_is_what_the_program_exits_with(code: int, world: World) -> None:
    SCENARIOS[code](world)
