"""The declaration's schema: YAML (or the same data from Ansible) into frozen specs, every error with its place.

Shape (``docs/declared-state.md``)::

    version: 1                       # optional
    master: {period_days: 365}       # optional: the master key registry's rotation period
    access: {roles: [app, rotation]} # optional: the Vault policies of these roles, for every declared tenant
    policies:                        # optional: named policies that tenants refer to
      standard: {kek_period_days: 90, dek_period_days: 30, keep_versions: 2}
    tenants:
      - name: acme
        residence: kv                # or transit
        policy: standard             # a name, or the fields themselves
        secrets:                     # seed secrets: created when missing, never overwritten unless enforce
          - {name: db/password, value_env: ACME_DB_PASSWORD}

The inventories' ``group_vars`` spell the same keys with their variable
prefix (``keyops_tenants``, ``keyops_rotation_policies``, ``keyops_master``,
``keyops_access``), so a group_vars file is a declaration too.

A policy's fields are each optional: a field left out is not managed (an
existing tenant keeps its value, a new one gets the library's default), as
``site.yml`` has always done.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from keyops.errors import InvalidInput
from keyops.model.keyring import RESIDENCES, Policy
from keyops.model.names import validate_secret_name, validate_tenant

SCHEMA_VERSION = 1
POLICY_FIELDS = ("kek_period_days", "dek_period_days", "dek_usage_cap", "keep_versions", "destroy_after_days")
#: Top-level keys, and how an inventory's group_vars spell them.
TOP_KEYS = {"version": "version", "master": "master", "access": "access", "policies": "policies",
            "tenants": "tenants", "keyops_master": "master", "keyops_access": "access",
            "keyops_rotation_policies": "policies", "keyops_tenants": "tenants"}
SEED_SOURCES = ("value", "value_env", "value_file")
MAX_PROBLEMS = 20

Path_ = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class SeedSpec:
    """A seed secret. The value (or where to read it) is never shown: ``repr`` leaves ``value`` out."""

    name: str
    where: str
    value: str | None = dataclasses.field(default=None, repr=False)
    value_env: str | None = None
    value_file: str | None = None
    enforce: bool = False


@dataclasses.dataclass(frozen=True)
class TenantSpec:
    name: str
    residence: str
    #: The declared policy fields only (see the module's docstring).
    policy: Mapping[str, int]
    policy_name: str | None
    seeds: tuple[SeedSpec, ...]
    #: Field -> "file:line: path", for errors found later (against the store).
    where: Mapping[str, str]

    def wanted_policy(self, current: Policy | None) -> Policy:
        """The policy this declaration asks for, over the tenant's current one (or the defaults)."""
        base = (current or Policy()).to_dict()
        base.update(self.policy)
        base["kek_residence"] = self.residence
        return Policy.from_dict(base)


@dataclasses.dataclass(frozen=True)
class MasterSpec:
    period_days: int | None = None


@dataclasses.dataclass(frozen=True)
class AccessSpec:
    #: Roles (of the roles file) whose Vault policies are kept as generated; None: policies not managed.
    roles: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Declaration:
    source: str
    tenants: tuple[TenantSpec, ...]
    master: MasterSpec = MasterSpec()
    access: AccessSpec = AccessSpec()
    #: SHA-256 of the declaration's text (or canonical JSON): a saved plan is applied only to the same one.
    digest: str = ""

    def tenant(self, name: str) -> TenantSpec | None:
        return next((t for t in self.tenants if t.name == name), None)


# --- loading ----------------------------------------------------------------------------------------------


def load_file(path: str | Path) -> Declaration:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read the declaration {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{p}: the declaration is not UTF-8 text") from None
    return load_text(text, str(p))


def load_text(text: str, source: str = "<declaration>") -> Declaration:
    """Parse and validate YAML; errors name ``source``, the line and the field. Templates are refused."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidInput(f"{source}{line}: not valid YAML: {problem}") from None
    lines: dict[Path_, int] = {}
    problems: list[str] = []
    data = {} if node is None else _to_python(node, (), lines, problems, source)
    if problems:
        raise InvalidInput(_joined(problems))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return validate(data, source, lines, digest=digest, templates=False)


def _to_python(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[str], source: str,
               line: int | None = None) -> Any:
    # A mapping's entry is placed at its key's line: a block value starts on the line after it.
    lines[path] = line if line is not None else node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.SafeLoader(" ").construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                problems.append(f"{source}:{key_node.start_mark.line + 1}: {_path(path) or 'the top level'}: "
                                "keys must be plain strings")
                continue
            if key in out:
                problems.append(f"{source}:{key_node.start_mark.line + 1}: {_path((*path, key))}: given twice")
                continue
            out[key] = _to_python(value_node, (*path, key), lines, problems, source, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines, problems, source) for i, item in enumerate(node.value)]
    return yaml.SafeLoader(" ").construct_object(node)


# --- validation -------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, source: str, lines: Mapping[Path_, int]) -> None:
        self.source, self.lines = source, lines
        self.problems: list[str] = []

    def at(self, path: Path_) -> str:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe)
        place = f"{self.source}:{line}" if line is not None else self.source
        return f"{place}: {_path(path) or 'the top level'}"

    def fail(self, path: Path_, message: str) -> None:
        self.problems.append(f"{self.at(path)}: {message}")

    def mapping(self, value: Any, path: Path_, known: Sequence[str]) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, not {_kind(value)}")
            return None
        for key in value:
            if key not in known:
                self.fail((*path, key), f"unknown field; known: {', '.join(known)}")
        return dict(value)

    def whole(self, value: Any, path: Path_) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be a whole number, not {_kind(value)}")
            return None
        return value


def validate(data: Any, source: str = "the declaration", lines: Mapping[Path_, int] | None = None, *,
             digest: str | None = None, templates: bool = True) -> Declaration:
    """Validate already-parsed data (Ansible's variables, or YAML). ``templates=False``: refuse ``{{ }}``."""
    c = _Checker(source, lines or {})
    top = c.mapping(data, (), list(TOP_KEYS))
    if top is None:
        raise InvalidInput(_joined(c.problems))
    given: dict[str, tuple[str, Any]] = {}
    for key, value in top.items():
        if key not in TOP_KEYS:
            continue
        canonical = TOP_KEYS[key]
        if canonical in given:
            c.fail((key,), f"{key} and {given[canonical][0]} name the same thing; keep one")
            continue
        given[canonical] = (key, value)
    if "version" in given:
        key, version = given["version"]
        if version != SCHEMA_VERSION or isinstance(version, bool):
            c.fail((key,), f"must be {SCHEMA_VERSION} (this keyops reads declarations of version {SCHEMA_VERSION})")
    policies = _policies(c, *given.get("policies", ("policies", {})))
    tenants = _tenants(c, *given.get("tenants", ("tenants", [])), policies=policies, templates=templates)
    master = _master(c, *given["master"]) if "master" in given else MasterSpec()
    access = _access(c, *given["access"]) if "access" in given else AccessSpec()
    if c.problems:
        raise InvalidInput(_joined(c.problems))
    if digest is None:
        digest = hashlib.sha256(repr(sorted(top.items(), key=lambda kv: kv[0])).encode("utf-8")).hexdigest()
    return Declaration(source, tuple(tenants), master, access, digest)


def _policy_fields(c: _Checker, value: Any, path: Path_) -> dict[str, int] | None:
    fields = c.mapping(value, path, POLICY_FIELDS)
    if fields is None:
        return None
    out: dict[str, int] = {}
    for name, raw in fields.items():
        if name not in POLICY_FIELDS:
            continue
        number = c.whole(raw, (*path, name))
        if number is None:
            continue
        try:
            probe: dict[str, Any] = {name: number}
            if name == "destroy_after_days":
                probe["keep_versions"] = 1
            Policy(**probe)
        except InvalidInput as exc:
            c.fail((*path, name), str(exc).split(", got")[0].replace(f"{name} must", "must"))
            continue
        out[name] = number
    if "destroy_after_days" in out and "keep_versions" not in out:
        c.fail((*path, "destroy_after_days"), "needs keep_versions in the same policy: only versions retired by "
                                              "retention are destroyed on schedule")
    return out


def _policies(c: _Checker, key: str, value: Any) -> dict[str, dict[str, int]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        c.fail((key,), f"must be a mapping of policy names to their fields, not {_kind(value)}")
        return {}
    out: dict[str, dict[str, int]] = {}
    for name, fields in value.items():
        checked = _policy_fields(c, fields, (key, name))
        if checked is not None:
            out[name] = checked
    return out


def _tenants(c: _Checker, key: str, value: Any, *, policies: Mapping[str, dict[str, int]],
             templates: bool) -> list[TenantSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        c.fail((key,), f"must be a list of tenants, not {_kind(value)}")
        return []
    out: list[TenantSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(value):
        path: Path_ = (key, i)
        t = c.mapping(raw, path, ("name", "residence", "policy", "secrets"))
        if t is None:
            continue
        if "name" not in t:
            c.fail(path, "has no name")
            continue
        try:
            name = validate_tenant(t["name"])
        except InvalidInput as exc:
            c.fail((*path, "name"), str(exc))
            continue
        if name in seen:
            c.fail((*path, "name"), f"tenant {name} is declared twice (also {key}[{seen[name]}])")
            continue
        seen[name] = i
        residence = t.get("residence", "kv")
        if residence not in RESIDENCES:
            c.fail((*path, "residence"), f"must be one of {', '.join(RESIDENCES)}, not {residence!r}")
        policy, policy_name = _tenant_policy(c, t.get("policy"), (*path, "policy"), policies)
        seeds = _seeds(c, t.get("secrets"), (*path, "secrets"), templates)
        where = {field: c.at((*path, field)) for field in ("name", "residence", "policy")}
        out.append(TenantSpec(name, residence, policy, policy_name, tuple(seeds), where))
    return out


def _tenant_policy(c: _Checker, value: Any, path: Path_,
                   policies: Mapping[str, dict[str, int]]) -> tuple[dict[str, int], str | None]:
    if value is None:
        value = "standard" if "standard" in policies else None
        if value is None:
            return {}, None
    if isinstance(value, str):
        if value not in policies:
            known = ", ".join(policies) or "none"
            c.fail(path, f"names the policy {value!r}, which is not declared under policies (declared: {known})")
            return {}, value
        return dict(policies[value]), value
    return _policy_fields(c, value, path) or {}, None


def _seeds(c: _Checker, value: Any, path: Path_, templates: bool) -> list[SeedSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        c.fail(path, f"must be a list of seed secrets, not {_kind(value)}")
        return []
    out: list[SeedSpec] = []
    names: set[str] = set()
    for i, raw in enumerate(value):
        spath: Path_ = (*path, i)
        s = c.mapping(raw, spath, ("name", *SEED_SOURCES, "enforce"))
        if s is None:
            continue
        try:
            name = validate_secret_name(s.get("name"))
        except InvalidInput as exc:
            c.fail((*spath, "name"), str(exc))
            continue
        if name in names:
            c.fail((*spath, "name"), f"seed secret {name} is declared twice")
            continue
        names.add(name)
        sources = [k for k in SEED_SOURCES if k in s]
        if len(sources) != 1:
            c.fail(spath, f"needs exactly one of {', '.join(SEED_SOURCES)} (has {', '.join(sources) or 'none'})")
            continue
        source = sources[0]
        given = s[source]
        # Never the value itself in a message: only what kind of thing it is.
        if not isinstance(given, str) or not given:
            c.fail((*spath, source), f"must be a non-empty string, not "
                                     f"{'an empty string' if given == '' else _kind(given)}")
            continue
        if source == "value" and not templates and "{{" in given:
            c.fail((*spath, source), "is an Ansible template, which only Ansible evaluates; give the value "
                                     "through value_env or value_file here")
            continue
        enforce = s.get("enforce", False)
        if not isinstance(enforce, bool):
            c.fail((*spath, "enforce"), f"must be true or false, not {_kind(enforce)}")
            continue
        out.append(SeedSpec(name, c.at(spath), **{source: given}, enforce=enforce))
    return out


def _master(c: _Checker, key: str, value: Any) -> MasterSpec:
    m = c.mapping(value, (key,), ("period_days",))
    if not m or "period_days" not in m:
        return MasterSpec()
    days = c.whole(m["period_days"], (key, "period_days"))
    if days is not None and not 1 <= days <= 36500:
        c.fail((key, "period_days"), "must be a whole number of days between 1 and 36500")
        return MasterSpec()
    return MasterSpec(days)


def _access(c: _Checker, key: str, value: Any) -> AccessSpec:
    a = c.mapping(value, (key,), ("roles",))
    if not a or "roles" not in a:
        return AccessSpec()
    roles = a["roles"]
    if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
        c.fail((key, "roles"), "must be a list of role names (of the roles file)")
        return AccessSpec()
    return AccessSpec(tuple(dict.fromkeys(roles)))


def _path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    kinds = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "a mapping"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def _joined(problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS]
    more = f"\n... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
    head = "the declaration is not valid (nothing was applied):" if len(shown) > 1 else ""
    return (head + "\n  " + "\n  ".join(shown) + more) if head else shown[0]
