"""The shared options of keyops.kms: one set of names, documented, with the library's environment names.

Pure checks (no server): the option data in plugins/module_utils/_connection.py,
the doc fragments, keyops.config and meta/runtime.yml agree; building a Config
from parameters; the error table.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from keyops.config import ENV_NAMES, Config
from keyops.errors import Conflict, DecryptionError, InvalidInput, TenantNotFound, VaultSealed

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGINS = REPO_ROOT / "plugins"


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_keyops_test_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


connection = load(PLUGINS / "module_utils" / "_connection.py")


def fragment(name: str, var: str) -> dict[str, Any]:
    return yaml.safe_load(getattr(load(PLUGINS / "doc_fragments" / f"{name}.py").ModuleDocFragment, var))["options"]


def module_doc(path: Path, name: str = "DOCUMENTATION") -> Any:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return yaml.safe_load(node.value.value)  # type: ignore[attr-defined]
    raise AssertionError(f"{path} has no {name}")


@pytest.mark.parametrize(("options", "frag"), [(connection.CONNECTION_OPTIONS, "connection"),
                                               (connection.HSM_OPTIONS, "hsm")])
def test_options_documented_once_with_the_same_environment_names(options: dict[str, Any], frag: str) -> None:
    documented = fragment(frag, "DOCUMENTATION")
    assert set(documented) == set(options)
    for name, spec in options.items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
        assert documented[name].get("choices") == spec.get("choices"), name
    env_docs = fragment(frag, "PLUGINS")
    for name, spec in options.items():
        fallback = spec.get("fallback")
        env = fallback[1] if fallback else []
        assert [e["name"] for e in env_docs.get(name, {}).get("env", [])] == env, name
        for var in env:
            assert var in documented[name]["description"][-1], f"{name}: {var} not named in its description"


def test_environment_names_are_the_libraries() -> None:
    options = {**connection.CONNECTION_OPTIONS, **connection.HSM_OPTIONS}
    for option, field in connection.CONFIG_FIELDS.items():
        assert options[option]["fallback"][1] == list(ENV_NAMES[field]), option


def test_every_secret_option_is_no_log() -> None:
    options = {**connection.CONNECTION_OPTIONS, **connection.HSM_OPTIONS}
    assert {name for name, spec in options.items() if spec.get("no_log")} == {"token", "secret_id", "jwt", "pkcs11_pin"}
    assert 'value=dict(type="str", no_log=True)' in (PLUGINS / "modules" / "secret.py").read_text()


def test_action_group_lists_every_module() -> None:
    runtime = yaml.safe_load((REPO_ROOT / "meta" / "runtime.yml").read_text())
    modules = {p.stem for p in (PLUGINS / "modules").glob("*.py")}
    group = runtime["action_groups"]["all"]
    assert sorted(group) == sorted(modules) and len(group) == len(set(group))
    for path in (PLUGINS / "modules").glob("*.py"):
        doc = module_doc(path)
        assert "keyops.kms.attributes" in doc["extends_documentation_fragment"], path.name
        assert module_doc(path, "RETURN") is not None and module_doc(path, "EXAMPLES")


def test_every_module_of_the_group_takes_the_hsm_options() -> None:
    """module_defaults on group/keyops.kms.all hands every shared option to every module of the group."""
    for path in (PLUGINS / "modules").glob("*.py"):
        assert "keyops.kms.hsm" in module_doc(path)["extends_documentation_fragment"], path.name
        assert "hsm=False" not in path.read_text(), path.name


def test_argument_spec_refuses_shadowing() -> None:
    spec = connection.keyops_argument_spec({"name": {"type": "str"}}, hsm=False)
    assert "url" in spec and "pkcs11_pin" not in spec and "name" in spec
    with pytest.raises(ValueError, match="shadow"):
        connection.keyops_argument_spec({"url": {"type": "str"}})


def params(**given: Any) -> dict[str, Any]:
    out: dict[str, Any] = {name: None for name in {**connection.CONNECTION_OPTIONS, **connection.HSM_OPTIONS}}
    out["auth_method"] = "auto"
    out.update(given)
    return out


def test_build_config_task_options_win_over_the_environment() -> None:
    env = {"VAULT_ADDR": "https://env:8200", "VAULT_TOKEN": "env-token", "KEYOPS_KV_MOUNT": "envkv"}
    config = connection.build_config(params(url="https://task:8200", kv_mount="taskkv", validate_certs=False,
                                            pkcs11_token="hsm1"), env=env)
    assert isinstance(config, Config)
    assert (config.vault_addr, config.kv_mount, config.vault_token) == ("https://task:8200", "taskkv", "env-token")
    assert config.vault_skip_verify is True and config.pkcs11_token_label == "hsm1"
    assert connection.build_config(params(), env=env).vault_skip_verify is False


def test_build_config_token_file_on_the_task_beats_an_ambient_token(tmp_path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token")
    token_file.chmod(0o600)
    env = {"VAULT_TOKEN": "env-token", "KEYOPS_VAULT_TOKEN_FILE": "/env/token"}
    for token in (None, "env-token"):  # Ansible's env fallback fills the option, or Config.load reads it
        config = connection.build_config(params(token=token, token_file=str(token_file)), env=env)
        assert config.vault_token is None and config.resolve_vault_token() == "file-token"
    explicit = connection.build_config(params(token="task-token", token_file=str(token_file)), env=env)
    assert explicit.resolve_vault_token() == "task-token"
    both_env = connection.build_config(params(token="env-token", token_file="/env/token"), env=env)
    assert both_env.resolve_vault_token() == "env-token"  # Vault's own order: VAULT_TOKEN first


def test_build_config_auth_methods() -> None:
    env = {"VAULT_TOKEN": "t", "VAULT_ROLE_ID": "r", "VAULT_SECRET_ID": "s"}
    approle = connection.build_config(params(auth_method="approle"), env=env)
    assert approle.vault_token is None and approle.approle_role_id == "r"
    token = connection.build_config(params(auth_method="token"), env=env)
    assert token.vault_token == "t" and token.approle_role_id is None
    with pytest.raises(connection.ConfigError, match="needs role_id and secret_id"):
        connection.build_config(params(auth_method="approle"), env={"VAULT_TOKEN": "t"})


def test_build_config_sets_softhsm2_conf_for_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", os.environ.get("SOFTHSM2_CONF", "/dev/null"))
    connection.build_config(params(softhsm2_conf="/tmp/other-softhsm2.conf"), env={})
    assert os.environ["SOFTHSM2_CONF"] == "/tmp/other-softhsm2.conf"


@pytest.mark.parametrize(("err", "code", "retryable"), [
    (Conflict("lost the race; retry"), "conflict", True),
    (VaultSealed("sealed; unseal it"), "vault_sealed", True),
    (TenantNotFound("acme"), "tenant_not_found", False),
    (InvalidInput("bad name"), "invalid_input", False),
    (DecryptionError(), "decryption_failed", False),
])
def test_error_table(err: Exception, code: str, retryable: bool) -> None:
    assert connection.error_result(err) == {"msg": str(err), "error": code, "retryable": retryable}


def test_build_config_login_methods_ignore_ambient_tokens(tmp_path) -> None:
    secret_file = tmp_path / "sid"
    secret_file.write_text("sid\n")
    secret_file.chmod(0o600)
    env = {"VAULT_TOKEN": "t", "VAULT_ROLE_ID": "r"}
    approle = connection.build_config(params(auth_method="approle", secret_id_file=str(secret_file)), env=env)
    assert approle.auth_method == "approle" and approle.resolve_vault_token() is None
    assert approle.approle_secret_id_file == str(secret_file)
    jwt = connection.build_config(params(auth_method="jwt", jwt_role="ci", jwt="eyJ.x.y", jwt_mount="gh"), env=env)
    assert (jwt.auth_method, jwt.jwt_role, jwt.jwt_mount, jwt.resolve_vault_token()) == ("jwt", "ci", "gh", None)
    # A login's token handed on with auth_method token: the AppRole settings around it are not used.
    reused = connection.build_config(params(auth_method="token", token="hvs.login"), env=env)
    assert reused.resolve_vault_token() == "hvs.login" and reused.approle_role_id is None
