"""Django's own tasks test suite, ported to conveyor.RedisBackend where it applies to a queueing backend."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pickle
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from conveyor import ConveyorTask, RedisBackend
from django.db import transaction
from django.tasks import TaskResultStatus, default_task_backend, task, task_backends
from django.tasks.base import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, Task, TaskResult
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist, TaskResultMismatch

from tests import tasks

pytestmark = pytest.mark.usefixtures("backend")

BOTH_KINDS = pytest.mark.parametrize("task_", [tasks.noop_task, tasks.noop_task_async], ids=["sync", "async"])


def run[T](coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop."""
    return asyncio.run(coro)


def assert_same_result(got: TaskResult, expected: TaskResult) -> None:
    """Compare two results field by field (for a readable failure), then as a whole."""
    for f in dataclasses.fields(TaskResult):
        assert getattr(got, f.name) == getattr(expected, f.name), f.name
    assert got == expected


def assert_fresh(result: TaskResult, task_: Task, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Assert a result is a just-enqueued, never-run task."""
    assert result.status == TaskResultStatus.READY
    assert result.is_finished is False
    assert result.started_at is None
    assert result.last_attempted_at is None
    assert result.finished_at is None
    assert result.enqueued_at is not None
    with pytest.raises(ValueError, match="Task has not finished yet"):
        _ = result.return_value
    assert result.task == task_
    assert result.args == args
    assert result.kwargs == kwargs
    assert result.attempts == 0
    assert result.errors == []
    assert result.worker_ids == []


# -- backend wiring -------------------------------------------------------------


def test_using_correct_backend(redis_url: str, prefix: str) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_using_correct_backend."""  # noqa: E501
    assert default_task_backend == task_backends["default"]
    assert isinstance(task_backends["default"], RedisBackend)
    assert default_task_backend.alias == "default"
    assert default_task_backend.options == {
        "URL": redis_url,
        "KEY_PREFIX": prefix,
        "ALLOWED_TASK_MODULES": ["tests"],
    }


def test_capability_flags_are_all_true() -> None:
    """Declare every optional django.tasks feature: defer, async tasks, get_result, priority."""
    assert default_task_backend.supports_defer is True
    assert default_task_backend.supports_async_task is True
    assert default_task_backend.supports_get_result is True
    assert default_task_backend.supports_priority is True


def test_check() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_check."""
    assert default_task_backend.check() == []


def test_validate_disallowed_async_task() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_validate_disallowed_async_task."""  # noqa: E501
    with (
        mock.patch.multiple(default_task_backend, supports_async_task=False),
        pytest.raises(InvalidTask, match=re.escape("Backend does not support async Tasks.")),
    ):
        default_task_backend.validate_task(tasks.noop_task_async)


def test_init_does_no_network_io(closed_port: int) -> None:
    """Build a backend aimed at a closed port without touching the network (Django builds it at import)."""
    # Given a URL where nothing listens, construction must neither fail nor wait.
    with mock.patch("socket.socket.connect", side_effect=AssertionError("connected in __init__")):
        backend = RedisBackend("default", {"OPTIONS": {"URL": f"redis://127.0.0.1:{closed_port}/0"}})
    assert backend.problems == []
    assert backend.store._client is None


# -- enqueue --------------------------------------------------------------------


@BOTH_KINDS
def test_enqueue_task(task_: Task) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_enqueue_task."""
    result = task_.enqueue(1, two=3)

    assert_fresh(result, task_, [1], {"two": 3})


@BOTH_KINDS
def test_enqueue_task_async(task_: Task) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_enqueue_task_async."""
    result = run(task_.aenqueue())

    assert_fresh(result, task_, [], {})


def test_enqueue_normalises_args_and_kwargs() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_enqueue_task (tuples become lists)."""
    result = tasks.noop_task.enqueue((1, 2), b"bytes", nested={"t": (3,)})

    assert result.args == [[1, 2], "bytes"]
    assert result.kwargs == {"nested": {"t": [3]}}
    assert default_task_backend.get_result(result.id).args == [[1, 2], "bytes"]


def test_takes_context() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_takes_context."""
    result = tasks.get_task_id.enqueue()

    assert result.status == TaskResultStatus.READY


def test_errors() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_errors."""
    result = tasks.noop_task.enqueue()

    assert result.errors == []


def test_enqueue_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_enqueue_logs."""
    with caplog.at_level(logging.DEBUG, logger="django.tasks"):
        result = tasks.noop_task.enqueue()

    records = [r for r in caplog.records if r.name == "django.tasks"]
    assert len(records) == 1
    assert "enqueued" in records[0].getMessage()
    assert result.id in records[0].getMessage()


def test_task_enqueued_sent_exactly_once_with_the_result(enqueued: list[TaskResult]) -> None:
    """Send task_enqueued once per enqueue, carrying the very result enqueue returns."""
    result = tasks.noop_task.enqueue(1)

    assert len(enqueued) == 1
    assert enqueued[0] is result


def test_aenqueue_sends_task_enqueued_once(enqueued: list[TaskResult]) -> None:
    """Send task_enqueued once from the native async path too."""
    result = run(tasks.noop_task.aenqueue(1))

    assert enqueued == [result]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_enqueue_with_invalid_argument(
    use_async: bool,
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
) -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_enqueue_with_invalid_argument (and its async twin)."""  # noqa: E501
    with pytest.raises(TypeError, match="Unsupported type"):
        if use_async:
            run(tasks.noop_task.aenqueue(datetime.now(UTC)))
        else:
            tasks.noop_task.enqueue(datetime.now(UTC))

    assert stored_keys(default_task_backend) == []
    assert enqueued == []


# -- validation -----------------------------------------------------------------


def test_validate_on_enqueue(configure_tasks: Callable[..., Any]) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_validate_on_enqueue."""  # noqa: E501
    task_with_custom_queue_name = tasks.noop_task.using(queue_name="unknown_queue")

    with (
        configure_tasks(queues=("queue-1",)),
        pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"),
    ):
        task_with_custom_queue_name.enqueue()


def test_validate_on_aenqueue(configure_tasks: Callable[..., Any]) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_validate_on_aenqueue."""  # noqa: E501
    task_with_custom_queue_name = tasks.noop_task.using(queue_name="unknown_queue")

    async def attempt() -> None:
        with configure_tasks(queues=("queue-1",)):
            await task_with_custom_queue_name.aenqueue()

    with pytest.raises(InvalidTask, match="Queue 'unknown_queue' is not valid for backend"):
        run(attempt())


def test_unknown_queue_name(configure_tasks: Callable[..., Any]) -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_unknown_queue_name."""
    with configure_tasks(queues=("default", "queue_1")):
        with pytest.raises(InvalidTask, match=re.escape("Queue 'queue-2' is not valid for backend.")):
            tasks.noop_task.using(queue_name="queue-2")
        assert tasks.noop_task.using(queue_name="queue_1").queue_name == "queue_1"


@pytest.mark.parametrize("priority", [TASK_MIN_PRIORITY - 1, TASK_MAX_PRIORITY + 1, 3.1])
def test_invalid_priority(priority: float) -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_invalid_priority."""
    message = f"priority must be a whole number between {TASK_MIN_PRIORITY} and {TASK_MAX_PRIORITY}."
    with pytest.raises(InvalidTask, match=message):
        tasks.noop_task.using(priority=priority)  # type: ignore[arg-type]


@pytest.mark.parametrize("priority", [TASK_MIN_PRIORITY, 0, TASK_MAX_PRIORITY])
def test_valid_priority_bounds(priority: int) -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_invalid_priority (the accepted bounds)."""  # noqa: E501
    assert tasks.noop_task.using(priority=priority).enqueue().task.priority == priority


def test_naive_datetime() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_naive_datetime."""
    with pytest.raises(InvalidTask, match=re.escape("run_after must be an aware datetime.")):
        tasks.noop_task.using(run_after=datetime.now())


def test_run_after_in_decorator() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_run_after_in_decorator."""
    with pytest.raises(
        TypeError, match=re.escape("run_after cannot be defined statically with the @task decorator.")
    ):
        task(run_after=datetime.now(UTC))(tasks.calculate_meaning_of_life.func)


def test_takes_context_without_taking_context() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_takes_context_without_taking_context."""  # noqa: E501
    message = "Task takes context but does not have a first argument of 'context'."
    with pytest.raises(InvalidTask, match=message):
        task(takes_context=True)(tasks.calculate_meaning_of_life.func)


def test_custom_task_values() -> None:
    """Ported from Django tests/tasks/test_custom_backend.py::CustomTaskTestCase::test_custom_task_with_standard_and_custom_values."""  # noqa: E501
    my_task = task(priority=10, queue_name="high", max_attempts=4, timeout=2.5)(tasks.noop_task.func)

    assert isinstance(my_task, ConveyorTask)
    assert (my_task.priority, my_task.queue_name) == (10, "high")
    assert (my_task.max_attempts, my_task.timeout) == (4, 2.5)
    assert my_task.takes_context is False
    assert my_task.run_after is None


def test_custom_task_invalid_kwarg() -> None:
    """Ported from Django tests/tasks/test_custom_backend.py::CustomTaskTestCase::test_custom_task_invalid_kwarg."""  # noqa: E501
    with pytest.raises(TypeError):
        task(unknown_param=123)(tasks.noop_task.func)


# -- results --------------------------------------------------------------------


def test_get_result() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_get_result."""
    result = default_task_backend.enqueue(tasks.noop_task, (), {})

    assert_same_result(default_task_backend.get_result(result.id), result)


def test_get_result_async() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_get_result_async."""

    async def enqueue_and_read() -> tuple[TaskResult, TaskResult]:
        result = await default_task_backend.aenqueue(tasks.noop_task, (), {})
        return result, await default_task_backend.aget_result(result.id)

    result, fetched = run(enqueue_and_read())

    assert_same_result(fetched, result)


def test_task_get_result() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_get_result."""
    result = default_task_backend.enqueue(tasks.noop_task, (1,), {"a": "b"})

    assert_same_result(tasks.noop_task.get_result(result.id), result)


def test_task_get_result_async() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_get_result_async."""
    result = default_task_backend.enqueue(tasks.noop_task, (), {})

    assert_same_result(run(tasks.noop_task.aget_result(result.id)), result)


def test_get_result_preserves_priority_queue_run_after_and_backend(
    configure_tasks: Callable[..., Any],
) -> None:
    """Round-trip a task sent with priority, queue, run_after and another alias through get_result."""
    run_after = datetime.now(UTC).replace(microsecond=123456) + timedelta(days=1)
    with configure_tasks(aliases=("default", "other")):
        sent = tasks.noop_task.using(priority=-7, queue_name="emails", run_after=run_after, backend="other")
        result = sent.enqueue(5)

        fetched = task_backends["default"].get_result(result.id)

    assert_same_result(fetched, result)
    assert fetched.task == sent
    assert (fetched.task.priority, fetched.task.queue_name) == (-7, "emails")
    assert fetched.task.run_after == run_after
    assert fetched.task.backend == fetched.backend == "other"


def test_refresh_result_keeps_every_field() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_refresh_result."""
    result = run(tasks.noop_task.aenqueue())
    original = dataclasses.asdict(result)

    result.refresh()
    assert dataclasses.asdict(result) == original

    run(result.arefresh())
    assert dataclasses.asdict(result) == original


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_refresh_result_sees_worker_changes(use_async: bool) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_refresh_result (and _async)."""  # noqa: E501
    store = default_task_backend.store
    result = tasks.calculate_meaning_of_life.enqueue()
    # Given a worker that claimed the task and recorded 42 as its return value
    [claimed] = store.claim(["default"], "worker-1", 60_000, 1)
    assert claimed.task_id == result.id
    assert store.finish(result.id, "default", claimed.token, "SUCCESSFUL", 60, {"result": "42"})

    assert result.status == TaskResultStatus.READY
    if use_async:
        run(result.arefresh())
    else:
        result.refresh()

    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42
    assert result.worker_ids == ["worker-1"]
    assert result.attempts == 1
    assert result.started_at is not None


def test_get_missing_result() -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTestCase::test_get_missing_result."""
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("123")
    with pytest.raises(TaskResultDoesNotExist):
        run(default_task_backend.aget_result("123"))


def test_task_get_missing_result() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_get_missing_result."""
    with pytest.raises(TaskResultDoesNotExist):
        tasks.noop_task.get_result("123")
    with pytest.raises(TaskResultDoesNotExist):
        run(tasks.noop_task.aget_result("123"))


@pytest.mark.parametrize(
    "bad_id",
    ["", "a b", "x" * 200, "../etc", "id\n", "{tag}", 123, None, b"bytes", ["list"]],
    ids=["empty", "space", "200-chars", "path", "newline", "braces", "int", "none", "bytes", "list"],
)
def test_malformed_ids_do_not_exist(bad_id: Any) -> None:
    """Ported from Django tests/tasks/test_immediate_backend.py::ImmediateBackendTestCase::test_cannot_get_result (non-str ids)."""  # noqa: E501
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(bad_id)
    with pytest.raises(TaskResultDoesNotExist):
        run(default_task_backend.aget_result(bad_id))


def test_get_incorrect_result() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_get_incorrect_result."""
    result = default_task_backend.enqueue(tasks.noop_task_async, (), {})

    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        tasks.noop_task.get_result(result.id)


def test_get_incorrect_result_async() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_get_incorrect_result_async."""

    async def enqueue_and_read_as_other_task() -> None:
        result = await default_task_backend.aenqueue(tasks.noop_task_async, (), {})
        await tasks.noop_task.aget_result(result.id)

    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        run(enqueue_and_read_as_other_task())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", "99"),
        ("args", "[not json"),
        ("kwargs", "[]"),
        ("status", "DONE"),
        ("enqueued_at", "yesterday"),
        ("priority", "1.5"),
        ("priority", "500"),
        ("backend", "no-such-alias"),
        ("task", "tests.tasks.not_a_task"),
        ("task", "no.such.module.task"),
        ("result", "{"),
    ],
)
def test_unreadable_record_does_not_exist(field: str, value: str) -> None:
    """Raise TaskResultDoesNotExist, not a crash, for a record this version cannot read."""
    result = tasks.noop_task.enqueue()
    key = default_task_backend.keys.task(result.id)
    default_task_backend.store.call(lambda client: client.hset(key, field, value))

    with pytest.raises(TaskResultDoesNotExist, match=result.id):
        default_task_backend.get_result(result.id)
    with pytest.raises(TaskResultDoesNotExist, match=result.id):
        run(default_task_backend.aget_result(result.id))


def test_record_of_a_queue_no_longer_configured_does_not_exist(configure_tasks: Callable[..., Any]) -> None:
    """Raise TaskResultDoesNotExist when QUEUES changed and no longer lists the record's queue."""
    result = tasks.noop_task.using(queue_name="retired").enqueue()

    with configure_tasks(queues=("default",)), pytest.raises(TaskResultDoesNotExist, match=result.id):
        task_backends["default"].get_result(result.id)


# -- pickling -------------------------------------------------------------------


def test_pickle_task() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_pickle_task."""
    assert pickle.loads(pickle.dumps(tasks.flaky)) == tasks.flaky


def test_pickle_task_result() -> None:
    """Ported from Django tests/tasks/test_tasks.py::TaskTestCase::test_pickle_task_result."""
    result = tasks.noop_task.using(priority=3).enqueue(1, key=[2])

    assert pickle.loads(pickle.dumps(result)) == result
    fetched = default_task_backend.get_result(result.id)
    assert pickle.loads(pickle.dumps(fetched)) == fetched


# -- transactions ---------------------------------------------------------------


def test_doesnt_wait_until_transaction_commit_by_default(
    enqueued: list[TaskResult], stored_keys: Callable[[RedisBackend], list[str]]
) -> None:
    """Ported from Django tests/tasks/test_dummy_backend.py::DummyBackendTransactionTestCase::test_doesnt_wait_until_transaction_commit_by_default."""  # noqa: E501
    with transaction.atomic():
        result = tasks.noop_task.enqueue()

        assert result.enqueued_at is not None
        assert default_task_backend.keys.task(result.id) in stored_keys(default_task_backend)
        assert enqueued == [result]

    assert default_task_backend.get_result(result.id) == result


def test_enqueue_on_commit_defers_until_commit(
    configure_tasks: Callable[..., Any],
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
) -> None:
    """With ENQUEUE_ON_COMMIT, write and signal only when the surrounding transaction commits."""
    with configure_tasks(ENQUEUE_ON_COMMIT=True):
        backend = task_backends["default"]
        with transaction.atomic():
            result = tasks.noop_task.enqueue(1)
            assert result.status == TaskResultStatus.READY
            assert stored_keys(backend) == []
            assert enqueued == []

        assert enqueued == [result]
        assert_same_result(backend.get_result(result.id), result)


def test_enqueue_on_commit_writes_nothing_on_rollback(
    configure_tasks: Callable[..., Any],
    enqueued: list[TaskResult],
    stored_keys: Callable[[RedisBackend], list[str]],
) -> None:
    """With ENQUEUE_ON_COMMIT, a rolled-back transaction leaves Redis untouched and sends no signal."""
    with configure_tasks(ENQUEUE_ON_COMMIT=True):
        backend = task_backends["default"]
        with pytest.raises(RuntimeError, match="roll back"), transaction.atomic():
            result = tasks.noop_task.enqueue(1)
            raise RuntimeError("roll back")

        assert stored_keys(backend) == []
        assert enqueued == []
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(result.id)


def test_enqueue_on_commit_outside_a_transaction_writes_at_once(
    configure_tasks: Callable[..., Any], enqueued: list[TaskResult]
) -> None:
    """With ENQUEUE_ON_COMMIT and no transaction open (autocommit), write immediately, sync and async."""
    with configure_tasks(ENQUEUE_ON_COMMIT=True):
        result = tasks.noop_task.enqueue()
        async_result = run(tasks.noop_task.aenqueue())

        backend = task_backends["default"]
        assert backend.get_result(result.id) == result
        assert backend.get_result(async_result.id) == async_result
    assert enqueued == [result, async_result]


def test_stored_record_is_versioned_json() -> None:
    """Store arguments as JSON text in a versioned hash (other tools may read it)."""
    result = tasks.noop_task.enqueue(1, "two", three=[3.5, None, True])

    raw = default_task_backend.store.get(result.id)

    assert raw[b"v"] == b"1"
    assert json.loads(raw[b"args"]) == [1, "two"]
    assert json.loads(raw[b"kwargs"]) == {"three": [3.5, None, True]}
    assert raw[b"task"] == tasks.noop_task.module_path.encode()
