"""Which task runs next: priority across queues, FIFO within a priority, run_after, promotion races."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor import codec
from conveyor.store import Store
from django.tasks import TaskResultStatus

from tests import tasks

from .conftest import (
    BatchRunner,
    WorkerFactory,
    lines_of,
    real_backend,
    status_of,
    wait_finished,
    wait_until,
)


def test_priority_order_is_exact_across_queues_and_fifo_within_a_priority(
    backend: object, run_batch: BatchRunner, scratch: Path
) -> None:
    """One slot runs tasks highest priority first whatever their queue, in enqueue order on ties."""
    plan = [
        ("a", 0, "a0-1"),
        ("b", 10, "b10-1"),
        ("a", -5, "a-5-1"),
        ("b", 0, "b0-1"),
        ("a", 10, "a10-1"),
        ("a", 100, "a100"),
        ("b", -100, "b-100"),
        ("a", 0, "a0-2"),
        ("b", 10, "b10-2"),
        ("a", -5, "a-5-2"),
        ("b", 0, "b0-2"),
    ]
    for queue, priority, label in plan:
        tasks.append_line.using(queue_name=queue, priority=priority).enqueue(str(scratch), label)

    run_batch(concurrency=1)

    # sorted() is stable: equal priorities keep the order they were enqueued in.
    expected = [label for _, _, label in sorted(plan, key=lambda p: -p[1])]
    assert lines_of(scratch) == expected


def test_a_delayed_task_is_not_run_before_run_after_and_runs_once_due(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """A task with run_after in the future waits in the schedule, then runs once it is due."""
    run_after = datetime.now(UTC) + timedelta(seconds=2)
    delayed = tasks.append_line.using(run_after=run_after).enqueue(str(scratch), "delayed")
    store = real_backend()
    assert store.store.call(lambda c: c.zscore(store.keys.scheduled("default"), delayed.id)) is not None

    worker = make_worker(concurrency=2).start()
    now_task = tasks.append_line.enqueue(str(scratch), "now")
    wait_finished(store, now_task.id)
    # Read the status first, then the clock: if the clock is still before run_after, the
    # status we read cannot be anything but READY.
    while True:
        status = status_of(store, delayed.id)
        if datetime.now(UTC) >= run_after - timedelta(milliseconds=50):
            break
        assert status == "READY", "the delayed task was claimed before run_after"
        time.sleep(0.05)

    result = wait_finished(store, delayed.id)
    worker.stop()

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.started_at is not None and result.started_at >= run_after
    assert lines_of(scratch) == ["now", "delayed"]


def test_a_batch_worker_leaves_a_future_task_scheduled_and_exits(
    backend: object, run_batch: BatchRunner, scratch: Path
) -> None:
    """--batch drains what is due and exits 0 without waiting for tasks due later."""
    later = tasks.append_line.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue(
        str(scratch), "later"
    )
    now = tasks.append_line.enqueue(str(scratch), "now")

    run_batch()

    b = real_backend()
    assert status_of(b, now.id) == "SUCCESSFUL"
    assert status_of(b, later.id) == "READY"
    assert b.store.call(lambda c: c.zscore(b.keys.scheduled("default"), later.id)) is not None
    assert lines_of(scratch) == ["now"]


def test_ten_threads_promoting_at_once_make_each_due_task_ready_exactly_once(
    backend: object, run_batch: BatchRunner, scratch: Path
) -> None:
    """Given due tasks, when ten threads call promote at the same moment, each is promoted once."""
    b = real_backend()
    count = 40
    run_after = datetime.now(UTC) + timedelta(seconds=1)
    results = [
        tasks.append_line.using(run_after=run_after).enqueue(str(scratch), f"t{i}") for i in range(count)
    ]
    due_ms = codec.to_micros(run_after) // 1000
    wait_until(lambda: b.store.server_time_ms() > due_ms, what="the tasks to fall due")

    # Given: ten stores (ten connection pools) lined up behind a barrier.
    stores = [Store(b.settings, b.keys) for _ in range(10)]
    barrier = threading.Barrier(len(stores))
    promoted: list[int] = []

    def promote(store: Store) -> None:
        barrier.wait()
        promoted.append(store.promote(["default"], limit=1000).promoted)

    threads = [threading.Thread(target=promote, args=(s,)) for s in stores]
    # When: they all promote at once.
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()

    # Then: every task was promoted by exactly one of them, and is ready once.
    assert sum(promoted) == count
    ready = b.store.call(lambda c: c.zrange(b.keys.ready("default"), 0, -1))
    assert sorted(r.decode() for r in ready) == sorted(r.id for r in results)
    assert b.store.call(lambda c: c.zcard(b.keys.scheduled("default"))) == 0

    run_batch(concurrency=4)
    assert sorted(lines_of(scratch)) == sorted(f"t{i}" for i in range(count))
    assert all(b.get_result(r.id).attempts == 1 for r in results)


def test_workers_racing_to_promote_run_each_delayed_task_exactly_once(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Given five idle workers, when many delayed tasks fall due together, each runs exactly once."""
    b = real_backend()
    count = 30
    run_after = datetime.now(UTC) + timedelta(seconds=1.5)
    results = [
        tasks.append_line.using(run_after=run_after).enqueue(str(scratch), f"t{i}") for i in range(count)
    ]
    # Given: five workers, all waiting on the same schedule.
    workers = [make_worker(concurrency=2, lease=5.0).start() for _ in range(5)]

    # When: the tasks fall due, every worker promotes and claims.
    for r in results:
        wait_finished(b, r.id)
    for w in workers:
        assert w.stop() == 0

    # Then: each ran once, on one worker, in one attempt.
    assert sorted(lines_of(scratch)) == sorted(f"t{i}" for i in range(count))
    for r in results:
        result = b.get_result(r.id)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.attempts == 1
        assert result.errors == []


def test_a_worker_consumes_only_the_queues_it_is_given(
    backend: object, run_batch: BatchRunner, scratch: Path
) -> None:
    """--queues names queues; '*,-name' takes every queue but one."""
    from conveyor_worker.settings import QueueSelection

    b = real_backend()
    high = tasks.append_line.using(queue_name="high").enqueue(str(scratch), "high")
    low = tasks.append_line.using(queue_name="low").enqueue(str(scratch), "low")
    default = tasks.append_line.enqueue(str(scratch), "default")

    run_batch(queues=QueueSelection(names=("high",), all_queues=False))
    assert [status_of(b, r.id) for r in (high, low, default)] == ["SUCCESSFUL", "READY", "READY"]

    run_batch(queues=QueueSelection(excluded=frozenset({"low"})))
    assert [status_of(b, r.id) for r in (high, low, default)] == ["SUCCESSFUL", "READY", "SUCCESSFUL"]
    assert lines_of(scratch) == ["high", "default"]


def test_a_ready_id_without_a_record_is_skipped(
    backend: object, run_batch: BatchRunner, scratch: Path
) -> None:
    """An id left in a ready set after its record vanished is dropped; the next task runs."""
    b = real_backend()
    gone = tasks.append_line.enqueue(str(scratch), "gone")
    b.store.call(lambda c: c.delete(b.keys.task(gone.id)))
    after = tasks.append_line.enqueue(str(scratch), "after")

    run_batch()

    assert status_of(b, after.id) == "SUCCESSFUL"
    assert b.store.call(lambda c: c.zcard(b.keys.ready("default"))) == 0
    assert lines_of(scratch) == ["after"]
