"""Unique tasks (one READY task per lock key) and enqueue_many (chunks of tasks per atomic script call)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conveyor import RedisBackend, aenqueue_many, codec, enqueue_many
from conveyor.exceptions import PartiallyEnqueued, PayloadTooLarge
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.base import TaskResult
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist

from tests import tasks

LEASE_MS = 60_000


def ready_ids(backend: RedisBackend, queue: str = "default") -> list[str]:
    """Return the ids in a queue's ready set, best first."""
    ids = backend.store.call(lambda c: c.zrange(backend.keys.ready(queue), 0, -1))
    return [i.decode() for i in ids]


def task_count(backend: RedisBackend) -> int:
    """Return how many task hashes exist under the backend's prefix."""
    pattern = backend.keys.task_prefix + "*"
    return len(backend.store.call(lambda c: list(c.scan_iter(match=pattern, count=1000))))


# -- unique tasks ------------------------------------------------------------------------


def test_a_second_unique_enqueue_returns_the_first_task_without_a_signal(
    backend: RedisBackend, enqueued: list[TaskResult]
) -> None:
    first = tasks.unique_task.enqueue(1, user="ada")

    again = tasks.unique_task.enqueue(1, user="ada")

    assert again.id == first.id
    assert again.status == TaskResultStatus.READY
    assert again.args == [1] and again.kwargs == {"user": "ada"}
    assert again.enqueued_at == first.enqueued_at
    assert enqueued == [first]  # the turned-away enqueue sends no task_enqueued
    assert ready_ids(backend) == [first.id]
    lock = backend.keys.unique(
        codec.unique_digest(tasks.unique_task.module_path, "default", [1], {"user": "ada"})
    )
    assert backend.store.call(lambda c: c.get(lock)) == first.id.encode()
    assert 3_590_000 < backend.store.call(lambda c: c.pttl(lock)) <= 3_600_000


def test_other_arguments_queues_and_tasks_are_other_locks(backend: RedisBackend) -> None:
    first = tasks.unique_task.enqueue(1)

    ids = {
        first.id,
        tasks.unique_task.enqueue(2).id,
        tasks.unique_task.enqueue(1, extra=True).id,
        tasks.unique_task.using(queue_name="other").enqueue(1).id,
        tasks.noop_task.enqueue(1).id,
    }

    assert len(ids) == 5
    assert tasks.unique_task.enqueue((1,)).id != first.id  # [[1]] is not [1]
    assert tasks.unique_task.enqueue(*(1,)).id == first.id  # a tuple normalises to the same list


def test_keyword_order_does_not_matter(backend: RedisBackend) -> None:
    first = tasks.unique_task.enqueue(a=1, b={"x": 1, "y": 2})

    assert tasks.unique_task.enqueue(b={"y": 2, "x": 1}, a=1).id == first.id


def test_unique_enqueue_from_ten_threads_creates_one_task(backend: RedisBackend) -> None:
    # Given ten threads released together, each enqueueing the same unique task
    barrier = threading.Barrier(10)
    results: list[TaskResult] = []
    lock = threading.Lock()

    def enqueue() -> None:
        barrier.wait()
        result = tasks.unique_task.enqueue("report", day="2026-11-30")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=enqueue) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then exactly one task exists and all ten got its id
    assert len(results) == 10
    assert len({r.id for r in results}) == 1
    assert ready_ids(backend) == [results[0].id]
    assert task_count(backend) == 1


def test_a_key_function_names_the_lock(backend: RedisBackend) -> None:
    first = tasks.unique_per_user.enqueue(user="ada", page=1)

    assert tasks.unique_per_user.enqueue(user="ada", page=2).id == first.id
    assert tasks.unique_per_user.enqueue(user="bob", page=1).id != first.id


def test_a_finished_task_no_longer_holds_its_lock(backend: RedisBackend) -> None:
    store = backend.store
    first = tasks.unique_task.enqueue(7)
    [claimed] = store.claim(["default"], "worker-a", LEASE_MS, 1)
    assert store.finish(first.id, "default", claimed.token, "SUCCESSFUL", 60, {"result": "null"})

    second = tasks.unique_task.enqueue(7)

    assert second.id != first.id
    assert tasks.unique_task.enqueue(7).id == second.id  # the lock now names the new task


def test_a_running_task_holds_its_lock_only_when_the_task_says_so(backend: RedisBackend) -> None:
    store = backend.store
    plain = tasks.unique_task.enqueue(1)
    sticky = tasks.unique_while_running_task.enqueue(1)
    claimed = store.claim(["default"], "worker-a", LEASE_MS, 2)
    assert {c.task_id for c in claimed} == {plain.id, sticky.id}

    assert tasks.unique_task.enqueue(1).id != plain.id
    running = tasks.unique_while_running_task.enqueue(1)
    assert running.id == sticky.id
    assert running.status == TaskResultStatus.RUNNING
    assert running.worker_ids == ["worker-a"]


def test_a_retry_waiting_for_its_backoff_still_holds_the_lock(backend: RedisBackend) -> None:
    store = backend.store
    first = tasks.unique_task.enqueue(3)
    [claimed] = store.claim(["default"], "worker-a", LEASE_MS, 1)
    assert store.retry(first.id, "default", claimed.token, 60_000, {"errors": "[]"})

    again = tasks.unique_task.enqueue(3)

    assert again.id == first.id
    assert again.status == TaskResultStatus.READY
    assert again.attempts == 1


def test_a_scheduled_task_holds_the_lock(backend: RedisBackend) -> None:
    later = tasks.unique_task.using(run_after=datetime.now(UTC) + timedelta(hours=1))
    first = later.enqueue(4)

    again = later.enqueue(4)

    assert again.id == first.id
    assert again.task.run_after == later.run_after


def test_the_lock_goes_when_its_window_ends(backend: RedisBackend) -> None:
    first = tasks.briefly_unique_task.enqueue(5)
    assert tasks.briefly_unique_task.enqueue(5).id == first.id

    time.sleep(0.4)

    assert tasks.briefly_unique_task.enqueue(5).id != first.id


def test_a_missing_holder_frees_the_lock(backend: RedisBackend) -> None:
    first = tasks.unique_task.enqueue(6)
    backend.store.call(lambda c: c.delete(backend.keys.task(first.id)))

    assert tasks.unique_task.enqueue(6).id != first.id


def test_unique_aenqueue_returns_the_holder(backend: RedisBackend, enqueued: list[TaskResult]) -> None:
    async def twice() -> tuple[TaskResult, TaskResult]:
        return await tasks.unique_task.aenqueue(8), await tasks.unique_task.aenqueue(8)

    first, again = asyncio.run(twice())

    assert again.id == first.id
    assert enqueued == [first]


def test_a_lock_key_of_the_wrong_type_fails_with_nothing_written(backend: RedisBackend) -> None:
    lock = backend.keys.unique(codec.unique_digest(tasks.unique_task.module_path, "default", [9], {}))
    backend.store.call(lambda c: c.rpush(lock, "x"))

    with pytest.raises(Exception, match="WRONGTYPE"):
        tasks.unique_task.enqueue(9)

    assert task_count(backend) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique_for": 0}, "unique_for"),
        ({"unique_for": -1.0}, "unique_for"),
        ({"unique_for": True}, "unique_for"),
        ({"unique_for": float("inf")}, "unique_for"),
        ({"unique_for": "60"}, "unique_for"),
        ({"unique_key": str}, "need unique_for"),
        ({"unique_while_running": True}, "need unique_for"),
        ({"unique_for": 60, "unique_key": "user"}, "unique_key"),
        ({"unique_for": 60, "unique_while_running": 1}, "unique_while_running"),
    ],
)
def test_bad_unique_options_are_refused(backend: RedisBackend, options: dict[str, Any], message: str) -> None:
    from dataclasses import replace

    with pytest.raises(InvalidTask, match=message):
        replace(tasks.unique_task, **{"unique_for": None, **options})


def test_a_key_function_must_return_text(backend: RedisBackend, enqueued: list[TaskResult]) -> None:
    from dataclasses import replace

    bad = replace(tasks.unique_task, unique_key=lambda args, kwargs: 42)

    with pytest.raises(TypeError, match="unique_key must return a str"):
        bad.enqueue(1)

    assert task_count(backend) == 0
    assert enqueued == []


def test_unique_enqueue_on_commit_checks_the_lock_at_commit(
    configure_tasks: Callable[..., Any], enqueued: list[TaskResult]
) -> None:
    with configure_tasks(ENQUEUE_ON_COMMIT=True):
        backend = task_backends["default"]
        first = tasks.unique_task.enqueue(10)  # outside a transaction: written at once
        with transaction.atomic():
            deferred = tasks.unique_task.enqueue(10)
            assert deferred.id != first.id  # a fresh READY result: the lock is read at commit

        assert enqueued == [first]  # at commit the lock turned it away: nothing stored, no signal
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(deferred.id)
        assert ready_ids(backend) == [first.id]


# -- enqueue_many ------------------------------------------------------------------------


def test_enqueue_many_stores_every_task_in_order_with_a_signal_each(
    backend: RedisBackend, enqueued: list[TaskResult]
) -> None:
    items = [((i,), {"n": i}) for i in range(1234)]

    results = enqueue_many(tasks.echo, items, chunk=100)

    assert [r.args for r in results] == [[i] for i in range(1234)]
    assert len({r.id for r in results}) == 1234
    assert enqueued == results
    assert ready_ids(backend) == [r.id for r in results]  # enqueue order within the priority
    fetched = backend.get_result(results[777].id)
    assert fetched.args == [777] and fetched.kwargs == {"n": 777}
    assert fetched.status == TaskResultStatus.READY
    assert fetched.enqueued_at == results[777].enqueued_at
    raw = backend.store.get(results[0].id)
    assert raw[b"score"] == str(codec.ready_score(0, int(raw[b"score"]) % codec.PRIORITY_STEP)).encode()
    wake = backend.store.call(lambda c: c.llen(backend.keys.wake("default")))
    assert wake == 256


def test_enqueue_many_tasks_are_claimed_like_single_ones(backend: RedisBackend) -> None:
    single = tasks.noop_task.using(priority=5).enqueue("first")
    bulk = enqueue_many(tasks.noop_task, [((i,), {}) for i in range(3)])
    high = enqueue_many(tasks.noop_task.using(priority=50), [(("high",), {})])

    claimed = backend.store.claim(["default"], "worker-a", LEASE_MS, 10)

    assert [c.task_id for c in claimed] == [high[0].id, single.id, *(r.id for r in bulk)]
    result = backend.get_result(high[0].id)
    assert result.status == TaskResultStatus.RUNNING
    assert result.task.priority == 50


def test_enqueue_many_with_run_after_schedules_them(backend: RedisBackend) -> None:
    later = tasks.noop_task.using(run_after=datetime.now(UTC) + timedelta(hours=1))

    results = enqueue_many(later, [((i,), {}) for i in range(5)])

    scheduled = backend.store.call(lambda c: c.zrange(backend.keys.scheduled("default"), 0, -1))
    assert sorted(s.decode() for s in scheduled) == sorted(r.id for r in results)
    assert ready_ids(backend) == []
    assert backend.get_result(results[0].id).task.run_after == later.run_after


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (((datetime.now(UTC),), {}), TypeError),
        (((), {"x": float("nan")}), TypeError),
        ((("x" * 2_000_000,), {}), PayloadTooLarge),
        (((), {1: "not a str key"}), TypeError),
        ("not a pair", TypeError),
    ],
)
def test_one_bad_item_stores_nothing(
    backend: RedisBackend, enqueued: list[TaskResult], bad: Any, error: type[Exception]
) -> None:
    items = [((i,), {}) for i in range(700)] + [bad]

    with pytest.raises(error):
        enqueue_many(tasks.noop_task, items)

    assert task_count(backend) == 0
    assert enqueued == []


def test_enqueue_many_checks_nesting_per_item(make_backend: Any, backend: RedisBackend) -> None:
    deep: Any = []
    for _ in range(80):
        deep = [deep]

    with pytest.raises(TypeError, match="MAX_NESTING"):
        enqueue_many(tasks.noop_task, [((1,), {}), ((deep,), {})])

    assert task_count(backend) == 0


def test_enqueue_many_refuses_unique_tasks_and_bad_chunks(backend: RedisBackend) -> None:
    with pytest.raises(InvalidTask, match="unique"):
        enqueue_many(tasks.unique_task, [((1,), {})])
    for chunk in (0, 2001, 1.5, True):
        with pytest.raises(ValueError, match="chunk"):
            enqueue_many(tasks.noop_task, [((1,), {})], chunk=chunk)
    assert enqueue_many(tasks.noop_task, []) == []
    assert task_count(backend) == 0


def test_a_chunk_sent_again_stores_nothing_twice(backend: RedisBackend) -> None:
    store = backend.store
    shared = codec.shared_fields(
        task_path=tasks.noop_task.module_path,
        queue="default",
        priority=0,
        backend="default",
        run_after=None,
        enqueued_micros=1,
    )
    call = store.enqueue_many_call("default", 0, None, shared, [("id-1", "[]", "{}"), ("id-2", "[1]", "{}")])

    assert store.run([call]) == [2]
    assert store.run([call]) == [0]
    assert ready_ids(backend) == ["id-1", "id-2"]


def test_a_queue_key_of_the_wrong_type_fails_the_chunk_with_nothing_written(
    backend: RedisBackend, enqueued: list[TaskResult]
) -> None:
    backend.store.call(lambda c: c.set(backend.keys.ready("default"), "x"))

    with pytest.raises(PartiallyEnqueued, match="WRONGTYPE") as caught:
        enqueue_many(tasks.noop_task, [((i,), {}) for i in range(10)])

    assert caught.value.enqueued == []
    assert enqueued == []
    assert task_count(backend) == 0


def test_aenqueue_many_stores_and_signals(backend: RedisBackend, enqueued: list[TaskResult]) -> None:
    results = asyncio.run(aenqueue_many(tasks.noop_task, [((i,), {}) for i in range(1100)], chunk=200))

    assert len(results) == 1100
    assert enqueued == results
    assert ready_ids(backend) == [r.id for r in results]


def test_enqueue_many_on_commit_waits_for_the_commit(
    configure_tasks: Callable[..., Any], enqueued: list[TaskResult]
) -> None:
    with configure_tasks(ENQUEUE_ON_COMMIT=True):
        backend = task_backends["default"]
        with transaction.atomic():
            results = enqueue_many(tasks.noop_task, [((i,), {}) for i in range(3)])
            assert task_count(backend) == 0

        assert enqueued == results
        assert ready_ids(backend) == [r.id for r in results]


def test_enqueue_many_sends_a_trip_again_after_redis_restarts(
    own_redis: Any, enqueued: list[TaskResult]
) -> None:
    # Given a backend whose connection Redis dropped by restarting (scripts flushed too)
    backend = RedisBackend(
        "default",
        {
            "QUEUES": [],
            "OPTIONS": {"URL": own_redis.url, "KEY_PREFIX": "bulk", "ALLOWED_TASK_MODULES": ["tests"]},
        },
    )
    try:
        enqueue_many_on = backend.enqueue_many
        enqueue_many_on(tasks.noop_task, [((0,), {})])
        own_redis.restart()

        # When it enqueues many again
        results = enqueue_many_on(tasks.noop_task, [((i,), {}) for i in range(5000)], chunk=100)

        # Then every task is stored and signalled once
        assert len(enqueued) == 5001
        assert ready_ids(backend) == [r.id for r in results]
    finally:
        backend.store.close()
