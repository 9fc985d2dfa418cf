"""The pure planning of declarative Transit keys (keyops.ops.transit_keys.plan): no server."""

from __future__ import annotations

import dataclasses

import pytest

from keyops.errors import InvalidInput, KeyStateError
from keyops.ops.transit_keys import TransitKeySpec, TransitKeyView, parse_duration, plan


def key(**changes: object) -> TransitKeyView:
    base = TransitKeyView(name="app", type="aes256-gcm96", latest_version=3, min_decryption_version=1,
                          min_encryption_version=0, min_available_version=0, auto_rotate_period=0,
                          deletion_allowed=False, exportable=False, allow_plaintext_backup=False, imported=False,
                          versions=(1, 2, 3))
    return dataclasses.replace(base, **changes)


def test_missing_key_is_created_non_exportable_with_its_period() -> None:
    steps = plan(None, TransitKeySpec("app", auto_rotate_period=86400))
    assert steps.changed and steps.create == {"type": "aes256-gcm96", "exportable": False,
                                              "allow_plaintext_backup": False, "auto_rotate_period": 86400}
    assert not steps.rotate and steps.config == {} and steps.trim_to is None
    assert steps.after.latest_version == 1 and steps.after.auto_rotate_period == 86400
    assert steps.actions() == ["create aes256-gcm96 key"]


def test_matching_key_needs_nothing() -> None:
    current = key(auto_rotate_period=3600, min_decryption_version=2)
    steps = plan(current, TransitKeySpec("app", type="aes256-gcm96", auto_rotate_period=3600,
                                         min_decryption_version=2, deletion_allowed=False))
    assert not steps.changed and steps.actions() == [] and steps.after == current


def test_only_differing_settings_are_configured() -> None:
    steps = plan(key(), TransitKeySpec("app", min_decryption_version=2, min_encryption_version=3,
                                       auto_rotate_period=7200, deletion_allowed=False))
    assert steps.config == {"min_decryption_version": 2, "min_encryption_version": 3, "auto_rotate_period": 7200}
    assert steps.after.min_decryption_version == 2 and steps.before == key()


def test_rotate_with_expect_version_rotates_once() -> None:
    spec = TransitKeySpec("app", rotate=True, expect_version=3)
    first = plan(key(), spec)
    assert first.rotate and first.after.latest_version == 4 and first.after.versions == (1, 2, 3, 4)
    again = plan(key(latest_version=4, versions=(1, 2, 3, 4)), spec)
    assert not again.changed and again.notes == ("not rotated: the latest version is 4, not 3",)


def test_rotate_without_expect_version_always_rotates_an_existing_key() -> None:
    assert plan(key(), TransitKeySpec("app", rotate=True)).rotate
    assert not plan(None, TransitKeySpec("app", rotate=True)).rotate


def test_rotation_then_raising_min_versions_then_trim_in_one_plan() -> None:
    spec = TransitKeySpec("app", rotate=True, expect_version=3, min_decryption_version=4,
                          min_encryption_version=4, min_available_version=4)
    steps = plan(key(), spec)
    assert steps.rotate and steps.trim_to == 4
    assert steps.config == {"min_decryption_version": 4, "min_encryption_version": 4}
    assert steps.after.versions == (4,) and steps.after.min_available_version == 4
    assert steps.actions() == ["rotate", "set min_decryption_version=4", "set min_encryption_version=4",
                               "trim versions below 4"]


@pytest.mark.parametrize(("current", "spec", "message"), [
    (key(), TransitKeySpec("app", min_decryption_version=4), "above its latest version 3"),
    (key(), TransitKeySpec("app", min_encryption_version=5), "above its latest version 3"),
    (key(min_decryption_version=3), TransitKeySpec("app", min_encryption_version=2), "below min_decryption_version"),
    (key(), TransitKeySpec("app", min_available_version=2), "raise min_decryption_version first"),
    (key(min_decryption_version=3, min_encryption_version=2), TransitKeySpec("app", min_available_version=3),
     "below min_decryption_version"),
    (key(min_available_version=2, min_decryption_version=2, versions=(2, 3)),
     TransitKeySpec("app", min_available_version=1), "cannot go back"),
    (key(), TransitKeySpec("app", type="rsa-2048"), "type cannot change"),
    (None, TransitKeySpec("app", min_decryption_version=2), "above its latest version 1"),
])
def test_impossible_specs_are_refused_before_any_write(current: TransitKeyView | None, spec: TransitKeySpec,
                                                       message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        plan(current, spec)


def test_exportable_keys_are_refused() -> None:
    with pytest.raises(InvalidInput, match="never makes a Transit key exportable"):
        TransitKeySpec("app", exportable=True)
    with pytest.raises(KeyStateError, match="is exportable"):
        plan(key(exportable=True), TransitKeySpec("app"))


def test_absent_needs_explicit_deletion_allowed() -> None:
    assert not plan(None, TransitKeySpec("app", state="absent")).changed
    with pytest.raises(InvalidInput, match="Confirm with deletion_allowed: true"):
        plan(key(), TransitKeySpec("app", state="absent"))
    steps = plan(key(), TransitKeySpec("app", state="absent", deletion_allowed=True))
    assert steps.delete and steps.config == {"deletion_allowed": True} and steps.after is None
    assert plan(key(deletion_allowed=True), TransitKeySpec("app", state="absent")).config == {}


@pytest.mark.parametrize(("bad", "message"), [
    ({"name": "a/b"}, "invalid Transit key name"),
    ({"name": ".."}, "invalid Transit key name"),
    ({"type": "des"}, "type must be one of"),
    ({"auto_rotate_period": 60}, "at least 3600 seconds"),
    ({"min_decryption_version": 0}, "positive version"),
    ({"expect_version": 2}, "only applies with rotate"),
    ({"state": "gone"}, "state must be"),
])
def test_spec_validation(bad: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "app"}
    fields.update(bad)
    with pytest.raises(InvalidInput, match=message):
        TransitKeySpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "seconds"), [(0, 0), (3600, 3600), ("3600", 3600), ("90m", 5400), ("24h", 86400),
                                               ("30d", 2592000), (" 2h ", 7200)])
def test_parse_duration(text: object, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1w", "-5", "1.5h", "h", True])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text)


def test_view_from_response_keeps_no_key_material() -> None:
    data = {"type": "ecdsa-p256", "latest_version": 2, "min_decryption_version": 1, "min_encryption_version": 0,
            "min_available_version": 0, "auto_rotate_period": 0, "deletion_allowed": False, "exportable": False,
            "keys": {"1": {"public_key": "-----BEGIN PUBLIC KEY-----..."}, "2": {"public_key": "..."}}}
    view = TransitKeyView.from_response("sig", data)
    assert view.versions == (1, 2) and "BEGIN" not in repr(view.to_dict())


@pytest.mark.parametrize(("current", "config", "requests"), [
    (key(), {}, []),
    (key(), {"deletion_allowed": True}, [{"deletion_allowed": True}]),
    (key(), {"min_decryption_version": 2}, [{"min_decryption_version": 2}]),
    # Raising both: encryption first (OpenBao refuses enc == dec in one request).
    (key(), {"min_decryption_version": 2, "min_encryption_version": 2, "auto_rotate_period": 3600},
     [{"auto_rotate_period": 3600, "min_encryption_version": 2}, {"min_decryption_version": 2}]),
    # Lowering encryption below the current decryption minimum: decryption first.
    (key(min_decryption_version=3, min_encryption_version=3),
     {"min_decryption_version": 1, "min_encryption_version": 2},
     [{"min_decryption_version": 1}, {"min_encryption_version": 2}]),
    (key(min_decryption_version=2), {"min_decryption_version": 3, "min_encryption_version": 0},
     [{"min_encryption_version": 0}, {"min_decryption_version": 3}]),
])
def test_config_requests_keep_every_intermediate_state_valid(current: TransitKeyView, config: dict[str, object],
                                                             requests: list[dict[str, object]]) -> None:
    from keyops.ops.transit_keys import config_requests

    assert config_requests(current, config) == requests
