"""Tasks used by the test suite (module path tests.tasks.*)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from django.tasks import TaskContext, task


@task()
def noop_task(*args: object, **kwargs: object) -> None:
    return None


@task
def noop_task_from_bare_decorator(*args: object, **kwargs: object) -> None:
    return None


@task()
async def noop_task_async(*args: object, **kwargs: object) -> None:
    return None


@task()
def calculate_meaning_of_life() -> int:
    return 42


@task()
def echo(*args: object, **kwargs: object) -> dict[str, object]:
    return {"args": list(args), "kwargs": kwargs}


@task()
async def async_echo(value: object) -> object:
    await asyncio.sleep(0)
    return value


@task()
def failing_task_value_error() -> None:
    raise ValueError("This Task failed due to ValueError")


@task()
def failing_task_system_exit() -> None:
    raise SystemExit("This Task failed due to SystemExit")


@task()
def complex_return_value() -> object:
    return lambda: True


@task(takes_context=True)
def get_task_id(context: TaskContext) -> str:
    return context.task_result.id


@task(takes_context=True)
def context_attempt(context: TaskContext) -> int:
    return context.attempt


@task()
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task()
async def async_sleep_for(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task()
def append_line(path: str, line: str) -> str:
    """Append a line to a file (lets subprocess tests see what ran, and how often)."""
    with Path(path).open("a") as fh:
        fh.write(line + "\n")
    return line


@task()
def slow_append_line(path: str, line: str, seconds: float) -> str:
    """Sleep, then append a line: a task that is long enough to be interrupted."""
    time.sleep(seconds)
    with Path(path).open("a") as fh:
        fh.write(line + "\n")
    return line


@task(max_attempts=3, retry_backoff=0.0)
def flaky(path: str, fail_times: int) -> int:
    """Fail the first fail_times attempts (counted in a file), then succeed."""
    counter = Path(path)
    count = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(count + 1))
    if count < fail_times:
        raise RuntimeError(f"flaky failure {count + 1}")
    return count + 1


@task(max_attempts=2, retry_backoff=0.0)
def always_fails() -> None:
    raise RuntimeError("always")


@task(timeout=0.5)
def sleeps_past_timeout(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task(timeout=0.5)
async def async_sleeps_past_timeout(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@task()
def kill_own_worker() -> None:
    """Kill the worker process running this task (a poison pill)."""
    os.kill(os.getpid(), 9)


def not_a_task() -> None:
    """A plain function: the worker must refuse to run it."""


@task()
def process_id() -> int:
    """Return the pid of the process running the task (as it sees itself)."""
    return os.getpid()


@task(unique_for=3600)
def unique_task(*args: object, **kwargs: object) -> None:
    return None


def _by_user(args: list[object], kwargs: dict[str, object]) -> str:
    return str(kwargs.get("user"))


@task(unique_for=3600, unique_key=_by_user)
def unique_per_user(**kwargs: object) -> None:
    return None


@task(unique_for=3600, unique_while_running=True)
def unique_while_running_task(*args: object) -> None:
    return None


@task(unique_for=0.3)
def briefly_unique_task(*args: object) -> None:
    return None
