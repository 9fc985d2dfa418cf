"""An HSM you can replace or lose (issue 13, item 3), each by its runbook, against real parts.

Each test has its own KV mount on the session's OpenBao and its own SoftHSM2
token folder with two tokens, and runs the ``sh`` blocks of its runbook in
``docs/runbooks/`` literally (``_hsm_tokens.run_runbook``); the outcome is
then checked around the code under test: the registry and keyrings as KV
holds them, the token list as ``softhsm2-util`` shows it, and every secret
read back by a fresh CLI process that knows only the new token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from _hsm_tokens import TokenFolder, cli, run_runbook
from _rotation_support import Isolated, isolated_mount, raw_doc, write_doc
from _tenants import new_tenant

from keyops.config import Config
from keyops.model.keyring import utcnow
from keyops.ops.front import MASTER_PATH, MasterRegistry, keyring_path
from keyops.ops.rotation import claim_master_version

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def iso(stack: Any, config: Config, vault_client: Any) -> Iterator[Isolated]:
    with isolated_mount(stack, config, vault_client) as isolated:
        yield isolated


def populate(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """A tenant of each residence with two secrets, through the CLI; the kv one after a KEK rotation."""
    made: dict[str, dict[str, str]] = {}
    for residence in ("kv", "transit"):
        tenant = new_tenant(f"h-{residence}")
        created = cli(env, "tenant", "create", tenant, "--residence", residence)
        assert created.returncode == 0, created.stderr
        made[tenant] = {f"db/s{i}": f"{tenant} value {i}" for i in range(2)}
        for name, value in made[tenant].items():
            put = cli(env, "secret", "put", tenant, name, stdin=value)
            assert put.returncode == 0, put.stderr
    rotated = cli(env, "rotate", "--tenant", next(iter(made)), "--level", "kek")
    assert rotated.returncode == 0, rotated.stderr
    return made


def check_secrets(env: Mapping[str, str], made: Mapping[str, Mapping[str, str]]) -> None:
    for tenant, values in made.items():
        for name, value in values.items():
            got = cli(env, "secret", "get", tenant, name)
            assert (got.returncode, got.stdout) == (0, value), (tenant, name, got.stderr)


def registry(iso: Isolated, vault_client: Any) -> MasterRegistry:
    return MasterRegistry.from_dict(raw_doc(vault_client, MASTER_PATH, iso.mount))


def kek_parents(iso: Isolated, vault_client: Any, tenants: Any) -> set[int]:
    return {v["parent_version"] for t in tenants
            for v in raw_doc(vault_client, keyring_path(t), iso.mount)["kek"]["versions"]}


def on_token(env: Mapping[str, str], folder: TokenFolder, label: str, pin_file: Path) -> dict[str, str]:
    return {**env, "SOFTHSM2_CONF": str(folder.conf), "KEYOPS_PKCS11_TOKEN": label,
            "KEYOPS_PKCS11_PIN_FILE": str(pin_file)}


def test_replacement_runbook_moves_every_kek_to_the_new_token_and_the_old_one_can_go(
        iso: Isolated, vault_client: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    folder = TokenFolder.make(tmp_path / "hsm")
    old, new = f"old-{tag}", f"new-{tag}"
    old_pin = folder.init_token(old)
    before = on_token(iso.env, folder, old, old_pin)
    made = populate(before)
    assert {mv.version: mv.params.get("token") for mv in registry(iso, vault_client).versions} == {1: old}

    run = run_runbook("hsm-replacement.md", {**before, "NEW_TOKEN": new, "PIN_DIR": str(folder.pins)},
                      tmp_path / "bin")
    assert run.returncode == 0, run.stdout + run.stderr

    reg = registry(iso, vault_client)
    assert {mv.version: (mv.state, mv.params.get("token")) for mv in reg.versions} == {
        1: ("retired", old), 2: ("active", new)}
    assert kek_parents(iso, vault_client, made) == {2}  # the transit tenant's escrow copy too
    labels = folder.labels()
    assert new in labels and old not in labels  # the old token is gone for good

    after = on_token(iso.env, folder, new, folder.pins / "new-token.pin")
    check_secrets(after, made)
    status = cli(after, "master", "status", "--json")
    assert status.returncode == 0, status.stderr
    versions = {v["version"]: v for v in json.loads(status.stdout)["versions"]}
    assert (versions[2]["token"], versions[2]["on_token"], versions[1]["on_token"]) == (new, True, None)
    # New keys are made under the new token alone.
    kv_tenant = next(iter(made))
    assert cli(after, "rotate", "--tenant", kv_tenant, "--level", "kek").returncode == 0
    assert cli(after, "secret", "put", kv_tenant, "later", stdin="after the move").returncode == 0
    check_secrets(after, {kv_tenant: {**made[kv_tenant], "later": "after the move"}})
    for pin_file in (old_pin, folder.pins / "new-token.pin"):
        assert pin_file.read_text() not in run.stdout + run.stderr


def test_a_version_on_a_token_keyops_is_not_configured_for_is_named(iso: Isolated, vault_client: Any,
                                                                   tmp_path: Path) -> None:
    """After the move, a process still configured for the old token alone is told where the key is."""
    tag = uuid.uuid4().hex[:6]
    folder = TokenFolder.make(tmp_path / "hsm")
    first, second = f"a-{tag}", f"b-{tag}"
    first_pin, second_pin = folder.init_token(first), folder.init_token(second)
    made = populate(on_token(iso.env, folder, first, first_pin))
    moved = cli({**on_token(iso.env, folder, second, second_pin), "KEYOPS_PKCS11_OLD_TOKEN": first,
                 "KEYOPS_PKCS11_OLD_PIN_FILE": str(first_pin)}, "rotate", "--level", "master")
    assert moved.returncode == 0, moved.stderr
    kv_tenant = next(iter(made))
    stale = cli(on_token(iso.env, folder, first, first_pin), "secret", "get", kv_tenant, "db/s0")
    assert stale.returncode == 15, stale.stderr
    assert f"is on HSM token {second!r}" in stale.stderr and "KEYOPS_PKCS11_OLD_TOKEN" in stale.stderr
    assert first_pin.read_text() not in stale.stderr and second_pin.read_text() not in moved.stderr


# --- a lost token, recovered from the break-glass escrow ------------------------------------------------


def escrow_keys(iso: Isolated, vault_client: Any, tenants: Any) -> dict[str, dict[int, str | None]]:
    return {t: {v["version"]: (v.get("escrow") or {}).get("key")
                for v in raw_doc(vault_client, keyring_path(t), iso.mount)["kek"]["versions"]} for t in tenants}


def prepared(iso: Isolated, vault_client: Any, tmp_path: Path) -> tuple[TokenFolder, dict[str, str], Path,
                                                                         dict[str, dict[str, str]]]:
    """Tenants on a token, then part A of the recovery runbook; more keys made with the escrow configured."""
    tag = uuid.uuid4().hex[:6]
    folder = TokenFolder.make(tmp_path / "hsm")
    old = f"lost-{tag}"
    env = on_token(iso.env, folder, old, folder.init_token(old))
    made = populate(env)  # before any escrow key: `keyops escrow` gives these their copies
    offline = tmp_path / "offline"
    offline.mkdir(mode=0o700)
    part_a = run_runbook("hsm-recovery.md", {**env, "OFFLINE_DIR": str(offline), "PIN_DIR": str(folder.pins)},
                         tmp_path / "bin", part="Part A")
    assert part_a.returncode == 0, part_a.stdout + part_a.stderr
    env = {**env, "KEYOPS_ESCROW_PUBLIC_KEY": str(folder.pins / "recovery.pub.pem")}
    later = new_tenant("h-later")  # escrowed when made, as is a KEK made by a rotation
    assert cli(env, "tenant", "create", later).returncode == 0
    made[later] = {"x": "made with the escrow configured"}
    assert cli(env, "secret", "put", later, "x", stdin=made[later]["x"]).returncode == 0
    assert cli(env, "rotate", "--tenant", next(iter(made)), "--level", "kek").returncode == 0
    return folder, env, offline / "recovery.pem", made


def test_recovery_runbook_rebuilds_every_kek_from_the_escrow_after_the_token_is_deleted(
        iso: Isolated, vault_client: Any, tmp_path: Path) -> None:
    folder, env, private_key, made = prepared(iso, vault_client, tmp_path)
    check = cli(env, "escrow", "--check", "--json")
    assert check.returncode == 0 and json.loads(check.stdout)["missing"] == 0, check.stdout
    fingerprint = json.loads(check.stdout)["key"]
    keys = escrow_keys(iso, vault_client, made)
    assert all(key == fingerprint for versions in keys.values() for key in versions.values()), keys
    assert sum(len(v) for v in keys.values()) == 5  # 2 + 1 KEK versions of kv tenants, 1 transit, 1 later

    lost = env["KEYOPS_PKCS11_TOKEN"]
    subprocess_ok = run_softhsm(folder, "--delete-token", "--token", lost)
    assert subprocess_ok, "the token could not be deleted"
    kv_tenant, transit_tenant = list(made)[:2]
    gone = cli(env, "secret", "get", kv_tenant, "db/s0")
    assert gone.returncode == 21, gone.stderr  # HSM unavailable: the kv tenant cannot decrypt
    # A transit tenant's DEKs unwrap through Transit: its applications never needed the HSM.
    assert cli(env, "secret", "get", transit_tenant, "db/s0").stdout == made[transit_tenant]["db/s0"]

    recovery_copy = tmp_path / "run" / "recovery.pem"
    recovery_copy.parent.mkdir(mode=0o700)
    recovery_copy.write_bytes(private_key.read_bytes())
    new = f"rec-{uuid.uuid4().hex[:6]}"
    part_b = run_runbook("hsm-recovery.md", {**env, "NEW_TOKEN": new, "PIN_DIR": str(folder.pins),
                                             "RECOVERY_KEY": str(recovery_copy)}, tmp_path / "bin", part="Part B")
    assert part_b.returncode == 0, part_b.stdout + part_b.stderr
    assert not recovery_copy.exists()  # the runbook shreds its copy

    reg = registry(iso, vault_client)
    assert {mv.version: (mv.state, mv.params.get("token")) for mv in reg.versions} == {
        1: ("retired", lost), 2: ("active", new)}
    assert kek_parents(iso, vault_client, made) == {2}
    assert escrow_keys(iso, vault_client, made) == keys  # the KEKs are the same: so are their copies
    after = on_token(iso.env, folder, new, folder.pins / "new-token.pin")
    check_secrets(after, made)
    again = cli(after, "--detailed-exitcode", "recover", "--private-key", "-", stdin=private_key.read_text())
    assert again.returncode == 3, again.stdout + again.stderr  # nothing left to do
    assert cli(after, "rotate", "--tenant", transit_tenant, "--level", "kek").returncode == 0
    check_secrets(after, made)

    # The private key was never written anywhere keyops writes.
    pem_body = "".join(private_key.read_text().splitlines()[1:-1])[:64]
    trail = Path(env["KEYOPS_AUDIT_LOG"]).read_text()
    stored = json.dumps([raw_doc(vault_client, keyring_path(t), iso.mount) for t in made])
    for text in (part_b.stdout, part_b.stderr, again.stdout, again.stderr, trail, stored):
        assert pem_body not in text


def test_recover_refuses_another_private_key_and_finishes_a_claimed_version(
        iso: Isolated, vault_client: Any, tmp_path: Path) -> None:
    folder, env, private_key, made = prepared(iso, vault_client, tmp_path)
    assert run_softhsm(folder, "--delete-token", "--token", env["KEYOPS_PKCS11_TOKEN"])
    new = f"rec-{uuid.uuid4().hex[:6]}"
    after = on_token(iso.env, folder, new, folder.init_token(new))
    before = raw_doc(vault_client, MASTER_PATH, iso.mount)

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=3072).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    refused = cli(after, "recover", "--private-key", "-", stdin=stranger)
    assert refused.returncode == 2 and "not the recovery key of any escrow copy" in refused.stderr, refused.stderr
    loose = tmp_path / "loose.pem"
    loose.write_text(private_key.read_text())
    loose.chmod(0o644)
    assert cli(after, "recover", "--private-key", str(loose)).returncode == 15  # others may read it: refused
    assert raw_doc(vault_client, MASTER_PATH, iso.mount) == before  # nothing changed

    # What a recovery killed right after its claim leaves: v2 pending on the new token, no key made yet.
    reg = registry(iso, vault_client)
    claimed = claim_master_version(reg, iso.config.master_key_label, utcnow(), lambda r, v: r.new_version(
        iso.config.master_key_label, v, utcnow(), "pkcs11", {"token": new}))
    write_doc(vault_client, MASTER_PATH, claimed.to_dict(), iso.mount)
    run = cli(after, "recover", "--private-key", "-", "--json", stdin=private_key.read_text())
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)["result"]
    assert (result["master_version"], result["new_master"], result["lost"]) == (2, False, [1])
    assert {mv.version: mv.state for mv in registry(iso, vault_client).versions} == {1: "decrypt_only",
                                                                                       2: "active"}
    assert kek_parents(iso, vault_client, made) == {2}
    check_secrets(after, made)


def run_softhsm(folder: TokenFolder, *args: str) -> bool:
    import subprocess

    return subprocess.run(["softhsm2-util", *args], env=folder.env(), capture_output=True,
                          check=False).returncode == 0
