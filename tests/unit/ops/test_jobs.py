"""Pure logic of keyops.ops.jobs: checkpoints, job ids, sorted paginated listing, the batch pipeline.

The listing is driven by a small in-memory stand-in for the server's LIST
endpoint (a plain object, no mocking library), which implements OpenBao's
``after``/``limit`` semantics — or ignores them, like HashiCorp Vault.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from typing import Any

import pytest

from keyops.backends.vault import CallCounter
from keyops.errors import Conflict, InvalidInput, JobFailed, VaultSealed
from keyops.ops.jobs import (
    Checkpoint,
    batched,
    count_names,
    iter_names,
    new_job_id,
    run_batches,
    validate_job_id,
    validate_pool,
)

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


# --- job ids and pool sizes -----------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["a", "reencrypt-20250102T030405Z-0a1b2c", "A.b_c-1", "x" * 80])
def test_valid_job_ids(job_id: str) -> None:
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize("job_id", ["", "-a", ".hidden", "a/b", "../x", "a b", "é", "x" * 81, None, 7])
def test_invalid_job_ids(job_id: Any) -> None:
    with pytest.raises(InvalidInput, match="job id"):
        validate_job_id(job_id)


def test_new_job_ids_sort_by_time_and_differ() -> None:
    first = new_job_id("reencrypt", NOW)
    later = new_job_id("reencrypt", NOW + dt.timedelta(seconds=1))
    assert first.startswith("reencrypt-20250102T030405Z-") and first < later
    assert len({new_job_id("migrate", NOW) for _ in range(50)}) == 50
    assert validate_job_id(first) == first


@pytest.mark.parametrize(("workers", "batch"), [(0, 10), (65, 10), (4, 0), (4, 1001), (True, 10), (4, 2.5)])
def test_pool_bounds(workers: Any, batch: Any) -> None:
    with pytest.raises(InvalidInput):
        validate_pool(workers, batch)


# --- checkpoints ----------------------------------------------------------------------------


def _checkpoint() -> Checkpoint:
    return Checkpoint.start("job-1", "reencrypt", "acme", {"dek_version": 2}, NOW)


def test_checkpoint_advances_and_adds_counts() -> None:
    cp = _checkpoint().advance("b", {"rewritten": 3, "current": 1}, NOW).advance("d", {"rewritten": 2}, NOW)
    assert (cp.cursor, dict(cp.counts), cp.state, cp.phase) == ("d", {"rewritten": 5, "current": 1}, "running", "pass")


def test_checkpoint_cursor_never_moves_back() -> None:
    cp = _checkpoint().advance("m", {}, NOW)
    with pytest.raises(InvalidInput, match="back"):
        cp.advance("c", {}, NOW)
    assert cp.advance("m", {}, NOW).cursor == "m"


def test_finished_checkpoint_does_not_advance() -> None:
    done = _checkpoint().finish({"rewritten": 1}, NOW)
    assert (done.state, done.phase, dict(done.result or {})) == ("done", "done", {"rewritten": 1})
    with pytest.raises(InvalidInput, match="done"):
        done.advance("z", {}, NOW)


def test_new_params_restart_the_walk_and_resume_counts_runs() -> None:
    cp = _checkpoint().advance("k", {"rewritten": 4}, NOW).with_phase("verify", NOW, reset_cursor=False)
    assert cp.cursor == "k" and cp.phase == "verify"
    restarted = cp.with_params({"dek_version": 3}, NOW).resumed(NOW)
    assert (restarted.cursor, restarted.phase, dict(restarted.params), restarted.runs) == ("", "pass",
                                                                                          {"dek_version": 3}, 2)


def test_checkpoint_round_trips_through_its_document() -> None:
    cp = _checkpoint().advance("x/y", {"rewritten": 7}, NOW).finish({"total": 7}, NOW)
    doc = cp.to_dict()
    assert doc["schema"] == 1 and doc["result"] == {"total": 7}
    assert Checkpoint.from_dict(doc) == cp
    assert "result" not in _checkpoint().to_dict()


@pytest.mark.parametrize("change", [{"schema": 2}, {"kind": "rotate"}, {"state": "paused"},
                                    {"counts": {"a": "many"}}, {"job_id": "../x"}])
def test_malformed_checkpoints_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        Checkpoint.from_dict({**_checkpoint().to_dict(), **change})


def test_a_checkpoint_missing_fields_is_refused() -> None:
    with pytest.raises(InvalidInput, match="malformed"):
        Checkpoint.from_dict({"schema": 1, "job_id": "j", "kind": "migrate"})


# --- listing --------------------------------------------------------------------------------


class _Adapter:
    """The LIST endpoint of a KV v2 mount over an in-memory set of secret paths."""

    def __init__(self, paths: list[str], paginates: bool = True) -> None:
        self.paths = set(paths)
        self.paginates = paginates
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def request(self, method: str, url: str, params: dict[str, Any]) -> dict[str, Any]:
        assert method == "LIST"
        mount_prefix = "/v1/kv/metadata/"
        assert url.startswith(mount_prefix)
        folder = url[len(mount_prefix):].strip("/")
        self.requests.append((folder, dict(params)))
        prefix = f"{folder}/" if folder else ""
        keys = sorted({p[len(prefix):].split("/", 1)[0] + ("/" if "/" in p[len(prefix):] else "")
                       for p in self.paths if p.startswith(prefix)})
        if not keys:
            from keyops.errors import NotFound
            raise NotFound("no such folder")
        if self.paginates:
            after = params.get("after", "")
            keys = [key for key in keys if key > after][:params["limit"]]
        return {"data": {"keys": keys}}


class _Store:
    """``VaultStore.list`` with ``after``/``limit``, over the adapter above."""

    def __init__(self, adapter: _Adapter) -> None:
        self.adapter = adapter
        self.kv_mount = "kv"
        self.calls = CallCounter()

    def list(self, path: str, mount: str | None = None, *, after: str = "", limit: int = 0) -> list[str]:
        from keyops.errors import NotFound

        self.calls.add("kv.list")
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        try:
            resp = self.adapter.request("LIST", f"/v1/{mount or self.kv_mount}/metadata/{path}", params=params)
        except NotFound:
            return []
        return list(resp["data"]["keys"])


TREE = ["a", "a-b", "a.c", "a/b", "a/b/c", "a/b0", "a/c", "a0", "b", "b/x/y/z", "b/x0", "c/", "z"]
NAMES = sorted(p for p in TREE if not p.endswith("/"))


@pytest.fixture(params=[True, False], ids=["paginated", "vault-style"])
def paginates(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.mark.parametrize("page", [1, 2, 3, 100])
def test_listing_yields_every_name_in_sorted_order(page: int, paginates: bool) -> None:
    store = _Store(_Adapter([f"base/{p}" for p in NAMES], paginates))
    assert list(iter_names(store, "base", page=page)) == NAMES  # type: ignore[arg-type]


@pytest.mark.parametrize("page", [1, 2, 5])
def test_listing_resumes_strictly_after_any_cursor(page: int, paginates: bool) -> None:
    store = _Store(_Adapter([f"base/{p}" for p in NAMES], paginates))
    for i, cursor in enumerate(NAMES):
        assert list(iter_names(store, "/base/", after=cursor, page=page)) == NAMES[i + 1:], cursor  # type: ignore


def test_listing_a_cursor_that_was_deleted_meanwhile() -> None:
    store = _Store(_Adapter([f"base/{p}" for p in NAMES if p != "a/b/c"]))
    assert list(iter_names(store, "base", after="a/b/c", page=2)) == [n for n in NAMES if n > "a/b/c"]  # type: ignore


def test_listing_pages_are_bounded_requests() -> None:
    adapter = _Adapter([f"base/s{i:03d}" for i in range(25)])
    names = list(iter_names(_Store(adapter), "base", page=10))  # type: ignore[arg-type]
    assert len(names) == 25
    assert [params for _, params in adapter.requests] == [{"limit": 10}, {"limit": 10, "after": "s009"},
                                                          {"limit": 10, "after": "s019"}]


def test_listing_an_empty_or_missing_folder() -> None:
    assert list(iter_names(_Store(_Adapter(["other/x"])), "base")) == []  # type: ignore[arg-type]


def test_count_names_splits_at_the_cursor() -> None:
    store = _Store(_Adapter([f"base/{p}" for p in NAMES]))
    assert count_names(store, "base", "a0") == (NAMES.index("a0") + 1, len(NAMES))  # type: ignore[arg-type]
    assert count_names(store, "base") == (0, len(NAMES))  # type: ignore[arg-type]


def test_batched() -> None:
    assert list(batched(iter("abcdefg"), 3)) == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert list(batched([], 3)) == []


# --- the pipeline ---------------------------------------------------------------------------


def test_pipeline_finishes_every_item_and_checkpoints_batches_in_order() -> None:
    names = [f"n{i:03d}" for i in range(47)]
    seen: list[str] = []
    batches: list[str] = []
    threads: set[str] = set()

    def work(name: str) -> str:
        threads.add(threading.current_thread().name)
        return name.upper()

    def on_item(name: str, outcome: str) -> None:
        assert outcome == name.upper()
        assert threading.current_thread() is threading.main_thread()
        seen.append(name)

    run_batches(iter(names), work, workers=4, batch_size=10, on_item=on_item, on_batch=batches.append,
                describe=lambda name, exc: name)
    assert seen == names
    assert batches == ["n009", "n019", "n029", "n039", "n046"]
    assert all(t.startswith("keyops-job") for t in threads)


def test_pipeline_stops_at_the_first_failure_without_passing_it() -> None:
    names = [f"n{i:03d}" for i in range(40)]
    batches: list[str] = []
    started = itertools.count()

    def work(name: str) -> str:
        next(started)
        if name == "n013":
            raise VaultSealed("Vault is sealed")
        return name

    with pytest.raises(JobFailed) as failed:
        run_batches(iter(names), work, workers=2, batch_size=5, on_item=lambda n, o: None,
                    on_batch=batches.append, describe=lambda name, exc: f"stopped at {name}: {exc}")
    assert batches == ["n004", "n009"]
    assert str(failed.value) == "stopped at n013: Vault is sealed"
    assert (failed.value.code, failed.value.exit_code) == ("vault_sealed", VaultSealed.exit_code)
    assert isinstance(failed.value.__cause__, VaultSealed)
    assert next(started) < 40  # what was not started yet was cancelled


def test_pipeline_lets_a_callback_stop_it() -> None:
    class Stop(Exception):
        pass

    def on_batch(last: str) -> None:
        raise Stop

    with pytest.raises(Stop):
        run_batches(iter(["a", "b", "c"]), lambda n: n, workers=1, batch_size=1, on_item=lambda n, o: None,
                    on_batch=on_batch, describe=lambda name, exc: name)


def test_job_failed_keeps_a_conflict_s_exit_code() -> None:
    err = JobFailed("stopped", Conflict("lost a race"))
    assert (err.code, err.exit_code, str(err)) == ("conflict", Conflict.exit_code, "stopped")
    assert JobFailed("plain").exit_code == 9


def test_a_stalled_item_stops_the_pipeline_without_waiting_for_it() -> None:
    release = threading.Event()
    done: list[str] = []

    def work(name: str) -> str:
        if name == "c":
            release.wait(30)  # stuck, as behind a server that never answers
        return name

    started = time.monotonic()
    with pytest.raises(JobFailed, match=r"stalled: item 'c' did not finish within 0.3 s \(KEYOPS_JOB_STALL_TIMEOUT\)"):
        run_batches(iter("abcde"), work, workers=2, batch_size=1, on_item=lambda name, _: done.append(name),
                    on_batch=lambda last: None, describe=lambda name, exc: str(exc), stall=0.3)
    elapsed = time.monotonic() - started
    release.set()
    assert elapsed < 2.0, elapsed
    assert done == ["a", "b"]  # the checkpoint never passes the stuck item
