# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Views of keyops objects for module results and diffs: versions and states, never key material.

FOR INTERNAL USE OF THE keyops.kms COLLECTION ONLY: names here may change in
any release.
"""

from __future__ import annotations

import dataclasses


def chain_view(chain):
    """``{"primary": 2, "versions": {"1": "decrypt_only", "2": "active"}}`` for one level."""
    return {
        "primary": chain.primary,
        "versions": {str(kv.version): kv.state for kv in chain.versions},
    }


def keyring_view(keyring):
    """What a diff of a tenant shows: its policy and each level's versions and states."""
    if keyring is None:
        return {"exists": False}
    return {
        "exists": True,
        "policy": keyring.policy.to_dict(),
        "kek": chain_view(keyring.kek),
        "dek": chain_view(keyring.dek),
    }


def master_view(registry):
    if registry is None:
        return {"exists": False}
    return {
        "exists": True,
        "primary": registry.primary,
        "versions": {str(v.version): v.state for v in registry.versions},
    }


def jsonable(value):
    """Frozen result dataclasses (and tuples of them) as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value
