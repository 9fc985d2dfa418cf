"""Migration of plaintext and Transit-encrypted KV secrets against the real OpenBao and SoftHSM2.

Sources are written and checked with the root hvac client: the marker that
replaces a source, the original left in the source's version history, the
KV versions that tell whether anything was written twice.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from jobs_support import (
    decrypt_all,
    job_docs,
    kv_read,
    kv_version,
    kv_versions,
    kv_write,
    raw_records,
    run_cli,
    transit_encrypt,
    unique,
)

from keyops.config import Config
from keyops.dev.stack import bao_binary
from keyops.errors import DecryptionError, InvalidInput, JobFailed
from keyops.model.keyring import Policy
from keyops.ops.front import Keyops
from keyops.ops.migrate import MARKER_FIELD, ORIGIN_FIELD, Skipped, migrate, purge_sources
from keyops.ops.progress import ProgressEvent

pytestmark = pytest.mark.integration


@pytest.fixture
def k(config: Config) -> Iterator[Keyops]:
    """A fresh Keyops for each test, not conftest's one per module: cold caches, its own request counts."""
    with Keyops(config) as keyops:
        yield keyops


def _tenant(k: Keyops, policy: Policy | None = None) -> str:
    tenant = unique("mig")
    k.create_tenant(tenant, policy)
    return tenant


def _sources(vault_client: Any, docs: dict[str, dict[str, Any]], mount: str = "keyops") -> str:
    prefix = f"legacy/{unique('src')}"
    for name, data in docs.items():
        kv_write(vault_client, f"{prefix}/{name}", data, mount)
    return prefix


class _Stop(Exception):
    pass


def test_plaintext_secrets_become_keyops_records_and_originals_stay_in_history(
        k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k)
    docs: dict[str, dict[str, Any]] = {f"app/s-{i:02d}": {"password": f"pw-{i}-\u00e9"} for i in range(15)}
    docs["db/admin"] = {"user": "root", "password": "hunter2", "port": 5432}
    docs["number"] = {"pin": 1234}
    prefix = _sources(vault_client, docs)
    expected = {name: data["password"].encode() for name, data in docs.items() if name.startswith("app/")}
    expected["db/admin"] = b'{"password":"hunter2","port":5432,"user":"root"}'
    expected["number"] = b"1234"
    events: list[tuple[str, dict[str, Any]]] = []

    with Keyops(config, audit=lambda op, **fields: events.append((op, fields))) as runner:
        result = migrate(runner, tenant, prefix, workers=3, batch_size=4, mode="move")

    assert (result.total, result.migrated, result.already_migrated, result.from_plaintext, result.from_transit) == \
        (17, 17, 0, 17, 0)
    assert (result.changed, result.skipped, result.dry_run, result.resumed) == (True, (), False, False)
    assert decrypt_all(config, tenant, expected) == expected
    for name, (record, version) in raw_records(vault_client, tenant, expected).items():
        assert version == 1 and record[ORIGIN_FIELD] == f"keyops/{prefix}/{name}"
    for name, data in docs.items():
        marker, source_version = kv_read(vault_client, f"{prefix}/{name}")
        assert source_version == 2
        assert set(marker) == {MARKER_FIELD}
        meta = marker[MARKER_FIELD]
        assert (meta["tenant"], meta["secret"], meta["path"], meta["source_version"], meta["job_id"]) == \
            (tenant, name, f"secrets/{tenant}/{name}", 1, result.job_id)
        assert kv_read(vault_client, f"{prefix}/{name}", version=1)[0] == data  # the original, in history
    mine = [fields for op, fields in events if op == "migrate"]
    assert len(mine) == 1 and mine[0]["result"] == "ok" and mine[0]["migrated"] == 17
    assert "hunter2" not in json.dumps(events, default=str) + json.dumps(job_docs(vault_client, tenant))


def test_second_run_changes_nothing_and_says_so(k: Keyops, vault_client: Any) -> None:
    tenant = _tenant(k)
    docs = {f"s-{i}": {"value": f"v-{i}"} for i in range(6)}
    prefix = _sources(vault_client, docs)
    migrate(k, tenant, prefix, mode="move")
    paths = [f"{prefix}/{name}" for name in docs] + [f"secrets/{tenant}/{name}" for name in docs]
    before, jobs = kv_versions(vault_client, paths), job_docs(vault_client, tenant)

    again = migrate(k, tenant, prefix, mode="move")

    assert (again.migrated, again.already_migrated, again.total, again.changed) == (0, 6, 6, False)
    assert kv_versions(vault_client, paths) == before
    assert job_docs(vault_client, tenant) == jobs


def test_dry_run_writes_nothing(k: Keyops, vault_client: Any) -> None:
    tenant = _tenant(k)
    docs = {f"s-{i}": {"value": f"v-{i}"} for i in range(5)}
    prefix = _sources(vault_client, docs)

    result = migrate(k, tenant, prefix, dry_run=True, mode="move")

    assert (result.dry_run, result.changed, result.migrated, result.from_plaintext) == (True, False, 5, 5)
    assert set(kv_versions(vault_client, [f"{prefix}/{n}" for n in docs]).values()) == {1}
    assert k.list_secrets(tenant) == []
    assert job_docs(vault_client, tenant) == {}


def test_field_mode_keeps_the_other_keys_in_the_source(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k)
    prefix = _sources(vault_client, {"one": {"token": "t-1", "owner": "team-a"}, "two": {"owner": "team-b"}})

    result = migrate(k, tenant, prefix, field="token", mode="move")

    assert result.migrated == 1
    assert result.skipped == (Skipped("two", "no_field", "the secret has no field 'token'"),)
    assert decrypt_all(config, tenant, ["one"]) == {"one": b"t-1"}
    marker = kv_read(vault_client, f"{prefix}/one")[0]
    assert marker["owner"] == "team-a" and "token" not in marker and marker[MARKER_FIELD]["value"] == "field:token"
    assert kv_version(vault_client, f"{prefix}/two") == 1  # left as it was


def test_transit_ciphertexts_are_decrypted_through_transit(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k)
    key = unique("legacy-key")
    vault_client.secrets.transit.create_key(name=key, mount_point="transit")
    values = {f"t-{i}": f"transit value {i}".encode() for i in range(8)}
    docs: dict[str, dict[str, Any]] = {name: {"ciphertext": transit_encrypt(vault_client, key, value)}
                                       for name, value in values.items()}
    docs["plain"] = {"value": "not encrypted"}
    prefix = _sources(vault_client, docs)
    k.calls.reset()

    result = migrate(k, tenant, prefix, transit_key=key, mode="move")

    assert (result.migrated, result.from_transit, result.from_plaintext) == (9, 8, 1)
    assert k.calls.snapshot()["transit.decrypt"] == 8
    assert decrypt_all(config, tenant, values) == values
    assert kv_read(vault_client, f"{prefix}/t-3", version=1)[0]["ciphertext"].startswith("vault:v1:")
    assert kv_read(vault_client, f"{prefix}/t-3")[0][MARKER_FIELD]["origin"] == "transit"


def test_transit_ciphertexts_with_associated_data(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k)
    key = unique("legacy-key")
    vault_client.secrets.transit.create_key(name=key, mount_point="transit")
    prefix = _sources(vault_client, {"s": {"v": transit_encrypt(vault_client, key, b"bound", b"orders")}})

    with pytest.raises(JobFailed) as failed:
        migrate(k, tenant, prefix, transit_key=key, transit_context="another context", mode="move")
    assert isinstance(failed.value.__cause__, DecryptionError)
    assert kv_version(vault_client, f"{prefix}/s") == 1

    result = migrate(k, tenant, prefix, transit_key=key, transit_context="orders", mode="move")
    assert result.from_transit == 1
    assert decrypt_all(config, tenant, ["s"]) == {"s": b"bound"}


def test_the_tenant_s_own_transit_key_is_decrypted_by_keyops_without_transit(
        k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k, Policy(kek_residence="transit"))
    key = f"keyops-{tenant}"
    values = {f"own-{i}": f"own value {i}".encode() for i in range(6)}
    prefix = _sources(vault_client, {name: {"v": transit_encrypt(vault_client, key, value, b"app-ctx")}
                                     for name, value in values.items()})
    k.dek(tenant, k.read_keyring(tenant)[0].dek.primary)  # unwrapping the DEK is a Transit call of its own
    k.calls.reset()

    result = migrate(k, tenant, prefix, transit_context=b"app-ctx", mode="move")  # the tenant's own Transit key

    assert result.from_transit == 6
    assert k.calls.snapshot().get("transit.decrypt", 0) == 0
    assert decrypt_all(config, tenant, values) == values


def test_a_different_keyops_secret_of_the_same_name_is_never_overwritten(
        k: Keyops, config: Config, vault_client: Any, stack: Any) -> None:
    tenant = _tenant(k)
    k.put_secret(tenant, "taken", b"the keyops value")
    k.put_secret(tenant, "same", b"same value")
    prefix = _sources(vault_client, {"taken": {"v": "the legacy value"}, "same": {"v": "same value"},
                                     "free": {"v": "free value"}})

    result = migrate(k, tenant, prefix, mode="move")

    assert [s.name for s in result.skipped] == ["taken"] and result.skipped[0].reason == "exists"
    assert (result.migrated, result.total) == (2, 3)
    assert decrypt_all(config, tenant, ["taken", "same", "free"]) == \
        {"taken": b"the keyops value", "same": b"same value", "free": b"free value"}
    assert raw_records(vault_client, tenant, ["same"])["same"][1] == 1  # not rewritten
    assert kv_read(vault_client, f"{prefix}/taken") == ({"v": "the legacy value"}, 1)

    cli = run_cli(stack, "migrate", "--move", "--from", prefix, "--tenant", tenant, "--json")
    assert cli.returncode == 7, cli.stderr
    body = json.loads(cli.stdout)
    assert (body["status"], body["skipped"][0]["name"], body["migrated"]) == ("skipped", "taken", 0)


class _SourceRacingKeyops(Keyops):
    """Lets an application write the source between the migration's read and its marker write."""

    def __init__(self, config: Config, vault_client: Any, path: str, value: str) -> None:
        super().__init__(config)
        self.vault_client, self.path, self.value = vault_client, path, value
        self.raced = False

    def encrypt_record(self, tenant: str, plaintext: bytes, context: Any = b"") -> Any:
        if not self.raced:
            self.raced = True
            kv_write(self.vault_client, self.path, {"v": self.value})
        return super().encrypt_record(tenant, plaintext, context)


def test_a_source_changed_during_its_migration_is_migrated_again(config: Config, k: Keyops,
                                                                 vault_client: Any) -> None:
    tenant = _tenant(k)
    prefix = _sources(vault_client, {"s": {"v": "first"}})
    with _SourceRacingKeyops(config, vault_client, f"{prefix}/s", "second") as racing:
        result = migrate(racing, tenant, prefix, workers=1, mode="move")

    assert racing.raced and result.migrated == 1
    assert decrypt_all(config, tenant, ["s"]) == {"s": b"second"}
    record, record_version = raw_records(vault_client, tenant, ["s"])["s"]
    assert record_version == 2 and record["migrated_from_version"] == 2  # first value, then the new one
    marker, version = kv_read(vault_client, f"{prefix}/s")
    assert version == 3 and marker[MARKER_FIELD]["source_version"] == 2
    assert kv_read(vault_client, f"{prefix}/s", version=1)[0] == {"v": "first"}
    assert kv_read(vault_client, f"{prefix}/s", version=2)[0] == {"v": "second"}


def test_resumes_from_its_checkpoint_and_writes_each_secret_once(k: Keyops, config: Config,
                                                                 vault_client: Any) -> None:
    tenant = _tenant(k)
    docs = {f"s-{i:02d}": {"v": f"value {i}"} for i in range(30)}
    prefix = _sources(vault_client, docs)

    def stop(event: ProgressEvent) -> None:
        if event.done == 17:
            raise _Stop

    with pytest.raises(_Stop):
        migrate(k, tenant, prefix, batch_size=5, workers=3, progress=stop, mode="move")
    (job_id, job), = job_docs(vault_client, tenant).items()
    assert (job["state"], job["cursor"], job["counts"]["migrated"]) == ("running", "s-14", 15)

    with Keyops(config) as fresh:
        result = migrate(fresh, tenant, prefix, batch_size=5, mode="move")

    assert (result.job_id, result.resumed, result.migrated, result.already_migrated) == (job_id, True, 30, 0)
    assert set(kv_versions(vault_client, [f"{prefix}/{n}" for n in docs]).values()) == {2}
    assert set(kv_versions(vault_client, [f"secrets/{tenant}/{n}" for n in docs]).values()) == {1}
    assert decrypt_all(config, tenant, docs) == {n: d["v"].encode() for n, d in docs.items()}


def test_purge_destroys_only_the_migrated_originals(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k)
    prefix = _sources(vault_client, {"a": {"v": "a1"}, "b": {"v": "b1"}})
    kv_write(vault_client, f"{prefix}/a", {"v": "a2"})
    migrate(k, tenant, prefix, mode="move")
    kv_write(vault_client, f"{prefix}/late", {"v": "not migrated yet"})

    assert purge_sources(k, tenant, prefix, dry_run=True) == 2
    assert purge_sources(k, tenant, prefix) == 2

    versions = vault_client.secrets.kv.v2.read_secret_metadata(path=f"{prefix}/a", mount_point="keyops")
    assert {v: info["destroyed"] for v, info in versions["data"]["versions"].items()} == \
        {"1": True, "2": True, "3": False}
    assert MARKER_FIELD in kv_read(vault_client, f"{prefix}/a")[0]
    assert kv_read(vault_client, f"{prefix}/late")[0] == {"v": "not migrated yet"}
    assert decrypt_all(config, tenant, ["a", "b"]) == {"a": b"a2", "b": b"b1"}
    assert purge_sources(k, tenant, prefix) == 0


def test_kinds_and_bad_input(k: Keyops, config: Config, vault_client: Any) -> None:
    tenant = _tenant(k)
    key = unique("legacy-key")
    vault_client.secrets.transit.create_key(name=key, mount_point="transit")
    looks_encrypted = transit_encrypt(vault_client, key, b"x")
    prefix = _sources(vault_client, {"enc": {"v": looks_encrypted}, "plain": {"v": "hello"}})

    as_transit = migrate(k, tenant, prefix, kind="transit", transit_key=key, dry_run=True, mode="move")
    assert as_transit.from_transit == 1 and [s.reason for s in as_transit.skipped] == ["not_transit"]
    kept = migrate(k, tenant, prefix, kind="plaintext", mode="move")
    assert kept.from_plaintext == 2
    assert decrypt_all(config, tenant, ["enc"]) == {"enc": looks_encrypted.encode()}

    for bad in ({"source": "secrets/other"}, {"source": "tenants"}, {"source": ""}, {"source": "../x"},
                {"source": prefix, "kind": "sometimes"}, {"source": prefix, "kind": "transit"},
                {"source": prefix, "source_mount": "bad mount"}):
        with pytest.raises(InvalidInput):
            migrate(k, tenant, **bad)  # type: ignore[arg-type]
    with pytest.raises(JobFailed, match="no Transit key"):
        migrate(k, tenant, _sources(vault_client, {"e": {"v": looks_encrypted}}), mode="move")


def test_other_kv_mount(k: Keyops, config: Config, vault_client: Any) -> None:
    mount = "legacy-kv"
    if f"{mount}/" not in vault_client.sys.list_mounted_secrets_engines()["data"]:
        vault_client.sys.enable_secrets_engine(backend_type="kv", path=mount, options={"version": "2"})
    tenant = _tenant(k)
    prefix = _sources(vault_client, {"x": {"v": "from another mount"}}, mount=mount)
    result = migrate(k, tenant, prefix, source_mount=mount, mode="move")
    assert (result.mount, result.migrated) == (mount, 1)
    assert decrypt_all(config, tenant, ["x"]) == {"x": b"from another mount"}
    assert MARKER_FIELD in kv_read(vault_client, f"{prefix}/x", mount=mount)[0]


def test_cli_migrate(k: Keyops, stack: Any, vault_client: Any) -> None:
    tenant = _tenant(k)
    prefix = _sources(vault_client, {f"s-{i}": {"v": f"cli value {i}"} for i in range(4)})

    dry = run_cli(stack, "migrate", "--move", "--from", prefix, "--tenant", tenant, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would migrate 4 of 4 secrets" in dry.stdout
    done = run_cli(stack, "migrate", "--move", "--from", prefix, "--tenant", tenant, "--progress")
    assert done.returncode == 0, done.stderr
    assert "migrated 4 of 4 secrets" in done.stdout and "--purge-source" in done.stdout
    assert "migrate [" in done.stderr
    again = run_cli(stack, "migrate", "--move", "--from", prefix, "--tenant", tenant, "--json", "--detailed-exitcode")
    assert again.returncode == 3, again.stderr
    assert json.loads(again.stdout)["status"] == "nothing_to_do"
    purge = run_cli(stack, "migrate", "--move", "--from", prefix, "--tenant", tenant, "--purge-source", "--json")
    assert purge.returncode == 0 and json.loads(purge.stdout)["purged"] == 4
    bad = run_cli(stack, "migrate", "--from", "secrets/x", "--tenant", tenant)
    assert bad.returncode == InvalidInput.exit_code and "keyops' own storage" in bad.stderr
    assert "cli value" not in dry.stdout + done.stdout + done.stderr + again.stdout + purge.stdout


# --- copy, then cut over ----------------------------------------------------------------------


def bao_kv_get(stack: Any, path: str, mount: str = "keyops") -> dict[str, Any]:
    """What a reader of the source sees, through the real ``bao`` CLI (not keyops, not hvac)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VAULT_", "BAO_"))}
    env.update(VAULT_ADDR=stack.env()["VAULT_ADDR"], VAULT_TOKEN=stack.env()["VAULT_TOKEN"])
    proc = subprocess.run([bao_binary(), "kv", "get", "-format=json", f"-mount={mount}", path], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout)["data"]["data"])


def test_copy_leaves_the_sources_to_their_readers_and_cut_over_replaces_them(
        k: Keyops, config: Config, stack: Any, vault_client: Any) -> None:
    tenant = _tenant(k)
    docs = {f"s{i:03d}": {"value": f"v-{i}"} for i in range(5)}
    prefix = _sources(vault_client, docs)

    copied = migrate(k, tenant, prefix)  # the default mode

    assert (copied.mode, copied.migrated, copied.changed) == ("copy", 5, True)
    for name, data in docs.items():
        assert bao_kv_get(stack, f"{prefix}/{name}") == data  # readers of the old path keep working
        assert kv_version(vault_client, f"{prefix}/{name}") == 1
    assert decrypt_all(config, tenant, docs) == {name: data["value"].encode() for name, data in docs.items()}
    again = migrate(k, tenant, prefix)
    assert (again.migrated, again.already_migrated, again.changed) == (0, 5, False)
    with pytest.raises(InvalidInput, match="cut over first"):
        migrate(k, tenant, prefix, purge_source=True)

    planned = migrate(k, tenant, prefix, mode="cutover", dry_run=True)
    assert (planned.migrated, planned.would_change) == (5, True)
    assert bao_kv_get(stack, f"{prefix}/s000") == docs["s000"]
    cut = migrate(k, tenant, prefix, mode="cutover", purge_source=True)

    assert (cut.mode, cut.migrated, cut.skipped, cut.purged) == ("cutover", 5, (), 5)
    for name in docs:
        marker = bao_kv_get(stack, f"{prefix}/{name}")
        assert set(marker) == {MARKER_FIELD} and marker[MARKER_FIELD]["source_version"] == 1
    assert decrypt_all(config, tenant, docs) == {name: data["value"].encode() for name, data in docs.items()}
    assert migrate(k, tenant, prefix, mode="cutover").changed is False


def test_cut_over_leaves_a_source_changed_since_its_copy(k: Keyops, config: Config, stack: Any,
                                                         vault_client: Any) -> None:
    tenant = _tenant(k)
    prefix = _sources(vault_client, {"kept": {"value": "old"}, "changed": {"value": "old"}})
    migrate(k, tenant, prefix)
    kv_write(vault_client, f"{prefix}/changed", {"value": "new"})  # an application writes after the copy
    kv_write(vault_client, f"{prefix}/late", {"value": "never copied"})

    cut = migrate(k, tenant, prefix, mode="cutover")

    assert cut.migrated == 1
    assert sorted((s.name, s.reason) for s in cut.skipped) == [("changed", "stale"), ("late", "not_copied")]
    assert bao_kv_get(stack, f"{prefix}/changed") == {"value": "new"}  # not replaced blindly
    assert bao_kv_get(stack, f"{prefix}/late") == {"value": "never copied"}
    assert MARKER_FIELD in bao_kv_get(stack, f"{prefix}/kept")
    assert k.get_secret(tenant, "changed") == b"old"

    cli = run_cli(stack, "migrate", "--from", prefix, "--tenant", tenant, "--cut-over")
    assert cli.returncode == 7 and "skipped changed: " in cli.stdout and "copy again" in cli.stdout

    recopy = migrate(k, tenant, prefix)  # the copy catches up with the new value; the marker stays
    assert (recopy.migrated, recopy.already_migrated) == (2, 1)
    assert bao_kv_get(stack, f"{prefix}/changed") == {"value": "new"}
    final = run_cli(stack, "migrate", "--from", prefix, "--tenant", tenant, "--cut-over", "--json")
    assert final.returncode == 0, final.stderr
    assert json.loads(final.stdout)["migrated"] == 2
    assert k.get_secret(tenant, "changed") == b"new" and MARKER_FIELD in bao_kv_get(stack, f"{prefix}/changed")


def test_cli_copies_by_default_and_says_how_to_cut_over(k: Keyops, stack: Any, vault_client: Any) -> None:
    tenant = _tenant(k)
    prefix = _sources(vault_client, {"a": {"value": "x"}})
    done = run_cli(stack, "migrate", "--from", prefix, "--tenant", tenant)
    assert done.returncode == 0, done.stderr
    assert f"--tenant {tenant} --cut-over" in done.stdout and "sources are unchanged" in done.stdout
    assert bao_kv_get(stack, f"{prefix}/a") == {"value": "x"}
    refused = run_cli(stack, "migrate", "--from", prefix, "--tenant", tenant, "--purge-source")
    assert refused.returncode == InvalidInput.exit_code and "cut over first" in refused.stderr
    both = run_cli(stack, "migrate", "--from", prefix, "--tenant", tenant, "--cut-over", "--move")
    assert both.returncode == 2 and "not allowed with" in both.stderr
