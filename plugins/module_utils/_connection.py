# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Connection, auth and HSM options of every keyops.kms module; the one error table.

FOR INTERNAL USE OF THE keyops.kms COLLECTION ONLY: names here may change in
any release, a bug-fix release included.

The options are data (``CONNECTION_OPTIONS``, ``HSM_OPTIONS``), merged into a
module's own argument spec by ``KeyopsModule``; they are documented once, in
the doc fragments ``keyops.kms.connection`` and ``keyops.kms.hsm``. Their
environment fallbacks are Vault's own names (``VAULT_ADDR``, ``VAULT_TOKEN``
...) and keyops' (``KEYOPS_*``), the same that ``keyops.config.Config.load``
reads; an option set on the task wins over the environment.

Every library error becomes ``fail_json(msg=<the library's message>,
error=<its code>, retryable=<bool>)`` here and nowhere else; ``retryable``
is the library's (``keyops.errors``: the one table of which errors may pass
on their own), for an error raised and for a tenant's failure in a report
alike.
"""

from __future__ import annotations

import contextlib
import os
import traceback

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib

try:
    from keyops.audit import sink_from_config
    from keyops.config import Config
    from keyops.errors import ConfigError, KeyopsError
    from keyops.ops.front import Keyops
except ImportError:
    KEYOPS_IMPORT_ERROR = traceback.format_exc()
    # The modules fail with missing_required_lib before they could need these.
    KeyopsError = ConfigError = Exception
else:
    KEYOPS_IMPORT_ERROR = None


def _env(*names):
    return (env_fallback, list(names))


#: option -> argument spec. No ``default`` where an environment variable may
#: supply the value (Ansible ignores a fallback once a default is set); the
#: library's defaults apply when neither is given.
CONNECTION_OPTIONS = {
    "url": dict(type="str", fallback=_env("VAULT_ADDR", "BAO_ADDR")),
    "token": dict(type="str", no_log=True, fallback=_env("VAULT_TOKEN", "BAO_TOKEN")),
    "token_file": dict(type="path", no_log=False, fallback=_env("KEYOPS_VAULT_TOKEN_FILE")),
    "namespace": dict(type="str", fallback=_env("VAULT_NAMESPACE", "BAO_NAMESPACE")),
    "ca_cert": dict(type="path", fallback=_env("VAULT_CACERT", "BAO_CACERT")),
    "validate_certs": dict(type="bool"),
    "auth_method": dict(type="str", default="auto", choices=["auto", "token", "approle", "jwt", "kubernetes"]),
    "role_id": dict(type="str", fallback=_env("VAULT_ROLE_ID", "KEYOPS_APPROLE_ROLE_ID")),
    "secret_id": dict(type="str", no_log=True, fallback=_env("VAULT_SECRET_ID", "KEYOPS_APPROLE_SECRET_ID")),
    "secret_id_file": dict(type="path", no_log=False,
                           fallback=_env("VAULT_SECRET_ID_FILE", "KEYOPS_APPROLE_SECRET_ID_FILE")),
    "approle_mount": dict(type="str", fallback=_env("KEYOPS_APPROLE_MOUNT")),
    "jwt_role": dict(type="str", fallback=_env("KEYOPS_JWT_ROLE")),
    "jwt": dict(type="str", no_log=True, fallback=_env("KEYOPS_JWT")),
    "jwt_file": dict(type="path", fallback=_env("KEYOPS_JWT_FILE")),
    "jwt_mount": dict(type="str", fallback=_env("KEYOPS_JWT_MOUNT")),
    "kubernetes_role": dict(type="str", fallback=_env("KEYOPS_KUBERNETES_ROLE")),
    "kubernetes_token_file": dict(type="path", no_log=False, fallback=_env("KEYOPS_KUBERNETES_TOKEN_FILE")),
    "kubernetes_mount": dict(type="str", fallback=_env("KEYOPS_KUBERNETES_MOUNT")),
    "kv_mount": dict(type="str", fallback=_env("KEYOPS_KV_MOUNT")),
    "transit_mount": dict(type="str", fallback=_env("KEYOPS_TRANSIT_MOUNT")),
}

HSM_OPTIONS = {
    "pkcs11_module": dict(type="path", fallback=_env("KEYOPS_PKCS11_MODULE")),
    "pkcs11_token": dict(type="str", no_log=False, fallback=_env("KEYOPS_PKCS11_TOKEN")),
    "pkcs11_pin": dict(type="str", no_log=True, fallback=_env("KEYOPS_PKCS11_PIN")),
    "pkcs11_pin_file": dict(type="path", no_log=False, fallback=_env("KEYOPS_PKCS11_PIN_FILE")),
    "master_key_label": dict(type="str", no_log=False, fallback=_env("KEYOPS_MASTER_KEY_LABEL")),
    "softhsm2_conf": dict(type="path", fallback=_env("SOFTHSM2_CONF")),
}

#: module option -> keyops.config.Config field.
CONFIG_FIELDS = {
    "url": "vault_addr",
    "token": "vault_token",
    "token_file": "vault_token_file",
    "namespace": "vault_namespace",
    "ca_cert": "vault_cacert",
    "role_id": "approle_role_id",
    "secret_id": "approle_secret_id",
    "secret_id_file": "approle_secret_id_file",
    "approle_mount": "approle_mount",
    "jwt_role": "jwt_role",
    "jwt": "jwt",
    "jwt_file": "jwt_file",
    "jwt_mount": "jwt_mount",
    "kubernetes_role": "kubernetes_role",
    "kubernetes_token_file": "kubernetes_token_file",
    "kubernetes_mount": "kubernetes_mount",
    "kv_mount": "kv_mount",
    "transit_mount": "transit_mount",
    "pkcs11_module": "pkcs11_module",
    "pkcs11_token": "pkcs11_token_label",
    "pkcs11_pin": "pkcs11_pin",
    "pkcs11_pin_file": "pkcs11_pin_file",
    "master_key_label": "master_key_label",
}


def keyops_argument_spec(module_options, hsm=True):
    """The module's own options merged with the shared connection (and HSM) options."""
    spec = {}
    spec.update(CONNECTION_OPTIONS)
    if hsm:
        spec.update(HSM_OPTIONS)
    clash = set(spec) & set(module_options)
    if clash:
        raise ValueError(f"module options shadow shared options: {', '.join(sorted(clash))}")
    spec.update(module_options)
    return spec


def _from_env(params, option, env):
    """Whether an option's value is (the same as) its environment fallback's."""
    value = params.get(option)
    names = CONNECTION_OPTIONS[option]["fallback"][1]
    return bool(value) and any(env.get(name) == value for name in names)


def build_config(params, env=None):
    """A keyops Config from module (or lookup) parameters over the environment.

    ``SOFTHSM2_CONF`` goes into ``os.environ`` here, before any HSM is opened:
    SoftHSM2 reads it once per process.
    """
    env = os.environ if env is None else env
    if params.get("softhsm2_conf"):
        os.environ["SOFTHSM2_CONF"] = params["softhsm2_conf"]
    overrides = {}
    for option, field in CONFIG_FIELDS.items():
        value = params.get(option)
        if value is not None and value != "":
            overrides[field] = value
    if params.get("validate_certs") is not None:
        overrides["vault_skip_verify"] = not params["validate_certs"]
    config = Config.load(env=env, **overrides)
    token_from_env = not params.get("token") or _from_env(params, "token", env)
    if token_from_env and params.get("token_file") and not _from_env(params, "token_file", env):
        # A token file set on the task or in module_defaults beats a token that
        # only came from the controller's environment.
        config = config.replace(vault_token=None)
    method = params.get("auth_method") or "auto"
    if method == "token":
        config = config.replace(auth_method="token", approle_role_id=None, approle_secret_id=None)
    elif method != "auto":
        # The library then logs in with this method whatever token is around (keyops.auth).
        secret = config.approle_secret_id or config.approle_secret_id_file
        if method == "approle" and not (config.approle_role_id and secret):
            raise ConfigError("auth_method approle needs role_id and secret_id or secret_id_file (or "
                              "VAULT_ROLE_ID and VAULT_SECRET_ID or VAULT_SECRET_ID_FILE in the environment)")
        config = config.replace(auth_method=method, vault_token=None, vault_token_file=None)
    return config


def open_keyops(params):
    """A Keyops for these parameters, with the audit trail the configuration asks for.

    Every key operation of a module or the lookup leaves its audit event, as
    from the CLI (KEYOPS_AUDIT_LOG, KEYOPS_AUDIT_KV_PATH, KEYOPS_AUDIT_SYSLOG).
    """
    config = build_config(params)
    return Keyops(config, audit=sink_from_config(config))


def error_result(err):
    """The fields of ``fail_json`` for a library error: the one place they are decided.

    Message and code always come from the library (they name what failed and
    what to do, and never carry a secret); ``retryable`` tells a playbook
    which failures may pass on their own (``until: not result.failed or not
    result.retryable``).
    """
    return {"msg": str(err), "error": err.code, "retryable": err.retryable}


def failure_result(what, failure):
    """The fields of ``fail_json`` for a report in which ``failure`` (a TenantFailure) came first."""
    return {"msg": f"{what}: {failure.message}", "error": failure.error, "retryable": failure.retryable}


class KeyopsModule(AnsibleModule):
    """An AnsibleModule with the shared options, a Keyops session and the error table."""

    def __init__(self, argument_spec, hsm=True, **kwargs):
        super().__init__(argument_spec=keyops_argument_spec(argument_spec, hsm=hsm), **kwargs)
        if KEYOPS_IMPORT_ERROR is not None:
            self.fail_json(msg=missing_required_lib("keyops"), exception=KEYOPS_IMPORT_ERROR)

    def fail_keyops(self, err):
        self.fail_json(**error_result(err))

    def exit_report(self, report, **result):
        """``exit_json(**result)``, or ``fail_json`` with it when a tenant of ``report`` failed.

        The others still ran, so their results go with the failure; its
        fields are the first failure's (code, retryable) and ``msg`` is the
        report's summary and that failure's message.
        """
        if report.failures:
            self.fail_json(**failure_result(report.summary(), report.failures[0]), **result)
        self.exit_json(**result)

    @contextlib.contextmanager
    def errors(self):
        """Library errors inside become ``fail_json`` through the error table."""
        try:
            yield
        except KeyopsError as err:
            self.fail_keyops(err)

    @contextlib.contextmanager
    def session(self):
        """A Keyops for the task's connection options, closed afterwards; errors mapped."""
        with self.errors():
            keyops = open_keyops(self.params)
            try:
                yield keyops
            finally:
                keyops.close()

    def diff(self, before, after):
        """``diff`` for exit_json when the task runs with --diff (views only, never key material)."""
        if not self._diff:
            return {}
        return {"diff": {"before": before, "after": after}}
