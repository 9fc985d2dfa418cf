"""Roles, policy rendering and role checks: pure logic, no server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from keyops import access
from keyops.access import Mounts, parse_roles, policy_name, principal_from_policies, render_policy
from keyops.errors import ConfigError, InvalidInput, NotPermitted

ROLES = access.load_roles(env={})
MOUNTS = Mounts()

# Names that must never become a tenant, a policy name or a path.
BAD_TENANTS = ["..", "a/../b", "a/b", "/", "a\x00b", "\x00", "x" * 10_000, "аcme",  # Cyrillic а
               "acme\u200b", "ACME", "ac me", "", "-acme", "acme/", "acm\u0435"]  # Cyrillic е


def caps_of(hcl: str) -> dict[str, set[str]]:
    """Path -> capabilities, read back from the rendered HCL."""
    found = re.findall(r'path "([^"]+)" \{\n  capabilities = \[([^\]]*)\]\n\}', hcl)
    return {path: {c.strip().strip('"') for c in caps.split(",")} for path, caps in found}


# --- the packaged roles file --------------------------------------------------------------------


def test_packaged_roles_are_the_four_of_the_issue() -> None:
    assert {r.name: r.scope for r in ROLES} == {"app": "tenant", "rotation": "global", "auditor": "global",
                                                 "security-admin": "global"}
    assert ROLES.get("security-admin").granted == frozenset(access.OPERATIONS)


def test_app_reads_its_keyring_unwraps_through_transit_and_uses_its_secrets_only() -> None:
    caps = caps_of(render_policy(ROLES.get("app"), "acme", MOUNTS))
    assert caps["keyops/data/tenants/acme/keyring"] == {"read"}  # never written by an app
    assert caps["keyops/data/tenants/acme/usage"] == {"create", "read", "update"}  # DEK use reservations
    assert caps["transit/decrypt/keyops-acme"] == {"update"}
    assert caps["transit/encrypt/keyops-acme"] == {"update"}
    assert caps["keyops/data/secrets/acme/*"] == {"create", "read", "update"}
    assert caps["keyops/metadata/secrets/acme/*"] == {"read", "list"}  # no delete: history stays
    assert caps["keyops/data/master"] == {"read"}
    assert set(caps) == {"keyops/data/tenants/acme/keyring", "keyops/data/tenants/acme/usage",
                         "transit/decrypt/keyops-acme", "transit/encrypt/keyops-acme", "keyops/data/secrets/acme/*",
                         "keyops/metadata/secrets/acme/*", "keyops/data/master"}
    assert not any("audit" in path for path in caps)  # no audit path, no audit key: apps cannot forge the trail
    granted = ROLES.get("app").granted
    assert not granted & {"rotate", "reencrypt", "retire", "destroy", "policy.write", "tenant.create",
                          "tenants.list", "master.write", "transit.import", "audit.write", "audit.read",
                          "audit.init", "keyring.write", "secrets.delete", "history.write", "history.config"}


def _matches(pattern: str, path: str) -> bool:
    """Vault's ACL globbing: ``+`` is one whole segment, a trailing ``*`` any suffix."""
    glob = pattern.endswith("*")
    body = pattern[:-1] if glob else pattern
    regex = "/".join("[^/]+" if seg == "+" else re.escape(seg) for seg in body.split("/"))
    return re.fullmatch(regex + (".*" if glob else ""), path) is not None


#: What can make data unrecoverable in KV v2, as (path, capability) pairs a role could hold.
_HISTORY_PATHS = ["keyops/metadata/tenants/acme/keyring", "keyops/metadata/tenants/acme/usage",
                  "keyops/metadata/master", "keyops/metadata/secrets/acme/db/pw", "keyops/config"]
_VERSION_PATHS = [f"keyops/{verb}/{doc}" for verb in ("delete", "undelete", "destroy")
                  for doc in ("tenants/acme/keyring", "tenants/acme/usage", "master", "secrets/acme/db/pw")]
_DATA_PATHS = ["keyops/data/tenants/acme/keyring", "keyops/data/tenants/acme/usage", "keyops/data/master",
               "keyops/data/secrets/acme/db/pw"]


def _grants(role: access.Role, path: str) -> set[str]:
    """The capabilities a role's policy gives on a concrete path (Vault: the most specific pattern wins;
    here: the union over every matching pattern, which can only over-report)."""
    tenant = "acme" if role.scope == "tenant" else None
    found: set[str] = set()
    for pattern, caps in access.policy_rules(role, tenant, MOUNTS).items():
        if _matches(pattern, path):
            found |= set(caps)
    return found


@pytest.mark.parametrize("role_name", ["app", "rotation", "auditor"])
def test_no_role_short_of_security_admin_can_drop_history(role_name: str) -> None:
    """No metadata write or delete, no version delete/undelete/destroy, no DELETE of data, no mount config."""
    role = ROLES.get(role_name)
    for path in _HISTORY_PATHS:
        assert not _grants(role, path) & {"create", "update", "patch", "delete", "sudo"}, (role_name, path)
    for path in _VERSION_PATHS:
        assert not _grants(role, path) & {"create", "update", "patch", "delete", "sudo"}, (role_name, path)
    for path in _DATA_PATHS:
        assert not _grants(role, path) & {"delete", "patch"}, (role_name, path)
    # The deletions the rotation role keeps touch only its own leases and job checkpoints:
    caps = access.policy_rules(role, "acme" if role.scope == "tenant" else None, MOUNTS)
    deleting = {p for p, cs in caps.items() if "delete" in cs}
    assert deleting <= {"keyops/metadata/locks/master", "keyops/metadata/locks/tenants/+",
                        "keyops/metadata/tenants/+/jobs/*"}, deleting
    assert not {p for p in caps if p.startswith(("keyops/delete/", "keyops/undelete/", "keyops/destroy/"))}


def test_only_security_admin_keeps_history_settings() -> None:
    admin = ROLES.get("security-admin")
    assert {"history.write", "history.config"} <= admin.granted
    assert _grants(admin, "keyops/metadata/tenants/acme/keyring") >= {"read", "update"}
    assert _grants(admin, "keyops/config") >= {"read", "update"}
    assert "history.write" in access.OPERATIONS["tenant.create"].implies  # tenant creation sets the history
    holders = {r.name for r in ROLES if r.granted & {"history.write", "history.config"}}
    assert holders == {"security-admin"}


def test_vault_globbing_of_the_test_helper() -> None:
    assert _matches("keyops/data/tenants/+/keyring", "keyops/data/tenants/x/keyring")
    assert not _matches("keyops/data/tenants/+/keyring", "keyops/data/tenants/x/y/keyring")
    assert _matches("keyops/metadata/tenants/+/jobs/*", "keyops/metadata/tenants/x/jobs/j1")
    assert not _matches("keyops/metadata/tenants/+/jobs/*", "keyops/metadata/tenants/x/keyring")
    assert _matches("keyops/metadata/secrets/acme/*", "keyops/metadata/secrets/acme/db/pw")
    assert _matches("keyops/*", "keyops/destroy/master")


def test_rotation_may_rotate_and_reencrypt_every_tenant_but_not_destroy_or_change_policies() -> None:
    role = ROLES.get("rotation")
    assert {"rotate", "reencrypt", "master.rotate", "retire", "status.read"} <= role.granted
    assert not role.granted & {"destroy", "policy.write", "tenant.create", "tenant.delete", "secrets.delete"}
    caps = caps_of(render_policy(role, None, MOUNTS))
    assert caps["keyops/data/tenants/+/keyring"] == {"read", "update"}  # no create: no new tenants
    assert caps["keyops/data/tenants/+/usage"] == {"create", "read", "update"}  # revokes reservations
    assert caps["keyops/data/secrets/+/*"] == {"create", "read", "update"}
    assert "transit/keys/+/import_version" in caps and "transit/keys/+/import" not in caps
    everything = {c for cs in caps.values() for c in cs}
    assert "delete" in everything  # only of leases and job checkpoints:
    assert {p for p, cs in caps.items() if "delete" in cs} == {
        "keyops/metadata/locks/master", "keyops/metadata/locks/tenants/+", "keyops/metadata/tenants/+/jobs/*"}
    assert not any(p.startswith(("sys/", "auth/")) for p in caps)


def test_the_audit_writers_sign_and_anchor_and_the_auditor_only_verifies() -> None:
    for role in ("rotation", "security-admin"):
        caps = caps_of(render_policy(ROLES.get(role), None, MOUNTS))
        assert caps["transit/hmac/keyops_audit"] == {"update"}
        assert caps["keyops/data/audit/head/*"] >= {"create", "read", "update"} and "delete" not in \
            caps["keyops/data/audit/head/*"]
        assert not any(p.startswith("keyops/metadata/audit") and "delete" in cs for p, cs in caps.items())
    rotation = caps_of(render_policy(ROLES.get("rotation"), None, MOUNTS))
    assert rotation["keyops/data/audit/*"] == {"create"}  # adds copies, never reads or rewrites them
    assert "transit/verify/keyops_audit" not in rotation
    auditor = caps_of(render_policy(ROLES.get("auditor"), None, MOUNTS))
    assert auditor["transit/verify/keyops_audit"] == {"update"} and "transit/hmac/keyops_audit" not in auditor
    assert auditor["keyops/data/audit/*"] == {"read"} and "keyops/data/audit/head/*" not in auditor
    admin = caps_of(render_policy(ROLES.get("security-admin"), None, MOUNTS))
    assert admin["transit/keys/keyops_audit"] == {"create", "read", "update"}  # keyops audit init


def test_the_audit_key_is_never_a_tenant_key() -> None:
    assert "transit/hmac/kms_audit" in caps_of(render_policy(ROLES.get("rotation"), None,
                                                             Mounts(audit_key="kms_audit")))
    with pytest.raises(InvalidInput, match="audit key name"):
        Mounts(audit_key="keyops-acme")


def test_auditor_policy_changes_nothing() -> None:
    caps = caps_of(render_policy(ROLES.get("auditor"), None, MOUNTS))
    for path, cs in caps.items():
        if path == "sys/audit-hash/*":
            assert cs == {"update"}  # computes an HMAC to search the server's log; stores nothing
        elif path == "sys/audit":
            assert cs == {"read", "sudo"}  # listing audit devices needs sudo
        elif path == "transit/verify/keyops_audit":
            assert cs == {"update"}  # checks the audit chain's MACs; makes none
        else:
            assert cs <= {"read", "list"}, path
    assert ROLES.get("auditor").hsm == "never"


def test_who_needs_the_pin() -> None:
    assert {r.name: r.hsm for r in ROLES} == {"app": "kv-residence", "rotation": "always", "auditor": "never",
                                              "security-admin": "always"}


def test_security_admin_can_manage_policies_and_mint() -> None:
    caps = caps_of(render_policy(ROLES.get("security-admin"), None, MOUNTS))
    assert "sudo" in caps["auth/token/create"]
    assert caps["sys/policy/keyops-*"] >= {"create", "update", "delete"}
    assert "delete" in caps["transit/keys/+"]


def test_render_is_deterministic_and_per_tenant() -> None:
    policies = access.render_policies(ROLES, ["b", "a", "a"], MOUNTS)
    assert list(policies) == ["keyops-app-a", "keyops-app-b", "keyops-rotation", "keyops-auditor",
                              "keyops-security-admin"]
    assert policies == access.render_policies(ROLES, ["a", "b"], MOUNTS)
    assert "tenants/b/" not in policies["keyops-app-a"] and "keyops-b" not in policies["keyops-app-a"]
    only = access.render_policies(ROLES, ["a"], MOUNTS, only=["auditor"])
    assert list(only) == ["keyops-auditor"]


def test_mounts_fill_the_templates() -> None:
    mounts = Mounts(kv="kms/kv", transit="kms-transit", audit="events")
    caps = caps_of(render_policy(ROLES.get("app"), "acme", mounts))
    assert "kms/kv/data/tenants/acme/keyring" in caps and "kms-transit/decrypt/keyops-acme" in caps
    rotation = caps_of(render_policy(ROLES.get("rotation"), None, mounts))
    assert "kms/kv/data/events/*" in rotation and "kms/kv/data/events/head/*" in rotation
    assert "kms-transit/hmac/keyops_audit" in rotation


@pytest.mark.parametrize("bad", ['kv"} path "sys/*', "kv\n", "a b", "../x", "kv/", "", "a{b}"])
def test_mount_names_cannot_inject_hcl(bad: str) -> None:
    with pytest.raises(InvalidInput, match="not a plain Vault path"):
        Mounts(kv=bad)


def test_audit_path_may_not_overlap_keyops_paths() -> None:
    with pytest.raises(InvalidInput, match="overlaps"):
        Mounts(audit="secrets/audit")


@pytest.mark.parametrize("bad", BAD_TENANTS)
def test_bad_tenant_names_never_become_policies(bad: str) -> None:
    with pytest.raises(InvalidInput) as info:
        policy_name(ROLES.get("app"), bad)
    assert "\x00" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(InvalidInput):
        access.render_policies(ROLES, ["good", bad], MOUNTS)


def test_tenant_roles_need_a_tenant_and_global_roles_refuse_one() -> None:
    with pytest.raises(InvalidInput, match="bound to one tenant"):
        policy_name(ROLES.get("app"))
    with pytest.raises(InvalidInput, match="global"):
        policy_name(ROLES.get("auditor"), "acme")


# --- the roles file as operators write it ----------------------------------------------------------


def doc(**roles: Any) -> dict[str, Any]:
    return {"schema": 1, "roles": roles}


def test_an_operator_role_extends_the_file() -> None:
    roles = parse_roles(doc(
        app={"scope": "tenant", "operations": ["secrets.read"]},
        migrator={"scope": "tenant", "includes": ["app"], "operations": ["migrate"],
                  "paths": [{"path": "legacy/data/{tenant}/*", "capabilities": ["read", "update"]}]},
        oncall={"scope": "global", "operations": ["status.read"], "description": "read-only on-call"}))
    caps = caps_of(render_policy(roles.get("migrator"), "acme", MOUNTS))
    assert caps["legacy/data/acme/*"] == {"read", "update"}
    assert {"secrets.read", "migrate", "secrets.write"} <= roles.get("migrator").granted


@pytest.mark.parametrize(("document", "message"), [
    (doc(app={"scope": "tenant", "operations": ["secrets.read", "secrets.steal"]}),
     "role 'app': unknown operation 'secrets.steal'"),
    (doc(app={"scope": "tenant", "includes": ["ghost"]}), "role 'app' includes unknown role 'ghost'"),
    (doc(app={"scope": "tenant", "operations": ["secrets.read"], "colour": "red"}), "unknown keys colour"),
    (doc(app={"scope": "everywhere", "operations": ["secrets.read"]}), "scope must be"),
    (doc(app={"scope": "tenant", "paths": [{"path": "x/*", "capabilities": ["root"]}]}),
     "unknown capability 'root'"),
    (doc(app={"scope": "tenant", "paths": [{"path": 'x" { capabilities = ["sudo"] } path "y', "capabilities":
                                            ["read"]}]}), "invalid path"),
    (doc(app={"scope": "tenant", "paths": [{"path": "a/*/b", "capabilities": ["read"]}]}), "invalid path"),
    (doc(app={"scope": "tenant", "paths": [{"path": "a/{secret}", "capabilities": ["read"]}]}),
     "unknown placeholder"),
    (doc(app={"scope": "tenant", "operations": []}), "grants nothing"),
    (doc(App={"scope": "tenant", "operations": ["secrets.read"]}), "invalid role name"),
    (doc(a={"scope": "global", "includes": ["b"]}, b={"scope": "global", "includes": ["a"]}), "includes itself"),
    (doc(g={"scope": "global", "includes": ["t"]}, t={"scope": "tenant", "operations": ["secrets.read"]}),
     "includes the tenant role"),
    (doc(app={"scope": "tenant", "operations": ["secrets.read"]},
         **{"app-admin": {"scope": "global", "operations": ["status.read"]}}), "ambiguous"),
    (doc(app={"scope": "tenant", "operations": "secrets.read"}), "must be a list"),
    ({"schema": 1, "roles": {}}, "defines no roles"),
    ({"schema": 2, "roles": {"a": {"scope": "global", "operations": ["status.read"]}}}, "schema 2"),
    ({"role": {"a": {}}}, "unknown top-level keys role"),
])
def test_mistakes_in_the_roles_file_are_named(document: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_roles(document, "roles.toml")


def test_roles_file_from_path_and_env(tmp_path: Path) -> None:
    path = tmp_path / "roles.toml"
    path.write_text('schema = 1\n[roles.viewer]\nscope = "global"\noperations = ["status.read"]\n')
    assert [r.name for r in access.load_roles(path)] == ["viewer"]
    assert [r.name for r in access.load_roles(env={"KEYOPS_ROLES_FILE": str(path)})] == ["viewer"]
    path.write_text("[roles.viewer\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        access.load_roles(path)
    with pytest.raises(ConfigError, match="cannot be read"):
        access.load_roles(tmp_path / "missing.toml")


# --- the caller's roles --------------------------------------------------------------------------


def test_root_token_is_security_admin() -> None:
    p = principal_from_policies(["root"], ROLES, "token:acc")
    assert p.root and p.allows("destroy", "x") and p.allows("policy.write")
    assert p.roles == ["root"]


def test_app_principal_is_bound_to_its_tenant() -> None:
    p = principal_from_policies(["default", "keyops-app-acme"], ROLES, "token:acc")
    assert p.complete and p.roles == ["app:acme"]
    assert p.allows("secrets.read", "acme") and p.allows("dek.unwrap", "acme")
    for op in ("secrets.read", "keyring.read", "dek.unwrap", "secrets.write"):
        assert not p.allows(op, "other")
    assert p.allows("usage.reserve", "acme") and not p.allows("usage.reserve", "other")
    for op in ("rotate", "reencrypt", "destroy", "tenant.create", "policy.write", "tenants.list", "keyring.write",
               "secrets.delete", "history.write", "history.config"):
        assert not p.allows(op, "acme")


def test_tenant_names_with_dashes_parse() -> None:
    p = principal_from_policies(["keyops-app-team-a-prod"], ROLES, "token:acc")
    assert p.grants[0].tenant == "team-a-prod"
    assert principal_from_policies(["keyops-security-admin"], ROLES, "t").grants[0].role == "security-admin"


def test_global_roles_cover_every_tenant() -> None:
    p = principal_from_policies(["keyops-rotation"], ROLES, "token:acc")
    assert p.allows("rotate", "anyone") and p.allows("master.rotate") and p.allows("reencrypt", "other")
    assert not p.allows("destroy", "anyone") and not p.allows("policy.write")
    auditor = principal_from_policies(["keyops-auditor"], ROLES, "token:acc")
    assert auditor.allows("keyring.read", "x") and auditor.allows("tenants.list")
    assert not any(auditor.allows(op, "x") for op in ("usage.reserve", "secrets.write", "secrets.read",
                                                      "rotate", "dek.unwrap", "audit.write"))


def test_unknown_policies_leave_the_decision_to_the_server() -> None:
    p = principal_from_policies(["keyops-app-acme", "ops-admin"], ROLES, "token:acc")
    assert not p.complete and p.allows("destroy", "other")
    bad = principal_from_policies(["keyops-app-"], ROLES, "token:acc")  # not a valid tenant
    assert not bad.complete


def test_denial_names_the_role_the_operation_and_the_tenant() -> None:
    p = principal_from_policies(["keyops-app-acme"], ROLES, "token:acc")
    err = access.denial(p, "secrets.read", "other")
    assert isinstance(err, NotPermitted) and err.code == "not_permitted" and err.exit_code == 14
    text = str(err)
    assert "app of tenant 'acme'" in text and "secrets.read" in text and "'other'" in text
    assert "roles that grant it" in text
    assert access.denial(p, "secrets.read", "acme") is None


@pytest.mark.parametrize(("event", "level", "right"), [
    ("tenant.create", None, "tenant.create"), ("rotate", "dek", "rotate"), ("rotate", "master", "master.rotate"),
    ("reencrypt.start", "dek", "reencrypt"), ("reencrypt.finish", "dek", "reencrypt"), ("retire", "kek", "retire"),
    ("destroy", "dek", "destroy"), ("policy.create", None, "policy.write"), ("migrate.purge", None, "migrate"),
    ("dek.unwrap", "dek", "dek.unwrap"), ("something.new", None, None),
    ("history.tenant", "policy", "history.write"), ("history.master", "policy", "history.config"),
    ("history.mount", "policy", "history.config"),
])
def test_audited_operations_map_to_rights(event: str, level: str | None, right: str | None) -> None:
    assert access.operation_for_event(event, level) == right
