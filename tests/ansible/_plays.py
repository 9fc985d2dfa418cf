"""Building test playbooks: the same tasks in check mode, for real, and re-run.

Each mutating task of a module test runs three times, like the integration
targets of community.hashi_vault: in check mode (must report a change and
change nothing: the test verifies that between the runs, independently), for
real, and again (must report no change). ``check_play`` and ``apply_play``
make the two playbooks from one list of tasks.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any


def play(tasks: Iterable[Mapping[str, Any]], **play_keys: Any) -> str:
    """A one-play playbook on the implicit localhost (JSON is YAML)."""
    body = {"name": "keyops.kms module test", "hosts": "localhost", "gather_facts": False}
    body.update(play_keys)
    body["tasks"] = [dict(t) for t in tasks]
    return json.dumps([body], indent=1) + "\n"


def check_play(tasks: Iterable[Mapping[str, Any]], **play_keys: Any) -> str:
    """Every task in check mode with diff, named ``check: <name>``."""
    out = []
    for task in tasks:
        t = copy.deepcopy(dict(task))
        t["name"] = f"check: {t['name']}"
        t["check_mode"] = True
        t["diff"] = True
        out.append(t)
    return play(out, **play_keys)


def apply_play(tasks: Iterable[Mapping[str, Any]], then: Iterable[Mapping[str, Any]] = (),
               **play_keys: Any) -> str:
    """Every task for real (``apply: <name>``, with diff), then all of them again (``rerun: <name>``),
    then the ``then`` tasks once, as they are (reads and assertions)."""
    tasks = [dict(t) for t in tasks]
    out = []
    for prefix in ("apply", "rerun"):
        for task in tasks:
            t = copy.deepcopy(task)
            t["name"] = f"{prefix}: {t['name']}"
            t["diff"] = True
            out.append(t)
    out.extend(dict(t) for t in then)
    return play(out, **play_keys)
