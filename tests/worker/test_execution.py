"""Running one task the way Django's ImmediateBackend does: signals, results, retries, timeouts."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conveyor import RedisBackend
from django.tasks import TaskResultStatus
from django.tasks.base import TaskResult
from django.tasks.signals import task_finished, task_started

from tests import tasks

from . import worker_tasks
from .conftest import BatchRunner, WorkerFactory, lines_of, real_backend, status_of, wait_finished, wait_until


@pytest.fixture
def signals() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Record task_started/task_finished from RedisBackend with a snapshot of the result then."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def snapshot(name: str) -> Any:
        def receiver(sender: type, task_result: TaskResult, **kwargs: object) -> None:
            if sender is RedisBackend:
                seen.append(
                    (
                        name,
                        {
                            "id": task_result.id,
                            "status": task_result.status,
                            "started_at": task_result.started_at,
                            "last_attempted_at": task_result.last_attempted_at,
                            "finished_at": task_result.finished_at,
                            "worker_ids": list(task_result.worker_ids),
                            "attempts": task_result.attempts,
                        },
                    )
                )

        return receiver

    started, finished = snapshot("started"), snapshot("finished")
    task_started.connect(started, dispatch_uid="worker-tests-started")
    task_finished.connect(finished, dispatch_uid="worker-tests-finished")
    yield seen
    task_started.disconnect(dispatch_uid="worker-tests-started")
    task_finished.disconnect(dispatch_uid="worker-tests-finished")


# -- Django semantics ---------------------------------------------------------------


def test_signals_carry_the_running_then_the_final_state(
    backend: object, run_batch: BatchRunner, signals: list[tuple[str, dict[str, Any]]]
) -> None:
    """task_started sees RUNNING with start times and this worker; task_finished fires once at the end."""
    result = tasks.calculate_meaning_of_life.enqueue()

    worker = run_batch()

    mine = [(name, snap) for name, snap in signals if snap["id"] == result.id]
    assert [name for name, _ in mine] == ["started", "finished"]
    started, finished = mine[0][1], mine[1][1]
    assert started["status"] == TaskResultStatus.RUNNING
    assert started["started_at"] is not None
    assert started["last_attempted_at"] == started["started_at"]
    assert started["worker_ids"] == [worker.worker_id]
    assert finished["status"] == TaskResultStatus.SUCCESSFUL
    assert finished["finished_at"] >= started["started_at"]

    stored = real_backend().get_result(result.id)
    assert stored.return_value == 42
    assert stored.worker_ids == [worker.worker_id]
    assert stored.started_at == started["started_at"]


def test_task_finished_is_sent_once_after_the_last_retry(
    backend: object, run_batch: BatchRunner, signals: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    """A task that fails twice then succeeds is started three times and finished once."""
    result = tasks.flaky.enqueue(str(tmp_path / "count"), 2)

    run_batch()

    names = [name for name, snap in signals if snap["id"] == result.id]
    assert names == ["started", "started", "started", "finished"]
    assert [snap["attempts"] for name, snap in signals if name == "started"] == [1, 2, 3]


def test_task_context_attempt_counts_deliveries(backend: object, run_batch: BatchRunner) -> None:
    """TaskContext.attempt is 1 on the first run and 2 on the retry."""
    first = tasks.context_attempt.enqueue()
    retried = worker_tasks.fail_first_attempt.enqueue()

    run_batch()

    b = real_backend()
    assert b.get_result(first.id).return_value == 1
    result = b.get_result(retried.id)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 2
    assert [e.exception_class_path for e in result.errors] == ["builtins.RuntimeError"]


def test_coroutine_tasks_are_awaited(backend: object, run_batch: BatchRunner) -> None:
    """An async task's coroutine is awaited and its value stored."""
    result = tasks.async_echo.enqueue({"nested": [1, "two"]})

    run_batch()

    stored = real_backend().get_result(result.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.return_value == {"nested": [1, "two"]}


def test_results_are_readable_with_get_result_from_another_process_view(
    backend: object, run_batch: BatchRunner
) -> None:
    """The return value and arguments round-trip through Redis to get_result and refresh()."""
    result = tasks.echo.enqueue(1, "two", three=[3.0, None])

    run_batch()

    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"args": [1, "two"], "kwargs": {"three": [3.0, None]}}
    assert result.is_finished and result.finished_at is not None


def test_an_unserialisable_return_value_fails_the_task_with_type_error(
    backend: object, run_batch: BatchRunner
) -> None:
    """A return value JSON cannot hold is a TypeError, as in Django."""
    result = tasks.complex_return_value.enqueue()

    run_batch()

    stored = real_backend().get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in stored.errors] == ["builtins.TypeError"]


def test_system_exit_in_a_task_fails_it_and_the_worker_keeps_going(
    backend: object, run_batch: BatchRunner
) -> None:
    """SystemExit raised by a task is recorded like any error; the next task still runs."""
    exits = tasks.failing_task_system_exit.enqueue()
    after = tasks.calculate_meaning_of_life.enqueue()

    run_batch(concurrency=1)

    b = real_backend()
    failed = b.get_result(exits.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class_path == "builtins.SystemExit"
    assert "This Task failed due to SystemExit" in failed.errors[0].traceback
    assert b.get_result(after.id).return_value == 42


def test_a_raising_task_started_receiver_does_not_wedge_the_slot(
    backend: object, run_batch: BatchRunner
) -> None:
    """A task_started receiver that raises fails that task; the slot and lease are not leaked."""

    def explode(sender: type, task_result: TaskResult, **kwargs: object) -> None:
        if task_result.task.name in ("calculate_meaning_of_life", "async_echo"):
            raise RuntimeError("receiver exploded")

    task_started.connect(explode, dispatch_uid="worker-tests-explode")
    try:
        bad = tasks.calculate_meaning_of_life.enqueue()
        bad_async = tasks.async_echo.enqueue("never")
        good = tasks.echo.enqueue("still runs")
        run_batch(concurrency=1, timeout=15)
    finally:
        task_started.disconnect(dispatch_uid="worker-tests-explode")

    b = real_backend()
    for task_id in (bad.id, bad_async.id):
        failed = b.get_result(task_id)
        assert failed.status == TaskResultStatus.FAILED
        assert failed.errors[-1].exception_class_path == "builtins.RuntimeError"
        assert "receiver exploded" in failed.errors[-1].traceback
    assert b.get_result(good.id).status == TaskResultStatus.SUCCESSFUL
    assert b.store.call(lambda c: c.zcard(b.keys.running("default"))) == 0


def test_a_task_claimed_as_the_drain_begins_is_run_not_stranded(
    backend: object, make_worker: WorkerFactory
) -> None:
    """Given a record that also claims the next task, a stop during that round trip still runs it."""
    b = real_backend()
    first = tasks.calculate_meaning_of_life.enqueue()
    second = tasks.calculate_meaning_of_life.enqueue()
    third = tasks.calculate_meaning_of_life.enqueue()
    handle = make_worker(concurrency=1, lease=30.0)
    send = handle.store.run

    def stop_during_the_round_trip(calls: Any) -> Any:
        replies = send(calls)
        if len(calls) == 2:  # the outcome of the first task and the claim of the second
            handle.worker.request_stop()  # SIGTERM lands while the reply is on its way
        return replies

    handle.store.run = stop_during_the_round_trip  # type: ignore[method-assign]
    # When: the stop arrives while the second task is being claimed.
    handle.start()
    assert handle.join() == 0

    # Then: the second task was claimed before the stop, so it ran before run() returned
    # (not left RUNNING until its 30 s lease expires); the third was never claimed.
    assert b.get_result(first.id).status == TaskResultStatus.SUCCESSFUL
    claimed = b.get_result(second.id)
    assert claimed.status == TaskResultStatus.SUCCESSFUL
    assert claimed.attempts == 1
    assert status_of(b, third.id) == "READY"
    assert b.get_result(third.id).attempts == 0


def test_max_tasks_waits_for_a_claimed_task_that_has_not_started_yet(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """Given --max-tasks 1, a task claimed but still being prepared is run, not cut off by a drain."""
    b = real_backend()
    result = tasks.slow_append_line.enqueue(str(scratch), "done", 0.5)
    handle = make_worker(max_tasks=1, shutdown_timeout=0.2)
    executor = handle.worker.executor
    prepare = executor.prepare

    def slow_prepare(claimed: Any) -> Any:
        time.sleep(0.5)  # a slow import of the task's module: claimed, not yet running
        return prepare(claimed)

    executor.prepare = slow_prepare  # type: ignore[method-assign]
    handle.start()
    assert handle.join() == 0

    assert b.get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    assert lines_of(scratch) == ["done"]


# -- retries ------------------------------------------------------------------------


def test_a_flaky_task_succeeds_on_its_third_attempt(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """max_attempts=3: two failures are retried and the third attempt's value is stored."""
    result = tasks.flaky.enqueue(str(tmp_path / "count"), 2)

    worker = run_batch()

    stored = real_backend().get_result(result.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.return_value == 3
    assert stored.attempts == 3
    assert stored.worker_ids == [worker.worker_id] * 3
    assert [e.exception_class_path for e in stored.errors] == ["builtins.RuntimeError"] * 2
    assert "flaky failure 1" in stored.errors[0].traceback
    assert worker.metrics.value("retried", "default") == 2
    assert worker.metrics.value("succeeded", "default") == 1


def test_an_always_failing_task_fails_after_max_attempts_with_one_error_each(
    backend: object, run_batch: BatchRunner
) -> None:
    """max_attempts=2: two attempts, two errors, then FAILED; attempts == workers == errors."""
    result = tasks.always_fails.enqueue()

    worker = run_batch()

    stored = real_backend().get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.attempts == 2
    assert len(stored.worker_ids) == len(stored.errors) == stored.attempts
    assert all(e.exception_class_path == "builtins.RuntimeError" for e in stored.errors)
    assert worker.metrics.value("failed", "default") == 1
    assert worker.metrics.value("retried", "default") == 1


def test_a_retry_waits_in_the_schedule_for_its_backoff(backend: object, run_batch: BatchRunner) -> None:
    """After a failed attempt with attempts left, the task is READY in the scheduled set, due later."""
    b = real_backend()
    result = worker_tasks.fails_with_backoff.enqueue()
    before_ms = b.store.server_time_ms()

    run_batch()

    assert b.store.call(lambda c: c.hget(b.keys.task(result.id), "status")) == b"READY"
    due = b.store.call(lambda c: c.zscore(b.keys.scheduled("default"), result.id))
    # retry_backoff=60 with jitter: due between 30 and 60 seconds after the failure.
    assert due is not None
    assert before_ms + 30_000 <= due <= b.store.server_time_ms() + 60_000
    assert b.store.call(lambda c: c.zscore(b.keys.ready("default"), result.id)) is None
    stored = b.get_result(result.id)
    assert stored.attempts == 1 and len(stored.errors) == 1


# -- timeouts -----------------------------------------------------------------------


def test_a_sync_task_past_its_timeout_fails_and_frees_its_slot(
    backend: object, make_worker: WorkerFactory
) -> None:
    """Given one slot, a task stuck in time.sleep past its timeout is FAILED and the next task runs."""
    b = real_backend()
    stuck = tasks.sleeps_past_timeout.enqueue(4)
    after = tasks.calculate_meaning_of_life.enqueue()

    worker = make_worker(concurrency=1).start()
    failed = wait_finished(b, stuck.id)
    # The stuck thread is still sleeping here (it sleeps 4 s), yet its slot was replaced.
    assert wait_finished(b, after.id).return_value == 42
    assert worker.worker.alive(), "the worker must stay live while an abandoned thread sleeps"
    assert worker.stop() == 0

    assert failed.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in failed.errors] == ["conveyor.exceptions.TaskTimeout"]
    assert "exceeded its timeout of 0.5s" in failed.errors[0].traceback


def test_a_timeout_interrupt_never_hits_the_next_task_on_the_same_thread(
    backend: object, make_worker: WorkerFactory
) -> None:
    """Given a task that ends just after its timeout fired, the interrupt must not land in the next task."""
    b = real_backend()
    late = tasks.sleeps_past_timeout.enqueue(0.7)  # timeout 0.5 s, returns at 0.7 s
    innocent = tasks.sleep_for.enqueue(1.0)  # no timeout at all

    handle = make_worker(concurrency=1)
    executor = handle.worker.executor
    where = executor.where

    def slow_where(attempt: Any) -> str:
        # Widen the window between deciding the timeout and interrupting the thread, as a
        # slow stack capture would: the late task returns inside it.
        text = where(attempt)
        time.sleep(0.5)
        return text

    executor.where = slow_where  # type: ignore[method-assign]
    # When: the first task times out, then returns on its own while the timeout is recorded,
    # and its thread goes on to the next task.
    handle.start()
    timed_out = wait_finished(b, late.id)
    result = wait_finished(b, innocent.id)
    assert handle.stop() == 0

    # Then: only the late task failed; the next one was not interrupted.
    assert [e.exception_class_path for e in timed_out.errors] == ["conveyor.exceptions.TaskTimeout"]
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors


def test_more_abandoned_threads_than_slots_make_the_worker_not_live(
    backend: object, make_worker: WorkerFactory
) -> None:
    """Given one slot, two tasks stuck in C calls past their timeouts leak two threads: not live."""
    b = real_backend()
    stuck = [tasks.sleeps_past_timeout.enqueue(8) for _ in range(2)]

    worker = make_worker(concurrency=1).start()
    for r in stuck:
        wait_finished(b, r.id)

    assert not worker.worker.alive()
    assert worker.stop() == 0


def test_a_python_loop_past_its_timeout_is_interrupted(
    backend: object, make_worker: WorkerFactory, scratch: Path
) -> None:
    """A task running Python code past its timeout gets TaskTimeout raised inside it and stops."""
    b = real_backend()
    spinning = worker_tasks.spins_past_timeout.enqueue(str(scratch))

    worker = make_worker(concurrency=1).start()
    failed = wait_finished(b, spinning.id)
    after = tasks.calculate_meaning_of_life.enqueue()
    assert wait_finished(b, after.id).return_value == 42
    # The loop would run for 20 s; the TaskTimeout raised inside it ends it early.
    wait_until(lambda: lines_of(scratch), what="the task body to end")
    assert worker.stop() == 0

    assert failed.errors[-1].exception_class_path == "conveyor.exceptions.TaskTimeout"
    assert lines_of(scratch) == ["interrupted by TaskTimeout"]


def test_an_async_task_past_its_timeout_fails_with_task_timeout(
    backend: object, run_batch: BatchRunner
) -> None:
    """A coroutine task past its timeout is cancelled and FAILED with TaskTimeout."""
    result = tasks.async_sleeps_past_timeout.enqueue(10)
    after = tasks.async_echo.enqueue("after")

    run_batch(concurrency=1, timeout=15)

    b = real_backend()
    failed = b.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in failed.errors] == ["conveyor.exceptions.TaskTimeout"]
    assert b.get_result(after.id).return_value == "after"


# -- concurrency --------------------------------------------------------------------


def test_four_slots_run_four_tasks_at_the_same_time(backend: object, run_batch: BatchRunner) -> None:
    """With concurrency 4 the bodies of four sleeping tasks overlap (compared by their own clocks)."""
    results = [worker_tasks.record_interval.enqueue(1.0) for _ in range(4)]

    run_batch(concurrency=4)

    b = real_backend()
    intervals = [b.get_result(r.id).return_value for r in results]
    latest_start = max(start for start, _ in intervals)
    earliest_end = min(end for _, end in intervals)
    assert latest_start < earliest_end, f"the four task bodies did not overlap: {intervals}"


def test_one_slot_runs_tasks_one_after_another(backend: object, run_batch: BatchRunner) -> None:
    """With concurrency 1 no two task bodies overlap."""
    results = [worker_tasks.record_interval.enqueue(0.2) for _ in range(3)]

    run_batch(concurrency=1)

    b = real_backend()
    intervals = sorted(b.get_result(r.id).return_value for r in results)
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start


# -- what the worker refuses to run -------------------------------------------------

BIG = "x" * (1_048_576 + 10)
BAD_RECORDS: dict[str, tuple[dict[str, str] | None, str]] = {
    # name: (changes to a good record, None to drop a field by name in the reason; reason fragment)
    "malformed JSON args": ({"args": "[1, 2"}, "field 'args' is not valid JSON"),
    "args not a list": ({"args": '{"a": 1}'}, "field 'args' is not a JSON list"),
    "kwargs not an object": ({"kwargs": "[]"}, "field 'kwargs' is not a JSON dict"),
    "unknown version": ({"v": "99"}, "unknown record version '99'"),
    "priority not a number": ({"priority": "high"}, "cannot be decoded"),
    "oversized args": ({"args": json.dumps([BIG])}, "exceeds MAX_PAYLOAD_BYTES=1048576"),
    "not a Task": ({"task": "tests.tasks.not_a_task"}, "'tests.tasks.not_a_task' is not a Task"),
    "os.system": ({"task": "os.system"}, "'os.system' is not under an allowed module"),
    "subprocess.run": ({"task": "subprocess.run"}, "'subprocess.run' is not under an allowed module"),
    "module raises on import": ({"task": "tests.worker.broken_module.run"}, "fails at import time"),
    "unknown backend alias": ({"backend": "nope"}, "no longer valid"),
    "unknown status": ({"status": "EXPLODED"}, "unknown status 'EXPLODED'"),
    "priority out of range": ({"priority": "500"}, "no longer valid"),
}
MISSING: dict[str, tuple[tuple[str, ...], str]] = {
    "missing task path": (("task",), "field 'task' is missing"),
    "missing version": (("v",), "field 'v' is missing"),
    "truncated record": (("queue", "priority", "backend", "args", "kwargs"), "is missing"),
    "missing status": (("status",), "field 'status' is missing"),
}


def test_bad_records_fail_with_rejected_task_and_the_worker_keeps_going(
    backend: object, run_batch: BatchRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad record ends FAILED with RejectedTask naming why; nothing runs; a good task still does."""
    from .conftest import good_record, plant

    b = real_backend()
    planted: dict[str, tuple[str, str]] = {}
    for name, (changes, reason) in BAD_RECORDS.items():
        planted[name] = (plant(b, good_record(**(changes or {})), priority=10), reason)
    for name, (dropped, reason) in MISSING.items():
        fields = {k: v for k, v in good_record().items() if k not in dropped}
        planted[name] = (plant(b, fields, priority=10), reason)
    good = tasks.calculate_meaning_of_life.enqueue()  # priority 0: runs after every bad one

    worker = run_batch(concurrency=1)

    wrong = []
    for name, (task_id, reason) in planted.items():
        raw = b.store.get(task_id)
        errors = json.loads(raw.get(b"errors", b"[]"))
        last = errors[-1] if errors else {}
        if (
            raw.get(b"status") != b"FAILED"
            or last.get("exception_class_path") != "conveyor.exceptions.RejectedTask"
            or reason not in last.get("traceback", "")
        ):
            wrong.append(f"{name}: status={raw.get(b'status')!r} error={last}")
    assert not wrong, "\n".join(wrong)
    assert b.get_result(good.id).return_value == 42
    assert worker.metrics.value("failed", "default") == len(planted)
    assert b.store.call(lambda c: c.zcard(b.keys.running("default"))) == 0


def test_a_path_outside_the_allow_list_is_refused_before_anything_is_imported(
    backend: object, run_batch: BatchRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The allow-list is checked on the path text: a refused module is never imported."""
    import sys

    from .conftest import good_record, plant

    marker = tmp_path / "imported"
    monkeypatch.setenv("CONVEYOR_TEST_MARKER", str(marker))
    b = real_backend()
    evil = plant(b, good_record("tests.worker.evil_module.run"))
    lookalike = plant(b, good_record("tests.tasksevil.run"))  # a prefix of the text, not a module
    allowed = tasks.calculate_meaning_of_life.enqueue()

    run_batch(allowed=("tests.tasks",))

    assert not marker.exists()
    assert "tests.worker.evil_module" not in sys.modules
    for task_id in (evil, lookalike):
        stored = b.store.get(task_id)
        assert stored[b"status"] == b"FAILED"
        assert b"not under an allowed module (tests.tasks)" in stored[b"errors"]
    assert b.get_result(allowed.id).return_value == 42


def test_default_allowed_modules_are_installed_apps_less_django() -> None:
    """Without CONVEYOR_ALLOWED_TASK_MODULES, tasks may come from the project's own apps only.

    (No django.contrib.auth here: installing it registers system checks for the whole session.)
    """
    from conveyor.options import parse_options
    from django.test import override_settings

    backend = RedisBackend("bare", {"OPTIONS": {}})  # no ALLOWED_TASK_MODULES: the default applies
    assert backend.settings == parse_options({})[0]
    with override_settings(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.humanize", "tests.worker"]
    ):
        assert backend.allowed_task_modules() == ("tests.worker",)
    with override_settings(INSTALLED_APPS=[]):
        assert backend.allowed_task_modules() == ()


def test_wait_until_helper_fails_loudly() -> None:
    """The polling helper raises (does not hang) when its condition never holds."""
    with pytest.raises(AssertionError, match="timed out"):
        wait_until(lambda: False, 0.1, "never")


def test_a_batch_does_not_end_while_a_retry_was_scheduled_behind_its_drained_check(
    backend: object, make_worker: WorkerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor that claims, fails and reschedules between "drained" and "all idle" keeps the batch going.

    The interleaving is forced: the first time the batch finds nothing due, a task is enqueued
    and run to its first failure (a zero-backoff retry now due) before the answer comes back.
    """
    b = real_backend()
    warm = tasks.noop_task.enqueue()  # so the queue is known before the check
    worker = make_worker(batch=True, concurrency=1)
    maintenance = worker.worker.maintenance
    original = maintenance.drained
    counter = tmp_path / "count"
    late: list[TaskResult[Any, Any]] = []

    def drained_then_a_retry_lands(queues: Any) -> bool:
        answer = original(queues)
        if answer and not late:
            late.append(tasks.flaky.enqueue(str(counter), 1))
            worker.worker.wakeups.announce()
            wait_until(lambda: counter.exists() and status_of(b, late[0].id) == "READY", what="first failure")
            wait_until(worker.worker._all_idle, what="the processor idle again")
        return answer

    monkeypatch.setattr(maintenance, "drained", drained_then_a_retry_lands)

    assert worker.start().join() == 0

    assert b.get_result(warm.id).status == TaskResultStatus.SUCCESSFUL
    stored = b.get_result(late[0].id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.attempts == 2
