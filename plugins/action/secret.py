# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Action plugin of keyops.kms.secret: hides a returned plaintext from all output.

A module cannot mark its own result ``no_log`` (Ansible strips ``_ansible_*``
keys from module returns), but an action plugin can: when the module returns
a ``value``, the whole result is censored for every callback, log and
verbosity, exactly as with ``no_log: true`` on the task, while ``register``
still receives it.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="keyops.kms.secret", task_vars=task_vars))
        if "value" in result:
            result["_ansible_no_log"] = True
        return result
