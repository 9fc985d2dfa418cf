# -*- coding: utf-8 -*-
# Copyright: keyops contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

"""Action plugin of keyops.kms.login: hides the returned token from all output.

As for keyops.kms.secret: a module cannot mark its own result ``no_log``,
an action plugin can. A result with a token is censored for every callback,
log and verbosity, while ``register`` still receives it.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="keyops.kms.login", task_vars=task_vars))
        if result.get("token"):
            result["_ansible_no_log"] = True
        return result
