"""The backup file and restore's merge of usage counts, without a server: damage is refused, naming the line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from keyops import crypto
from keyops.errors import InvalidInput
from keyops.ops.backup import FORMAT, Backup, Document, dumps, kind_of, load_backup
from keyops.ops.restore import merge_usage

HEADER = {"format": FORMAT, "schema": 1, "audit_path": "audit"}


def record(tenant: str, name: str, version: int = 1) -> dict[str, object]:
    ct = crypto.encrypt(crypto.AeadKey(crypto.generate_key()), tenant, version, b"v", b"secret:" + name.encode())
    return {"schema": 1, "ciphertext": ct.to_text(), "dek_version": version, "updated_at": "2026-01-01T00:00:00Z"}


def usage(tenant: str, reserved: int, closed_at: str | None = None) -> dict[str, object]:
    return {"schema": 1, "tenant": tenant,
            "versions": {"1": {"reserved": reserved, "external": 0, "leases": {}, "closed_at": closed_at}}}


def sample() -> Backup:
    return Backup(HEADER, (
        Document("tenants/acme/usage", "usage", "acme", usage("acme", 16), 3, 1000, True),
        Document("secrets/acme/db/password", "secret", "acme", record("acme", "db/password"), 1),
    ))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "b.jsonl"
    path.write_text(text)
    return path


def test_a_backup_reads_back_as_it_was_written(tmp_path: Path) -> None:
    original = sample()
    back = load_backup(write(tmp_path, dumps(original)))
    assert back.documents == original.documents
    assert back.counts["secret"] == 1 and back.counts["usage"] == 1 and back.tenants == ("acme",)


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "cut off"),
    (lambda t: t.rsplit("\n", 2)[0] + "\n", "end line does not match"),  # the trailer dropped
    (lambda t: t.replace('"reserved":16', '"reserved":1'), "end line does not match"),  # a count lowered
    (lambda t: "", "empty or cut off"),
    (lambda t: "not json\n" + t, "line 1 is not JSON"),
])
def test_a_damaged_file_is_refused_naming_what_is_wrong(tmp_path: Path, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=message):
        load_backup(write(tmp_path, damage(dumps(sample()))))


def resealed(lines: list[dict[str, object]]) -> str:
    """A file whose trailer matches its lines: only the documents' own checks can refuse it."""
    body = "".join(json.dumps(line) + "\n" for line in lines)
    trailer = {"end": True, "documents": len(lines) - 1, "sha256": hashlib.sha256(body.encode()).hexdigest()}
    return body + json.dumps(trailer) + "\n"


@pytest.mark.parametrize("doc, message", [
    ({"path": "tenants/acme/usage", "kind": "keyring", "data": usage("acme", 1)}, "its path holds a usage"),
    ({"path": "tenants/other/usage", "kind": "usage", "data": usage("acme", 1)}, "names tenant 'acme'"),
    ({"path": "secrets/../x/y", "kind": "secret", "data": {}}, "not a document keyops backs up"),
    ({"path": "sys/policy/root", "kind": "secret", "data": {}}, "not a document keyops backs up"),
    ({"path": "secrets/beta/db/password", "kind": "secret", "data": record("acme", "db/password")},
     "not a keyops record of this tenant"),
    ({"path": "tenants/acme/usage", "kind": "usage", "data": usage("acme", 1), "max_versions": -1},
     "max_versions must be"),
])
def test_a_document_that_is_not_what_its_path_holds_is_refused_naming_the_line(
        tmp_path: Path, doc: dict[str, object], message: str) -> None:
    text = resealed([HEADER, {"path": "master", "kind": "master", "data": {"primary": 1, "versions": []}}, doc])
    with pytest.raises(InvalidInput, match=rf"line 3: .*{message}"):
        load_backup(write(tmp_path, text))


def test_kind_of_knows_keyops_paths_only() -> None:
    assert kind_of("tenants/acme/jobs/reencrypt-1", "audit") == ("job", "acme")
    assert kind_of("audit/head/ci-runner", "audit") == ("audit_head", None)
    with pytest.raises(InvalidInput, match="not a document"):
        kind_of("audit/head/a/b", "audit")


def test_merged_usage_never_lowers_a_count_and_keeps_every_fence() -> None:
    assert merge_usage(usage("acme", 64), usage("acme", 16), "acme") == usage("acme", 64)
    assert merge_usage(usage("acme", 16), usage("acme", 64, "2026-01-01T00:00:00Z"), "acme") == \
        usage("acme", 64, "2026-01-01T00:00:00Z")
