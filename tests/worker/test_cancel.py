"""An operator's cancel: a running task stops, one claimed ahead never starts, a claim races it safely."""

from __future__ import annotations

import logging
import signal
from collections import Counter
from pathlib import Path

import pytest
from conveyor.ops import CancelOutcome, Operator
from django.tasks import TaskResultStatus

from tests import tasks

from . import worker_tasks
from .conftest import (
    DEADLINE,
    SpawnWorker,
    WorkerFactory,
    lines_of,
    real_backend,
    status_of,
    wait_finished,
    wait_until,
    zscore,
)

CANCELLED = "conveyor.exceptions.TaskCancelled"
# With a 60 s lease the worker renews every 20 s: a cancel that lands well before that came
# through the cancel counter, which the lease keeper reads every second.
LONG_LEASE = 60.0
SOON = 15.0


def cancel(task_id: str) -> CancelOutcome:
    """Cancel one task as an operator does; return what cancel.lua answered."""
    return Operator(real_backend()).cancel([task_id])[task_id]


def test_cancelling_a_running_sync_task_interrupts_it_fails_it_and_frees_its_slot(
    backend: object, make_worker: WorkerFactory, scratch: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync task in a Python loop, attempts left, is stopped with TaskCancelled: FAILED, not retried."""
    b = real_backend()
    running = worker_tasks.loop_until_stopped.enqueue(str(scratch), 120)  # max_attempts=3
    behind = tasks.noop_task.enqueue()

    # Given: the only slot runs a long task, another task waits behind it.
    handle = make_worker(concurrency=1, lease=LONG_LEASE).start()
    wait_until(lambda: lines_of(scratch) == ["start"], what="the task to start")

    # When: an operator cancels it.
    with caplog.at_level(logging.INFO, logger="conveyor_worker"):
        assert cancel(running.id) == "requested"
        finished = wait_finished(b, running.id, timeout=SOON)

        # Then: it is FAILED with TaskCancelled at once (never retried), interrupted in its loop,
        assert finished.status == TaskResultStatus.FAILED
        assert [e.exception_class_path for e in finished.errors] == [CANCELLED]
        assert "It was running:" in finished.errors[0].traceback  # where the interrupt found it
        assert finished.attempts == 1
        assert zscore(b, b.keys.scheduled("default"), running.id) is None
        assert zscore(b, b.keys.failed("default"), running.id) is not None
        wait_until(lambda: "interrupted by TaskCancelled" in lines_of(scratch), what="the interrupt")
        # and its slot runs the next task.
        assert wait_finished(b, behind.id).status == TaskResultStatus.SUCCESSFUL
        wait_until(lambda: handle.metrics.value("cancelled", "default") == 1, what="the cancelled counter")
    assert handle.metrics.value("failed", "default") == 1
    lines = [r for r in caplog.records if getattr(r, "event", None) == "task_cancelled"]
    assert [(r.task_id, r.queue, r.worker_id) for r in lines] == [  # type: ignore[attr-defined]
        (running.id, "default", handle.worker_id)
    ]
    assert handle.stop() == 0


def test_cancelling_a_running_coroutine_cancels_it(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """A coroutine task is cancelled at its await, FAILED with TaskCancelled, and the worker goes on."""
    b = real_backend()
    running = worker_tasks.async_loop_until_stopped.enqueue(str(scratch), 120)
    behind = tasks.noop_task_async.enqueue()
    handle = make_worker(concurrency=1, lease=LONG_LEASE).start()
    wait_until(lambda: lines_of(scratch) == ["start"], what="the coroutine to start")

    assert cancel(running.id) == "requested"

    finished = wait_finished(b, running.id, timeout=SOON)
    assert finished.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in finished.errors] == [CANCELLED]
    assert finished.attempts == 1
    assert lines_of(scratch) == ["start", "interrupted by CancelledError"]
    assert wait_finished(b, behind.id).status == TaskResultStatus.SUCCESSFUL
    assert handle.stop() == 0


def test_a_task_cancelled_while_claimed_ahead_fails_without_starting(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Given a task claimed ahead (RUNNING, not started), a cancel heard by a renewal fails it unstarted."""
    b = real_backend()
    result = worker_tasks.log_run.enqueue(str(scratch), "ahead", 0)
    handle = make_worker(concurrency=1)
    worker = handle.worker

    # Given: the worker has claimed the task ahead, under its lease, and not started it.
    worker.pipeline.exchange([], worker.slots.reserve(1), ("default",))
    assert [lease[0] for lease in worker.pipeline.ahead_leases()] == [result.id]
    assert status_of(b, result.id) == "RUNNING"

    # When: an operator cancels it and the lease keeper renews.
    assert cancel(result.id) == "requested"
    assert worker.leases.renew()

    # Then: when the worker takes it, it is recorded FAILED and never runs.
    handle.start()
    finished = wait_finished(b, result.id)
    assert finished.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in finished.errors] == [CANCELLED]
    assert "before it started" in finished.errors[0].traceback
    assert zscore(b, b.keys.failed("default"), result.id) is not None
    assert handle.stop() == 0
    assert lines_of(scratch) == []
    assert handle.metrics.value("started", "default") == 0


def test_claims_racing_cancels_give_every_task_exactly_one_outcome(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Given a worker claiming a backlog, when each task is cancelled meanwhile, each ends one way only.

    cancelled: FAILED with TaskCancelled and never ran. finished: SUCCESSFUL, ran once.
    requested: SUCCESSFUL having run once, or FAILED with TaskCancelled (stopped, or never started).
    """
    b = real_backend()
    count = 200
    # Mostly short tasks; every tenth runs long enough for a renewal to stop it mid-run.
    seconds = [1.5 if i % 10 == 0 else 0.01 for i in range(count)]
    results = [worker_tasks.log_run.enqueue(str(scratch), str(i), seconds[i]) for i in range(count)]
    handle = make_worker(concurrency=4).start()
    wait_until(lambda: lines_of(scratch), what="the worker to start on the backlog")

    # When: every task is cancelled, from the back of the queue, while the worker claims from the front.
    outcomes = {r.id: cancel(r.id) for r in reversed(results)}

    for r in results:
        wait_finished(b, r.id)
    assert handle.stop() == 0
    ran = Counter(line.split()[1] for line in lines_of(scratch) if line.startswith("start "))
    seen = Counter()
    for i, r in enumerate(results):
        finished = b.get_result(r.id)
        errors = [e.exception_class_path for e in finished.errors]
        outcome, runs = outcomes[r.id], ran[str(i)]
        seen[(outcome, finished.status.value)] += 1
        assert runs <= 1, (i, outcome, runs)
        if outcome == "cancelled":
            assert (finished.status, errors, runs) == (TaskResultStatus.FAILED, [CANCELLED], 0), i
        elif finished.status == TaskResultStatus.SUCCESSFUL:
            assert outcome in ("finished", "requested") and runs == 1 and errors == [], (i, outcome)
            assert zscore(b, b.keys.succeeded("default"), r.id) is not None
        else:
            assert outcome == "requested" and errors == [CANCELLED], (i, outcome, errors)
        if finished.status == TaskResultStatus.FAILED:
            assert zscore(b, b.keys.failed("default"), r.id) is not None
    print(f"\noutcomes: {dict(seen)}")


@pytest.mark.subprocess
def test_a_cancel_survives_the_death_of_the_worker_that_ran_the_task(
    backend: object, spawn_worker: SpawnWorker, scratch: Path
) -> None:
    """Given a cancel its worker never heard of (frozen, SIGKILLed), the next claim fails the task unrun."""
    b = real_backend()
    result = worker_tasks.log_run.enqueue(str(scratch), "once", 60)
    a = spawn_worker("--lease", "2", "--concurrency", "1")
    a.wait_event("task_started", task_id=result.id)

    # Given: worker A is frozen mid-task, the operator cancels, and A dies without hearing of it.
    a.send(signal.SIGSTOP)
    assert cancel(result.id) == "requested"
    a.kill()
    assert status_of(b, result.id) == "RUNNING"

    # When: worker B reclaims the task after A's lease and claims it.
    worker_b = spawn_worker("--lease", "2", "--concurrency", "1")
    finished = wait_finished(b, result.id)

    # Then: it is FAILED with TaskCancelled, without running again.
    assert finished.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in finished.errors] == ["conveyor.exceptions.WorkerLost", CANCELLED]
    assert finished.worker_ids == [a.worker_id, worker_b.worker_id]
    line = worker_b.wait_event("task_cancelled", task_id=result.id)
    assert line["worker_id"] == worker_b.worker_id and line["queue"] == "default"
    assert not worker_b.events("task_started")
    assert worker_b.wait_http("/metrics", 200).count('conveyor_tasks_cancelled_total{queue="default"} 1') == 1
    worker_b.send(signal.SIGTERM)
    assert worker_b.wait_exit(DEADLINE) == 0
    assert [line.split()[:2] for line in lines_of(scratch)] == [["start", "once"]]
