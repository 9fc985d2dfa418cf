"""The one JSON view of results (``keyops.ops.views``) and per-tenant outcomes: pure, no server."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from keyops import errors
from keyops.model.keyring import KeyChain, Keyring, KeyVersion, Policy
from keyops.ops.outcomes import TenantFailure, TenantOutcome
from keyops.ops.reencrypt import ReencryptReport, ReencryptResult
from keyops.ops.rotation import DueRotationReport, RotationReport, RotationResult
from keyops.ops.views import dump_json, keyring_view, to_json


@dataclasses.dataclass(frozen=True)
class _Row:
    name: str
    counts: dict[int, int]
    tags: frozenset[str] = frozenset()


def test_to_json_turns_results_into_plain_values_with_string_keys() -> None:
    assert to_json((_Row("a", {4: 1, 3: 2}, frozenset({"x"})),)) == [
        {"name": "a", "counts": {"4": 1, "3": 2}, "tags": ["x"]}]


@pytest.mark.parametrize("value", [b"\x00" * 32, bytearray(32), {"key": memoryview(b"k")}])
def test_to_json_refuses_bytes(value: object) -> None:
    with pytest.raises(TypeError, match="never carry key material"):
        to_json(value)


def test_dump_json_is_the_cli_format() -> None:
    out = io.StringIO()
    dump_json({"b": (1, 2), "a": _Row("n", {})}, out)
    assert out.getvalue() == json.dumps({"a": {"counts": {}, "name": "n", "tags": []}, "b": [1, 2]},
                                        indent=2, sort_keys=True) + "\n"


def test_keyring_view_shows_versions_and_states_never_wrapped_material() -> None:
    assert keyring_view(None) == {"exists": False}

    def chain(*states: str) -> KeyChain:
        versions = tuple(KeyVersion(n, state, "2025-01-01T00:00:00Z", "V1JBUFBFRA==", 1)
                         for n, state in enumerate(states, start=1))
        return KeyChain(primary=states.index("active") + 1, versions=versions)

    keyring = Keyring("acme", Policy(), "2025-01-01T00:00:00Z", chain("active"), chain("decrypt_only", "active"))
    view = keyring_view(keyring)
    assert view == {"exists": True, "policy": Policy().to_dict(), "kek": {"primary": 1, "versions": {"1": "active"}},
                    "dek": {"primary": 2, "versions": {"1": "decrypt_only", "2": "active"}}}
    assert "V1JBUFBFRA==" not in json.dumps(view)


def test_every_error_says_whether_a_retry_may_pass() -> None:
    retryable = {c.code for c in errors._classes(errors.KeyopsError) if c.retryable}
    assert retryable == {"conflict", "vault_unreachable", "vault_sealed", "hsm_unavailable"}
    assert errors.is_retryable("vault_sealed") and not errors.is_retryable("tenant_not_found")
    assert not errors.is_retryable("no_such_code")
    assert errors.JobFailed("job x stopped", errors.HsmUnavailable("down")).retryable
    assert not errors.JobFailed("job x stopped", errors.DecryptionError()).retryable


def test_a_tenant_failure_is_its_code_and_message_and_the_tables_retryable() -> None:
    failure = TenantFailure.of("acme", "dek", errors.Conflict("lost the race; retry"))
    assert to_json(failure) == {"tenant": "acme", "level": "dek", "error": "conflict",
                                "message": "lost the race; retry"}
    assert failure.retryable
    assert not TenantFailure.of(None, "master", errors.HsmLoginFailed("wrong PIN")).retryable


def _rotation(tenant: str, changed: bool, dry_run: bool = False) -> RotationResult:
    return RotationResult(tenant, "dek", changed, 1, 2 if changed else 1, "on demand", dry_run)


def test_rotation_reports_split_rotated_unchanged_and_say_it_in_one_line() -> None:
    failed = TenantFailure.of("c", "dek", errors.PermissionDenied("denied"))
    report = RotationReport(True, (_rotation("a", True, True), _rotation("b", False, True)), (failed,))
    assert report.changed and [r.tenant for r in report.rotated] == ["a"]
    assert [r.tenant for r in report.unchanged] == ["b"]
    assert report.summary() == "would rotate 1 key; 1 failed"
    assert RotationReport(False, (), ()).summary() == "rotated 0 keys"
    due = DueRotationReport(False, 2, True, (_rotation("a", True), _rotation("b", True)), ())
    assert due.summary() == "rotated 2 keys (2 tenants and the master key checked)"
    assert [r.tenant for r in due.rotated] == ["a", "b"] and not due.unchanged


def _reencrypted(tenant: str, rewritten: int, changed: bool, dry_run: bool) -> ReencryptResult:
    return ReencryptResult(tenant, "job", 2, rewritten, rewritten, 0, 0, {2: rewritten}, dry_run, False,
                           changed=changed)


def test_a_reencrypt_report_says_per_tenant_what_check_mode_reports() -> None:
    plan = _reencrypted("a", 3, False, True)  # a dry run writes nothing: its own changed stays False
    report = ReencryptReport(True, (TenantOutcome("a", True, plan), TenantOutcome("b", False,
                                                                                  _reencrypted("b", 0, False, True))))
    assert report.changed and report.rewritten == 3 and report.failures == ()
    assert report.summary() == "would re-encrypt 3 records of 2 tenants"
    failed = TenantOutcome[ReencryptResult]("c", failure=TenantFailure.of("c", "dek", errors.VaultSealed("sealed")))
    broken = ReencryptReport(False, (TenantOutcome("a", True, _reencrypted("a", 3, True, False)), failed))
    assert broken.results == (broken.outcomes[0].result,) and broken.failures == (failed.failure,)
    assert failed.failed and broken.summary() == "re-encryption failed for 1 of 2 tenants"
