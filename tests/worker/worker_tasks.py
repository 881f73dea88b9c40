"""Extra tasks for the worker tests (module path tests.worker.worker_tasks.*)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from django.tasks import TaskContext, task
from django.tasks.base import Task, TaskResult


@task()
def record_interval(seconds: float) -> list[float]:
    """Sleep and return the wall-clock interval the task body really ran in."""
    start = time.time()
    time.sleep(seconds)
    return [start, time.time()]


@task()
def spin(seconds: float) -> list[float]:
    """Hold the GIL in a pure-Python loop; return the wall-clock interval the body ran in."""
    start = time.time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return [start, time.time()]


@task(takes_context=True, max_attempts=2, retry_backoff=0.0)
def fail_first_attempt(context: TaskContext) -> int:
    """Fail on the first attempt, succeed on the second; return the attempt number."""
    if context.attempt < 2:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@task(max_attempts=3, retry_backoff=60.0)
def fails_with_backoff() -> None:
    """Fail, with a long retry backoff."""
    raise RuntimeError("fails, retry later")


@task(timeout=0.5)
def spins_past_timeout(path: str) -> None:
    """Run Python code past the timeout (interruptible); append how the loop ended."""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException as exc:
        with Path(path).open("a") as fh:
            fh.write(f"interrupted by {type(exc).__name__}\n")
        raise
    with Path(path).open("a") as fh:
        fh.write("spun to the end\n")


@task()
def secret_echo(secret: str) -> dict[str, str]:
    """Return the argument (tests check it never reaches INFO logs)."""
    return {"echo": secret}


@task()
def fails_with_message(message: str) -> None:
    """Raise an error carrying the argument."""
    raise ValueError(message)


@task()
def slow_first_time(path: str, seconds: float) -> str:
    """Sleep on the first delivery only (a file remembers it); later deliveries return at once."""
    marker = Path(path)
    first = not marker.exists()
    with marker.open("a") as fh:
        fh.write("ran\n")
    if first:
        time.sleep(seconds)
        return "slow"
    return "fast"


@task()
def log_run(path: str, key: str, seconds: float) -> str:
    """Append "start" and "end" lines (key, pid, wall-clock time) around a sleep: a ledger of runs."""
    with Path(path).open("a") as fh:
        fh.write(f"start {key} {os.getpid()} {time.time():.6f}\n")
    time.sleep(seconds)
    with Path(path).open("a") as fh:
        fh.write(f"end {key} {os.getpid()} {time.time():.6f}\n")
    return key


@task()
def kill_own_worker_after(seconds: float) -> None:
    """Sleep, then kill the worker process running this task (a poison pill beside other tasks)."""
    time.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)


@task(max_attempts=3, retry_backoff=0.0)
def loop_until_stopped(path: str, seconds: float) -> str:
    """Append "start", sleep in short steps (a Python loop an interrupt can stop), append how it ended."""
    with Path(path).open("a") as fh:
        fh.write("start\n")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
    except BaseException as exc:
        with Path(path).open("a") as fh:
            fh.write(f"interrupted by {type(exc).__name__}\n")
        raise
    with Path(path).open("a") as fh:
        fh.write("end\n")
    return "end"


@task(max_attempts=3, retry_backoff=0.0)
async def async_loop_until_stopped(path: str, seconds: float) -> str:
    """The coroutine twin of loop_until_stopped: append "start", await in short steps, append how it ended."""
    with Path(path).open("a") as fh:
        fh.write("start\n")
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    except BaseException as exc:
        with Path(path).open("a") as fh:
            fh.write(f"interrupted by {type(exc).__name__}\n")
        raise
    with Path(path).open("a") as fh:
        fh.write("end\n")
    return "end"


@task()
def wait_for_file(path: str) -> str:
    """Run until a file exists (a test creates it), in short Python steps."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "seen"


# -- Django's proposed retry API (new-features #142, #144) ------------------------------


def note_backoff(exception: BaseException, task_result: TaskResult) -> None:
    """Append what a backoff saw, as one JSON line, to the file named by the task's `seen` keyword."""
    seen = {
        "exception": type(exception).__name__,
        "message": str(exception).splitlines()[0],
        "status": str(task_result.status),
        "attempts": task_result.attempts,
        "errors": [e.exception_class_path for e in task_result.errors],
        "args": task_result.args,
        "finished": task_result.finished_at is not None,
        "id": task_result.id,
    }
    with Path(task_result.kwargs["seen"]).open("a") as fh:
        fh.write(json.dumps(seen) + "\n")


def delay_from_arguments(exception: BaseException, task_result: TaskResult) -> Any:
    """Note the call; return the task's first argument as the delay (None: no retry; anything else: bad)."""
    note_backoff(exception, task_result)
    return task_result.args[0]


def raising_backoff(exception: BaseException, task_result: TaskResult) -> float:
    """Note the call, then fail."""
    note_backoff(exception, task_result)
    raise KeyError("backoff broke")


def zero_backoff(exception: BaseException, task_result: TaskResult) -> float:
    """Note the call; retry at once."""
    note_backoff(exception, task_result)
    return 0


@task(max_attempts=3, backoff=delay_from_arguments)
def fails_with_chosen_delay(delay: Any, *, seen: str) -> None:
    """Fail; the backoff retries after `delay` (its return value)."""
    raise RuntimeError(f"fails; backoff gets {delay!r}")


@task(max_attempts=3, backoff=raising_backoff)
def fails_with_raising_backoff(*, seen: str) -> None:
    """Fail; the backoff raises."""
    raise RuntimeError("the task's own failure")


@task(max_attempts=2, timeout=0.5, backoff=zero_backoff)
def times_out_first_time(path: str, *, seen: str) -> str:
    """Run past the timeout on the first delivery (a Python loop), return at once on the next."""
    marker = Path(path)
    first = not marker.exists()
    with marker.open("a") as fh:
        fh.write("ran\n")
    if first:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.01)
    return "second time lucky"


@task(max_attempts=2, timeout=0.5, backoff=zero_backoff)
async def async_times_out_first_time(path: str, *, seen: str) -> str:
    """The coroutine twin of times_out_first_time."""
    marker = Path(path)
    first = not marker.exists()
    with marker.open("a") as fh:
        fh.write("ran\n")
    if first:
        await asyncio.sleep(20)
    return "second time lucky"


@task(max_attempts=3, backoff=zero_backoff)
def loop_until_cancelled(path: str, *, seen: str) -> str:
    """Append "start" and loop in short Python steps, for a test to cancel."""
    with Path(path).open("a") as fh:
        fh.write("start\n")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "end"


def plain_task(func: Any) -> Task:
    """Wrap a function in Django's own Task class, not ConveyorTask (as a task made for another backend)."""
    return Task(func=func)


@plain_task
def plain_always_fails(path: str) -> None:
    """Append a line, then fail: a django.tasks.Task with no conveyor options of its own."""
    with Path(path).open("a") as fh:
        fh.write("ran\n")
    raise RuntimeError("plain failure")


@task()
def conveyor_task_always_fails(path: str) -> None:
    """Append a line, then fail: a ConveyorTask that sets no max_attempts or backoff."""
    with Path(path).open("a") as fh:
        fh.write("ran\n")
    raise RuntimeError("conveyor failure")


def _current_span_ids() -> list[str]:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return [f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"]


@task()
def current_span_ids() -> list[str]:
    """Return the trace and span ids current while the task runs (hex)."""
    return _current_span_ids()


@task()
async def async_current_span_ids() -> list[str]:
    """Return the trace and span ids current while the coroutine runs (hex)."""
    await asyncio.sleep(0)
    return _current_span_ids()
