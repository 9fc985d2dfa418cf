# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""What every keyops.kms module shares besides its options: attributes, requirements, where it runs.

Written once here rather than in each module (``extends_documentation_fragment:
keyops.kms.attributes``); Ansible appends these notes after the module's own.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
requirements:
  - python >= 3.11
  - 'the C(keyops) Python library on the host that runs the module, installed from its wheel
    (C(pip install keyops-<version>-py3-none-any.whl)) or from the repository (C(pip install <checkout>));
    it is not on a package index'
notes:
  - 'Runs where the Vault token (and the HSM, for the modules that use it) is reachable, usually the
    controller (C(connection: local) or C(delegate_to: localhost)) with C(ansible_python_interpreter)
    pointing at the Python that has C(keyops) installed.'
  - 'The connection and HSM options are set once for a play with C(module_defaults) on the action group,
    for example C(group/keyops.kms.all: "{{ keyops_connection }}") with C(keyops_connection) a dict of
    those options (C(url), C(auth_method), C(kv_mount), C(pkcs11_module), C(pkcs11_pin_file) ...) kept
    in the inventory''s group variables. Every module accepts the HSM options, M(keyops.kms.key_info),
    M(keyops.kms.policy) and M(keyops.kms.transit_key) too (they do not use the HSM), so that one
    C(module_defaults) serves them all.'
attributes:
  action_group:
    description: Use C(group/keyops.kms.all) in C(module_defaults) to set the connection and HSM options once.
    support: full
    membership:
      - keyops.kms.all
  platform:
    description: Runs where the Vault token and the HSM are reachable, usually the controller.
    support: full
    platforms: posix
"""

    READ_ONLY = r"""
options: {}
attributes:
  check_mode:
    description: Reads only; runs the same in check mode.
    support: full
  diff_mode:
    description: Changes nothing, so there is nothing to diff.
    support: none
"""
