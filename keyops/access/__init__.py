"""Who may touch which key: roles, the Vault ACL policies made from them, and role checks.

Three layers, from data to enforcement:

* **Operations** (``OPERATIONS``, defined here because they follow keyops'
  own path layout): named rights such as ``secrets.read`` or ``rotate``, each
  with the Vault paths and capabilities it needs, the operations it implies
  and whether it needs the HSM (and so the PIN).
* **Roles** (``keyops/data/roles.toml``, or the file named by
  ``KEYOPS_ROLES_FILE``): named sets of operations that operators extend.
  A role of scope ``tenant`` is bound to one tenant (``app``); a role of
  scope ``global`` covers every tenant (``rotation``, ``auditor``,
  ``security-admin``).
* **Policies**: one HCL policy per global role (``keyops-<role>``) and per
  tenant role and tenant (``keyops-<role>-<tenant>``), applied to Vault with
  ``apply_policies``; tokens and AppRoles are minted bound to them.

The server enforces the policies. The library checks the same rights first
(``Principal.allows``), to fail early with a clear "not permitted" error: it
learns the caller's roles once per process from the token's own policies
(``auth/token/lookup-self``). A root token is ``security-admin``. A token
that carries any policy keyops did not generate is left to the server alone:
the library cannot know what such a policy grants, and refusing what the
server would allow helps nobody.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import os
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyops.config import DEFAULT_AUDIT_KEY
from keyops.errors import ConfigError, InvalidInput, NotFound, NotPermitted, PermissionDenied
from keyops.model.names import validate_tenant

if TYPE_CHECKING:  # pragma: no cover
    from keyops.backends.vault import VaultStore
    from keyops.ops.front import Keyops

__all__ = [
    "DOCUMENT_HISTORY",
    "OPERATIONS",
    "POLICY_PREFIX",
    "SECRETS_HISTORY",
    "AppRoleCredentials",
    "HistoryChange",
    "HistoryResult",
    "MintedToken",
    "Operation",
    "PolicyApplyResult",
    "Principal",
    "Role",
    "Roles",
    "Rule",
    "apply_policies",
    "denial",
    "ensure_approle",
    "ensure_history",
    "load_roles",
    "lookup_principal",
    "mint_token",
    "operation_for_event",
    "parse_roles",
    "policy_name",
    "remove_policies",
    "render_policies",
    "render_policy",
]

POLICY_PREFIX = "keyops"
ROLES_FILE_ENV = "KEYOPS_ROLES_FILE"
ROLES_SCHEMA = 1
DEFAULT_AUDIT_KV_PATH = "audit"
CAPABILITIES = ("create", "read", "update", "patch", "delete", "list", "sudo", "deny")
SCOPES = ("tenant", "global")
#: How much of the HSM an operation needs: never; only for tenants of KEK
#: residence ``kv`` (whose KEKs the master key unwraps); always.
HSM_NEEDS = ("never", "kv-residence", "always")

_ROLE_NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_MAX_ROLE_NAME = 40
# Mount names and custom paths end up inside HCL strings: no quote, brace
# (other than our placeholders), space or control character may reach it.
_MOUNT_RE = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_CUSTOM_PATH_RE = re.compile(r"[A-Za-z0-9_.@=,:+*/-]+")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = ("kv", "transit", "approle", "audit", "audit_key", "tenant", "transit_key", "prefix")


# --- operations ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One ``path "..." { capabilities = [...] }`` block, as a template."""

    path: str
    capabilities: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Operation:
    name: str
    description: str
    rules: tuple[Rule, ...] = ()
    implies: tuple[str, ...] = ()
    #: True when the right is about one tenant (a tenant role grants it for its tenant only).
    tenant_scoped: bool = True
    hsm: str = "never"


def _r(path: str, *caps: str) -> Rule:
    return Rule(path, caps)


_KEYRING = "{kv}/data/tenants/{tenant}/keyring"
_USAGE = "{kv}/data/tenants/{tenant}/usage"
_KEYRING_META = "{kv}/metadata/tenants/{tenant}/keyring"
_USAGE_META = "{kv}/metadata/tenants/{tenant}/usage"
_MASTER = "master"
_SECRETS_DATA = "{kv}/data/secrets/{tenant}/*"
_SECRETS_META = "{kv}/metadata/secrets/{tenant}/*"
_TRANSIT_KEY = "{transit}/keys/{transit_key}"

OPERATIONS: Mapping[str, Operation] = {op.name: op for op in (
    # --- reading and using one tenant's keys
    Operation("keyring.read", "read the tenant's keyring and usage document (versions, states, wrapped keys, "
              "uses; no key material)", (_r(_KEYRING, "read"), _r(_USAGE, "read"))),
    Operation("usage.reserve", "reserve blocks of DEK uses in the tenant's usage document (a check-and-set "
              "write per block of encryptions; the keyring itself stays read-only)",
              (_r(_USAGE, "read", "create", "update"),), ("keyring.read",)),
    Operation("keyring.write", "change the tenant's existing keyring (add, re-wrap and change key versions)",
              (_r(_KEYRING, "read", "update"),), ("keyring.read", "usage.reserve")),
    Operation("kek.unwrap", "unwrap the tenant's KEK with the HSM master key (residence kv, or rotation)",
              (), ("master.read", "keyring.read"), hsm="kv-residence"),
    Operation("dek.unwrap", "unwrap the tenant's DEKs (through its Transit key for residence transit)",
              (_r("{transit}/decrypt/{transit_key}", "update"),), ("keyring.read",)),
    Operation("dek.wrap", "wrap with the tenant's Transit key (residence transit)",
              (_r("{transit}/encrypt/{transit_key}", "update"),)),
    Operation("transit.import", "import a new KEK version into the tenant's existing Transit key (BYOK)",
              (_r("{transit}/wrapping_key", "read"), _r(_TRANSIT_KEY, "read"),
               _r(_TRANSIT_KEY + "/import_version", "update")),
              ("dek.wrap",)),
    Operation("transit.config", "raise the tenant's Transit key minimum versions after a rotation (no deletion)",
              (_r(_TRANSIT_KEY, "read"), _r(_TRANSIT_KEY + "/config", "update"))),
    Operation("secrets.read", "read and list the tenant's encrypted secrets",
              (_r(_SECRETS_DATA, "read"), _r(_SECRETS_META, "read", "list"))),
    Operation("secrets.write", "write the tenant's encrypted secrets (check-and-set)",
              (_r(_SECRETS_DATA, "create", "update"),), ("secrets.read", "usage.reserve")),
    Operation("secrets.delete", "delete the tenant's secrets and their history",
              (_r(_SECRETS_META, "delete"),), ("secrets.read",)),
    Operation("history.write", "keep the KV history of the tenant's keyring and usage document (raise their "
              "max_versions, require check-and-set); lowering it would drop old versions, so only administrators "
              "hold this right", (_r(_KEYRING_META, "create", "read", "update"),
                                  _r(_USAGE_META, "create", "read", "update"))),
    Operation("jobs.write", "checkpoints of the tenant's re-encryption and migration jobs",
              (_r("{kv}/data/tenants/{tenant}/jobs/*", "create", "read", "update"),
               _r("{kv}/metadata/tenants/{tenant}/jobs/*", "read", "list", "delete"))),
    # --- key lifecycle
    Operation("tenant.create", "create the tenant's keyring with its first KEK and DEK",
              (_r(_KEYRING, "create"), _r(_TRANSIT_KEY + "/import", "update")),
              ("keyring.write", "kek.unwrap", "transit.import", "master.read", "history.write"), hsm="always"),
    Operation("tenant.update", "change the tenant's rotation periods and usage cap", (), ("keyring.write",)),
    Operation("tenant.delete", "remove the tenant's keyring, usage and job checkpoints (crypto-shredding it "
              "takes secrets.delete and destroy too)",
              (_r("{kv}/metadata/tenants/{tenant}/*", "read", "list", "delete"),),
              ("keyring.read", "secrets.read", "jobs.write")),
    Operation("rotate", "rotate the tenant's DEK or KEK",
              (_r("{kv}/data/locks/tenants/{tenant}", "create", "read", "update"),
               _r("{kv}/metadata/locks/tenants/{tenant}", "delete")),
              ("keyring.write", "kek.unwrap", "dek.unwrap", "transit.import", "transit.config", "master.read",
               "jobs.write"), hsm="always"),
    Operation("reencrypt", "re-encrypt the tenant's secrets under its primary DEK",
              (), ("secrets.write", "usage.reserve", "dek.unwrap", "dek.wrap", "kek.unwrap", "jobs.write"),
              hsm="kv-residence"),
    Operation("migrate", "migrate existing secrets into the tenant (add source paths to the role)",
              (), ("secrets.write", "usage.reserve", "dek.unwrap", "dek.wrap", "kek.unwrap", "jobs.write"),
              hsm="kv-residence"),
    Operation("retire", "retire old key versions (no longer usable, kept for audit)",
              (), ("keyring.write", "transit.config", "master.write")),
    Operation("destroy", "destroy key versions of the tenant (material gone) and delete Transit keys",
              (_r(_TRANSIT_KEY, "read", "delete"), _r(_TRANSIT_KEY + "/trim", "update")),
              ("keyring.write", "transit.config", "tenant.delete", "kek.unwrap", "master.write"), hsm="always"),
    # --- global rights
    Operation("tenants.list", "list tenant names", (_r("{kv}/metadata/tenants/", "list"),), tenant_scoped=False),
    Operation("master.read", "read the master-key registry (labels and states only)",
              (_r("{kv}/data/master", "read"),), tenant_scoped=False),
    Operation("master.write", "create the master key on the HSM and register it",
              (_r("{kv}/data/master", "create", "read", "update"),), ("master.read",),
              tenant_scoped=False, hsm="always"),
    Operation("master.rotate", "rotate the master key and re-wrap every KEK",
              (_r("{kv}/data/locks/master", "create", "read", "update"), _r("{kv}/metadata/locks/master", "delete")),
              ("master.write", "keyring.write", "kek.unwrap", "tenants.list"), tenant_scoped=False,
              hsm="always"),
    Operation("recover", "rebuild the master wrapping of every KEK from the break-glass escrow (keyops recover), "
              "and replace escrow copies under another recovery key",
              (), ("master.rotate", "keyring.write", "kek.unwrap", "tenants.list"), tenant_scoped=False,
              hsm="always"),
    Operation("history.config", "keep the KV history of the master registry and the mount's default history "
              "for secret records (raise max_versions; never lower it)",
              (_r("{kv}/metadata/" + _MASTER, "create", "read", "update"), _r("{kv}/config", "read", "update")),
              tenant_scoped=False),
    Operation("backup", "read everything keyops keeps in KV for a backup (keyrings, usage documents, the "
              "registry, secret records, job checkpoints, the audit chain's heads and their KV history settings): "
              "wrapped keys and ciphertexts only, no HSM",
              (_r(_KEYRING_META, "read"), _r(_USAGE_META, "read"), _r("{kv}/metadata/" + _MASTER, "read"),
               _r("{kv}/metadata/secrets/", "list"), _r("{kv}/metadata/secrets/{tenant}/*", "read", "list"),
               _r("{kv}/data/tenants/{tenant}/jobs/*", "read"),
               _r("{kv}/metadata/tenants/{tenant}/jobs/*", "read", "list"),
               _r("{kv}/data/{audit}/head/*", "read"), _r("{kv}/metadata/{audit}/head/*", "read", "list")),
              ("status.read", "secrets.read"), tenant_scoped=False),
    Operation("restore", "restore a backup: create the documents that are missing, raise their KV history, "
              "replace differing ones only when asked (never an audit head)",
              (_r(_KEYRING, "create", "read", "update"), _r(_USAGE, "create", "read", "update"),
               _r("{kv}/data/" + _MASTER, "create", "read", "update"),
               _r(_SECRETS_DATA, "create", "read", "update"), _r(_SECRETS_META, "create", "read", "update"),
               _r("{kv}/data/tenants/{tenant}/jobs/*", "create", "read", "update"),
               _r("{kv}/data/{audit}/head/*", "create", "read"), _r(_TRANSIT_KEY, "read")),
              ("backup", "history.write", "history.config"), tenant_scoped=False),
    Operation("status.read", "read every tenant's status (ages, states, usage, what is due)",
              (), ("tenants.list", "keyring.read", "master.read"), tenant_scoped=False),
    Operation("audit.read", "read and verify the audit trail: its KV copies and head, the chain's HMACs "
              "(verify only: no new HMAC), the server's audit devices",
              (_r("{kv}/data/{audit}/*", "read"), _r("{kv}/metadata/{audit}/*", "read", "list"),
               _r("{transit}/verify/{audit_key}", "update"),
               _r("sys/audit", "read", "sudo"), _r("sys/audit-hash/*", "update")), tenant_scoped=False),
    Operation("audit.write", "write the keyed audit chain: HMAC each entry with the audit key, advance the "
              "chain's head (check-and-set), add KV copies (create only: no overwrite, no delete)",
              (_r("{kv}/data/{audit}/*", "create"), _r("{kv}/data/{audit}/head/*", "create", "read", "update"),
               _r("{transit}/hmac/{audit_key}", "update")), tenant_scoped=False),
    Operation("audit.init", "create the audit chain's Transit HMAC key (type hmac, not exportable)",
              (_r("{transit}/keys/{audit_key}", "create", "read", "update"),), tenant_scoped=False),
    Operation("policy.write", "apply keyops policies, manage keyops AppRoles and mint tokens",
              (_r("sys/policy", "read"), _r("sys/policy/{prefix}-*", "create", "read", "update", "delete"),
               _r("sys/policies/acl", "list"),
               _r("sys/policies/acl/{prefix}-*", "create", "read", "update", "delete", "list"),
               _r("sys/auth", "read"), _r("sys/auth/{approle}", "create", "read", "update", "sudo"),
               _r("auth/{approle}/role/{prefix}-*", "create", "read", "update", "delete", "list"),
               _r("auth/token/create", "create", "update", "sudo"),
               _r("auth/token/revoke-accessor", "update"), _r("auth/token/lookup-accessor", "update")),
              tenant_scoped=False),
)}


def _closure(names: Iterable[str]) -> frozenset[str]:
    """The operations named and everything they imply."""
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(OPERATIONS[name].implies)
    return frozenset(seen)


# --- roles -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Role:
    name: str
    scope: str
    #: Operations as written in the file (``*`` expanded).
    operations: tuple[str, ...]
    description: str = ""
    #: Extra path rules an operator adds (e.g. migration sources).
    paths: tuple[Rule, ...] = ()

    @property
    def granted(self) -> frozenset[str]:
        """Every operation the role grants, implied ones included."""
        return _closure(self.operations)

    @property
    def hsm(self) -> str:
        """How much the role needs the HSM (and so the PIN): never, kv-residence or always."""
        needs = {OPERATIONS[op].hsm for op in self.granted}
        return next((level for level in reversed(HSM_NEEDS) if level in needs), "never")


@dataclasses.dataclass(frozen=True)
class Roles:
    roles: Mapping[str, Role]
    source: str

    def get(self, name: str) -> Role:
        role = self.roles.get(name)
        if role is None:
            raise InvalidInput(f"unknown role {name!r}; the roles in {self.source} are: "
                               f"{', '.join(sorted(self.roles))}")
        return role

    def __iter__(self) -> Any:
        return iter(self.roles.values())

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.roles.items())).encode()).hexdigest()[:16]


def load_roles(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Roles:
    """The roles file: ``path``, else ``$KEYOPS_ROLES_FILE``, else the packaged ``roles.toml``."""
    env = os.environ if env is None else env
    chosen = path or env.get(ROLES_FILE_ENV)
    if chosen:
        p = Path(chosen)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"roles file {str(p)!r} cannot be read: {exc.strerror}") from exc
        source = str(p)
    else:
        text = importlib.resources.files("keyops").joinpath("data/roles.toml").read_text(encoding="utf-8")
        source = "the packaged roles.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"roles file {source} is not valid TOML: {exc}") from exc
    return parse_roles(data, source)


def parse_roles(data: Mapping[str, Any], source: str = "the roles file") -> Roles:
    """Validate the roles document; every mistake is an ``InvalidInput`` naming the role and the problem."""
    unknown = set(data) - {"schema", "roles"}
    if unknown:
        raise InvalidInput(f"{source}: unknown top-level keys {', '.join(sorted(unknown))} "
                           "(expected 'schema' and '[roles.<name>]' tables)")
    if data.get("schema", ROLES_SCHEMA) != ROLES_SCHEMA:
        raise InvalidInput(f"{source}: schema {data.get('schema')!r} is not supported (expected {ROLES_SCHEMA})")
    raw_roles = data.get("roles")
    if not isinstance(raw_roles, Mapping) or not raw_roles:
        raise InvalidInput(f"{source}: defines no roles; add '[roles.<name>]' tables")
    for name in raw_roles:
        if not isinstance(name, str) or len(name) > _MAX_ROLE_NAME or not _ROLE_NAME_RE.fullmatch(name):
            raise InvalidInput(f"{source}: invalid role name {str(name)[:50]!r}: use lowercase letters, digits "
                               f"and single '-', starting with a letter, at most {_MAX_ROLE_NAME} characters")
    roles: dict[str, Role] = {}
    for name in raw_roles:
        roles[name] = _parse_role(name, raw_roles, source, ())
    _check_unambiguous(roles, source)
    return Roles(roles, source)


def _parse_role(name: str, raw_roles: Mapping[str, Any], source: str, stack: tuple[str, ...]) -> Role:
    where = f"{source}: role {name!r}"
    if name in stack:
        raise InvalidInput(f"{where} includes itself ({' -> '.join(stack + (name,))})")
    spec = raw_roles[name]
    if not isinstance(spec, Mapping):
        raise InvalidInput(f"{where} must be a table")
    unknown = set(spec) - {"description", "scope", "operations", "includes", "paths"}
    if unknown:
        raise InvalidInput(f"{where} has unknown keys {', '.join(sorted(unknown))} "
                           "(expected description, scope, operations, includes, paths)")
    scope = spec.get("scope")
    if scope not in SCOPES:
        raise InvalidInput(f"{where}: scope must be 'tenant' or 'global', not {scope!r}")
    operations: list[str] = []
    for op in _string_list(spec.get("operations", []), f"{where}: operations"):
        if op == "*":
            operations.extend(OPERATIONS)
        elif op not in OPERATIONS:
            raise InvalidInput(f"{where}: unknown operation {op!r}; known operations: "
                               f"{', '.join(sorted(OPERATIONS))}")
        else:
            operations.append(op)
    paths: list[Rule] = []
    for included in _string_list(spec.get("includes", []), f"{where}: includes"):
        if included not in raw_roles:
            raise InvalidInput(f"{where} includes unknown role {included!r}")
        other = _parse_role(included, raw_roles, source, stack + (name,))
        if other.scope == "tenant" and scope == "global":
            raise InvalidInput(f"{where} is global but includes the tenant role {included!r}")
        operations.extend(other.operations)
        paths.extend(other.paths)
    raw_paths = spec.get("paths", [])
    if not isinstance(raw_paths, list):
        raise InvalidInput(f"{where}: paths must be a list of {{path = ..., capabilities = [...]}} tables")
    for item in raw_paths:
        paths.append(_parse_path(item, where))
    if not operations and not paths:
        raise InvalidInput(f"{where} grants nothing; give it operations, includes or paths")
    description = spec.get("description", "")
    if not isinstance(description, str):
        raise InvalidInput(f"{where}: description must be a string")
    return Role(name, scope, tuple(dict.fromkeys(operations)), description, tuple(dict.fromkeys(paths)))


def _parse_path(item: Any, where: str) -> Rule:
    if not isinstance(item, Mapping) or set(item) != {"path", "capabilities"}:
        raise InvalidInput(f"{where}: each entry of paths needs exactly 'path' and 'capabilities'")
    path = item["path"]
    if not isinstance(path, str) or not path or len(path) > 512:
        raise InvalidInput(f"{where}: a path must be a non-empty string of at most 512 characters")
    bare = _PLACEHOLDER_RE.sub("x", path)
    for placeholder in _PLACEHOLDER_RE.findall(path):
        if placeholder not in PLACEHOLDERS:
            raise InvalidInput(f"{where}: path {path!r} uses unknown placeholder {{{placeholder}}}; known: "
                               f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if not _CUSTOM_PATH_RE.fullmatch(bare) or ".." in bare.split("/") or "*" in bare[:-1]:
        raise InvalidInput(f"{where}: invalid path {path[:60]!r}: use letters, digits, '/', '+' segments and "
                           "at most one '*' at the end")
    caps = _string_list(item["capabilities"], f"{where}: capabilities of {path!r}")
    for cap in caps:
        if cap not in CAPABILITIES:
            raise InvalidInput(f"{where}: unknown capability {cap!r} for {path!r}; "
                               f"known: {', '.join(CAPABILITIES)}")
    if not caps:
        raise InvalidInput(f"{where}: path {path!r} has no capabilities")
    return Rule(path, tuple(c for c in CAPABILITIES if c in caps))


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{what} must be a list of strings")
    return list(value)


def _check_unambiguous(roles: Mapping[str, Role], source: str) -> None:
    """``keyops-<role>-<tenant>`` must name exactly one role: no tenant role may be a prefix of another name."""
    for tenant_role in (r for r in roles.values() if r.scope == "tenant"):
        for other in roles:
            if other != tenant_role.name and other.startswith(tenant_role.name + "-"):
                raise InvalidInput(f"{source}: role {other!r} starts with the tenant role "
                                   f"{tenant_role.name + '-'!r}; its policy names would be ambiguous, rename one")


# --- policies ------------------------------------------------------------------------------


def policy_name(role: Role, tenant: str | None = None) -> str:
    if role.scope == "tenant":
        if tenant is None:
            raise InvalidInput(f"role {role.name!r} is bound to one tenant: name the tenant")
        return f"{POLICY_PREFIX}-{role.name}-{validate_tenant(tenant)}"
    if tenant is not None:
        raise InvalidInput(f"role {role.name!r} is global (every tenant); do not name a tenant")
    return f"{POLICY_PREFIX}-{role.name}"


@dataclasses.dataclass(frozen=True)
class Mounts:
    """The mounts and paths that policy templates are filled with (validated: they go into HCL)."""

    kv: str = "keyops"
    transit: str = "transit"
    approle: str = "approle"
    audit: str = DEFAULT_AUDIT_KV_PATH
    #: The Transit key that keys the audit chain (KEYOPS_AUDIT_KEY).
    audit_key: str = DEFAULT_AUDIT_KEY

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) or not _MOUNT_RE.fullmatch(value) or ".." in value.split("/"):
                raise InvalidInput(f"{field.name} mount/path {str(value)[:60]!r} is not a plain Vault path")
        if self.audit.split("/")[0] in ("tenants", "secrets", "master"):
            raise InvalidInput(f"the audit KV path {self.audit!r} overlaps keyops' own paths; choose another one")
        if "/" in self.audit_key or self.audit_key.startswith(POLICY_PREFIX + "-"):
            raise InvalidInput(f"the audit key name {self.audit_key!r} must be one Transit key name that does not "
                               f"start with {POLICY_PREFIX + '-'!r} (the tenants' keys); e.g. {DEFAULT_AUDIT_KEY!r}")

    @classmethod
    def from_config(cls, config: Any) -> Mounts:
        return cls(kv=config.kv_mount, transit=config.transit_mount, approle=config.approle_mount,
                   audit=getattr(config, "audit_kv_path", None) or DEFAULT_AUDIT_KV_PATH,
                   audit_key=getattr(config, "audit_key", None) or DEFAULT_AUDIT_KEY)


def _fill(template: str, mounts: Mounts, tenant: str | None) -> str:
    values = {"kv": mounts.kv, "transit": mounts.transit, "approle": mounts.approle, "audit": mounts.audit,
              "audit_key": mounts.audit_key, "prefix": POLICY_PREFIX,
              # A global role covers every tenant: one path segment of any name. Transit key
              # names are a whole segment too, so the Transit mount should be keyops' own.
              "tenant": tenant if tenant is not None else "+",
              "transit_key": f"{POLICY_PREFIX}-{tenant}" if tenant is not None else "+"}
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def policy_rules(role: Role, tenant: str | None, mounts: Mounts) -> dict[str, tuple[str, ...]]:
    """Path -> capabilities of the role's policy, merged and in canonical order."""
    merged: dict[str, set[str]] = {}
    rules = [rule for op in sorted(role.granted) for rule in OPERATIONS[op].rules] + list(role.paths)
    for rule in rules:
        merged.setdefault(_fill(rule.path, mounts, tenant), set()).update(rule.capabilities)
    return {path: tuple(c for c in CAPABILITIES if c in caps) for path, caps in sorted(merged.items())}


def render_policy(role: Role, tenant: str | None, mounts: Mounts) -> str:
    """The HCL of one policy. Deterministic, so that re-applying an unchanged policy changes nothing."""
    name = policy_name(role, tenant)
    who = f"role {role.name!r} for tenant {tenant!r}" if tenant else f"role {role.name!r} (every tenant)"
    lines = [f"# {name}: {who}.",
             "# Generated by keyops from its roles file; change the roles file and run 'keyops policy apply'.",
             f"# Operations: {', '.join(sorted(role.granted))}.", ""]
    for path, caps in policy_rules(role, tenant, mounts).items():
        quoted = ", ".join(f'"{c}"' for c in caps)
        lines += [f'path "{path}" {{', f"  capabilities = [{quoted}]", "}", ""]
    return "\n".join(lines)


def render_policies(roles: Roles, tenants: Iterable[str], mounts: Mounts,
                    only: Iterable[str] | None = None) -> dict[str, str]:
    """Policy name -> HCL: each global role once, each tenant role once per tenant."""
    tenants = sorted({validate_tenant(t) for t in tenants})
    wanted = None if only is None else set(only)
    if wanted is not None:
        for name in wanted:
            roles.get(name)
    out: dict[str, str] = {}
    for role in roles:
        if wanted is not None and role.name not in wanted:
            continue
        if role.scope == "global":
            out[policy_name(role)] = render_policy(role, None, mounts)
        else:
            for tenant in tenants:
                out[policy_name(role, tenant)] = render_policy(role, tenant, mounts)
    return out


#: The name of the KMS token's policy, on the KMS (the other Vault), not on keyops' own Vault.
ROOT_KMS_POLICY = f"{POLICY_PREFIX}-root-kms"
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def render_root_kms_policy(mount: str, key: str) -> str:
    """The HCL for the KMS token of ``KEYOPS_ROOT=transit``: encrypt and decrypt with one key, nothing else.

    Not ``create`` on the encrypt path, so that a mistyped key name fails
    instead of making a new key (Transit creates keys on encrypt for ``create``).
    """
    Mounts(transit=mount)  # a plain Vault path: it goes into HCL
    if not _KEY_NAME_RE.fullmatch(key):
        raise InvalidInput(f"the KMS key name {key[:60]!r} is not one plain Transit key name")
    lines = [f"# {ROOT_KMS_POLICY}: the KMS token of keyops' root key (KEYOPS_ROOT=transit); apply it on the KMS.",
             "# Generated by keyops ('keyops policy root-kms').", ""]
    for verb in ("decrypt", "encrypt"):
        lines += [f'path "{mount}/{verb}/{key}" {{', '  capabilities = ["update"]', "}", ""]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PolicyChange:
    name: str
    action: str  # "create", "update", "delete" or "unchanged"
    #: The policy's HCL on the server before and after (None: absent); policies hold no secret.
    before: str | None = dataclasses.field(default=None, repr=False)
    after: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class PolicyApplyResult:
    changes: tuple[PolicyChange, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)

    def names(self, action: str) -> list[str]:
        return [c.name for c in self.changes if c.action == action]


def apply_policies(k: Keyops, policies: Mapping[str, str], dry_run: bool = False) -> PolicyApplyResult:
    """Create or update each policy whose text differs from the server's; one audit event per change."""
    k.authorize("policy.write")
    changes: list[PolicyChange] = []
    for name, text in sorted(policies.items()):
        if not name.startswith(POLICY_PREFIX + "-"):
            raise InvalidInput(f"policy {name!r} is not a keyops policy (names start with {POLICY_PREFIX}-)")
        current = k.store.read_policy(name)
        if current is not None and current.strip() == text.strip():
            changes.append(PolicyChange(name, "unchanged", current, current))
            continue
        action = "create" if current is None else "update"
        changes.append(PolicyChange(name, action, current, text))
        if dry_run:
            continue
        grant = _parse_policy_name(name, sorted(k.roles, key=lambda r: len(r.name), reverse=True))
        with k.audited(f"policy.{action}", policy=name, level="policy", tenant=grant.tenant if grant else None):
            k.store.create_or_update_policy(name, text)
    return PolicyApplyResult(tuple(changes), dry_run)


def remove_policies(k: Keyops, names: Iterable[str], dry_run: bool = False) -> PolicyApplyResult:
    """Delete keyops policies (e.g. of an offboarded tenant); absent ones are ``unchanged``."""
    k.authorize("policy.write")
    changes: list[PolicyChange] = []
    for name in sorted(set(names)):
        if not name.startswith(POLICY_PREFIX + "-"):
            raise InvalidInput(f"policy {name!r} is not a keyops policy (names start with {POLICY_PREFIX}-)")
        current = k.store.read_policy(name)
        if current is None:
            changes.append(PolicyChange(name, "unchanged"))
            continue
        changes.append(PolicyChange(name, "delete", current, None))
        if dry_run:
            continue
        grant = _parse_policy_name(name, sorted(k.roles, key=lambda r: len(r.name), reverse=True))
        with k.audited("policy.delete", policy=name, level="policy", tenant=grant.tenant if grant else None):
            k.store.delete_policy(name)
    return PolicyApplyResult(tuple(changes), dry_run)


# --- history -------------------------------------------------------------------------------

#: How many versions KV keeps of keyops' own documents (KV metadata ``max_versions``, with
#: ``cas_required``). KV destroys the oldest version beyond it, so it bounds how far back an
#: administrator can restore (docs/access.md, "Restoring a keyring"). A keyring is written a few
#: times per rotation, so a thousand versions keep years of it; the metadata costs tens of KB.
DOCUMENT_HISTORY = 1000
#: The mount's default (``{kv}/config``) for paths without their own: secret records, job
#: checkpoints, leases. Vault's own default is 10.
SECRETS_HISTORY = 100
_VAULT_DEFAULT_HISTORY = 10


@dataclasses.dataclass(frozen=True)
class HistoryChange:
    """One KV path (or the mount's config) whose history keyops keeps."""

    path: str
    action: str  # "update" or "unchanged"
    #: ``max_versions`` before and after; 0 before means "the mount's default".
    before: int
    after: int
    cas_required_before: bool | None = None  # None: the mount's config (no such setting touched)


@dataclasses.dataclass(frozen=True)
class HistoryResult:
    changes: tuple[HistoryChange, ...]
    dry_run: bool

    @property
    def changed(self) -> bool:
        return any(c.action != "unchanged" for c in self.changes)


def ensure_history(k: Keyops, tenants: Iterable[str] = (), *, master: bool = True, mount: bool = True,
                   dry_run: bool = False) -> HistoryResult:
    """Make KV keep enough history of keyrings, usage documents, the registry and secrets; idempotent.

    Raises ``max_versions`` to ``DOCUMENT_HISTORY`` (never lowers it) and
    sets ``cas_required`` on each tenant's keyring and usage document and on
    the master registry, and raises the mount's default to
    ``SECRETS_HISTORY``. Only documents that exist are touched: KV metadata
    without any version would show up in listings as a document that cannot
    be read. Tenant creation calls it right after the keyring's first write.
    """
    names = sorted({validate_tenant(t) for t in tenants})
    for tenant in names:
        k.authorize("history.write", tenant)
    if master or mount:
        k.authorize("history.config")
    store = k.store
    changes: list[HistoryChange] = []
    for tenant in names:
        for path in (f"tenants/{tenant}/keyring", f"tenants/{tenant}/usage"):
            found = store.read_metadata(path)
            if found is not None:
                changes.append(_keep_history(k, path, found, dry_run, tenant=tenant))
    if master:
        found = store.read_metadata("master")
        if found is not None:
            changes.append(_keep_history(k, "master", found, dry_run))
    if mount:
        current = int(store.read_engine_config().get("max_versions") or 0)
        where = f"{store.kv_mount}/config"
        if (current or _VAULT_DEFAULT_HISTORY) >= SECRETS_HISTORY:
            changes.append(HistoryChange(where, "unchanged", current, current))
        else:
            changes.append(HistoryChange(where, "update", current, SECRETS_HISTORY))
            if not dry_run:
                with k.audited("history.mount", level="policy", path=where, max_versions=SECRETS_HISTORY):
                    store.configure_engine(max_versions=SECRETS_HISTORY)
    return HistoryResult(tuple(changes), dry_run)


def _keep_history(k: Keyops, path: str, meta: Mapping[str, Any], dry_run: bool,
                  tenant: str | None = None) -> HistoryChange:
    current = int(meta.get("max_versions") or 0)
    cas = bool(meta.get("cas_required"))
    where = f"{k.store.kv_mount}/{path}"
    if current >= DOCUMENT_HISTORY and cas:
        return HistoryChange(where, "unchanged", current, current, cas)
    wanted = max(current, DOCUMENT_HISTORY)
    if not dry_run:
        operation = "history.tenant" if tenant else "history.master"
        with k.audited(operation, tenant=tenant, level="policy", path=where, max_versions=wanted):
            k.store.write_metadata(path, max_versions=wanted, cas_required=True)
    return HistoryChange(where, "update", current, wanted, cas)


# --- credentials ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MintedToken:
    policies: tuple[str, ...]
    accessor: str
    ttl: int
    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class AppRoleCredentials:
    role_name: str
    role_id: str
    policies: tuple[str, ...]
    changed: bool
    secret_id_accessor: str | None = None
    secret_id: str | None = dataclasses.field(default=None, repr=False)


def _role_policies(roles: Roles, role_name: str, tenant: str | None) -> tuple[Role, str]:
    role = roles.get(role_name)
    return role, policy_name(role, tenant)


def mint_token(k: Keyops, roles: Roles, role_name: str, tenant: str | None = None, ttl: str = "1h",
               orphan: bool = False, num_uses: int = 0) -> MintedToken:
    """A token bound to the role's policy (which must be applied). The caller keeps the token secret."""
    role, policy = _role_policies(roles, role_name, tenant)
    k.authorize("policy.write")
    if k.store.read_policy(policy) is None:
        raise NotFound(f"policy {policy!r} is not on the server; run 'keyops policy apply' first")
    meta = {"keyops_role": role.name, **({"keyops_tenant": tenant} if tenant else {})}
    with k.audited("policy.mint_token", tenant=tenant, role=role.name, level="policy") as event:
        auth = k.store.create_token(policies=[policy], ttl=ttl, meta=meta, num_uses=num_uses, display_name=policy,
                                    orphan=orphan)
        event["minted_accessor"] = auth["accessor"]
    return MintedToken(tuple(auth["policies"]), auth["accessor"], int(auth["lease_duration"]),
                       auth["client_token"])


def ensure_approle(k: Keyops, roles: Roles, role_name: str, tenant: str | None = None, *,
                   token_ttl: str = "1h", token_max_ttl: str = "24h", secret_id_ttl: str = "24h",
                   new_secret_id: bool = True, dry_run: bool = False) -> AppRoleCredentials:
    """The AppRole ``keyops-<role>[-<tenant>]`` bound to the role's policy, and optionally a new secret id.

    Enables the AppRole auth method at the configured mount when it is
    missing. Re-running changes nothing but issues a fresh secret id (when
    asked); secret ids are never stored by keyops.
    """
    role, policy = _role_policies(roles, role_name, tenant)
    k.authorize("policy.write")
    mount = Mounts.from_config(k.config).approle
    store = k.store
    changed = False
    methods = store.list_auth_methods()
    if f"{mount}/" not in methods:
        changed = True
        if dry_run:
            return AppRoleCredentials(policy, "", (policy,), True)
        with k.audited("policy.enable_approle", level="policy", mount=mount):
            store.enable_auth_method("approle", path=mount, description="keyops roles")
    elif methods[f"{mount}/"].get("type") != "approle":
        raise InvalidInput(f"auth mount {mount!r} exists but is not AppRole; set KEYOPS_APPROLE_MOUNT")
    wanted: dict[str, Any] = {"token_policies": [policy], "token_ttl": token_ttl, "token_max_ttl": token_max_ttl,
              "secret_id_ttl": secret_id_ttl}
    current = store.read_approle(policy, mount)
    if current is None or sorted(current.get("token_policies") or []) != [policy] or any(
            _seconds(wanted[f]) != int(current.get(f) or 0) for f in ("token_ttl", "token_max_ttl", "secret_id_ttl")):
        changed = True
        if dry_run:
            return AppRoleCredentials(policy, "", (policy,), True)
        with k.audited("policy.approle", tenant=tenant, role=role.name, level="policy", approle=policy):
            store.create_or_update_approle(policy, mount, **wanted)
    if dry_run:
        return AppRoleCredentials(policy, "", (policy,), changed)
    role_id = store.read_approle_role_id(policy, mount)
    secret_id = secret_accessor = None
    if new_secret_id:
        with k.audited("policy.secret_id", tenant=tenant, role=role.name, level="policy", approle=policy) as event:
            secret_id, secret_accessor = store.generate_approle_secret_id(policy, mount)
            event["secret_id_accessor"] = secret_accessor
    return AppRoleCredentials(policy, role_id, (policy,), changed, secret_accessor, secret_id)


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd]?)", duration.strip())
    if not match:
        raise InvalidInput(f"duration {duration!r} must be a number with an optional unit s, m, h or d")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


# --- the caller's roles --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grant:
    role: str
    tenant: str | None
    operations: frozenset[str]

    def describe(self) -> str:
        return f"{self.role} of tenant {self.tenant!r}" if self.tenant else self.role


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who the token is (for audit events) and what keyops roles it holds (for early checks)."""

    actor: str
    accessor: str | None = None
    approle: str | None = None
    grants: tuple[Grant, ...] = ()
    root: bool = False
    #: False when the token holds a policy keyops did not generate: the server alone decides then.
    complete: bool = False

    def allows(self, operation: str, tenant: str | None = None) -> bool:
        if self.root or not self.complete:
            return True
        scoped = OPERATIONS[operation].tenant_scoped
        return any(operation in g.operations and (g.tenant is None or not scoped or g.tenant == tenant)
                   for g in self.grants)

    def describe(self) -> str:
        if self.root:
            return "a root token (security-admin)"
        if not self.grants:
            return "a token with no keyops role"
        return "a token with role " + ", ".join(g.describe() for g in self.grants)

    @property
    def roles(self) -> list[str]:
        """``["app:acme", "auditor"]``; ``["root"]`` for a root token."""
        named = [f"{g.role}:{g.tenant}" if g.tenant else g.role for g in self.grants]
        return ["root", *named] if self.root else named


def principal_from_policies(policies: Iterable[str], roles: Roles, actor: str, accessor: str | None = None,
                            approle: str | None = None) -> Principal:
    grants: list[Grant] = []
    complete = True
    root = False
    by_length = sorted(roles, key=lambda r: len(r.name), reverse=True)
    for name in policies:
        if name == "default":
            continue
        if name == "root":
            root = True
            continue
        grant = _parse_policy_name(name, by_length)
        if grant is None:
            complete = False
        else:
            grants.append(grant)
    return Principal(actor, accessor, approle, tuple(grants), root, complete)


def _parse_policy_name(name: str, roles: list[Role]) -> Grant | None:
    prefix = POLICY_PREFIX + "-"
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    for role in roles:
        if role.scope == "global" and rest == role.name:
            return Grant(role.name, None, role.granted)
        if role.scope == "tenant" and rest.startswith(role.name + "-"):
            tenant = rest[len(role.name) + 1:]
            try:
                validate_tenant(tenant)
            except InvalidInput:
                return None
            return Grant(role.name, tenant, role.granted)
    return None


_PRINCIPALS: dict[tuple[str, ...], Principal] = {}
_PRINCIPALS_LOCK = threading.Lock()


def lookup_principal(store: VaultStore, roles: Roles) -> Principal:
    """The caller's principal from ``lookup-self``: once per process and token (tokens keep their policies)."""
    key = (store.config.vault_addr, store.config.vault_namespace or "", store.token_fingerprint(), roles.digest)
    with _PRINCIPALS_LOCK:
        cached = _PRINCIPALS.get(key)
    if cached is not None:
        return cached
    try:
        data = store.lookup_self()
    except PermissionDenied:
        # A token without the default policy cannot look itself up; the server still decides.
        principal = Principal(actor="token:unknown")
    else:
        accessor = data.get("accessor") or None
        meta = data.get("meta") or {}
        approle = meta.get("role_name") if isinstance(meta, Mapping) else None
        actor = f"approle:{approle}" if approle else f"token:{accessor or 'unknown'}"
        policies = list(data.get("policies") or []) + list(data.get("identity_policies") or [])
        principal = principal_from_policies(policies, roles, actor, accessor, approle)
    with _PRINCIPALS_LOCK:
        _PRINCIPALS[key] = principal
    return principal


def forget_principals() -> None:
    """Drop the per-process cache (tests; a process that swapped its token)."""
    with _PRINCIPALS_LOCK:
        _PRINCIPALS.clear()


#: Audit operation names (chosen by the modules that emit them) -> the right they need.
#: Matched by exact name, then by the part before the first dot.
_EVENT_OPERATIONS: Mapping[str, str] = {
    "tenant.create": "tenant.create", "tenant.update_policy": "tenant.update", "tenant.update": "tenant.update",
    "tenant.delete": "tenant.delete", "master.create": "master.write", "master.update": "master.write",
    "master.rotate": "master.rotate",
    "dek.unwrap": "dek.unwrap", "kek.unwrap": "kek.unwrap", "secret.write": "secrets.write",
    "secret.delete": "secrets.delete",
    "rotate": "rotate", "rotation": "rotate", "reencrypt": "reencrypt", "migrate": "migrate",
    "retire": "retire", "destroy": "destroy", "policy": "policy.write",
    "history.tenant": "history.write", "history.master": "history.config", "history.mount": "history.config",
    "audit.rotate": "audit.write", "audit.init": "audit.init", "backup": "backup", "restore": "restore",
    "escrow": "rotate", "recover": "recover",
}


def operation_for_event(event_operation: str, level: str | None = None) -> str | None:
    """The right an audited operation needs, or None when keyops does not know the name."""
    found = _EVENT_OPERATIONS.get(event_operation)
    if found is None:
        found = _EVENT_OPERATIONS.get(event_operation.split(".", 1)[0])
    if found == "rotate" and level == "master":
        return "master.rotate"
    return found


def denial(principal: Principal, operation: str, tenant: str | None) -> NotPermitted | None:
    """The "not permitted" error for a refused operation, or None when the principal may do it."""
    if principal.allows(operation, tenant):
        return None
    target = f" on tenant {tenant!r}" if tenant and OPERATIONS[operation].tenant_scoped else ""
    holders = sorted(role for role, granted in _role_hints().items() if operation in granted)
    hint = f"; roles that grant it: {', '.join(holders)}" if holders else ""
    return NotPermitted(f"not permitted: {principal.describe()} may not {operation}{target} "
                        f"({OPERATIONS[operation].description}){hint}")


@functools.cache
def _role_hints() -> dict[str, frozenset[str]]:
    try:
        return {r.name: r.granted for r in load_roles(env={})}
    except (InvalidInput, ConfigError, OSError):  # pragma: no cover - the packaged file is tested
        return {}



