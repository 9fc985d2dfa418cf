"""Helpers shared by the CLI commands (internal)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from keyops.config import Config
from keyops.ops.front import Keyops


def open_keyops() -> Keyops:
    """A Keyops from the environment (VAULT_ADDR, VAULT_TOKEN, KEYOPS_*), with audit when configured."""
    config = Config.load()
    audit = None
    try:
        from keyops.audit import sink_from_config  # issue: audit trail
    except ImportError:
        pass
    else:
        audit = sink_from_config(config)
    # AuditTrail returns the entry it wrote; front.py's AuditSink (Callable[..., None]) should say
    # Callable[..., object]. Temporary, until the front is split and typed (issue 14, item 1).
    return Keyops(config, audit=audit)  # type: ignore[arg-type]


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def print_json(value: Any) -> None:
    json.dump(to_jsonable(value), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
