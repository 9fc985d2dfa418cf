# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
name: secret
short_description: Read and decrypt keyops secrets
version_added: 0.1.0
description:
  - Returns the plaintext of each secret named, decrypted with the tenant's DEK.
  - Secrets are named by terms C(tenant/name) (the first segment is the tenant, the rest is the
    secret's name), or by the O(tenant) and O(name) options.
requirements:
  - python >= 3.11
  - 'the C(keyops) Python library in the Python that runs C(ansible-playbook), installed from its wheel
    (C(pip install keyops-<version>-py3-none-any.whl)) or from the repository (C(pip install <checkout>))'
notes:
  - Lookups run on the controller, in the C(ansible-playbook) process, so the Vault token and the
    HSM must be reachable from there.
  - 'The result is a plaintext secret. Use it only in tasks with C(no_log: true), and never in
    C(ansible.builtin.debug).'
  - Connection and HSM options also come from the same environment variables as the modules'.
seealso:
  - module: keyops.kms.secret
author:
  - keyops contributors (!UNKNOWN)
extends_documentation_fragment:
  - keyops.kms.connection
  - keyops.kms.connection.plugins
  - keyops.kms.hsm
  - keyops.kms.hsm.plugins
options:
  _terms:
    description: Secrets as C(tenant/name).
    type: list
    elements: str
    required: false
  tenant:
    description: The tenant, for O(name) (then no term is needed).
    type: str
  name:
    description: The secret's name within O(tenant).
    type: str
"""

EXAMPLES = r"""
- name: Render a configuration file with a secret (no_log keeps it out of the output)
  ansible.builtin.template:
    src: app.conf.j2
    dest: /etc/app/app.conf
    mode: "0600"
  vars:
    db_password: "{{ lookup('keyops.kms.secret', 'acme/db/password') }}"
  no_log: true

- name: Several at once, with options instead of a term
  ansible.builtin.set_fact:
    api_key: "{{ lookup('keyops.kms.secret', tenant='acme', name='api/key', kv_mount='keyops') }}"
    both: "{{ lookup('keyops.kms.secret', 'acme/db/password', 'acme/api/key', wantlist=true) }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: The plaintext of each secret, in the order asked (UTF-8 text).
  type: list
  elements: str
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.keyops.kms.plugins.module_utils._connection import (
    CONNECTION_OPTIONS,
    HSM_OPTIONS,
    KEYOPS_IMPORT_ERROR,
    error_result,
    open_keyops,
)

try:
    from keyops.errors import InvalidInput, KeyopsError
except ImportError:
    pass  # reported through KEYOPS_IMPORT_ERROR


def plain(value):
    """Ansible's tagged strings as plain ``str``: C extensions (python-pkcs11) insist on the exact type."""
    return str(value) if isinstance(value, str) else value


def split_term(term):
    """``tenant/name/with/slashes`` -> (tenant, name)."""
    tenant, sep, name = plain(term).partition("/")
    if not sep or not tenant or not name:
        raise InvalidInput(f"lookup term {term!r} must be 'tenant/name'")
    return tenant, name


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if KEYOPS_IMPORT_ERROR is not None:
            raise AnsibleLookupError("the keyops.kms.secret lookup needs the keyops Python library in the "
                                     "Python that runs ansible-playbook (pip install its wheel, or the keyops "
                                     "repository)")
        self.set_options(var_options=variables, direct=kwargs)
        params = {name: plain(self.get_option(name)) for name in list(CONNECTION_OPTIONS) + list(HSM_OPTIONS)}
        try:
            wanted = [split_term(term) for term in terms or ()]
            if self.get_option("tenant") or self.get_option("name"):
                if not (self.get_option("tenant") and self.get_option("name")):
                    raise InvalidInput("the keyops.kms.secret lookup needs both tenant= and name=")
                wanted.append((plain(self.get_option("tenant")), plain(self.get_option("name"))))
            if not wanted:
                raise InvalidInput("the keyops.kms.secret lookup needs a 'tenant/name' term or tenant= and name=")
            with open_keyops(params) as keyops:
                return [keyops.get_secret(tenant, name).decode("utf-8") for tenant, name in wanted]
        except KeyopsError as err:
            failure = error_result(err)
            raise AnsibleLookupError(f"{failure['msg']} [{failure['error']}]") from None
        except UnicodeDecodeError:
            raise AnsibleLookupError("the secret is not UTF-8 text; read it with the keyops.kms.secret module, "
                                     "which returns such values in base64") from None
