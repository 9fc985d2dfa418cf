"""Helpers shared by the CLI commands (internal)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from keyops.config import Config
from keyops.ops.front import Keyops
from keyops.ops.views import dump_json

#: A command's "nothing to do": ``keyops.cli.main`` turns it into 0 unless ``--detailed-exitcode`` was given.
EXIT_NOTHING_TO_DO = 3


def open_keyops(*, with_audit: bool = True, **options: Any) -> Keyops:
    """A Keyops from the environment (VAULT_ADDR, VAULT_TOKEN, KEYOPS_*), with audit when configured.

    ``options`` go to ``Keyops`` (a long-lived server's ``stale_for``, say). ``with_audit=False``
    only for ``keyops init``, whose mounts the audit trail itself needs."""
    config = Config.load()
    logging.getLogger("keyops.cli").info(
        "Vault at %s%s, KV mount %r, Transit mount %r, HSM token %r", config.vault_addr,
        f" (namespace {config.vault_namespace})" if config.vault_namespace else "", config.kv_mount,
        config.transit_mount, config.pkcs11_token_label)
    audit = None
    if with_audit:
        from keyops.audit import sink_from_config

        audit = sink_from_config(config)
    # AuditTrail returns the entry it wrote; front.py's AuditSink (Callable[..., None]) should say
    # Callable[..., object]. Temporary, until the front is split and typed (issue 14, item 1).
    return Keyops(config, audit=audit, **options)  # type: ignore[arg-type]


def print_json(value: Any) -> None:
    """``--json`` output: the library's one view of results (``keyops.ops.views``), as the modules return it."""
    dump_json(value, sys.stdout)


def print_names(names: list[str], as_json: bool) -> None:
    """A list of names (tenants, secrets): a JSON array, or one name a line."""
    if as_json:
        print_json(names)
    else:
        for name in names:
            print(name)


def add_json_flag(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def set_command(parser: Any, func: Any, *, json: bool = True, **defaults: Any) -> None:
    """End a command's parser: its ``--json`` flag (listed last, as in every command) and the function it runs.

    ``data_output=True``: what the command prints is its result (names, values, a table), which
    ``--quiet`` keeps; other commands print a report of what they did, which ``--quiet`` drops.
    """
    if json:
        add_json_flag(parser)
    parser.set_defaults(func=func, **defaults)
