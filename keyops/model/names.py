"""Validation of tenant and secret names before they become Vault paths.

Tenant names are plain ASCII so that look-alike Unicode names (a Cyrillic
"а" for a Latin "a") cannot alias another tenant. Secret names may have
``/`` separated segments, but no empty, ``.`` or ``..`` segment. Mount
names (the KV and Transit mounts, a migration's source) likewise, and never
under ``sys/``, ``auth/``, ``identity/`` or ``cubbyhole/``, which are Vault's own.
"""

from __future__ import annotations

import re

from keyops.errors import InvalidInput

MAX_NAME_LEN = 63
MAX_SECRET_NAME_LEN = 512

_TENANT_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62})")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.@+=,-]+")
_MOUNT_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.-]+")
MAX_MOUNT_LEN = 128
#: Vault's own paths: a mount name under them would send keyops' KV or Transit requests to Vault's system API.
_RESERVED_MOUNTS = ("sys", "auth", "identity", "cubbyhole")


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_tenant(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"tenant name must be a string, not {type(name).__name__}")
    if len(name) > MAX_NAME_LEN:
        raise InvalidInput(f"tenant name is {len(name)} characters long; at most {MAX_NAME_LEN} are allowed")
    if not _TENANT_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid tenant name {_describe(name)}: use 1-{MAX_NAME_LEN} lowercase ASCII letters, "
            "digits, '-' or '_', starting with a letter or digit (no '/', '..', spaces or Unicode)")
    return name


def validate_secret_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidInput(f"secret name must be a string, not {type(name).__name__}")
    if not name or len(name) > MAX_SECRET_NAME_LEN:
        raise InvalidInput(f"secret name must be 1-{MAX_SECRET_NAME_LEN} characters long")
    for segment in name.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT_RE.fullmatch(segment):
            raise InvalidInput(
                f"invalid secret name {_describe(name)}: use '/'-separated segments of ASCII letters, "
                "digits and '_.@+=,-', with no empty, '.' or '..' segment")
    return name


def validate_mount(name: object, what: str = "mount") -> str:
    """A mount path as Vault names it (``keyops``, ``team/kv``); a trailing ``/`` is dropped."""
    if not isinstance(name, str):
        raise InvalidInput(f"{what} name must be a string, not {type(name).__name__}")
    path = name[:-1] if name.endswith("/") else name
    if not path or len(path) > MAX_MOUNT_LEN:
        raise InvalidInput(f"{what} name must be 1-{MAX_MOUNT_LEN} characters long, got {_describe(name)}")
    segments = path.split("/")
    if any(s in ("", ".", "..") or not _MOUNT_SEGMENT_RE.fullmatch(s) for s in segments):
        raise InvalidInput(f"invalid {what} name {_describe(name)}: use '/'-separated segments of ASCII "
                           "letters, digits and '_.-', with no empty, '.' or '..' segment")
    if segments[0].lower() in _RESERVED_MOUNTS:
        raise InvalidInput(f"invalid {what} name {_describe(name)}: {segments[0]}/ is Vault's own path, "
                           "not a secrets engine mount")
    return path


def validate_version(version: object, what: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 2**31 - 1:
        raise InvalidInput(f"{what} must be a positive integer, got {_describe(version)}")
    return version


def validate_count(value: object, what: str, top: int) -> int:
    """A whole number between 1 and ``top`` (worker pools, batch sizes)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise InvalidInput(f"{what} must be a whole number between 1 and {top}, got {_describe(value)}")
    return value
