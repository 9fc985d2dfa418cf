"""Shared fixtures: the real OpenBao server and SoftHSM2 token the suite starts itself.

* ``stack`` (session): a ``DevStack`` in a temporary folder on free ports, up
  for the whole session, stopped at the end (also on Ctrl-C or SIGTERM; and
  Linux stops bao if pytest itself is killed).
* ``config`` (session): ``stack.config()``, a ``keyops.config.Config`` for it.
* ``k`` (module): one ``Keyops`` on that stack, shared by a test module's tests
  and closed after them (a module that needs a fresh one per test overrides it
  with a function-scoped ``k`` of its own). Tenant names for integration tests
  come from ``tests/integration/_tenants.py``.
* ``hsm_env`` (session): the SoftHSM2 environment; ``SOFTHSM2_CONF`` is put in
  ``os.environ`` before the first test runs, because SoftHSM2 reads it once
  per process, at ``C_Initialize``.
* ``vault_client`` (session): an ``hvac.Client`` with the root token, for
  checks that must not go through the code under test.
* ``stack_factory`` (function): more stacks in their own folders, for tests
  that stop, restart or break one; each is stopped after the test.
* ``kms_stack`` (session): a second OpenBao server, on free ports in its own
  folder, started the same way: the "KMS" whose Transit keys may be the root
  of the hierarchy (``KEYOPS_ROOT=transit``). Started only by the tests that
  ask for it, stopped at the end.

Integration tests never skip: a missing SoftHSM2 or bao is an error, and a
test marked ``integration`` that skips anyway is reported as failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from keyops.config import Config
from keyops.dev.cluster import DevCluster
from keyops.dev.stack import DevStack, free_port
from keyops.ops.front import Keyops

_INTEGRATION_DIR = Path(__file__).parent / "integration"

# Hypothesis: a moderate number of examples by default, so the unit tests stay quick on a 2-core machine;
# HYPOTHESIS_PROFILE=thorough runs many more (a nightly job, or after touching the parser or the keyring).
settings.register_profile("keyops", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "keyops"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/integration is an integration test, marked or not."""
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("integration") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"integration test {item.nodeid} was skipped ({reason}); integration tests must run "
                           "against the real OpenBao and SoftHSM2 (see scripts/setup.sh)")


@pytest.fixture(scope="session", autouse=True)
def _own_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A HOME of the suite's own: keyops and bao read ``~/.vault-token`` when no token is set, so an
    operator's token file must neither reach the tests nor be overwritten by them. pip keeps its
    cache (the packaging test installs from it)."""
    old = {name: os.environ.get(name) for name in ("HOME", "PIP_CACHE_DIR")}
    os.environ.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keyops-stack")


@pytest.fixture(scope="session", autouse=True)
def _softhsm2_conf(stack_dir: Path) -> Iterator[None]:
    """Point SoftHSM2 at the session stack's token folder before any test can load it."""
    conf = DevStack(stack_dir).softhsm_conf
    old = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    yield
    if old is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = old


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so finalizers stop the servers."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def stack(stack_dir: Path) -> Iterator[DevStack]:
    devstack = DevStack(stack_dir, port=free_port(), die_with_parent=True)
    with _sigterm_as_interrupt():
        try:
            devstack.up()
            yield devstack
        finally:
            devstack.down()


@pytest.fixture(scope="session")
def config(stack: DevStack) -> Config:
    return stack.config()


@pytest.fixture(scope="module")
def k(config: Config) -> Iterator[Keyops]:
    with Keyops(config) as keyops:
        yield keyops


@pytest.fixture(scope="session")
def hsm_env(stack: DevStack) -> dict[str, str]:
    env = {k: v for k, v in stack.env().items()
           if k in {"SOFTHSM2_CONF", "KEYOPS_PKCS11_MODULE", "KEYOPS_PKCS11_TOKEN", "KEYOPS_PKCS11_PIN_FILE"}}
    assert os.environ.get("SOFTHSM2_CONF") == env["SOFTHSM2_CONF"]
    return env


@pytest.fixture(scope="session")
def vault_client(stack: DevStack) -> Any:
    import hvac
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxy from the environment for 127.0.0.1
    return hvac.Client(url=stack.addr, token=stack.env()["VAULT_TOKEN"], session=session)


@pytest.fixture
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., DevStack]]:
    """``stack_factory(port=None)`` -> a new, not yet started DevStack in its own folder."""
    made: list[DevStack] = []

    def make(port: int | None = None, **kwargs: Any) -> DevStack:
        devstack = DevStack(tmp_path_factory.mktemp("keyops-extra-stack"), port=port, die_with_parent=True,
                            **kwargs)
        made.append(devstack)
        return devstack

    with _sigterm_as_interrupt():
        try:
            yield make
        finally:
            for devstack in made:
                devstack.down()


@pytest.fixture(scope="session")
def kms_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    devstack = DevStack(tmp_path_factory.mktemp("keyops-kms"), port=free_port(), die_with_parent=True)
    with _sigterm_as_interrupt():
        try:
            devstack.up()
            yield devstack
        finally:
            devstack.down()


@pytest.fixture(scope="session")
def ha_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    cluster = DevCluster(tmp_path_factory.mktemp("keyops-ha"), port=free_port(), die_with_parent=True)
    with _sigterm_as_interrupt():
        try:
            cluster.up()
            yield cluster
        finally:
            cluster.down()


@pytest.fixture(scope="session")
def ha_config(ha_cluster: DevCluster, config: Config) -> Config:
    return ha_cluster.config().replace(pkcs11_module=config.pkcs11_module, pkcs11_token_label=config.pkcs11_token_label,
                                       pkcs11_pin_file=config.pkcs11_pin_file, pkcs11_pin=config.pkcs11_pin)
