"""Fixtures of the integration tests (the servers themselves are in tests/conftest.py).

* ``k`` (module): one ``Keyops`` on the session stack, shared by a test module's
  tests and closed after them. A module that needs a fresh one per test
  overrides it with a function-scoped ``k`` of its own.

Tenant names come from ``_tenants.new_tenant`` (a plain function, for helpers
that are not tests too).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyops.config import Config
from keyops.ops.front import Keyops


@pytest.fixture(scope="module")
def k(config: Config) -> Iterator[Keyops]:
    with Keyops(config) as keyops:
        yield keyops
