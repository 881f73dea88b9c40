"""Django's proposed retry API: validating @task(max_attempts, backoff), MAX_ATTEMPTS/BACKOFF, who decides."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from conveyor import RedisBackend
from conveyor.backend import ConveyorTask
from conveyor.exceptions import BackoffFailed
from conveyor.retries import (
    BACKOFF_MAX_SECONDS,
    RetryDefaults,
    backoff_arity,
    backoff_for,
    call_backoff,
    failed_view,
    max_attempts_for,
    parse_retry_defaults,
)
from django.tasks import TaskResultStatus, task
from django.tasks.base import Task, TaskError, TaskResult
from django.tasks.exceptions import InvalidTask, InvalidTaskBackend

from tests import tasks


def two_args(exception: BaseException, task_result: TaskResult) -> int:
    return 7


def one_arg(task_result: TaskResult) -> int:
    return 8


def no_args() -> int:
    return 9


async def coroutine_backoff(exception: BaseException, task_result: TaskResult) -> int:
    return 10


def decorate(**options: Any) -> Task:
    """Decorate a module-level function with @task(**options) for the default backend."""
    return task(**options)(tasks.noop_task.func)


def a_result(task_obj: Task, **changes: Any) -> TaskResult:
    values: dict[str, Any] = {
        "task": task_obj,
        "id": "abc",
        "status": TaskResultStatus.RUNNING,
        "enqueued_at": None,
        "started_at": None,
        "finished_at": None,
        "last_attempted_at": None,
        "args": [1, "two"],
        "kwargs": {"k": "v"},
        "backend": "default",
        "errors": [TaskError(exception_class_path="builtins.RuntimeError", traceback="...")],
        "worker_ids": ["w1", "w2"],
    }
    values.update(changes)
    return TaskResult(**values)


# -- @task(...) -------------------------------------------------------------------------


def test_the_proposals_keywords_are_accepted() -> None:
    """@task(max_attempts=..., backoff=..., timeout=...) as in new-features #142 and #144."""
    t = decorate(max_attempts=10, backoff=two_args, timeout=30)

    assert isinstance(t, ConveyorTask)
    assert (t.max_attempts, t.backoff, t.timeout) == (10, two_args, 30)


def test_unset_options_are_none_so_backend_defaults_can_apply() -> None:
    """A task that sets nothing leaves max_attempts, backoff and retry_backoff* to the backend."""
    t = decorate()

    assert (t.max_attempts, t.backoff, t.retry_backoff, t.retry_backoff_max) == (None, None, None, None)
    assert max_attempts_for(t, RetryDefaults()) == 1  # as before: no retry


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backoff": 30}, "backoff must be a function"),
        ({"backoff": "myapp.backoff"}, "backoff must be a function"),
        ({"backoff": coroutine_backoff}, "plain function"),
        ({"backoff": no_args}, "must accept (exception, task_result)"),
        ({"backoff": two_args, "retry_backoff": 1.0}, "not both"),
        ({"backoff": two_args, "retry_backoff_max": 10.0}, "not both"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"retry_backoff_max": math.nan}, "retry_backoff"),
        ({"retry_backoff": "1"}, "retry_backoff"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_retry_options_are_refused_at_decoration(options: dict[str, Any], message: str) -> None:
    """InvalidTask names what is wrong, when the module is imported, not when the task fails."""
    with pytest.raises(InvalidTask, match=message.replace("(", r"\(").replace(")", r"\)")):
        decorate(**options)


def test_a_one_argument_backoff_is_accepted() -> None:
    """The proposal's settings example passes task_result alone; that form works on @task too."""
    assert decorate(backoff=one_arg).backoff is one_arg
    assert backoff_arity(one_arg) == 1
    assert backoff_arity(two_args) == 2
    assert backoff_arity(lambda *args: 0) == 2
    assert backoff_arity(no_args) == 0


# -- MAX_ATTEMPTS and BACKOFF in TASKS[alias] ---------------------------------------------


def test_top_level_defaults_are_read() -> None:
    """MAX_ATTEMPTS and BACKOFF sit beside BACKEND, as the proposal's settings example has them."""
    defaults, problems = parse_retry_defaults({"BACKEND": "x", "MAX_ATTEMPTS": 10, "BACKOFF": one_arg})

    assert problems == []
    assert defaults == RetryDefaults(max_attempts=10, backoff=one_arg)
    assert parse_retry_defaults({}) == (RetryDefaults(), [])
    assert parse_retry_defaults({"BACKOFF": None}) == (RetryDefaults(), [])


@pytest.mark.parametrize(
    ("params", "setting"),
    [
        ({"MAX_ATTEMPTS": 0}, "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": "3"}, "MAX_ATTEMPTS"),
        ({"MAX_ATTEMPTS": False}, "MAX_ATTEMPTS"),
        ({"BACKOFF": 30}, "BACKOFF"),
        ({"BACKOFF": coroutine_backoff}, "BACKOFF"),
        ({"BACKOFF": no_args}, "BACKOFF"),
    ],
)
def test_bad_defaults_are_problems_of_the_top_level_setting(params: dict[str, Any], setting: str) -> None:
    """A bad value is reported as TASKS[alias] MAX_ATTEMPTS (not OPTIONS), and the backend refuses work."""
    backend = RedisBackend("default", {"OPTIONS": {}, **params})

    assert [(p.setting, p.top_level) for p in backend.problems] == [(setting, True)]
    assert backend.problems[0].hint
    (error,) = backend.check()
    assert error.id == "conveyor.E001"
    assert error.msg.startswith(f"TASKS['default'] {setting}: ")
    with pytest.raises(InvalidTaskBackend, match=f"{setting}: "):
        backend.enqueue(tasks.noop_task, [], {})


@pytest.mark.parametrize("name", ["MAX_ATTEMPTS", "BACKOFF"])
def test_defaults_inside_options_get_a_hint_to_move_them(name: str) -> None:
    """OPTIONS is the wrong place; the hint says where they go."""
    backend = RedisBackend("default", {"OPTIONS": {name: 3}})

    (problem,) = backend.problems
    assert problem.setting == f"OPTIONS {name}"
    assert "top level" in problem.hint


# -- who decides --------------------------------------------------------------------------


def test_a_tasks_own_settings_win_over_the_backends() -> None:
    """max_attempts over MAX_ATTEMPTS; backoff, or retry_backoff*, over BACKOFF."""
    defaults = RetryDefaults(max_attempts=5, backoff=one_arg)

    assert max_attempts_for(decorate(), defaults) == 5
    assert max_attempts_for(decorate(max_attempts=2), defaults) == 2
    assert backoff_for(decorate(), defaults) is one_arg
    assert backoff_for(decorate(backoff=two_args), defaults) is two_args
    assert backoff_for(decorate(retry_backoff=2.0), defaults) is None  # conveyor's exponential backoff
    assert backoff_for(decorate(retry_backoff_max=60.0), defaults) is None
    assert backoff_for(decorate(), RetryDefaults()) is None


def test_a_plain_django_task_takes_the_backends_defaults() -> None:
    """A django.tasks.Task has no conveyor fields: MAX_ATTEMPTS and BACKOFF decide."""
    plain = Task(func=tasks.noop_task.func)
    defaults = RetryDefaults(max_attempts=4, backoff=two_args)

    assert type(plain) is Task
    assert max_attempts_for(plain, defaults) == 4
    assert backoff_for(plain, defaults) is two_args
    assert (max_attempts_for(plain, RetryDefaults()), backoff_for(plain, RetryDefaults())) == (1, None)


# -- calling a backoff --------------------------------------------------------------------


def test_call_backoff_passes_exception_and_result_or_the_result_alone() -> None:
    """Two-argument backoffs get (exception, task_result); one-argument ones get task_result."""
    calls: list[tuple[Any, ...]] = []
    result = a_result(decorate())
    exc = RuntimeError("x")

    assert call_backoff(lambda e, r: calls.append((e, r)) or 3, exc, result) == 3.0
    assert call_backoff(lambda r: calls.append((r,)) or 4, exc, result) == 4.0
    assert calls == [(exc, result), (result,)]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), (30, 30.0), (0.25, 0.25), (timedelta(minutes=2), 120.0)],
)
def test_call_backoff_accepts_seconds_a_timedelta_or_none(value: Any, seconds: float | None) -> None:
    """None means no retry; a number or a timedelta is the delay."""
    assert call_backoff(lambda e, r: value, RuntimeError(), a_result(decorate())) == seconds


@pytest.mark.parametrize(
    "value",
    ["30", -1, True, math.nan, math.inf, BACKOFF_MAX_SECONDS + 1, timedelta(seconds=-1), [1]],
)
def test_call_backoff_refuses_anything_else(value: Any) -> None:
    """A bad value raises BackoffFailed naming it."""
    with pytest.raises(BackoffFailed, match="returned"):
        call_backoff(lambda e, r: value, RuntimeError(), a_result(decorate()))


def test_call_backoff_wraps_what_the_backoff_raises() -> None:
    """BackoffFailed is chained to the backoff's own error."""

    def broken(exception: BaseException, task_result: TaskResult) -> int:
        raise ZeroDivisionError("no")

    with pytest.raises(BackoffFailed, match="broken raised ZeroDivisionError") as caught:
        call_backoff(broken, RuntimeError(), a_result(decorate()))
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_call_backoff_closes_a_coroutine_it_never_awaits() -> None:
    """A backoff that returns a coroutine anyway is a bad value, and leaves no warning behind."""
    returned: list[Any] = []

    def sneaky(exception: BaseException, task_result: TaskResult) -> Any:
        returned.append(coroutine_backoff(exception, task_result))
        return returned[0]

    with pytest.raises(BackoffFailed):
        call_backoff(sneaky, RuntimeError(), a_result(decorate()))
    assert returned[0].cr_frame is None  # closed


def test_the_failed_view_is_a_copy_as_the_attempt_left_it() -> None:
    """FAILED with finished_at set; changing it changes nothing the worker stores."""
    result = a_result(decorate())

    view = failed_view(result)

    assert (view.status, view.attempts, view.args, view.kwargs) == (
        TaskResultStatus.FAILED,
        2,
        [1, "two"],
        {"k": "v"},
    )
    assert view.finished_at is not None and view.id == result.id
    view.errors.clear()
    view.worker_ids.append("w3")
    assert (len(result.errors), result.attempts, result.status) == (1, 2, TaskResultStatus.RUNNING)
