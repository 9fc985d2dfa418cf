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
from _rotation_support import Isolated, isolated_mount, raw_doc
from _tenants import new_tenant

from keyops.config import Config
from keyops.ops.front import MASTER_PATH, MasterRegistry, keyring_path

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
