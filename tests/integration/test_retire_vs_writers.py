"""Retire and destroy against processes that still encrypt (issue 8, items 1 and 3).

* A long-lived writer (its own process, one ``Keyops`` object calling
  ``put_secret`` in a loop) runs while another process rotates the DEK,
  re-encrypts and then retires or destroys the old version. Every secret the
  writer was told it stored must decrypt afterwards: retire and destroy
  fence the version, wait out the writer's lease and only then count
  references, so they either refuse (re-encrypt again) or find nothing.
* Ciphertexts handed to a caller outside keyops' store (``keyops encrypt``)
  cannot be counted: retire refuses the version until the operator
  acknowledges them, and ``keyops rewrap`` moves them to the primary first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import hvac.exceptions
import pytest
from _tenants import created_tenant

from keyops.access import DOCUMENT_HISTORY
from keyops.config import Config
from keyops.dev.stack import DevStack
from keyops.errors import KeyInUse
from keyops.model.usage import Usage
from keyops.ops.front import Keyops, usage_path
from keyops.ops.lifecycle import retire
from keyops.ops.reencrypt import reencrypt
from keyops.ops.references import count_dek_references
from keyops.ops.rotation import rotate

pytestmark = pytest.mark.integration

KEYOPS = [sys.executable, "-m", "keyops.cli.main"]
#: The writer's keyring cache and reservations last 12 s and its requests have a 2 s deadline, so destroy
#: waits up to 16 s. Before the fix, the writer went on encrypting under the destroyed DEK for those 12 s.
WRITER_TTL, WRITER_TIMEOUT = 12.0, 2

# One Keyops object, kept for the whole test, stores a secret each time it is told to.
WRITER = textwrap.dedent("""
    import sys
    from keyops.config import Config
    from keyops.ops.front import Keyops
    tenant = sys.argv[1]
    with Keyops(Config.load(), keyring_ttl=float(sys.argv[2])) as k:
        for line in sys.stdin:
            name = line.strip()
            k.put_secret(tenant, name, "value of " + name)
            print(name, flush=True)  # told it is stored
""")


@pytest.fixture(scope="module")
def env(stack: DevStack) -> dict[str, str]:
    return {**os.environ, **stack.env(), "KEYOPS_VAULT_TIMEOUT": str(WRITER_TIMEOUT)}


def keyops(env: dict[str, str], *args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([*KEYOPS, *args], input=data, env=env, capture_output=True, timeout=180)
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    return proc


class Writer:
    """The long-lived writer process."""

    def __init__(self, tenant: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, tenant, str(WRITER_TTL)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stored: list[str] = []

    def put(self, name: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer == name, f"the writer failed: {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.stored.append(name)

    def stop(self) -> None:
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err


@pytest.mark.slow  # 12 s or more: retire waits out the reservation leases of other processes
def test_a_long_lived_writer_loses_nothing_to_rotate_reencrypt_and_destroy(config: Config,
                                                                          env: dict[str, str]) -> None:
    with Keyops(config) as k:
        tenant = created_tenant(k, "lw")
    writer = Writer(tenant, env)
    outcomes: list[tuple[int, str]] = []
    try:
        writer.put("w0")  # under DEK v1
        assert keyops(env, "rotate", "--tenant", tenant, "--level", "dek").returncode == 0
        assert keyops(env, "reencrypt", "--tenant", tenant).returncode == 0
        destroy = [*KEYOPS, "destroy", "--tenant", tenant, "--level", "dek", "--version", "1", "--yes"]
        running = subprocess.Popen(destroy, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        writer.put("w1")  # while destroy runs: the writer's cached keyring still names v1 its primary
        out, err = running.communicate(timeout=120)
        outcomes.append((running.returncode, err.strip()))
        for _ in range(4):
            if outcomes[-1][0] == 0:
                break
            # Refused only because the writer's record under v1 landed within its lease: re-encrypt, again.
            assert outcomes[-1][0] == KeyInUse.exit_code and "re-encrypt first" in outcomes[-1][1], outcomes
            assert keyops(env, "reencrypt", "--tenant", tenant).returncode == 0
            proc = keyops(env, *destroy[len(KEYOPS):])
            outcomes.append((proc.returncode, proc.stderr.decode(errors="replace").strip()))
        assert outcomes[-1][0] == 0, outcomes
        for name in ("w2", "w3"):  # the writer goes on, untroubled
            writer.put(name)
    finally:
        writer.stop()  # closes its stdin: the writer ends
    with Keyops(config) as fresh:
        for name in writer.stored:
            assert fresh.get_secret(tenant, name) == f"value of {name}".encode(), (name, outcomes)
        assert 1 not in count_dek_references(fresh, tenant)
        assert 1 not in fresh.read_usage(tenant)[0].versions  # a destroyed version leaves the usage document


@pytest.mark.slow  # 12 s or more: retire waits out the reservation leases of other processes
def test_retire_waits_out_a_live_reservation_then_counts(config: Config) -> None:
    """In one process: a reservation of v1 is live when retire starts; retire waits for it, and is told so."""
    quick = dataclasses.replace(config, vault_timeout=1.0)
    # The writer's lease: 8 s of encryptions, plenty for the rotation and re-encryption of one record below.
    with Keyops(quick, keyring_ttl=8.0) as writer, Keyops(quick) as admin:
        tenant = created_tenant(admin, "lw")
        writer.put_secret(tenant, "a", b"1")  # reserves v1 under a lease (8 s + the request deadline)
        rotate(admin, tenant, "dek")
        reencrypt(admin, tenant)
        assert admin.read_usage(tenant)[0].get(1).lease_end() is not None
        waits: list[float] = []
        with pytest.raises(KeyInUse, match="cannot retire DEK v1 .* 1 secret record still uses it"):
            # The writer stores one more record under v1 while retire waits: it is counted, not lost.
            def late_write(seconds: float, why: str) -> None:
                waits.append(seconds)
                assert "may still encrypt under DEK v1" in why
                writer.put_secret(tenant, "b", b"2")
            retire(admin, tenant, "dek", 1, on_wait=late_write)
        assert waits and waits[0] > 0
        assert writer.read_record(tenant, "b").dek_version == 1  # type: ignore[union-attr]
        # After its lease the writer can no longer reserve v1: the fence holds it to the primary.
        writer.read_keyring(tenant)
        writer.put_secret(tenant, "c", b"3")
        assert writer.read_record(tenant, "c").dek_version == 2  # type: ignore[union-attr]
        reencrypt(admin, tenant)
        result = retire(admin, tenant, "dek", 1)
        assert result.changed and result.state_after == "retired"
        for name, value in (("a", b"1"), ("b", b"2"), ("c", b"3")):
            assert admin.get_secret(tenant, name) == value


@pytest.mark.slow  # 12 s or more: retire waits out the reservation leases of other processes
def test_external_ciphertexts_block_retire_until_rewrapped_and_acknowledged(config: Config,
                                                                            env: dict[str, str]) -> None:
    with Keyops(config) as k:
        tenant = created_tenant(k, "lw")
        k.put_secret(tenant, "db/pw", b"stored")
    kept = keyops(env, "encrypt", "--tenant", tenant, "--context", "orders/42", data=b"kept by the app")
    assert kept.returncode == 0
    old = kept.stdout.decode().strip()
    with Keyops(config) as k:
        usage = k.read_usage(tenant)[0].get(1)
        assert usage.external >= 1 and usage.reserved > usage.external  # the secret's use is not external
        end = usage.lease_end()  # the CLI ended its lease on exit (not 30 s ahead): at most a second from now
        assert end is not None and end <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    assert keyops(env, "rotate", "--tenant", tenant, "--level", "dek").returncode == 0
    advice = keyops(env, "reencrypt", "--tenant", tenant)
    assert advice.returncode == 0
    assert ("DEK v1 encrypted up to" in advice.stdout.decode() and "keyops rewrap" in advice.stdout.decode()), advice
    report = json.loads(keyops(env, "reencrypt", "--tenant", tenant, "--json").stdout)
    assert report["external"]["1"] >= 1 and 1 in report["unreferenced"]

    refused = keyops(env, "retire", "--tenant", tenant, "--level", "dek", "--version", "1")
    assert refused.returncode == KeyInUse.exit_code
    message = refused.stderr.decode()
    assert "handed to callers outside keyops' store" in message and "--acknowledge-external" in message
    with Keyops(config) as k:
        assert k.read_keyring(tenant)[0].dek.get(1).state == "decrypt_only"  # refused: nothing changed
        assert k.read_usage(tenant)[0].get(1).closed_at is None

    new = keyops(env, "rewrap", "--tenant", tenant, "--context", "orders/42", data=old.encode())
    assert new.returncode == 0, new.stderr
    rewrapped = new.stdout.decode().strip()
    assert rewrapped.startswith(f"keyops:v1:{tenant}:2:") and b"kept by the app" not in new.stdout
    again = keyops(env, "rewrap", "--tenant", tenant, "--context", "orders/42", data=new.stdout)
    assert again.stdout.decode().strip() == rewrapped  # already under the primary: as it is
    wrong_context = keyops(env, "rewrap", "--tenant", tenant, "--context", "orders/43", data=old.encode())
    assert wrong_context.returncode == 4  # not authentic there: an error, never a new ciphertext

    done = keyops(env, "retire", "--tenant", tenant, "--level", "dek", "--version", "1", "--acknowledge-external")
    assert done.returncode == 0, done.stderr
    decrypted = keyops(env, "decrypt", "--tenant", tenant, "--context", "orders/42", data=rewrapped.encode())
    assert decrypted.stdout == b"kept by the app"
    with Keyops(config) as k:
        assert k.get_secret(tenant, "db/pw") == b"stored"


def test_rewrap_in_the_library_keeps_the_form(config: Config) -> None:
    with Keyops(config) as k:
        tenant = created_tenant(k, "lw")
        text = k.encrypt(tenant, b"t", "c")
        binary = k.encrypt_bytes(tenant, b"b", "c")
        rotate(k, tenant, "dek")
        k.read_keyring(tenant)
        new_text, new_binary = k.rewrap(tenant, text, "c"), k.rewrap(tenant, binary, "c")
        assert isinstance(new_text, str) and ":2:" in new_text and k.decrypt(tenant, new_text, "c") == b"t"
        assert isinstance(new_binary, bytes) and k.decrypt(tenant, new_binary, "c") == b"b"
        assert k.rewrap(tenant, new_text, "c") == new_text
        usage: Any = k.read_usage(tenant)[0]
        assert usage.get(1).external >= 2 and usage.get(2).external >= 2  # both counted as handed out


def test_a_tenant_is_created_with_its_usage_document_under_history_and_deleted_with_it(config: Config,
                                                                                     vault_client: Any) -> None:
    with Keyops(config) as k:
        tenant = created_tenant(k, "lw")
        path = usage_path(tenant)
        meta = vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=config.kv_mount)["data"]
        assert meta["max_versions"] >= DOCUMENT_HISTORY and meta["cas_required"] is True
        assert k.read_usage(tenant)[0] == Usage(tenant)  # empty until the first encryption
        k.encrypt(tenant, b"x")
        assert k.delete_tenant(tenant)
        with pytest.raises(hvac.exceptions.InvalidPath):
            vault_client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=config.kv_mount)
