"""Test-only callback: every task result, as callbacks see it, one JSON line each.

Enabled by tests/ansible/conftest.py (ANSIBLE_CALLBACKS_ENABLED); writes to the
file named by KEYOPS_TEST_RESULTS. Results are the censored ones that any
callback (and so the console and logs) receives: a test reading them sees what
an operator would see, never more.
"""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: keyops_test_results
type: aggregate
short_description: Write each task result to a JSON lines file (tests only)
description:
  - Writes each task result to the file named by C(KEYOPS_TEST_RESULTS).
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "keyops_test_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("KEYOPS_TEST_RESULTS")

    def _write(self, status, result):
        if not self._path:
            return
        data = dict(result.result) if hasattr(result, "result") else dict(result._result)
        line = {"task": result.task_name or result._task.get_name(), "host": result.host.get_name(),
                "status": status, "result": data}
        with open(self._path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result, **kwargs):
        self._write("ok", result)

    def v2_runner_on_failed(self, result, ignore_errors=False, **kwargs):
        self._write("failed", result)

    def v2_runner_on_skipped(self, result, **kwargs):
        self._write("skipped", result)

    def v2_runner_on_unreachable(self, result, **kwargs):
        self._write("unreachable", result)
