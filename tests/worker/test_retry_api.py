"""Django's proposed retry and timeout API (new-features #142, #144), run by a real worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conveyor.ops import Operator
from django.tasks import TaskResultStatus, default_task_backend
from django.test import override_settings

from tests import tasks
from tests.conftest import tasks_setting

from . import worker_tasks
from .conftest import BatchRunner, WorkerFactory, lines_of, real_backend, wait_finished, wait_until, zscore

BACKOFF_FAILED = "conveyor.exceptions.BackoffFailed"
TIMEOUT = "conveyor.exceptions.TaskTimeout"


@pytest.fixture
def tasks_entry() -> dict[str, Any]:
    """Return extra top-level keys of TASKS["default"] (a test parametrizes it)."""
    return {}


@pytest.fixture
def backend(redis_url: str, prefix: str, tasks_entry: dict[str, Any]) -> Iterator[object]:
    """Configure TASKS on an isolated prefix, with this test's top-level keys (MAX_ATTEMPTS, BACKOFF)."""
    setting = tasks_setting(redis_url, prefix)
    setting["default"].update(tasks_entry)  # type: ignore[attr-defined]
    with override_settings(TASKS=setting):
        yield default_task_backend
        default_task_backend.store.close()


def seen_by_backoff(path: Path) -> list[dict[str, Any]]:
    """Return what each backoff call saw."""
    return [json.loads(line) for line in lines_of(path)]


def test_a_backoff_decides_the_delay_of_the_retry(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """The returned seconds are the delay, without jitter: the retry is due exactly then."""
    b = real_backend()
    seen = tmp_path / "seen.jsonl"
    result = worker_tasks.fails_with_chosen_delay.enqueue(45, seen=str(seen))
    before_ms = b.store.server_time_ms()

    run_batch()

    after_ms = b.store.server_time_ms()
    due = zscore(b, b.keys.scheduled("default"), result.id)
    assert due is not None
    assert before_ms + 45_000 <= due <= after_ms + 45_000
    stored = b.get_result(result.id)
    assert stored.status == TaskResultStatus.READY
    assert stored.attempts == 1
    assert [e.exception_class_path for e in stored.errors] == ["builtins.RuntimeError"]
    # The backoff saw the raw exception and the result as the failed attempt left it.
    assert seen_by_backoff(seen) == [
        {
            "exception": "RuntimeError",
            "message": "fails; backoff gets 45",
            "status": "FAILED",
            "attempts": 1,
            "errors": ["builtins.RuntimeError"],
            "args": [45],
            "finished": True,
            "id": result.id,
        }
    ]


def test_a_fractional_delay_counts_to_the_millisecond(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """A float delay is kept to the millisecond; the proposal's int is one case of it."""
    b = real_backend()
    result = worker_tasks.fails_with_chosen_delay.enqueue(90.5, seen=str(tmp_path / "seen.jsonl"))
    before_ms = b.store.server_time_ms()

    run_batch()

    due = zscore(b, b.keys.scheduled("default"), result.id)
    assert due is not None
    assert before_ms + 90_500 <= due <= b.store.server_time_ms() + 90_500


def test_a_backoff_returning_none_fails_the_task_with_attempts_left(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """None means "do not retry": FAILED after one attempt, with the task's one error."""
    b = real_backend()
    seen = tmp_path / "seen.jsonl"
    result = worker_tasks.fails_with_chosen_delay.enqueue(None, seen=str(seen))

    worker = run_batch()

    stored = b.get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.attempts == 1
    assert [e.exception_class_path for e in stored.errors] == ["builtins.RuntimeError"]
    assert zscore(b, b.keys.scheduled("default"), result.id) is None
    assert len(seen_by_backoff(seen)) == 1
    assert worker.metrics.value("failed", "default") == 1
    assert worker.metrics.value("retried", "default") == 0


def test_a_raising_backoff_fails_the_task_with_both_errors(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """The task's error, then BackoffFailed chained to what the backoff raised; no retry."""
    b = real_backend()
    result = worker_tasks.fails_with_raising_backoff.enqueue(seen=str(tmp_path / "seen.jsonl"))

    run_batch()

    stored = b.get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.attempts == 1
    assert [e.exception_class_path for e in stored.errors] == ["builtins.RuntimeError", BACKOFF_FAILED]
    assert "the task's own failure" in stored.errors[0].traceback
    assert "KeyError: 'backoff broke'" in stored.errors[1].traceback
    assert "raising_backoff raised KeyError('backoff broke')" in stored.errors[1].traceback


@pytest.mark.parametrize("bad", ["soon", -1, True, [5], 10**9])
def test_a_backoff_returning_a_bad_value_fails_the_task_with_both_errors(
    backend: object, run_batch: BatchRunner, tmp_path: Path, bad: Any
) -> None:
    """Anything but seconds (0 to a year) or None is recorded as BackoffFailed; no retry."""
    b = real_backend()
    result = worker_tasks.fails_with_chosen_delay.enqueue(bad, seen=str(tmp_path / "seen.jsonl"))

    run_batch()

    stored = b.get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in stored.errors] == ["builtins.RuntimeError", BACKOFF_FAILED]
    assert f"returned {bad!r}" in stored.errors[1].traceback


def test_a_timed_out_sync_task_is_retried_and_its_backoff_sees_task_timeout(
    backend: object, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """#144: a timeout is a failure like any other, retried while attempts remain."""
    b = real_backend()
    seen = tmp_path / "seen.jsonl"
    marker = tmp_path / "ran.txt"
    result = worker_tasks.times_out_first_time.enqueue(str(marker), seen=str(seen))

    handle = make_worker(concurrency=1).start()
    finished = wait_finished(b, result.id)
    assert handle.stop() == 0

    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.return_value == "second time lucky"
    assert finished.attempts == 2
    assert [e.exception_class_path for e in finished.errors] == [TIMEOUT]
    (call,) = seen_by_backoff(seen)
    assert (call["exception"], call["status"], call["attempts"], call["errors"]) == (
        "TaskTimeout",
        "FAILED",
        1,
        [TIMEOUT],
    )
    assert lines_of(marker) == ["ran", "ran"]


def test_a_timed_out_coroutine_is_retried(
    backend: object, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The same for a coroutine task: its backoff runs on the worker's event loop."""
    b = real_backend()
    seen = tmp_path / "seen.jsonl"
    result = worker_tasks.async_times_out_first_time.enqueue(str(tmp_path / "ran.txt"), seen=str(seen))

    handle = make_worker(concurrency=1).start()
    finished = wait_finished(b, result.id)
    assert handle.stop() == 0

    assert finished.status == TaskResultStatus.SUCCESSFUL
    assert finished.attempts == 2
    assert [e.exception_class_path for e in finished.errors] == [TIMEOUT]
    assert [c["exception"] for c in seen_by_backoff(seen)] == ["TaskTimeout"]


def test_a_cancelled_task_is_never_retried_whatever_its_backoff_says(
    backend: object, make_worker: WorkerFactory, tmp_path: Path
) -> None:
    """An operator's cancel fails the task at once; its backoff is not even asked."""
    b = real_backend()
    seen = tmp_path / "seen.jsonl"
    scratch = tmp_path / "ran.txt"
    running = worker_tasks.loop_until_cancelled.enqueue(str(scratch), seen=str(seen))
    handle = make_worker(concurrency=1, lease=60.0).start()
    wait_until(lambda: lines_of(scratch) == ["start"], what="the task to start")

    assert Operator(b).cancel([running.id])[running.id] == "requested"

    finished = wait_finished(b, running.id)
    assert handle.stop() == 0
    assert finished.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in finished.errors] == ["conveyor.exceptions.TaskCancelled"]
    assert finished.attempts == 1
    assert seen_by_backoff(seen) == []


BACKEND_DEFAULTS = {"MAX_ATTEMPTS": 3, "BACKOFF": lambda task_result: 0}  # the proposal's settings example


@pytest.mark.parametrize("tasks_entry", [BACKEND_DEFAULTS])
def test_backend_max_attempts_and_backoff_apply_to_a_plain_django_task(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """A django.tasks.Task (not a ConveyorTask) gets MAX_ATTEMPTS and BACKOFF from TASKS["default"]."""
    b = real_backend()
    assert type(worker_tasks.plain_always_fails).__name__ == "Task"
    scratch = tmp_path / "ran.txt"
    result = worker_tasks.plain_always_fails.enqueue(str(scratch))

    run_batch()

    stored = b.get_result(result.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.attempts == 3
    assert [e.exception_class_path for e in stored.errors] == ["builtins.RuntimeError"] * 3
    assert lines_of(scratch) == ["ran"] * 3


@pytest.mark.parametrize("tasks_entry", [BACKEND_DEFAULTS])
def test_backend_defaults_fill_only_what_a_task_leaves_unset(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """A ConveyorTask without max_attempts gets MAX_ATTEMPTS; one with its own keeps it."""
    b = real_backend()
    scratch = tmp_path / "ran.txt"
    unset = worker_tasks.conveyor_task_always_fails.enqueue(str(scratch))
    own = tasks.always_fails.enqueue()  # max_attempts=2, retry_backoff=0.0

    run_batch()

    assert b.get_result(unset.id).attempts == 3
    assert b.get_result(own.id).attempts == 2
    assert b.get_result(own.id).status == TaskResultStatus.FAILED


@pytest.mark.parametrize("tasks_entry", [{"MAX_ATTEMPTS": 2}])
def test_without_backoff_retries_keep_conveyors_exponential_backoff(
    backend: object, run_batch: BatchRunner, tmp_path: Path
) -> None:
    """MAX_ATTEMPTS alone: the retry waits retry_backoff's default, 0.5 to 1 s after the failure."""
    b = real_backend()
    result = worker_tasks.conveyor_task_always_fails.enqueue(str(tmp_path / "ran.txt"))
    before_ms = b.store.server_time_ms()

    run_batch()

    due = zscore(b, b.keys.scheduled("default"), result.id)
    if due is None:  # the batch worker may have run the retry itself once it came due
        assert b.get_result(result.id).attempts == 2
        return
    assert before_ms + 500 <= due <= b.store.server_time_ms() + 1_000
