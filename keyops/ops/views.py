"""The one JSON view of results, for every face: ``keyops ... --json`` and the Ansible modules' results and diffs.

Pure (no I/O). Results are frozen dataclasses that hold no key material
(versions, states, counts, names, messages); ``to_json`` turns them into
plain JSON values, and refuses bytes (raw key material is bytes), so that a
key can never reach an output through it. A keyring or the master registry
is shown through ``keyring_view`` and ``master_view``: versions and states
only, never the wrapped keys a keyring also holds.
"""

from __future__ import annotations

import dataclasses
import json
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from keyops.model.keyring import KeyChain, Keyring
    from keyops.model.master import MasterRegistry
    from keyops.ops.outcomes import TenantOutcome
    from keyops.ops.reencrypt import ReencryptResult
    from keyops.ops.rotation import MasterRotationResult, RotationResult

#: A diff: what a change shows before and after it (``--diff`` in Ansible).
Diff = tuple[dict[str, Any], dict[str, Any]]


def to_json(value: Any) -> Any:
    """Dataclasses (and dicts, lists, tuples and sets of them) as plain JSON values; dict keys as strings.

    Raises ``TypeError`` on bytes: no result carries any, and key material
    is bytes.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("a result holds bytes; results and their views never carry key material")
    return value


def dump_json(value: Any, out: IO[str]) -> None:
    """``to_json(value)`` on ``out``, keys sorted, two-space indent, one trailing newline: the CLI's --json."""
    json.dump(to_json(value), out, indent=2, sort_keys=True)
    out.write("\n")


def chain_view(chain: KeyChain | MasterRegistry) -> dict[str, Any]:
    """``{"primary": 2, "versions": {"1": "decrypt_only", "2": "active"}}`` for one level of a keyring."""
    return {
        "primary": chain.primary,
        "versions": {str(kv.version): kv.state for kv in chain.versions},
    }


def keyring_view(keyring: Keyring | None) -> dict[str, Any]:
    """A tenant as a diff shows it: its policy and each level's versions and states (``exists`` false: none)."""
    if keyring is None:
        return {"exists": False}
    return {
        "exists": True,
        "policy": keyring.policy.to_dict(),
        "kek": chain_view(keyring.kek),
        "dek": chain_view(keyring.dek),
    }


def master_view(registry: MasterRegistry | None) -> dict[str, Any]:
    """The master key registry as a diff shows it: the primary version and each version's state."""
    if registry is None:
        return {"exists": False}
    return {"exists": True, **chain_view(registry)}


def rotation_diff(rotations: Iterable[RotationResult | MasterRotationResult]) -> Diff:
    """The primary version of each level that rotates (or would), before and after.

    Keys are ``tenant/level`` and ``master``.
    """
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for r in rotations:
        if not r.changed:
            continue
        key = "master" if r.level == "master" else f"{r.tenant}/{r.level}"
        before[key] = {"primary": r.old_version}
        after[key] = {"primary": r.new_version}
    return before, after


def reencrypt_diff(outcomes: Iterable[TenantOutcome[ReencryptResult]]) -> Diff:
    """For each tenant with records to move: its primary DEK and how many records are under it, before and after."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for outcome in outcomes:
        r = outcome.result
        if r is None or not outcome.changed:
            continue
        moved, current = r.rewritten, r.already_current
        before[r.tenant] = {"primary_dek": r.dek_version, "records_under_primary": current,
                            "records_under_older_deks": moved}
        after[r.tenant] = {"primary_dek": r.dek_version, "records_under_primary": current + moved,
                           "records_under_older_deks": 0}
    return before, after
