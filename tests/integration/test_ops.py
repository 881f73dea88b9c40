"""The operator's side (conveyor.ops) on a real Redis: indexes, status, list, retry, cancel, pause, purge."""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from conveyor import RedisBackend, codec
from conveyor.exceptions import ConveyorError, RedisUnavailable, UnknownQueue, UnknownTask
from conveyor.ops import Operator
from conveyor.store import CANCEL_REQUESTED, RENEWED, ScriptCall, Store
from django.tasks import TaskResultStatus

from tests import tasks

from .conftest import BackendFactory
from .test_transitions import LONG_LEASE_MS, reclaim, wait_for_server_ms

WORKER = "ops-test-worker"


def enqueue(backend: RedisBackend, task=tasks.noop_task, queue: str = "default", *args: object) -> str:  # type: ignore[no-untyped-def]
    """Enqueue one task on a queue; return its id."""
    return backend.enqueue(task.using(queue_name=queue), list(args), {}).id


def claim_all(backend: RedisBackend, queues: list[str], count: int = 1000) -> list:  # type: ignore[type-arg]
    """Claim up to count ready tasks of queues as the test's worker."""
    return backend.store.claim(queues, WORKER, LONG_LEASE_MS, count)


def finish(backend: RedisBackend, claimed, status: str) -> None:  # type: ignore[no-untyped-def]
    """Record a claimed task as SUCCESSFUL or FAILED, as a worker does."""
    now = datetime.now(UTC)
    if status == "SUCCESSFUL":
        fields = codec.success_fields(now, json.dumps(claimed.task_id))
        ttl = backend.settings.result_ttl
    else:
        error = codec.ErrorRecord(exception_class_path="builtins.ValueError", traceback="ValueError: boom\n")
        fields = codec.failure_fields(now, [error])
        ttl = backend.settings.failed_result_ttl
    assert backend.store.finish(claimed.task_id, claimed.queue, claimed.token, status, ttl, fields)


def finished_tasks(
    backend: RedisBackend, n: int, status: str, queue: str = "default", task=tasks.noop_task
) -> list[str]:  # type: ignore[no-untyped-def]
    """Enqueue, claim and finish n tasks; return their ids in finish order."""
    ids = [enqueue(backend, task, queue, i) for i in range(n)]
    done: list[str] = []
    while len(done) < n:
        for c in claim_all(backend, [queue]):
            finish(backend, c, status)
            done.append(c.task_id)
    assert sorted(done) == sorted(ids)
    return done


def members(backend: RedisBackend, key: str) -> set[str]:
    """Return the members of a sorted set as text."""
    return {m.decode() for m in backend.store.call(lambda c: c.zrange(key, 0, -1))}


def where(backend: RedisBackend, task_id: str, queue: str = "default") -> set[str]:
    """Return which of a queue's sets hold a task id."""
    k = backend.keys
    sets = {
        "ready": k.ready(queue),
        "since": k.ready_since(queue),
        "scheduled": k.scheduled(queue),
        "running": k.running(queue),
        "failed": k.failed(queue),
        "succeeded": k.succeeded(queue),
    }
    return {name for name, key in sets.items() if task_id in members(backend, key)}


def consistent(backend: RedisBackend, task_id: str, queue: str = "default") -> str:
    """Assert a task's status matches the sets that hold it; return the status."""
    status = backend.store.get(task_id)[b"status"].decode()
    found = where(backend, task_id, queue)
    expected = {
        "READY": [{"ready", "since"}, {"scheduled"}],
        "RUNNING": [{"running"}],
        "FAILED": [{"failed"}],
        "SUCCESSFUL": [{"succeeded"}],
    }[status]
    assert found in expected, (task_id, status, found)
    return status


# -- indexes -------------------------------------------------------------------------------


def test_finishing_indexes_a_task_by_status_and_finish_time(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ok = finished_tasks(backend, 3, "SUCCESSFUL")
    bad = finished_tasks(backend, 2, "FAILED")
    assert members(backend, backend.keys.succeeded("default")) == set(ok)
    assert members(backend, backend.keys.failed("default")) == set(bad)
    scores = backend.store.call(lambda c: c.zrange(backend.keys.failed("default"), 0, -1, withscores=True))
    now_ms = backend.store.server_time_ms()
    assert all(now_ms - 60_000 < s <= now_ms for _, s in scores)


def test_a_task_poisoned_by_reclaim_is_indexed_as_failed(make_backend: BackendFactory) -> None:
    backend = make_backend()
    task_id = enqueue(backend)
    backend.store.claim(["default"], WORKER, 1, 1)  # a 1 ms lease: expired at once
    wait_for_server_ms(backend.store, backend.store.server_time_ms() + 5)
    assert reclaim(backend.store, ["default"], limit=10, max_deliveries=1, failed_ttl=60) == (0, 1)
    assert consistent(backend, task_id) == "FAILED"


def test_indexes_are_trimmed_as_results_expire(make_backend: BackendFactory) -> None:
    """Memory stays bounded: once results expire, trim drops their index entries."""
    # Given results kept for one second
    backend = make_backend(RESULT_TTL=1, FAILED_RESULT_TTL=1)
    finished_tasks(backend, 20, "SUCCESSFUL")
    finished_tasks(backend, 10, "FAILED")
    store, queues = backend.store, ["default"]
    assert store.trim_indexes(queues, result_ttl=1, failed_ttl=1, limit=1000) == 0  # nothing expired yet
    # When the TTL has run out by the server's clock and a worker trims
    wait_for_server_ms(store, store.server_time_ms() + 1_100)
    dropped = store.trim_indexes(queues, result_ttl=1, failed_ttl=1, limit=7)
    # Then each index gives up at most the limit per call, and repeated calls empty them
    assert dropped == 14
    while store.trim_indexes(queues, result_ttl=1, failed_ttl=1, limit=7):
        pass
    assert members(backend, backend.keys.succeeded("default")) == set()
    assert members(backend, backend.keys.failed("default")) == set()


# -- status --------------------------------------------------------------------------------


def test_status_counts_every_state_per_queue_and_shows_pause(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    finished_tasks(backend, 2, "SUCCESSFUL")
    finished_tasks(backend, 1, "FAILED")
    for _ in range(3):
        enqueue(backend)
    backend.enqueue(tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)), [], {})
    claim_all(backend, ["default"], count=1)
    enqueue(backend, tasks.noop_task, "emails")
    ops.pause("emails")

    status = ops.status()

    rows = {q.queue: q for q in status.queues}
    assert set(rows) == {"default", "emails"}
    d = rows["default"]
    assert (d.ready, d.scheduled, d.running, d.failed, d.succeeded, d.paused) == (2, 1, 1, 1, 2, False)
    assert d.oldest_ready_age is not None and d.oldest_ready_age >= 0
    e = rows["emails"]
    assert (e.ready, e.paused) == (1, True)


def test_status_lists_live_workers_from_their_heartbeats(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    now = datetime.now(UTC).isoformat()
    beat = {"id": "w1", "host": "pod-a", "pid": 7, "queues": ["*"], "slots": 4, "busy": 1}
    beat |= {"started_at": now, "version": "0.1.0", "state": "ready"}
    before = backend.store.server_time_ms()
    backend.store.heartbeat("w1", json.dumps(beat), 60_000)
    backend.store.heartbeat("w2", json.dumps({**beat, "id": "w2"}), 1)  # runs out at once
    wait_for_server_ms(backend.store, backend.store.server_time_ms() + 5)

    (worker,) = ops.status().workers

    assert (worker.id, worker.host, worker.slots, worker.busy, worker.queues) == ("w1", "pod-a", 4, 1, ("*",))
    assert before <= worker.seen_at.timestamp() * 1000 <= backend.store.server_time_ms()  # the server's clock
    backend.store.heartbeat("w1", "", 0)  # a clean stop leaves
    assert ops.workers() == ()


def test_status_names_an_unreachable_redis(make_backend: BackendFactory, closed_port: int) -> None:
    backend = make_backend(URL=f"redis://127.0.0.1:{closed_port}/0", CONNECT_TIMEOUT=0.5)
    with pytest.raises(RedisUnavailable, match="unreachable"):
        Operator(backend).status()


# -- list and show ---------------------------------------------------------------------------


def test_list_pages_newest_first_and_walks_every_row_once(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    failed = finished_tasks(backend, 57, "FAILED")
    finished_tasks(backend, 5, "SUCCESSFUL")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = ops.list(status="FAILED", cursor=cursor, limit=10)
        pages += 1
        seen += [row.id for row in page.items]
        assert all(row.status == "FAILED" and row.last_error == "builtins.ValueError" for row in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break

    assert pages == 6
    assert sorted(seen) == sorted(failed) and len(seen) == len(set(seen))
    newest_first = backend.store.call(lambda c: c.zrevrange(backend.keys.failed("default"), 0, -1))
    assert seen == [m.decode() for m in newest_first]  # by finish time, then id, both descending


def test_list_pages_through_ties_of_one_millisecond(make_backend: BackendFactory) -> None:
    """Many tasks finished in the same ms (a reclaim sweep): pages still cover each once."""
    backend = make_backend()
    ids = finished_tasks(backend, 30, "FAILED")
    key = backend.keys.failed("default")
    backend.store.call(lambda c: c.zadd(key, dict.fromkeys(ids, 1_700_000_000_000)))
    seen: list[str] = []
    cursor = None
    while True:
        page = Operator(backend).list(status="FAILED", cursor=cursor, limit=7)
        seen += [row.id for row in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 30


def test_list_filters_by_queue_status_and_task_path(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    echo_failed = finished_tasks(backend, 3, "FAILED", task=tasks.echo)
    finished_tasks(backend, 4, "FAILED")
    mail_ready = enqueue(backend, tasks.noop_task, "emails")
    running = enqueue(backend)
    claim_all(backend, ["default"])

    by_task = ops.list(task="tests.tasks.echo")
    assert {r.id for r in by_task.items} == set(echo_failed)
    assert {r.id for r in ops.list(queue="emails").items} == {mail_ready}
    assert {r.id for r in ops.list(status="RUNNING").items} == {running}
    assert {r.id for r in ops.list(status="READY").items} == {mail_ready}
    assert len(ops.list().items) == 3 + 4 + 1 + 1
    with pytest.raises(UnknownQueue, match="nope"):
        ops.list(queue="nope")
    with pytest.raises(ConveyorError, match="cursor"):
        ops.list(cursor="not-a-cursor")


def test_a_task_path_filter_reads_a_bounded_number_per_page(
    make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rare path among many rows: each call examines at most the budget and hands on a cursor."""
    backend = make_backend()
    monkeypatch.setattr("conveyor.ops.SCAN_BUDGET", 40)
    monkeypatch.setattr("conveyor.ops.SCAN_CHUNK", 20)
    rare = finished_tasks(backend, 1, "FAILED", task=tasks.echo)
    finished_tasks(backend, 100, "FAILED")
    ops = Operator(backend)
    found, calls, cursor = [], 0, None
    while True:
        page = ops.list(task="tests.tasks.echo", cursor=cursor)
        calls += 1
        found += [r.id for r in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert found == rare
    assert calls >= 3  # 101 candidates, 40 a call


def test_show_gives_everything_but_arguments_unless_asked(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    task_id = enqueue(backend, tasks.echo, "default", "secret@example.com")
    (claimed,) = claim_all(backend, ["default"])
    finish(backend, claimed, "FAILED")

    detail = ops.show(task_id)
    assert detail.summary.status == "FAILED"
    assert detail.worker_ids == (WORKER,)
    assert detail.errors == (("builtins.ValueError", "ValueError: boom\n"),)
    assert detail.args is None and detail.kwargs is None and not detail.with_args
    assert detail.started_at is not None and detail.summary.finished_at is not None
    assert ops.show(task_id, with_args=True).args == ["secret@example.com"]
    with pytest.raises(UnknownTask):
        ops.show("a" * 32)
    with pytest.raises(UnknownTask):
        ops.show("../../etc")


# -- retry ---------------------------------------------------------------------------------------


def test_retry_puts_a_failed_task_back_keeping_its_id_and_history(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    (task_id,) = finished_tasks(backend, 1, "FAILED")
    ready = enqueue(backend)

    assert ops.retry([task_id, ready, "b" * 32]) == {
        task_id: "retried",
        ready: "not_failed",
        "b" * 32: "missing",
    }

    assert consistent(backend, task_id) == "READY"
    assert backend.store.call(lambda c: c.ttl(backend.keys.task(task_id))) == -1  # no longer expires
    claimed = {c.task_id: c for c in claim_all(backend, ["default"])}
    finish(backend, claimed[task_id], "SUCCESSFUL")
    result = backend.get_result(task_id)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.worker_ids == [WORKER, WORKER]
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"]
    assert consistent(backend, task_id) == "SUCCESSFUL"


def test_retry_by_filter_counts_first_with_dry_run(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    old = finished_tasks(backend, 3, "FAILED")
    wait_for_server_ms(backend.store, backend.store.server_time_ms() + 5)
    since = datetime.fromtimestamp(backend.store.server_time_ms() / 1000, UTC)
    new_echo = finished_tasks(backend, 2, "FAILED", task=tasks.echo)
    finished_tasks(backend, 2, "FAILED", queue="emails")

    assert ops.retry_matching(since=since, dry_run=True) == 4
    assert ops.retry_matching(queue="default", task="tests.tasks.echo", dry_run=True) == 2
    assert all(consistent(backend, t) == "FAILED" for t in old + new_echo)  # a dry run changes nothing

    assert ops.retry_matching(queue="default", since=since) == 2
    assert all(consistent(backend, t) == "READY" for t in new_echo)
    assert all(consistent(backend, t) == "FAILED" for t in old)


def test_retry_racing_reclaim_leaves_every_task_in_exactly_one_state(make_backend: BackendFactory) -> None:
    """Given tasks whose worker died, reclaim fails them (poison) while an operator retries them."""
    backend = make_backend()
    ids = [enqueue(backend) for _ in range(200)]
    backend.store.claim(["default"], WORKER, 1, 200)  # leases expire at once
    wait_for_server_ms(backend.store, backend.store.server_time_ms() + 5)
    ops = Operator(backend)
    results: list[dict[str, str]] = []

    def retry_loop() -> None:
        for _ in range(20):
            results.append(dict(ops.retry(ids)))

    # When reclaim and retry run at once
    thread = threading.Thread(target=retry_loop)
    thread.start()
    reclaim(backend.store, ["default"], limit=50, max_deliveries=1, failed_ttl=60)
    while backend.store.call(lambda c: c.zcard(backend.keys.running("default"))):
        reclaim(backend.store, ["default"], limit=50, max_deliveries=1, failed_ttl=60)
    thread.join()
    # Then each task is FAILED or READY, held by exactly the sets of that state
    states = [consistent(backend, t) for t in ids]
    retried = {t for r in results for t, outcome in r.items() if outcome == "retried"}
    assert all(s == "READY" for t, s in zip(ids, states, strict=True) if t in retried)
    assert all(s == "FAILED" for t, s in zip(ids, states, strict=True) if t not in retried)


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_fails_a_ready_or_waiting_task_before_it_starts(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    ready = enqueue(backend)
    later = backend.enqueue(
        tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)), [], {}
    ).id

    assert ops.cancel([ready, later], by="alice") == {ready: "cancelled", later: "cancelled"}

    for task_id in (ready, later):
        assert consistent(backend, task_id) == "FAILED"
        result = backend.get_result(task_id)
        assert result.status == TaskResultStatus.FAILED
        assert result.started_at is None and result.worker_ids == []
        (error,) = result.errors
        assert error.exception_class_path == "conveyor.exceptions.TaskCancelled"
        assert "alice" in error.traceback
        assert 0 < backend.store.call(lambda c, t=task_id: c.ttl(backend.keys.task(t))) <= 7 * 86_400
    assert claim_all(backend, ["default"]) == []


def test_cancel_of_a_running_task_asks_its_worker_and_outlives_it(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    task_id = enqueue(backend)
    (claimed,) = claim_all(backend, ["default"])
    lease = (task_id, "default", claimed.token)
    assert backend.store.renew([lease], LONG_LEASE_MS) == [RENEWED]
    signal_before = backend.store.cancel_signal()

    assert ops.cancel([task_id]) == {task_id: "requested"}

    assert consistent(backend, task_id) == "RUNNING"
    assert backend.store.cancel_signal() == signal_before + 1
    assert backend.store.renew([lease], LONG_LEASE_MS) == [CANCEL_REQUESTED]
    assert ops.show(task_id).cancel_requested_at is not None
    # Its worker dies before it acts: the task comes back still marked, so the next claim
    # hands the worker a record that says to fail it unstarted.
    backend.store.call(lambda c: c.zadd(backend.keys.running("default"), {task_id: 1}))
    reclaim(backend.store, ["default"], limit=10, max_deliveries=5, failed_ttl=60)
    (again,) = claim_all(backend, ["default"])
    assert again.task_id == task_id and b"cancel" in again.fields
    assert ops.cancel([task_id]) == {task_id: "requested"}  # asking twice keeps the first time
    finish(backend, again, "SUCCESSFUL")
    assert ops.cancel([task_id, "c" * 32]) == {task_id: "finished", "c" * 32: "missing"}


def test_cancel_racing_claims_has_exactly_one_outcome_per_task(make_backend: BackendFactory) -> None:
    """Given many ready tasks, a worker claims while an operator cancels each of them."""
    backend = make_backend()
    ids = [enqueue(backend) for _ in range(300)]
    claimed: list[str] = []
    stop = threading.Event()
    other = make_backend()

    def claimer() -> None:
        while not stop.is_set():
            claimed.extend(c.task_id for c in other.store.claim(["default"], WORKER, LONG_LEASE_MS, 3))

    thread = threading.Thread(target=claimer)
    thread.start()
    outcomes = Operator(backend).cancel(ids)
    stop.set()
    thread.join()
    # Then a task the claim took was only asked to stop, and one the cancel took was never claimed
    for task_id in ids:
        if task_id in claimed:
            assert outcomes[task_id] == "requested"
            assert consistent(backend, task_id) == "RUNNING"
        else:
            assert outcomes[task_id] == "cancelled"
            assert consistent(backend, task_id) == "FAILED"
    assert len(claimed) == len(set(claimed))


# -- delete, pause --------------------------------------------------------------------------------


def test_delete_removes_tasks_no_worker_holds(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    (done,) = finished_tasks(backend, 1, "SUCCESSFUL")
    ready = enqueue(backend)
    running = enqueue(backend, tasks.noop_task, "emails")
    claim_all(backend, ["emails"])

    assert ops.delete([done, ready, running, "d" * 32]) == {
        done: True,
        ready: True,
        running: False,
        "d" * 32: False,
    }
    assert backend.store.get(done) == {} and backend.store.get(ready) == {}
    assert where(backend, done) == set() and where(backend, ready) == set()
    assert consistent(backend, running, "emails") == "RUNNING"


def test_a_paused_queue_is_not_claimed_from_and_not_counted_as_waiting(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    mail = [enqueue(backend, tasks.noop_task, "emails") for _ in range(3)]
    work = enqueue(backend)

    ops.pause("emails")

    store: Store = backend.store
    assert store.claim(["emails"], WORKER, LONG_LEASE_MS, 10) == []
    calls = store.claim_calls(["emails", "default"], WORKER, LONG_LEASE_MS, 10, "c1")
    claimed, waiting = store.parse_claimed(store.run(calls), calls, ["emails", "default"])
    assert [c.task_id for c in claimed] == [work] and waiting == 0
    (stats,) = store.queue_stats(["emails"])
    assert stats.paused and stats.ready == 3 and stats.work == 0
    enqueue(backend, tasks.noop_task, "emails")  # tasks keep arriving
    store.call(lambda c: c.delete(backend.keys.wake("emails")))  # idle workers took every token

    ops.resume("emails")

    assert store.call(lambda c: c.llen(backend.keys.wake("emails"))) == 1  # an idle worker wakes for it

    assert len(store.claim(["emails"], WORKER, LONG_LEASE_MS, 10)) == 4
    assert set(mail) <= members(backend, backend.keys.running("emails"))
    with pytest.raises(UnknownQueue):
        ops.pause("no-such-queue")


# -- purge ----------------------------------------------------------------------------------------


def test_purge_deletes_results_by_age_status_and_queue(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    ok = finished_tasks(backend, 4, "SUCCESSFUL")
    bad = finished_tasks(backend, 3, "FAILED")
    mail = finished_tasks(backend, 2, "FAILED", queue="emails")
    wait_for_server_ms(backend.store, backend.store.server_time_ms() + 5)

    assert ops.purge_results(older_than=3600) == 0
    assert ops.purge_results(older_than=0, status="FAILED", dry_run=True) == 5
    assert all(backend.store.get(t) for t in bad + mail)  # a dry run deletes nothing
    assert ops.purge_results(older_than=0, status="FAILED", queue="default") == 3
    assert all(backend.store.get(t) == {} for t in bad)
    assert all(consistent(backend, t, "emails") == "FAILED" for t in mail)
    assert ops.purge_results(older_than=0) == 4 + 2
    assert all(backend.store.get(t) == {} for t in ok + mail)


def test_purge_of_a_retried_task_leaves_the_task(make_backend: BackendFactory) -> None:
    """An index entry left behind (retried since) is dropped; the READY task stays."""
    backend = make_backend()
    (task_id,) = finished_tasks(backend, 1, "FAILED")
    backend.store.call(lambda c: c.hset(backend.keys.task(task_id), "status", "READY"))
    assert Operator(backend).purge_results(older_than=0) == 1
    assert backend.store.get(task_id)[b"status"] == b"READY"


def test_purge_ready_drops_a_queues_waiting_tasks_only(make_backend: BackendFactory) -> None:
    backend = make_backend()
    ops = Operator(backend)
    ready = [enqueue(backend) for _ in range(5)]
    later = backend.enqueue(
        tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1)), [], {}
    ).id
    running = enqueue(backend)
    backend.store.call(lambda c: c.zrem(backend.keys.ready("default"), running))
    backend.store.call(lambda c: c.hset(backend.keys.task(running), "status", "RUNNING"))

    assert ops.purge_ready("default", dry_run=True) == 6
    assert ops.purge_ready("default", batch=2) == 6
    assert all(backend.store.get(t) == {} for t in [*ready, later])
    assert backend.store.get(running)[b"status"] == b"RUNNING"


def test_purge_of_100_000_results_runs_in_bounded_batches(
    make_backend: BackendFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every script call deletes at most one batch, so Redis is never blocked for long."""
    # Given 100,000 SUCCESSFUL results, made by the real scripts
    backend = make_backend()
    store = backend.store
    n = 100_000
    fields = codec.new_record(
        task_path="tests.tasks.noop_task",
        queue="bulk",
        priority=0,
        backend="default",
        run_after=None,
        args_json="[]",
        kwargs_json="{}",
        enqueued_at=datetime.now(UTC),
    )
    for start in range(0, n, 2000):
        calls = []
        for i in range(start, start + 2000):
            keys, args = store._enqueue_call(f"bulk{i:06d}", "bulk", 0, None, fields)
            calls.append(ScriptCall(name="enqueue", keys=keys, args=args))
        store.run(calls)
    done = [datetime.now(UTC), "1"]
    while claimed := store.claim(["bulk"], WORKER, LONG_LEASE_MS, 1000):
        store.run(
            [
                store.finish_call(c.task_id, "bulk", c.token, "SUCCESSFUL", 3600, codec.success_fields(*done))  # type: ignore[arg-type]
                for c in claimed
            ]
        )
    assert store.call(lambda c: c.zcard(backend.keys.succeeded("bulk"))) == n
    sizes: list[int] = []
    real = Store.purge_index

    def counted(self: Store, queue: str, index: str, status: str, cutoff_ms: int, batch: int) -> int:
        removed = real(self, queue, index, status, cutoff_ms, batch)
        sizes.append(removed)
        return removed

    monkeypatch.setattr(Store, "purge_index", counted)
    wait_for_server_ms(store, store.server_time_ms() + 5)

    # When every result is purged
    assert Operator(backend).purge_results(older_than=0, queue="bulk", batch=1000) == n

    # Then it took 100 calls of at most 1,000 each, and nothing of the queue is left
    assert max(sizes) <= 1000 and len([s for s in sizes if s]) == 100
    assert store.call(lambda c: c.zcard(backend.keys.succeeded("bulk"))) == 0
    assert (
        store.call(lambda c: c.exists(backend.keys.task("bulk000000"), backend.keys.task("bulk099999"))) == 0
    )


def test_purge_ready_deletes_no_more_than_the_count_agreed(make_backend: BackendFactory) -> None:
    """Tasks keep arriving while an operator confirms: only the confirmed count goes."""
    backend = make_backend()
    ops = Operator(backend)
    for _ in range(7):
        enqueue(backend)
    agreed = ops.purge_ready("default", dry_run=True)
    for _ in range(3):
        enqueue(backend)  # arrive while the prompt waits
    assert ops.purge_ready("default", batch=2, limit=agreed) == 7
    assert backend.store.call(lambda c: c.zcard(backend.keys.ready("default"))) == 3


def test_new_task_ids_never_start_with_a_dash() -> None:
    from conveyor.backend import new_task_id

    assert not any(new_task_id().startswith("-") for _ in range(5000))


def test_new_task_ids_are_distinct_url_safe_and_never_start_with_a_dash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """enqueue_many's batched ids look like new_task_id()'s; one that would start with "-" is redrawn."""
    import os

    from conveyor import backend as backend_module

    real = os.urandom
    calls: list[int] = []

    def first_id_starts_with_a_dash(size: int) -> bytes:
        calls.append(size)
        return b"\xf8" + bytes(size - 1) if len(calls) == 1 else real(size)

    monkeypatch.setattr(backend_module.os, "urandom", first_id_starts_with_a_dash)
    ids = backend_module.new_task_ids(3)

    assert calls[0] == 72
    assert len(ids) == 3
    assert ids[0] != "-" * 32 and not ids[0].startswith("-")
    assert ids[1:] == ["A" * 32, "A" * 32]  # the zero bytes, sliced on 24-byte boundaries
    many = backend_module.new_task_ids(5000)
    assert len(set(many)) == 5000
    assert all(len(i) == 32 and re.fullmatch(r"[A-Za-z0-9_-]+", i) and i[0] != "-" for i in many)
